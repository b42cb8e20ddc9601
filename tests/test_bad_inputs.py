"""Bad input through the real CLI: one stderr line, no traceback, nothing left behind.

Every case runs through the real CLI (``sweeper.cli.main``), all of them in one fresh process
(tests/cli_batch.py: one torch import, not 101), the first few also as the installed ``srsweep``
script, from a work folder that already holds an earlier sweep folder and an MLflow store
with one run. After every case the whole work
folder (the earlier results and the store included) must hash exactly as before: no new
sweep folder, run folder, ``mlflow.db`` or lock file, and no byte changed. The cases fail
in preflight or config validation, before Ray starts.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import pickle
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

SRSWEEP = str(Path(sys.executable).with_name("srsweep"))
_COUNT = itertools.count()
pytestmark = pytest.mark.slow  # 101 cases: 6 CLI start-ups (torch import each)


class _Evil:
    def __reduce__(self):  # unpickling this runs a shell command
        return os.system, ("touch PWNED",)


MALICIOUS = pickle.dumps({"step": 1, "config": {}, "G": _Evil(), "D": {}, "rng": {}}, protocol=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sweep(w: Path, data: Path, name: str = "bad", space=None, **over) -> Path:
    doc = {
        "name": name,
        "base": ["sa_esrgan_lv", "tiny_cpu"],
        "set": {
            "data": {"train": str(data / "train"), "val": str(data / "val"), "patch_size": 32},
            "loss": {"fm": {"blocks": [0, 1]}, "pixel": {"sa": {"sa_share_target": None, "beta2": 20.0}}},
            "train": {"pretrain_steps": 2, "steps": 4, "val_every": 2, "val_crop": 64},
        },
        "space": space or [{"path": "loss.pixel.sa.beta2", "float": [1, 40]}],
        "objective": {"metrics": [{"name": "val_lpips", "mode": "min"}]},
        "scheduler": {"type": "none"},
        "budget": {"num_samples": 2},
    }
    for key, value in over.items():  # "set.loss.fm.blocks" -> nested
        node, *parts, leaf = [doc, *key.split(".")]
        for p in parts:
            node = node.setdefault(p, {})
        node[leaf] = value
    path = w / "cases" / f"{name.replace('/', '_')}-{next(_COUNT)}.yaml"  # one file per case
    path.write_text(yaml.safe_dump(doc))
    return path


def _truncated(w: Path, data: Path, split: str) -> Path:
    """A copy of the tiny data with one PNG cut in half (its header still reads)."""
    import shutil

    root = w / "cases" / f"trunc-{split}"
    if not root.exists():
        shutil.copytree(data, root)
        victim = sorted((root / split).rglob("*.png"))[0]
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    return root


def _tiny_cfg(w: Path, data: Path, name: str = "tiny") -> Path:
    path = w / "cases" / f"{name.replace('/', '_')}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "base": ["sa_esrgan_lv", "tiny_cpu"],
                "name": name,
                "data": {"train": str(data / "train"), "val": str(data / "val"), "patch_size": 32},
                "train": {"pretrain_steps": 2, "steps": 2, "val_every": 2, "val_crop": 64},
            }
        )
    )
    return path


def cases(w: Path, d: Path) -> list[tuple[str, list]]:
    store = f"sqlite:///{w / 'prior' / 'mlflow.db'}"
    run = ["run", "--tracking-uri", store]
    tiny = _tiny_cfg(w, d)
    (w / "cases" / "notackpt.pt").write_text("hello")
    (w / "cases" / "evil.pt").write_bytes(MALICIOUS)
    (w / "cases" / "afile").write_text("x")
    (w / "cases" / "garbage.db").write_bytes(b"not sqlite at all" * 100)
    other_ckpt = w / "cases" / "other" / "last.pt"
    other_ckpt.parent.mkdir()
    torch.save(
        {
            "step": 3,
            "config": {"name": "other", "scale": 2, "data": {"patch_size": 32}},
            "G": {},
            "D": {},
            "rng": {},
        },
        other_ckpt,
    )
    evil_run = w / "cases" / "evilrun"
    evil_run.mkdir()
    (evil_run / "last.pt").write_bytes(MALICIOUS)
    s = lambda **kw: _sweep(w, d, **kw)  # noqa: E731
    return [
        ("resources.cpu 64 on a small machine", [*run, s(resources={"cpu": 64})]),
        ("resources.gpu 1 without a GPU", [*run, s(resources={"cpu": 1, "gpu": 1})]),
        ("resources.gpu 1.5", [*run, s(resources={"gpu": 1.5})]),
        ("dead tracking server", ["run", "--tracking-uri", f"http://127.0.0.1:{_free_port()}", s()]),
        ("SQLite store in a read-only folder", ["run", "--tracking-uri", "sqlite:////sys/mlflow.db", s()]),
        ("SQLite store under a missing folder", ["run", "--tracking-uri", f"sqlite:///{w}/nope/x/m.db", s()]),
        (
            "SQLite store that is not a database",
            ["run", "--tracking-uri", f"sqlite:///{w}/cases/garbage.db", s()],
        ),
        ("file: tracking URI", ["run", "--tracking-uri", f"file://{w}/mlruns", s()]),
        ("truncated train PNG", [*run, _sweep(w, _truncated(w, d, "train"))]),
        ("truncated val PNG", [*run, _sweep(w, _truncated(w, d, "val"))]),
        ("missing train folder", [*run, s(**{"set.data.train": str(w / "nope")})]),
        ("loss.fm.blocks []", [*run, s(**{"set.loss.fm.blocks": []})]),
        ("loss.fm.blocks [0, 99]", [*run, s(**{"set.loss.fm.blocks": [0, 99]})]),
        (
            "loss.fm.blocks [0, 8] with the 8-block SRGAN D",
            [*run, s(**{"set.loss.fm.blocks": [0, 8], "set.model.discriminator": {"arch": "srgan"}})],
        ),
        (
            "unknown VGG layer in the space's choices",
            [*run, s(space=[{"path": "loss.perceptual.layer", "choices": ["conv5_4", "conv9_9"]}])],
        ),
        ("space on an unknown key", [*run, s(space=[{"path": "loss.pixel.nope", "float": [0, 1]}])]),
        (
            "weights: pretrained, none present",
            [*run, s(**{"set.backbones": {"weights": "pretrained", "weights_dir": str(w / "noweights")}})],
        ),
        ("--storage is a file", [*run, "--storage", w / "cases" / "afile", s()]),
        ("--storage read-only", [*run, "--storage", "/sys/srsweep", s()]),
        ("--storage too small for the planned checkpoints", [*run, s(budget={"num_samples": 10**9})]),
        ("grace_period beyond the reports", [*run, s(scheduler={"type": "asha", "grace_period": 9})]),
        ("patch_size not a multiple of scale", [*run, s(**{"set.data.patch_size": 30})]),
        ("sweep name with a path", [*run, s(name="../x")]),
        ("unknown objective metric", [*run, s(objective={"metrics": [{"name": "val_nope", "mode": "min"}]})]),
        ("negative lr", [*run, s(**{"set.train.lr": -1})]),
        ("missing sweep file", [*run, w / "cases" / "missing.yaml"]),
        ("resume a folder that is not a sweep", ["resume", w / "cases"]),
        ("best on an unknown name (default store)", ["best", "no-such-sweep"]),
        ("train: name leaves runs/", ["train", tiny, "--set", "name=../../../X"]),
        ("train --resume with nothing to resume", ["train", tiny, "--resume", "--out", w / "cases" / "none"]),
        (
            "train --resume on another config's checkpoint",
            ["train", tiny, "--resume", "--out", other_ckpt.parent],
        ),
        ("train --resume on a crafted pickle", ["train", tiny, "--resume", "--out", evil_run]),
        ("train: malformed --set value", ["train", tiny, "--set", "train.steps=abc"]),
        ("train: --set that is not YAML", ["train", tiny, "--set", "train.steps=[1,"]),
        ("config: unknown preset", ["config", "no_such_preset"]),
        (
            "eval --model on a text file",
            ["eval", d / "val", "--lpips", "none", "--model", w / "cases" / "notackpt.pt"],
        ),
        (
            "eval --model on a crafted pickle",
            ["eval", d / "val", "--lpips", "none", "--model", w / "cases" / "evil.pt"],
        ),
        ("eval --model missing", ["eval", d / "val", "--lpips", "none", "--model", w / "cases" / "gone.pt"]),
    ]


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


@pytest.fixture
def work(tmp_path, tiny_data) -> Path:
    """A launch folder holding earlier results: a sweep folder and a store with one run."""
    from mlflow import MlflowClient

    w = tmp_path / "w"
    (w / "cases").mkdir(parents=True)
    prior = w / "ray_results" / "prior-20250101-000000-abcd"
    (prior / "trial_0").mkdir(parents=True)
    (prior / "sweep.json").write_text('{"prior": true}')
    (prior / "results.parquet").write_bytes(os.urandom(4096))
    torch.save({"G": {"w": torch.ones(3)}}, prior / "trial_0" / "last.pt")
    (w / "prior").mkdir()
    client = MlflowClient(f"sqlite:///{w / 'prior' / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("srsweep-bad"), run_name="earlier")
    client.log_metric(run.info.run_id, "val_psnr", 30.0, step=1)
    client.set_terminated(run.info.run_id)
    return w


def _one_line(res) -> bool:
    lines = res.stderr.strip().splitlines()
    return (
        res.returncode not in (0, 1)  # 1: the bug exit (a traceback and a report line)
        and len(lines) == 1
        and lines[0].startswith("srsweep: error:")
        and len(lines[0]) < 600  # values quoted in errors are truncated
        and "Traceback" not in res.stderr + res.stdout
        and "sweep folder" not in res.stdout
    )


def _check(all_cases, results) -> tuple[list[str], list[str]]:
    bad, report = [], []
    for (what, _), res in zip(all_cases, results):
        ok = _one_line(res)
        report.append(f"{'ok ' if ok else 'BAD'} {what}: rc {res.returncode}: {res.stderr.strip()[:300]}")
        if not ok:
            bad.append(what)
    return bad, report


ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
ENV.pop("MLFLOW_TRACKING_URI", None)


def _batch(work: Path, all_cases) -> list[SimpleNamespace]:
    """Every case through ``sweeper.cli.main`` in one fresh process (tests/cli_batch.py): one
    torch/MLflow import instead of one per case; each case's seconds are its own work."""
    listing = work.parent / "cases.json"
    listing.write_text(json.dumps([[str(a) for a in argv] for _, argv in all_cases]))
    batch = Path(__file__).with_name("cli_batch.py")
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(batch.parents[1]), ENV.get("PYTHONPATH", "")])}
    try:
        proc = subprocess.run(
            [sys.executable, batch, listing], cwd=work, capture_output=True, text=True, timeout=900, env=env
        )
    finally:
        listing.unlink()
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [
        SimpleNamespace(returncode=r["rc"], stderr=r["stderr"], stdout=r["stdout"], seconds=r["seconds"])
        for r in json.loads(proc.stdout)
    ]


