"""A lost worker mid-trial on a real two-node Ray cluster: the trial is retried from its last
checkpoint (``failure.max_failures``), nothing is lost, nothing is doubled.

`srsweep run --address` runs as a user starts it; once a trial has reported a checkpointed
result, the Ray worker process running it (a process of the cluster's raylet, not the driver)
gets SIGKILL. Only processes this test started are stopped (the driver here, the cluster by
its fixture).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_cluster import cluster  # noqa: F401  (fixture: two `ray start` nodes, 1 CPU each)
from test_sweep import SRSWEEP, _children, write_sweep

pytestmark = pytest.mark.slow
STEPS, VAL_EVERY, TRIALS = 10, 2, 2  # one report (and checkpoint) per validation: steps 2, 4, ... 10


def _rows(trial_dir: Path) -> list[dict]:
    """The results the driver recorded for one trial (Ray's result.json, one JSON per line)."""
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(ln) for ln in lines if ln.endswith("}")]  # the last line may be half-written


def _ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # field 4: ppid (the name may hold spaces)
        chain.append(pid)
    return chain


def _first_checkpointed(root: Path):
    """(trial folder, result) of the first result that came with a checkpoint, else None."""
    for result_file in sorted(root.glob("ray_results/*/*/result.json")):
        for row in _rows(result_file.parent):
            if row.get("checkpoint_dir_name") and row["step"] < STEPS:
                return result_file.parent, row
    return None


def _failures(sweep_dir: Path) -> dict[str, int]:
    """trial id -> ``num_failures`` from Ray's experiment state (the retries it made)."""
    (path,) = sweep_dir.glob("experiment_state-*.json")
    trials = json.loads(path.read_text())["trial_data"]
    return {json.loads(t)["trial_id"]: json.loads(meta)["num_failures"] for t, meta in trials}


