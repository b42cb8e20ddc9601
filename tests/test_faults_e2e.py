"""Faults in every phase of a real sweep (issue 17 items 7, 10-14): local Ray, a real SQLite store.

One finished 2-trial sweep is shared: resuming it changes nothing; its state files are then
damaged one at a time (and restored) and ``resume`` / ``best`` must refuse each in one line
naming the file, without recreating or touching anything. Separate sweeps take a SIGTERM in
the finish phase, fill their disk (a real tmpfs) mid-trials, and run beside another Ray.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from test_sweep import _sweep_dir, srsweep, start_srsweep, write_sweep

pytestmark = pytest.mark.slow


def _errors(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("srsweep: error:")]


def _parent(d: Path):
    from mlflow import MlflowClient

    state = json.loads((d / "sweep.json").read_text())
    return MlflowClient(state["tracking_uri"]).get_run(state["parent_run_id"])


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_data):
    tmp = tmp_path_factory.mktemp("finished")
    sweep = write_sweep(tmp, tiny_data, num_samples=2, concurrent=1, steps=2)
    res = srsweep("run", sweep, cwd=tmp)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return tmp, _sweep_dir(tmp)


def _cli(capfd, *args) -> tuple[int, str, str]:
    """The real CLI in this process: these refusals come before Ray starts (one import, not ten)."""
    from sweeper.cli import main

    rc = main([str(a) for a in args])
    out, err = capfd.readouterr()
    return rc, out, err


def test_resume_of_a_finished_sweep_changes_nothing(finished, capfd):
    tmp, d = finished
    before, store = _hashes(d), (tmp / "mlflow.db").read_bytes()
    rc, out, err = _cli(capfd, "resume", d)
    assert rc == 0 and err == "", err
    assert out.strip().splitlines() == [
        f"{d}: already finished (MLflow parent run {_parent(d).info.run_id}); nothing to resume"
    ]
    assert _hashes(d) == before and (tmp / "mlflow.db").read_bytes() == store  # nothing re-logged


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not what it claims to be\n" * 64)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:4096])


@pytest.mark.parametrize(
    "name, damage, command",
    [
        ("optuna.db", _garbage, "resume"),
        ("optuna.db", _garbage, "best"),
        ("results.parquet", _garbage, "best"),
        ("tracking_runs.json", _garbage, "resume"),
        ("mlflow.db", _truncate, "resume"),
        ("mlflow.db", _truncate, "best"),
        ("mlflow.db", lambda p: p.unlink(), "resume"),
    ],
)
def test_broken_state_files_are_one_line(finished, capfd, name, damage, command):
    tmp, d = finished
    path = tmp / name if name == "mlflow.db" else d / name
    saved = path.read_bytes() if path.exists() else None
    damage(path)
    after_damage = path.read_bytes() if path.exists() else None
    try:
        rc, out, err = _cli(capfd, command, d)
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert str(path) in err and "Traceback" not in out + err, err
        now = path.read_bytes() if path.exists() else None
        assert now == after_damage  # a store is never recreated, a damaged file never rewritten
    finally:
        if saved is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(saved)


def test_a_locked_store_is_one_line(finished, capfd):
    tmp, d = finished
    holder = sqlite3.connect(str(tmp / "mlflow.db"), timeout=1)
    holder.execute("begin exclusive")  # another process mid-write
    try:
        for command in ("resume", "best"):
            rc, _, err = _cli(capfd, command, d)
            assert rc == 2 and "locked by another process" in err and len(err.strip().splitlines()) == 1
    finally:
        holder.rollback()
        holder.close()


def test_a_read_only_sweep_folder_is_one_line(finished, capfd):
    """Root ignores mode bits: a read-only bind mount of the folder refuses root too."""
    _, d = finished
    if subprocess.run(["mount", "--bind", d, d], capture_output=True).returncode:
        pytest.skip("no bind mounts here")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", d], capture_output=True).returncode:
            pytest.skip("no read-only remount here")
        for command in ("resume", "best"):
            rc, _, err = _cli(capfd, command, d)
            assert rc == 2 and str(d) in err and len(err.strip().splitlines()) == 1, err
    finally:
        subprocess.run(["umount", d], check=True)


def _when(proc, ready, act) -> list[str]:
    """Drain the driver's output in a thread; ``act()`` as soon as ``ready()``; the lines."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 900
    while not ready() and proc.poll() is None:
        assert time.monotonic() < deadline, "".join(lines[-40:])
        time.sleep(0.02)
    if proc.poll() is None:
        act()
    proc.wait(timeout=600)
    reader.join(timeout=30)
    return lines