SMOKE = 4  # of the cases, also run as the installed console script, one process each


def test_bad_inputs_fail_in_one_line_and_leave_nothing(work, tiny_data):
    from bad_input_cases import more_cases

    all_cases = cases(work, tiny_data) + more_cases(
        work, tiny_data, _tiny_cfg(work, tiny_data), lambda **kw: _sweep(work, tiny_data, **kw)
    )
    assert len(all_cases) >= 80
    before = _snapshot(work)

    def one(case):
        return subprocess.run(
            [SRSWEEP, *map(str, case[1])], cwd=work, capture_output=True, text=True, timeout=300, env=ENV
        )

    with ThreadPoolExecutor(2) as pool:
        smoke = list(pool.map(one, all_cases[:SMOKE]))
    results = _batch(work, all_cases)
    bad, report = _check(all_cases[:SMOKE] + all_cases, smoke + results)
    print("\n".join(report))
    assert not bad, "\n".join(report)
    for (what, _), res in zip(all_cases, results):
        if "alias bomb" in what:
            assert res.seconds < 2, (what, res.seconds)
    assert _snapshot(work) == before  # no folder, run, store or lock file; earlier results byte-identical
    assert not (work / "PWNED").exists()
    print(f"bad inputs: {len(all_cases)}, one-line refusals: {len(all_cases) - len(bad)}/{len(all_cases)}")


def test_train_from_a_read_only_folder_is_one_line(tmp_path, tiny_data):
    """Default run folder and store in the current folder, which cannot be written. Root ignores
    mode bits, so as root the folder is /sys (a read-only sysfs), elsewhere a chmod 0555 folder."""
    import time

    (tmp_path / "cases").mkdir()
    cfg = _tiny_cfg(tmp_path, tiny_data)
    here = Path("/sys") if os.geteuid() == 0 else tmp_path / "ro"
    if os.geteuid() != 0:
        here.mkdir()
        here.chmod(0o555)
    before = sorted(p.name for p in here.iterdir())
    start = time.monotonic()
    res = subprocess.run(
        [SRSWEEP, "train", str(cfg)], cwd=here, capture_output=True, text=True, timeout=300, env=ENV
    )
    took = time.monotonic() - start
    assert _one_line(res), res.stderr[-3000:]
    assert str(here) in res.stderr and "cannot write" in res.stderr
    assert sorted(p.name for p in here.iterdir()) == before
    print(f"train from a read-only folder: one line in {took:.1f} s")
