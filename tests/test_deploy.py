"""The deploy files parse, pass Ray's own cluster-launcher schema, and carry what deploy/README.md
says they carry: token auth, the package on every node, shared storage, the weights folder and
the tracking URI; the RayJob's entrypoint is a command line `srsweep` itself accepts."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
LAUNCHERS = ["cluster-onprem.yaml", "cluster-aws.yaml"]


def load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def _commands(cfg: dict) -> str:
    keys = ("setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
    return "\n".join(c for k in keys for c in cfg.get(k, []))


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_passes_rays_schema(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(copy.deepcopy(load(name)))  # what `ray up` does before it validates
    validate_config(cfg)


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_carries_the_sweep_settings(name):
    cfg = load(name)
    cmds = _commands(cfg)
    assert "pip install -q -e ~/srsweep" in cmds and cfg["file_mounts"]["~/srsweep"] == "."
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # same token on every node
    for var in (
        "'export RAY_AUTH_MODE=token'",
        "'export SRSWEEP_WEIGHTS_DIR=",
        "'export MLFLOW_TRACKING_URI=http",
        "'export SRSWEEP_STORAGE=",
    ):
        assert var in cmds, var
    assert "ray start --head --port=6379" in cmds and "ray start --address=$RAY_HEAD_IP:6379" in cmds


def test_onprem_variant_is_local_provider():
    cfg = load("cluster-onprem.yaml")
    assert cfg["provider"]["type"] == "local" and cfg["provider"]["head_ip"] and cfg["provider"]["worker_ips"]
    assert "SRSWEEP_STORAGE=/mnt/shared/" in _commands(cfg)  # a shared (NFS) folder on every node


def test_aws_variant_has_a_gpu_worker_and_s3_storage():
    cfg = load("cluster-aws.yaml")
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    gpu = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu and gpu[0]["min_workers"] >= 1  # `srsweep run` refuses a cluster with no node fitting a trial
    assert types[cfg["head_node_type"]]["resources"]["CPU"] == 0
    assert "SRSWEEP_STORAGE=s3://" in _commands(cfg)


def test_rayjob_runs_srsweep_with_the_same_settings():
    import ray

    from sweeper.cli import build_parser

    job = load("rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["srsweep", "run"]
    args = build_parser().parse_args(argv[1:])  # the real CLI accepts the entrypoint
    assert args.address == "auto" and args.storage.startswith("s3://")
    assert args.tracking_uri.startswith("http://")
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"].rsplit(".", 1)[0] == ray.__version__.rsplit(".", 1)[0]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    workers = [g["template"]["spec"]["containers"][0] for g in cluster["workerGroupSpecs"]]
    for container in [head, *workers]:
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "ray-auth-token"
        assert env["SRSWEEP_WEIGHTS_DIR"]["value"] == "/weights"
        assert env["MLFLOW_TRACKING_URI"]["value"] == args.tracking_uri
        assert {"name": "weights", "mountPath": "/weights", "readOnly": True} in container["volumeMounts"]
    assert any(int(w["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1 for w in workers)


def test_readme_explains_every_deploy_file():
    text = (DEPLOY / "README.md").read_text()
    for name in [
        *LAUNCHERS,
        "rayjob.yaml",
        "ray start --head",
        "ray start --address",
        "RAY_AUTH_TOKEN",
        "srsweep run",
        "--address",
        "serve_postgres.sh",
    ]:
        assert name in text, name