def _sigterm_once(tmp_path: Path, sweep: Path, pattern: str):
    """``srsweep run SWEEP``, SIGTERM as soon as a file matching ``pattern`` appears in the
    sweep folder; (the process, its output). Only the driver this test started is killed."""
    proc = start_srsweep("run", sweep, cwd=tmp_path)
    try:
        ready = lambda: any((tmp_path / "ray_results").glob(pattern))  # noqa: E731
        return proc, "".join(_when(proc, ready, lambda: proc.send_signal(signal.SIGTERM)))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_sigterm_in_pretraining_is_like_sigint(tmp_path, tiny_data):
    """ray.init installs its own SIGTERM handler (exit, then an abort): the driver takes it back."""
    sweep = write_sweep(tmp_path, tiny_data, num_samples=1, concurrent=1, steps=2)
    sweep.write_text(sweep.read_text().replace("pretrain_steps: 4", "pretrain_steps: 200"))
    proc, out = _sigterm_once(tmp_path, sweep, "*/pretrain_progress.jsonl")
    d = _sweep_dir(tmp_path)
    assert proc.returncode == 130, out[-3000:]
    assert _errors(out) == [f"srsweep: error: interrupted by SIGTERM; resume with: srsweep resume {d}"]
    assert _parent(d).info.status == "KILLED"


def test_sigterm_in_the_finish_phase_then_resume(tmp_path, tiny_data):
    sweep = write_sweep(tmp_path, tiny_data, num_samples=2, concurrent=1, steps=2)
    proc, out = _sigterm_once(tmp_path, sweep, "*/results.parquet")  # finish's first file
    d = _sweep_dir(tmp_path)
    assert proc.returncode == 130, out[-3000:]
    assert _errors(out) == [f"srsweep: error: interrupted by SIGTERM; resume with: srsweep resume {d}"]
    parent = _parent(d)
    assert parent.info.status == "KILLED" and parent.data.tags["interrupted_by"] == "SIGTERM"
    res = srsweep("resume", d, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (d / "ranked.md").is_file() and (d / "parallel.png").is_file()
    assert _parent(d).info.status == "FINISHED"


def _fill(disk: Path) -> None:
    with open(disk / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(bytes(1 << 20))
        except OSError:  # ENOSPC: the disk is full now
            pass


def test_disk_full_mid_sweep_is_one_line_with_the_resume_hint(tmp_path, tiny_data):
    disk = Path(tempfile.mkdtemp(prefix="srsw-full-"))
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=100m", "tmpfs", disk], capture_output=True
    ).returncode:
        disk.rmdir()
        pytest.skip("cannot mount a tmpfs here")
    try:
        sweep = write_sweep(tmp_path, tiny_data, num_samples=2, concurrent=1, steps=6)
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        proc = start_srsweep("run", sweep, "--storage", disk, "--tracking-uri", uri, cwd=tmp_path)
        try:
            trial_started = lambda: any(disk.glob("*/run_trial_*"))  # noqa: E731
            lines = _when(proc, trial_started, lambda: _fill(disk))
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        out = "".join(lines)
        (d,) = [p for p in disk.iterdir() if (p / "sweep.json").is_file()]
        assert proc.returncode == 2, out[-3000:]
        (line,) = _errors(out)
        assert "disk is full" in line or "No space left" in line, line
        assert line.endswith(f"srsweep resume {d}") and "Traceback" not in out, out[-3000:]
        assert _parent(d).info.status == "FAILED" and _parent(d).data.tags.get("failure")
    finally:
        subprocess.run(["umount", "-l", disk])
        disk.rmdir()  # the empty mount point


def test_default_ray_is_private_beside_another_cluster(tmp_path, tiny_data):
    """RAY_ADDRESS names a real running cluster (ours, in its own temp dir): without --address the
    sweep still runs on a private local Ray; RAY_ADDRESS=127.0.0.1:1 (nothing there) works too."""
    import re
    import sys

    from test_cluster import TwoNodeCluster, _wait_port, free_port

    other = TwoNodeCluster()  # only its head: one node, 1 CPU, stopped by its own PIDs
    head = other._start(
        "--head", f"--port={other.port}", "--include-dashboard=false", f"--dashboard-port={free_port()}"
    )
    try:
        _wait_port(other.port, head)
        sweep = write_sweep(tmp_path, tiny_data, num_samples=1, concurrent=1, steps=2)
        res = srsweep("run", sweep, cwd=tmp_path, env={**os.environ, "RAY_ADDRESS": other.address})
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        first = res.stdout.splitlines()[0]
        m = re.fullmatch(r"local Ray \(private\) [\d.]+:(\d+): 1 node, \d+ CPUs, 0 GPUs", first)
        assert m and int(m[1]) != other.port, first
        probe = subprocess.run(
            [sys.executable, "-m", "sweeper.cluster", "--cpu", "1"],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "RAY_ADDRESS": "127.0.0.1:1"},
        )
        assert probe.returncode == 0 and probe.stdout.startswith("local Ray (private) "), probe.stderr[-2000:]
    finally:
        other.stop()
