"""`srsweep run` / `resume` as a researcher launches them on a cluster, with real components only:
a two-node Ray cluster (token auth), a sweep kept on a real S3 server (moto on 127.0.0.1) that is
killed and resumed, and an MLflow server over PostgreSQL used over HTTP. Each fixture stops
exactly the processes it started (see the imported fixtures)."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_cluster import cluster  # noqa: F401  (fixture: two `ray start` nodes, 1 CPU each)
from test_postgres import postgres, team_server  # noqa: F401  (fixture: PostgreSQL)
from test_storage import s3  # noqa: F401  (fixture: moto_server, AWS_* set in os.environ)
from test_sweep import _children, _sweep_dir, closed_as_ended, srsweep, start_srsweep, write_sweep

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ two nodes
def test_sweep_through_the_cli_uses_both_nodes(cluster, tmp_path, tiny_data):  # noqa: F811
    sweep = write_sweep(tmp_path, tiny_data, num_samples=4, concurrent=2, steps=4)
    res = srsweep("run", sweep, "--address", cluster.address, cwd=tmp_path, env=cluster.env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    first = res.stdout.splitlines()[0]
    assert re.fullmatch(rf"Ray cluster [\d.]+:{cluster.port}: 2 nodes, 2 CPUs, 0 GPUs", first), first
    d = _sweep_dir(tmp_path)
    df = pd.read_parquet(d / "results.parquet")
    per_node = df.groupby("node_id").size().to_dict()
    print(f"\ntrials per node: {per_node}")
    assert len(df) == 4 and df["trial_id"].is_unique and len(per_node) >= 2, per_node
    assert set(df["host"]) == {socket.gethostname()} and set(df["gpu_count"]) == {0}
    assert df["node_ip"].str.fullmatch(r"[\d.]+").all()

    state = json.loads((d / "sweep.json").read_text())
    client, children = _children(f"sqlite:///{tmp_path / 'mlflow.db'}", state["parent_run_id"])
    tagged = {r.data.tags["ray_trial_id"]: r.data.tags.get("placement.node_id") for r in children}
    assert tagged == dict(zip(df["trial_id"], df["node_id"]))  # MLflow agrees with the table
    assert not any(k in r.data.metrics for r in children for k in ("gpu_count", "node_id"))
    ptags = client.get_run(state["parent_run_id"]).data.tags
    assert ptags["ray_address"] == first.split()[2].rstrip(":") and ptags["ray_nodes"] == "2"
    assert ptags["ray_cpus"] == "2.0" and ptags["ray_gpus"] == "0.0"

    best = srsweep("best", d, "--verbose", "--resamples", "50", cwd=tmp_path, env=cluster.env)
    assert best.returncode == 0, best.stderr[-2000:]
    header = next(ln for ln in best.stdout.splitlines() if ln.lstrip().startswith("rank"))
    assert header.split()[-3:] == ["host", "node", "gpu"], header
    for trial_id, node in zip(df["trial_id"], df["node_id"]):
        row = next(ln for ln in best.stdout.splitlines() if ln.split()[1:2] == [trial_id])  # rank, trial
        assert row.split()[-3:] == [socket.gethostname(), node[:8], "-"], row


def test_cli_refuses_in_one_line_before_writing(cluster, tmp_path, tiny_data):  # noqa: F811
    sweep = write_sweep(tmp_path, tiny_data, num_samples=2, concurrent=1, steps=2)
    wrong = srsweep(
        "run",
        sweep,
        "--address",
        cluster.address,
        cwd=tmp_path,
        env={**cluster.env, "RAY_AUTH_TOKEN": "0" * 32},
        timeout=300,
    )
    big = yaml.safe_load(sweep.read_text())
    big["resources"] = {"cpu": 2, "gpu": 0}
    (tmp_path / "big.yaml").write_text(yaml.safe_dump(big))
    small = srsweep(
        "run", tmp_path / "big.yaml", "--address", cluster.address, cwd=tmp_path, env=cluster.env, timeout=300
    )
    for r, expect in (
        (wrong, "refused this driver's token (the token in RAY_AUTH_TOKEN is wrong)"),
        (small, "is too small for one trial: it needs 2 CPU and 0 GPU on one node"),
    ):
        print(f"\n{r.stderr.strip()}")
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and expect in r.stderr, r.stderr[-2000:]
        assert re.match(rf"srsweep: error: Ray cluster [\d.]+:{cluster.port} ", r.stderr), r.stderr
    assert not (tmp_path / "ray_results").exists()  # nothing written


# ---------------------------------------------------------------------------------- S3
def _s3_keys(prefix: str) -> list[str]:
    import pyarrow.fs as pafs

    from sweeper.storage import resolve_storage

    path, fs = resolve_storage(prefix)
    return [i.path for i in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))]


def test_sweep_on_s3_killed_and_resumed(s3, tmp_path, tiny_data):  # noqa: F811
    sweep = write_sweep(tmp_path, tiny_data, num_samples=4, concurrent=1, steps=8)
    env = {**os.environ, "SRSWEEP_CACHE": str(tmp_path / "cache")}
    proc = start_srsweep("run", sweep, "--storage", "s3://sweeps/team", cwd=tmp_path, env=env)
    seen, trials, sweep_uri = [], set(), None
    deadline = time.monotonic() + 600
    for line in proc.stdout:  # kill the driver and its local Ray once a second trial reports
        seen.append(line)
        m = re.match(r"sweep folder (s3://\S+);", line)
        sweep_uri = m.group(1) if m else sweep_uri
        m = re.match(r"\[\s*[\d.]+ min\] trial (\w+) step (\d+)/\d+:", line)
        if m:
            trials.add(m.group(1))
        if len(trials) >= 2:
            break
        assert time.monotonic() < deadline, "".join(seen[-50:])
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert sweep_uri and sweep_uri.startswith("s3://sweeps/team/e2e-"), "".join(seen[-30:])
    keys = _s3_keys(sweep_uri)
    assert any(k.endswith("/sweep.json") for k in keys)
    assert any(k.endswith("/pretrain/pretrain_g.pt") for k in keys)  # uploaded by the node that pretrained
    assert not any(k.endswith("results.parquet") for k in keys)  # really interrupted
    assert not (tmp_path / "ray_results").exists()  # nothing local but the MLflow store

    res = srsweep("resume", sweep_uri, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"wrote {sweep_uri}/results.parquet" in res.stdout
    from sweeper.storage import resolve_storage

    path, fs = resolve_storage(sweep_uri)
    with fs.open_input_file(f"{path}/results.parquet") as f:
        df = pd.read_parquet(io.BytesIO(f.read()))
    print(
        f"\n{sweep_uri}: {len(_s3_keys(sweep_uri))} objects; trials {sorted(df['trial_id'])} "
        f"status {sorted(df['status'])}"
    )
    assert len(df) == 4 and df["trial_id"].is_unique and set(df["status"]) <= {"TERMINATED", "STOPPED"}
    assert df["checkpoint"].str.startswith(sweep_uri).all()
    state = json.loads(fs.open_input_stream(f"{path}/sweep.json").read())
    # stored relative to the sweep folder, placed where the folder is when loaded
    assert state["experiment"]["train"]["pretrained_g"] == "pretrain/pretrain_g.pt"
    from sweeper.state import SweepState

    assert (
        SweepState.load(sweep_uri).experiment["train"]["pretrained_g"]
        == f"{sweep_uri}/pretrain/pretrain_g.pt"
    )
    client, children = _children(f"sqlite:///{tmp_path / 'mlflow.db'}", state["parent_run_id"])
    assert len(children) == 4 and all(closed_as_ended(r) for r in children)  # none duplicated
    assert {r.data.tags["ray_trial_id"] for r in children} == set(df["trial_id"])
    assert client.get_run(state["parent_run_id"]).info.status == "FINISHED"


# --------------------------------------------------------------------------- PostgreSQL
def test_sweep_against_mlflow_server_on_postgres(postgres, tmp_path, tiny_data):  # noqa: F811

    db, _ = postgres
    with team_server(db, tmp_path) as (_, url):
        sweep = write_sweep(tmp_path, tiny_data, num_samples=2, concurrent=2, steps=4)
        res = srsweep("run", sweep, "--tracking-uri", url, cwd=tmp_path)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert not (tmp_path / "mlflow.db").exists()  # nothing fell back to the SQLite default
        d = _sweep_dir(tmp_path)
        state = json.loads((d / "sweep.json").read_text())
        assert state["tracking_uri"] == url
        client, children = _children(url, state["parent_run_id"])
        parent = client.get_run(state["parent_run_id"])
        assert parent.info.status == "FINISHED" and parent.data.tags["role"] == "sweep"
        assert parent.data.tags["ray_nodes"] == "1"
        df = pd.read_parquet(d / "results.parquet")
        assert len(children) == 2 and {r.data.tags["ray_trial_id"] for r in children} == set(df["trial_id"])
        for r in children:
            hist = client.get_metric_history(r.info.run_id, "val_lpips")
            row = df[df["trial_id"] == r.data.tags["ray_trial_id"]].iloc[0]
            assert hist and hist[-1].value == pytest.approx(row["final_val_lpips"], rel=1e-6)
            assert r.data.tags["placement.node_id"] == row["node_id"]
        arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert arts >= {"results.parquet", "winner.yaml"}
        # The artifacts went through the server (proxied) into its folder.
        assert list((tmp_path / "artifacts").rglob("results.parquet"))
        print(
            f"\nmlflow server {url} on {db}: parent {parent.info.run_id}, {len(children)} trial runs, "
            f"final val_lpips {sorted(round(v, 4) for v in df['final_val_lpips'])}"
        )
