"""The sweep folder as a safe unit, end to end (issue 17, items 2-4 and 6): one real sweep
launched from a folder named ``sweep?v2 #1 %41 ü``, a second driver refused while it runs,
then copies, a move, planted pickles and a stale lock on the finished folder.

Real Ray, Optuna, MLflow SQLite store, the installed ``srsweep``; marked ``slow``.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import shlex
import shutil
from pathlib import Path

import pytest
from test_sweep import _sweep_dir, srsweep, start_srsweep, write_sweep

from sweeper.signing import SIGNED_FILE

pytestmark = pytest.mark.slow
ODD = "sweep?v2 #1 %41 ü"


class _Touch:
    """Unpickling this runs ``touch MARKER`` (what an attacker's file would do)."""

    def __init__(self, marker: Path):
        self.cmd = f"touch {shlex.quote(str(marker))}"

    def __reduce__(self):
        return (os.system, (self.cmd,))


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _one_error_line(res, *parts: str) -> None:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stdout[-2000:] + res.stderr[-3000:]
    assert lines[0].startswith("srsweep: error: ") and all(p in lines[0] for p in parts), lines[0]


def _plant_cloudpickle(folder: Path, marker: Path) -> None:
    """A CLOUDPICKLE_FALLBACK value in Ray's experiment state (Ray's decoder unpickles it)."""
    (path,) = sorted(folder.glob("experiment_state-*.json"))[-1:]
    data = json.loads(path.read_text())
    state = json.loads(data["trial_data"][0][0])
    state["stub"] = {"_type": "CLOUDPICKLE_FALLBACK", "value": pickle.dumps(_Touch(marker)).hex()}
    data["trial_data"][0][0] = json.dumps(state)
    path.write_text(json.dumps(data))


def _run_with_a_second_driver(tmp_path: Path, launch: Path, tiny_data: Path, env: dict) -> Path:
    """The sweep, and ``srsweep resume`` of it while its first trial runs: refused."""
    sweep = write_sweep(launch, tiny_data, num_samples=2, concurrent=1, steps=8)
    proc = start_srsweep("run", sweep, cwd=launch, env=env)
    out = []
    for line in proc.stdout:
        out.append(line)
        if "started:" in line:
            break
    d = _sweep_dir(launch)
    second = srsweep("resume", d, cwd=launch, env=env, timeout=300)
    _one_error_line(second, f"{d} is being run by PID {proc.pid} on ", "since")
    out.append(proc.communicate(timeout=1200)[0])
    log = "".join(out)
    assert proc.returncode == 0 and "winner: trial" in log, log[-4000:]
    return d


def test_one_driver_copies_moves_and_planted_pickles(tmp_path, tiny_data):
    launch = tmp_path / ODD  # the store and the study must stay in this folder
    launch.mkdir()
    marker = tmp_path / "code-ran"
    env = {**os.environ, "SRSWEEP_KEY_FILE": str(tmp_path / "keys" / "hmac.key")}  # outside the folder
    d = _run_with_a_second_driver(tmp_path, launch, tiny_data, env)
    assert (launch / "mlflow.db").is_file() and (d / "optuna.db").is_file() and (d / SIGNED_FILE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ODD, "keys"])  # nothing at "sweep"
    assert (tmp_path / "keys" / "hmac.key").stat().st_mode & 0o777 == 0o600
    winner = (d / "winner.yaml").read_text().splitlines()[0].split(":", 1)[1]  # trial and run

    # cp -a, then mv the copy; `best` there writes only into it
    original = _tree(d)
    shutil.copytree(d, tmp_path / "archive" / "X", symlinks=True)
    moved = tmp_path / "elsewhere" / "Y"
    moved.parent.mkdir()
    shutil.move(tmp_path / "archive" / "X", moved)
    (moved / "winner.yaml").unlink()
    res = srsweep("best", moved, cwd=tmp_path, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert (moved / "winner.yaml").read_text().splitlines()[0].endswith(winner)
    assert _tree(d) == original
    # the copy is finished: resume changes nothing there (an unfinished copy is refused in one
    # line naming the original, tests/test_folder_safety.py), and nothing in the original
    res = srsweep("resume", moved, cwd=tmp_path, env=env, timeout=300)
    assert res.returncode == 0 and "already finished" in res.stdout, res.stdout + res.stderr[-2000:]
    assert _tree(d) == original

    # no results.parquet (an interrupted finish) and a planted pickle: plain JSON only
    (moved / "results.parquet").unlink()
    _plant_cloudpickle(moved, marker)
    res = srsweep("best", moved, cwd=tmp_path, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert not marker.exists() and (moved / "winner.yaml").read_text().splitlines()[0].endswith(winner)
    assert _tree(d) == original

    # the original, resumed with a crafted tuner.pkl and the stale lock of a killed driver:
    # the signed bytes go back over Ray's files, the lock is taken over
    good_tuner = (d / "tuner.pkl").read_bytes()
    (d / "tuner.pkl").write_bytes(pickle.dumps(_Touch(marker)))
    _plant_cloudpickle(d, marker)
    lock = json.loads((d / "driver.lock").read_text() or "{}")
    assert lock == {}  # the first driver ended cleanly
    dead = {"host": os.uname().nodename, "pid": 2**22 + 7, "since": 0}
    (d / "driver.lock").write_text(json.dumps(dead))
    # as a SIGKILLed driver leaves it: the parent RUNNING (a finished sweep is not resumed)
    from mlflow import MlflowClient
    from sweeper.sqlite_uri import sqlite_uri

    parent = json.loads((d / "sweep.json").read_text())["parent_run_id"]
    MlflowClient(sqlite_uri(launch / "mlflow.db")).update_run(parent, status="RUNNING")
    res = srsweep("resume", d, cwd=launch, env=env, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "took over the lock of PID" in res.stdout and not marker.exists()
    assert (d / "tuner.pkl").read_bytes() == good_tuner

    # the signed copy itself altered: refused in one line before anything starts
    signed = json.loads((d / SIGNED_FILE).read_text())
    signed["files"]["tuner.pkl"] = base64.b64encode(pickle.dumps(_Touch(marker))).decode()
    (d / SIGNED_FILE).write_text(json.dumps(signed))
    MlflowClient(sqlite_uri(launch / "mlflow.db")).update_run(parent, status="RUNNING")
    _one_error_line(srsweep("resume", d, cwd=launch, env=env, timeout=300), "signature", SIGNED_FILE)
    assert not marker.exists()