def test_killed_worker_resumes_its_trial_from_the_checkpoint(cluster, tmp_path, tiny_data):  # noqa: F811
    sweep = write_sweep(tmp_path, tiny_data, num_samples=TRIALS, concurrent=TRIALS, steps=STEPS)
    spec = yaml.safe_load(sweep.read_text())
    spec["scheduler"] = {"type": "none"}  # every trial runs to the end: "completed" is exact
    spec["failure"] = {"max_failures": 1}
    spec["set"]["train"]["pretrain_steps"] = 0  # GAN from the start: no shared pretraining to wait for
    sweep.write_text(yaml.safe_dump(spec))
    log = tmp_path / "driver.log"
    env = {**cluster.env, "MLFLOW_DISABLE_TELEMETRY": "true"}
    t0 = time.monotonic()
    with open(log, "w") as out:
        driver = subprocess.Popen(
            [SRSWEEP, "run", str(sweep), "--address", cluster.address],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 600
        while (found := _first_checkpointed(tmp_path)) is None:
            assert driver.poll() is None, f"driver exited {driver.returncode}: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        trial_dir, seen = found
        pid = seen["pid"]
        # A worker of the cluster: a child of a raylet that one of our `ray start` nodes spawned.
        chain = _ancestors(pid)
        assert pid != driver.pid and driver.pid not in chain, chain
        assert {p.pid for p in cluster.procs} & set(chain), (pid, chain)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic() - t0
        rc = driver.wait(timeout=600)
        took = time.monotonic() - t0
    finally:
        if driver.poll() is None:  # only on a failure above: the driver we started, as a group
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(timeout=60)
    out = log.read_text()
    assert rc == 0, out[-3000:]

    d = trial_dir.parent
    trial_id = seen["trial_id"]
    rows = _rows(trial_dir)
    before = [r for r in rows if r["pid"] == pid]
    after = [r for r in rows if r["pid"] != pid]
    steps = [r["step"] for r in rows]
    reported = before[-1]["step"]  # the last validation the killed worker reported
    restored_from = after[0]["step"] - VAL_EVERY if after else None  # the checkpoint the new worker took
    # Every validation step reported, in order on each worker. A kill that lands after a report
    # but before Tune registered its checkpoint makes Ray restore the one before and redo that
    # step (at-least-once): at most one step is redone, and MLflow still logs each step once.
    assert after, f"trial {trial_id} finished before the kill landed: {steps}"
    assert sorted(set(steps)) == list(range(VAL_EVERY, STEPS + 1, VAL_EVERY)), steps
    assert [r["step"] for r in before] == list(range(VAL_EVERY, reported + 1, VAL_EVERY)), steps
    assert [r["step"] for r in after] == list(range(restored_from + VAL_EVERY, STEPS + 1, VAL_EVERY)), steps
    assert reported - VAL_EVERY <= restored_from <= reported < STEPS, steps
    # The new worker restored that checkpoint: Ray's iteration count continues from it, and the
    # per-restore counter starts again.
    (at_ckpt,) = [r for r in before if r["step"] == restored_from]
    assert after[0]["training_iteration"] == at_ckpt["training_iteration"] + 1
    assert after[0]["iterations_since_restore"] == 1 and len({r["pid"] for r in after}) == 1
    # Ray recorded the failure it recovered from: our kill, the only one, in either trial.
    error = (trial_dir / "error.txt").read_text()
    assert "The actor died unexpectedly" in error and f"pid: {pid}" in error, error[-2000:]
    assert _failures(d) == {tid: int(tid == trial_id) for tid in _failures(d)}, _failures(d)

    df = pd.read_parquet(d / "results.parquet")
    assert len(df) == TRIALS and df["trial_id"].is_unique, df[["trial_id", "status"]]
    assert set(df["status"]) == {"TERMINATED"} and (df["steps"] == STEPS).all()
    assert trial_id in set(df["trial_id"])
    assert df.set_index("trial_id")["retries"].to_dict() == {t: int(t == trial_id) for t in df["trial_id"]}
    # The terminal says what happened in one line, with no Ray traceback.
    assert re.search(rf"trial {trial_id} lost its worker at step \d+: .*retry 1 of 1", out), out[-3000:]
    assert "Traceback" not in out, out[-3000:]

    state = json.loads((d / "sweep.json").read_text())
    client, children = _children(f"sqlite:///{tmp_path / 'mlflow.db'}", state["parent_run_id"])
    assert len(children) == TRIALS, [r.data.tags.get("ray_trial_id") for r in children]
    assert {r.data.tags["ray_trial_id"] for r in children} == set(df["trial_id"])
    assert all(r.info.status == "FINISHED" for r in children)
    (killed,) = [r for r in children if r.data.tags["ray_trial_id"] == trial_id]
    assert killed.data.tags["steps"] == str(STEPS) and killed.data.tags["ray_status"] == "TERMINATED"
    assert killed.data.tags["retries"] == "1" and "died" in killed.data.tags["last_failure"]
    logged = {}
    for key in killed.data.metrics:
        hist = [m.step for m in client.get_metric_history(killed.info.run_id, key)]
        assert len(hist) == len(set(hist)), (key, sorted(hist))  # no (key, step) twice
        logged[key] = hist
    assert sorted(logged["val_lpips"]) == sorted(set(steps))

    assert len(_failures(d)) == TRIALS
    lost = TRIALS - len(df)
    dup = len(df) - df["trial_id"].nunique()
    print(
        f"\nworker pid {pid} of trial {trial_id} killed after step {reported}/{STEPS}; "
        f"restored from step {restored_from} on pid {after[0]['pid']} (node {before[-1]['node_id'][:8]} -> "
        f"{after[0]['node_id'][:8]}); trials {len(df)} completed, "
        f"lost {lost}, duplicated {dup}; MLflow runs {len(children)}; "
        f"{sum(map(len, logged.values()))} metric points in the killed trial's run, none twice; kill at {killed_at:.0f} s, sweep done at {took:.0f} s"
    )
