"""A tracking outage mid-sweep: the real ``srsweep run`` against a real ``mlflow server``
(tests/test_outbox.py) that is SIGKILLed at the first trial report and restarted on the
same port and store once the trials have reported twice more without it.

What the trials "reported", i.e. what must end in the store, each (run, key, step) once:

- every ``tune.report`` of a trial, one line of its Ray ``result.json`` each: every numeric
  key at that report's ``step``, except the bookkeeping keys the driver's MLflow callback
  leaves out (``sweeper.callbacks._SKIP``: step, stage, Ray's timings, placement);
- the log steps between two reports, which reach the driver in the report's checkpoint
  (``curves.json``) and are logged at their own step: the trial's training keys at every
  ``log_every`` step (values compared where Tune kept the checkpoint, ``num_to_keep=2``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from test_outbox import Server
from test_sweep import _sweep_dir, start_srsweep, write_sweep

from sweeper.buffered import OUTBOX_FILE, flush_at_end
from sweeper.callbacks import _SKIP
from sweeper.dashboard import FINAL, final_metrics
from sweeper.outbox import Outbox
from sweeper.trial import CURVES_FILE

pytestmark = pytest.mark.slow
REPORT = re.compile(r"\] trial (\w+) step (\d+)/\d+:")
TRIALS, STEPS, VAL_EVERY, LOG_EVERY = 2, 60, 6, 2  # 10 reports a trial; curve points in between
REPORTS_WHILE_DOWN = 2  # trial reports the driver must handle with the store gone


def _metric(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _records(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line the driver is appending right now
            out.append(json.loads(line))
    return out


def _reported(trial_dir: Path) -> tuple[dict, set]:
    """({(key, step): value} the trial's folder still holds, every (key, step) it reported)."""
    results = [json.loads(ln) for ln in (trial_dir / "result.json").read_text().splitlines() if ln]
    values = {
        (k, int(r["step"])): float(v) for r in results for k, v in r.items() if k not in _SKIP and _metric(v)
    }
    report_steps = {int(r["step"]) for r in results}
    curve_keys = set()
    for f in trial_dir.glob(f"checkpoint_*/{CURVES_FILE}"):
        for point in json.loads(f.read_text()):
            keys = {k for k, v in point.items() if k not in _SKIP and _metric(v)}
            curve_keys |= keys
            if int(point["step"]) not in report_steps:
                values.update({(k, int(point["step"])): float(point[k]) for k in keys})
    assert curve_keys, f"{trial_dir}: no kept checkpoint with {CURVES_FILE}"
    between = set(range(LOG_EVERY, max(report_steps) + 1, LOG_EVERY)) - report_steps
    reports = {p for p in values if p[1] in report_steps}
    return values, reports | {(k, s) for k in curve_keys for s in between}


def _store(client, experiment_id: str, parent_id: str) -> tuple[object, list]:
    from mlflow.entities import ViewType

    runs = client.search_runs([experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    return client.get_run(parent_id), [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]


def test_server_killed_and_restarted_mid_sweep_loses_and_doubles_nothing(tmp_path, tiny_data):
    from mlflow import MlflowClient

    sweep = write_sweep(tmp_path, tiny_data, num_samples=TRIALS, concurrent=TRIALS, steps=STEPS)
    doc = yaml.safe_load(sweep.read_text())
    doc["set"]["train"].update(val_every=VAL_EVERY, log_every=LOG_EVERY)
    doc["scheduler"] = {"type": "none"}  # every trial trains to the end: the outage falls mid-training
    sweep.write_text(yaml.safe_dump(doc))
    server = Server(tmp_path / "store")
    server.root.mkdir()
    server.start()
    pool = ThreadPoolExecutor(1)
    restart = None
    proc = start_srsweep("run", sweep, "--tracking-uri", server.uri, cwd=tmp_path)
    watchdog = threading.Timer(900, os.killpg, (proc.pid, signal.SIGKILL))  # a hang fails, never waits
    watchdog.start()
    out, killed, down, back, box, buffered, sent_mid_sweep = [], False, 0, 0, None, None, False
    try:
        for line in proc.stdout:
            out.append(line)
            if not REPORT.search(line):
                continue
            if not killed:  # the first report: the store goes away mid-training
                server.stop()
                killed = True
            elif restart is None:
                down += 1
                if down >= REPORTS_WHILE_DOWN:  # training went on without the store: bring it back
                    box = _sweep_dir(tmp_path) / OUTBOX_FILE
                    assert box.is_file(), "".join(out[-40:])
                    buffered = _records(box)
                    restart = pool.submit(server.start)  # same port, same store; up in seconds
            else:
                back += restart.done()
                if box.is_file():  # new writes queue behind the buffer until it is sent
                    buffered = _records(box)
                sent_mid_sweep |= restart.done() and not box.is_file()
        out.extend(proc.stdout)
        rc = proc.wait(timeout=600)
        text = "".join(out)
        print(text)  # shown when the test fails
        assert rc == 0, text[-4000:]
        assert restart is not None, f"the sweep ended {down} reports into the outage"
        restart.result()  # re-raises a failed restart

        d = _sweep_dir(tmp_path)
        state = json.loads((d / "sweep.json").read_text())
        client = MlflowClient(server.uri)
        parent, children = _store(client, state["experiment_id"], state["parent_run_id"])
        trial_dirs = {
            json.loads(p.read_text().splitlines()[0])["trial_id"]: p.parent for p in d.glob("*/result.json")
        }
        assert parent.info.status == "FINISHED", parent.info
        assert len(trial_dirs) == TRIALS and len(children) == TRIALS
        assert sorted(r.data.tags["ray_trial_id"] for r in children) == sorted(trial_dirs)
        ends = [(r.data.tags["ray_trial_id"], r.info.status, r.info.lifecycle_stage) for r in children]
        assert all(e[1:] == ("FINISHED", "active") for e in ends), ends
        assert not (d / OUTBOX_FILE).exists() and "tracking writes still buffered" not in text

        logged = missing = extra = duplicates = wrong = 0
        for run in children:
            values, reported = _reported(trial_dirs[run.data.tags["ray_trial_id"]])
            history = [
                (key, m.step, m.value)
                for key in run.data.metrics
                for m in client.get_metric_history(run.info.run_id, key)
            ]
            stored = {(k, s): v for k, s, v in history}
            logged += len(history)
            duplicates += len(history) - len(stored)
            # the driver's rounded final_* columns of a full-budget trial: its last report's values
            finals = {p: v for p, v in stored.items() if p[0].startswith(FINAL)}
            stored = {p: v for p, v in stored.items() if p not in finals}
            last = max(s for _, s in reported)
            want = final_metrics({k: v for (k, s), v in values.items() if s == last})
            wrong += finals != {(k, last): v for k, v in want.items()}
            missing += len(reported - set(stored))
            extra += len(set(stored) - reported)
            wrong += sum(stored.get(p) != pytest.approx(v, rel=1e-6) for p, v in values.items())
        points_buffered = sum(len(r.get("points", ())) for r in buffered)
        print(
            f"outage: {down} trial reports while the store was down, {back} after it was back; "
            f"buffered {len(buffered)} writes ({points_buffered} metric points) at most, sent "
            f"{'mid-sweep' if sent_mid_sweep else 'at the end of the sweep'}; store: {logged} points in "
            f"{len(children)} runs, missing {missing}, extra {extra}, duplicated {duplicates}, wrong {wrong}"
        )
        assert points_buffered > 0
        assert missing == extra == duplicates == wrong == 0
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        pool.shutdown()  # a restart under way ends before the server is stopped
        server.stop()


def test_a_store_back_during_the_sweeps_closing_writes_gets_the_buffer_first(tmp_path):
    """The store comes back while the sweep's end waits for it: the buffered writes are sent
    then (they used to stay in the file, the trials' runs RUNNING, although the store was up)."""
    from mlflow import MlflowClient

    server = Server(tmp_path / "store")  # not started yet: the store is down from the start
    server.root.mkdir()
    pool = ThreadPoolExecutor(1)
    try:
        box = Outbox(tmp_path / "sweep" / OUTBOX_FILE, server.uri, timeout_s=3)
        run = box.create_run("0", "trial-a", {"ray_trial_id": "a"})  # "0": a new store's Default
        assert box.log_metrics(run, [("val_psnr", 24.5, 6, 1000)]) is False
        assert box.set_terminated(run) is False and box.pending() == 3
        restart = pool.submit(server.start)  # the store comes up while flush_at_end waits
        assert flush_at_end(tmp_path / "sweep", server.uri) == (True, 0)
        restart.result()
        client, real = MlflowClient(server.uri), box.resolve(run)
        assert [(m.step, m.value) for m in client.get_metric_history(real, "val_psnr")] == [(6, 24.5)]
        assert client.get_run(real).info.status == "FINISHED"
    finally:
        pool.shutdown()
        server.stop()


def test_a_store_that_never_returns_ends_the_sweep_in_one_line_keeping_the_buffer(tmp_path, monkeypatch):
    """Past MLflow's retries at the sweep's end: one line naming the store and the resume
    command (it used to be a long traceback); the buffered writes stay on disk."""
    from sweeper.buffered import StoreDown

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the budget, shortened
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    server = Server(tmp_path / "store")  # never started: the store stays down
    box = Outbox(tmp_path / "sweep" / OUTBOX_FILE, server.uri, timeout_s=3)
    run = box.create_run("0", "trial-a", {"ray_trial_id": "a"})
    assert box.log_metrics(run, [("val_psnr", 24.5, 6, 1000)]) is False
    before = (tmp_path / "sweep" / OUTBOX_FILE).read_bytes()
    with pytest.raises(
        StoreDown, match=rf"^tracking store {server.uri} still does not answer \(2 writes kept\)$"
    ):
        flush_at_end(tmp_path / "sweep", server.uri)
    assert (tmp_path / "sweep" / OUTBOX_FILE).read_bytes() == before
