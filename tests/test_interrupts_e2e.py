"""SIGINT during pretraining and during trials, then resume: nothing lost, nothing doubled.

Real local Ray, a real SQLite MLflow store, the installed ``srsweep`` driven as a user
would (Ctrl-C reaches the driver as SIGINT).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
from test_sweep import _children, _sweep_dir, closed_as_ended, srsweep, start_srsweep, write_sweep

pytestmark = pytest.mark.slow


def _interrupt_when(args, cwd: Path, pattern: str, deadline_s: float = 600):
    """Start srsweep, send SIGINT to the driver once a line matches; (rc, output)."""
    proc = start_srsweep(*args, cwd=cwd)
    seen, deadline = [], time.monotonic() + deadline_s
    try:
        for line in proc.stdout:
            seen.append(line)
            if re.search(pattern, line):
                time.sleep(1.0)
                proc.send_signal(signal.SIGINT)
                break
            assert time.monotonic() < deadline, "".join(seen[-40:])
        seen.extend(proc.stdout)
        return proc.wait(timeout=300), "".join(seen)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _parent(uri: str, run_id: str):
    from mlflow import MlflowClient

    return MlflowClient(uri).get_run(run_id)


def test_sigint_in_pretraining_and_in_trials_then_resume(tmp_path, tiny_data):
    sweep = write_sweep(tmp_path, tiny_data, num_samples=3, concurrent=1, steps=6)
    text = sweep.read_text().replace("pretrain_steps: 4", "pretrain_steps: 60")
    sweep.write_text(text + "\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    rc, out = _interrupt_when(["run", sweep], tmp_path, r"pretraining G once")
    d = _sweep_dir(tmp_path)
    hint = f"srsweep resume {d}"
    assert rc == 130 and hint in out, out[-3000:]
    assert [ln for ln in out.splitlines() if ln.startswith("srsweep: error:")] == [
        f"srsweep: error: interrupted by SIGINT; resume with: {hint}"
    ]
    state = json.loads((d / "sweep.json").read_text())
    parent = _parent(uri, state["parent_run_id"])
    assert parent.info.status == "KILLED" and parent.data.tags["interrupted"] == "true"
    assert not (d / "pretrain" / "pretrain_g.pt").exists() and not (d / "winner.yaml").exists()

    rc, out = _interrupt_when(["resume", d], tmp_path, r"\] trial \w+ step \d+/\d+:")
    assert rc == 130 and hint in out, out[-3000:]
    assert (d / "pretrain" / "pretrain_g.pt").is_file()
    assert not (d / "winner.yaml").exists() and not (d / "results.parquet").exists()
    parent = _parent(uri, state["parent_run_id"])
    assert parent.info.status == "KILLED" and "winner_run_id" not in parent.data.tags
    _, children = _children(uri, state["parent_run_id"])
    assert children and all(r.info.status != "RUNNING" for r in children)

    res = srsweep("resume", d, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    df = pd.read_parquet(d / "results.parquet")
    assert len(df) == 3 and df["trial_id"].is_unique  # none lost, none duplicated
    assert set(df["status"]) <= {"TERMINATED", "STOPPED"}
    _, children = _children(uri, state["parent_run_id"])
    assert len(children) == 3 and {r.data.tags["ray_trial_id"] for r in children} == set(df["trial_id"])
    assert all(closed_as_ended(r) for r in children)
    for r in children:  # one point per validation step: a resumed trial logs no step twice
        steps = [
            m.step
            for m in __import__("mlflow").MlflowClient(uri).get_metric_history(r.info.run_id, "val_psnr")
        ]
        assert len(steps) == len(set(steps)), steps
    parent = _parent(uri, state["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["interrupted"] == "resumed"
    print(
        f"interrupts: trials {len(df)} completed, lost 0, duplicated {len(df) - df['trial_id'].nunique()}; "
        f"runs {len(children)}"
    )
