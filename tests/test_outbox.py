"""Tracking outages: a real ``mlflow server`` is killed and restarted while points are logged."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from mlflow import MlflowClient
from sweeper.outbox import Outbox, is_outage


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``mlflow server`` on a SQLite store, in its own process group (stopped by the test only)."""

    def __init__(self, root: Path):
        self.root, self.port, self.proc = root, _free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = Path(sys.executable).parent / "mlflow"
        cmd = [
            str(exe),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        env = {
            **os.environ,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        log = open(self.root / "server.log", "a")
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.root / "server.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("mlflow server did not come up")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGKILL)  # the whole group: gunicorn/uvicorn workers too
        self.proc.wait(timeout=30)
        for _ in range(100):  # the port is closed once every worker is gone
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.1)


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path / "store")
    srv.root.mkdir()
    srv.start()
    yield srv
    srv.stop()


def _history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
def test_outage_buffers_then_flushes_exactly_the_logged_points(server, tmp_path):
    box = Outbox(tmp_path / "sweep" / "tracking_outbox.jsonl", server.uri, timeout_s=3, max_retries=1)
    client = MlflowClient(server.uri)
    exp = client.create_experiment("outage")
    run = box.create_run(exp, "trial-a", {"ray_trial_id": "a"})
    assert not run.startswith("pending-")
    expected: dict[tuple[str, str], dict[int, float]] = {}

    def log(run_id, step, dup=False):
        pts = [("val_psnr", 20.0 + step / 10, step, 1000 + step), ("loss_g", 1.0 / step, step, 1000 + step)]
        if not dup:
            for k, v, s, _ in pts:
                expected.setdefault((run_id, k), {})[s] = v
        return box.log_metrics(run_id, pts)

    assert all(log(run, s) for s in range(1, 6))  # store up: sent at once
    box.set_tag(run, "checkpoint", "/x/ckpt_5")

    server.stop()
    durations, results = [], []
    for s in range(6, 11):
        t0 = time.monotonic()
        results.append(log(run, s))
        durations.append(time.monotonic() - t0)
    results.append(log(run, 5, dup=True))  # already in the store
    results.append(log(run, 7, dup=True))  # already in the buffer
    run_b = box.create_run(exp, "trial-b", {"ray_trial_id": "b"})  # a trial starting mid-outage
    assert run_b.startswith("pending-")
    for s in (1, 2):
        results.append(log(run_b, s))
    box.set_tag(run_b, "ray_status", "TERMINATED")
    box.set_terminated(run_b, "FINISHED")
    box.log_dict(run_b, {"psnr": 21.5}, "val_scores/step_0000002.json")
    assert results == [False] * len(results)  # buffered, no exception
    pending = box.pending()
    assert box.flush(force=True) is False  # still down: nothing lost, nothing sent
    assert box.pending() == pending

    server.start()  # same store, same port
    assert box.flush(force=True) is True and box.pending() == 0
    assert not box.path.exists()
    real_b = box.resolve(run_b)
    expected = {(real_b if r == run_b else r, k): v for (r, k), v in expected.items()}
    # A restarted driver (new process state) re-reports the last points: the store keeps one copy.
    again = Outbox(box.path, server.uri)
    assert again.log_metrics(run, [("val_psnr", 21.0, 10, 2000), ("loss_g", 0.1, 10, 2000)])
    store = {(r, k): dict(_history(client, r, k)) for (r, k) in expected}
    points_in_store = sum(len(client.get_metric_history(r, k)) for (r, k) in expected)
    assert store == expected
    assert points_in_store == sum(len(v) for v in expected.values()) == 24
    b = client.get_run(real_b)
    assert b.info.status == "FINISHED" and b.data.tags["ray_status"] == "TERMINATED"
    assert b.data.tags["mlflow.runName"] == "trial-b" and b.data.tags["ray_trial_id"] == "b"
    assert client.get_run(run).data.tags["checkpoint"] == "/x/ckpt_5"
    art = client.download_artifacts(real_b, "val_scores/step_0000002.json", str(tmp_path / "dl"))
    assert json.loads(Path(art).read_text()) == {"psnr": 21.5}
    report = {
        **box.stats,
        "again_duplicates_skipped": again.stats["duplicates_skipped"],
        "points_in_store": points_in_store,
        "max_call_s_during_outage": round(max(durations), 2),
    }
    print("outbox:", json.dumps(report))
    assert box.stats["points_logged"] == 28 and box.stats["points_buffered"] == 18
    assert box.stats["points_sent"] == 24 and box.stats["duplicates_skipped"] == 4
    assert again.stats["duplicates_skipped"] == 2


@pytest.mark.slow
def test_a_rejected_write_is_raised_not_buffered(server, tmp_path):
    box = Outbox(tmp_path / "o.jsonl", server.uri, timeout_s=3)
    with pytest.raises(MlflowException) as err:
        box.set_tag("0123456789abcdef0123456789abcdef", "k", "v")  # no such run: a 404, not an outage
    assert not is_outage(err.value) and box.pending() == 0
