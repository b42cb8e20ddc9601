"""The sweep folder as a safe unit (issue 17, items 1-6), without Ray: the tracking buffer
deletes and sends only what it staged, writes are atomic, paths inside the folder are
relative to it, one driver holds a folder, and SQLite URIs survive any folder name.

Real files, a real MLflow SQLite store, the installed ``srsweep`` where a user would run it.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_select import table, trial
from test_state import _state
from test_sweep import srsweep

from sweeper import atomic
from sweeper.buffered import OUTBOX_FILE
from sweeper.sqlite_uri import sqlite_path, sqlite_uri
from sweeper.state import STATE_FILE, SweepState

ODD = "sweep?v2 #1 %41 ü"  # every character a URI parser may take for syntax


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _sweep_with_store(tmp_path: Path) -> tuple[SweepState, object]:
    """A sweep folder (sweep.json) whose MLflow store holds its experiment and parent run."""
    from mlflow import MlflowClient

    folder = tmp_path / "launch" / "ray_results" / "e2e-1"
    folder.mkdir(parents=True)
    uri = sqlite_uri(tmp_path / "launch" / "mlflow.db")
    client = MlflowClient(uri)
    exp = client.create_experiment("srsweep-e2e", artifact_location=str(tmp_path / "launch" / "mlartifacts"))
    parent = client.create_run(exp).info.run_id
    state = _state(folder).model_copy(
        update={"tracking_uri": uri, "experiment_id": exp, "parent_run_id": parent, "sweep_dir": str(folder)}
    )
    state.save()
    return SweepState.load(folder), client


# ----------------------------------------------------------------------------- 1. outbox
def test_sync_never_deletes_or_uploads_a_file_the_buffer_did_not_stage(tmp_path):
    """The issue's attack: one line naming <elsewhere>/important/thesis.tex, ``owned``;
    ``srsweep sync`` used to upload it and rmtree <elsewhere>/important."""
    state, client = _sweep_with_store(tmp_path)
    elsewhere = tmp_path / "home"
    (elsewhere / "important").mkdir(parents=True)
    (elsewhere / "important" / "thesis.tex").write_text("\\section{Years of work}\n")
    before = _tree(elsewhere)
    # a link inside the staging folder that leads out of it is no better
    staged = state.dir / f"{OUTBOX_FILE}.files" / ("a" * 32)
    staged.parent.mkdir()
    staged.symlink_to(elsewhere / "important")
    records = [
        {"op": "artifact", "run_id": state.parent_run_id, "local_path": str(elsewhere / "important" / "thesis.tex"),
         "artifact_path": None, "owned": True},
        {"op": "artifact", "run_id": state.parent_run_id, "local_path": str(staged / "thesis.tex"),
         "artifact_path": None, "owned": True},
        {"op": "tags", "run_id": state.parent_run_id, "tags": {"after": "yes"}},
    ]  # fmt: skip
    (state.dir / OUTBOX_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    res = srsweep("sync", state.dir, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert _tree(elsewhere) == before and (elsewhere / "important").is_dir()
    assert res.stdout.count("is not a file this buffer staged") == 2, res.stdout
    run = client.get_run(state.parent_run_id)
    assert run.data.tags.get("after") == "yes"  # the queue moved on past the refused records
    assert client.list_artifacts(state.parent_run_id) == []  # nothing from outside was uploaded


def test_the_buffer_still_deletes_its_own_staged_copy_after_sending_it(tmp_path):
    from sweeper.outbox import Outbox

    state, client = _sweep_with_store(tmp_path)
    box = Outbox(state.dir / OUTBOX_FILE, "http://127.0.0.1:9")  # nothing listens: buffered
    box.timeout_s, box.max_retries = 1, 0
    src = tmp_path / "report.md"
    src.write_text("hello")
    assert box.log_artifact(state.parent_run_id, src) is False
    (rec,) = [json.loads(line) for line in (state.dir / OUTBOX_FILE).read_text().splitlines()]
    assert not Path(rec["local_path"]).is_absolute()  # relative: a moved folder sends its own copy
    moved = tmp_path / "moved"
    shutil.move(state.dir, moved)
    box = Outbox(moved / OUTBOX_FILE, state.tracking_uri)
    assert box.flush(force=True)
    assert [a.path for a in client.list_artifacts(state.parent_run_id)] == ["report.md"]
    assert list((moved / f"{OUTBOX_FILE}.files").iterdir()) == [] and src.is_file()


# ----------------------------------------------------------------------------- 5. atomic writes
class _DiskFull(io.BytesIO):
    """A file that takes a few bytes, then fails as a full disk does."""

    def write(self, data):
        super().write(bytes(data)[:5])
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_winner_write_that_fails_midway_keeps_the_previous_winner(tmp_path, monkeypatch):
    from sweeper.best import WINNER_FILE, choose_winner

    state, _ = _sweep_with_store(tmp_path)
    df = table(trial("t1", 0.20, 35.0, steps=60), trial("t2", 0.25, 36.0, steps=60))
    df["mlflow_run_id"] = None
    choose_winner(state, df, n_resamples=10)
    winner = state.dir / WINNER_FILE
    before = winner.read_bytes()
    assert b"Winner of sweep" in before
    real_open = Path.open

    def full_disk_open(self, mode="r", *a, **kw):
        if "w" in mode and self.parent == state.dir:
            real_open(self, mode, *a, **kw).close()  # the file is created (and truncated), then...
            return _DiskFull()
        return real_open(self, mode, *a, **kw)

    monkeypatch.setattr(Path, "open", full_disk_open)
    with pytest.raises(OSError, match="No space left"):
        choose_winner(state, table(trial("t2", 0.25, 36.0, steps=60)), n_resamples=10)
    monkeypatch.undo()
    assert winner.read_bytes() == before
    assert sorted(p.name for p in state.dir.iterdir() if ".tmp" in p.name) == []  # no temp left


def test_every_sweep_output_writer_goes_through_the_atomic_helper(tmp_path, monkeypatch):
    """Parquet tables, plots, ranked.md, sweep.json: a writer failing mid-file leaves the old file."""
    import pandas as pd

    from sweeper.export import plot_parallel, write_parquet

    target = tmp_path / "results.parquet"
    write_parquet(pd.DataFrame({"a": [1.0]}), target)
    old = target.read_bytes()
    calls = []
    real = atomic.replacing

    def spy(path):
        calls.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(atomic, "replacing", spy)
    df = table(trial("t1", 0.2, 30.0), trial("t2", 0.3, 31.0))
    plot_parallel(df, tmp_path / "parallel.png")

    def half_a_table(table, where):
        Path(where).write_bytes(b"PAR1 half a table")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("sweeper.export.pq.write_table", half_a_table)
    with pytest.raises(OSError, match="No space"):
        write_parquet(pd.DataFrame({"a": [2.0]}), target)
    assert target.read_bytes() == old
    state = _state(tmp_path)
    state.save()
    assert calls == ["parallel.png", "results.parquet", STATE_FILE]


# ----------------------------------------------------------------------------- 4. relative paths
def test_paths_inside_the_folder_are_relative_so_a_copy_uses_its_own(tmp_path):
    state = _state(tmp_path / "a")
    (tmp_path / "a").mkdir()
    own = str(tmp_path / "a" / "pretrain" / "pretrain_g.pt")
    state.experiment["train"]["pretrained_g"] = own
    state = state.model_copy(update={"sweep_dir": str(tmp_path / "a")})
    state.save()
    raw = json.loads((tmp_path / "a" / STATE_FILE).read_text())
    assert raw["experiment"]["train"]["pretrained_g"] == "pretrain/pretrain_g.pt"
    assert raw["experiment"]["data"]["train"] == state.experiment["data"]["train"]  # outside: absolute
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    copy = SweepState.load(tmp_path / "b")
    assert copy.dir == tmp_path / "b" and copy.moved and not SweepState.load(tmp_path / "a").moved
    assert copy.experiment["train"]["pretrained_g"] == str(tmp_path / "b" / "pretrain" / "pretrain_g.pt")
    # a sweep.json from before relative paths: absolute paths under its recorded folder move too
    raw["experiment"]["train"]["pretrained_g"] = own
    (tmp_path / "b" / STATE_FILE).write_text(json.dumps(raw))
    old = SweepState.load(tmp_path / "b")
    assert old.experiment["train"]["pretrained_g"] == str(tmp_path / "b" / "pretrain" / "pretrain_g.pt")
    assert old.base_config.train.pretrained_g == str(tmp_path / "b" / "pretrain" / "pretrain_g.pt")
    # an unfinished copy is not resumed: Ray's pickled state names the original folder
    from sweeper.signing import UnsignedState, check_resumable

    with pytest.raises(UnsignedState, match=f"created in {tmp_path / 'a'}"):
        check_resumable(copy)


# ----------------------------------------------------------------------------- 2. one driver
HOLDER = "import sys, time; from sweeper.lock import hold; hold(sys.argv[1]); print('held', flush=True); time.sleep(600)"


def test_a_second_driver_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path):
    from sweeper.lock import LOCK_FILE, SweepBusy, hold

    folder = tmp_path / "sweep"
    folder.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(SweepBusy) as e:
            hold(folder)
        msg = str(e.value)
        assert msg.startswith(f"{folder} is being run by PID {proc.pid} on ") and "\n" not in msg
        assert f"kill {proc.pid}" in msg
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # killed: the record stays, the lock does not
    assert json.loads((folder / LOCK_FILE).read_text())["pid"] == proc.pid
    hold(folder)
    assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    hold(folder)  # again from the same process: fine


def test_a_lock_file_naming_a_gone_pid_is_stale(tmp_path, capsys):
    import socket

    from sweeper.lock import LOCK_FILE, hold

    folder = tmp_path / "sweep"
    folder.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    rec = {"host": socket.gethostname(), "pid": int(dead.stdout), "since": time.time() - 60}
    (folder / LOCK_FILE).write_text(json.dumps(rec))
    hold(folder)
    assert "took over the lock of PID" in capsys.readouterr().out


# ----------------------------------------------------------------------------- 6. SQLite URIs
def test_sqlite_uris_round_trip_any_folder_name(tmp_path):
    for name in (ODD, "plain", "a%20b", "x#y?z=1", "ü ß"):
        path = tmp_path / name / "mlflow.db"
        assert sqlite_path(sqlite_uri(path)) == path
    assert sqlite_uri(tmp_path / "plain" / "x.db") == f"sqlite:///{tmp_path}/plain/x.db"  # as before
    assert sqlite_path("sqlite:///rel.db?timeout=5") == Path("rel.db")
    assert sqlite_path("postgresql://h/db") is None


def test_store_study_and_train_stay_in_a_folder_named_with_uri_syntax(tmp_path, tiny_data):
    """``sweep?v2 #1 %41 ü`` used to send the store to <dir>/sweep (SQLAlchemy read "?" as
    the query) and ``train`` printed a store path that did not exist."""
    import optuna

    from sweeper.study import storage_url
    from sweeper.tracking import Tracker

    launch = tmp_path / ODD
    launch.mkdir()
    cfg = {
        "base": ["sa_esrgan_lv", "tiny_cpu"],
        "name": "odd",
        "data": {"train": str(tiny_data / "train"), "val": str(tiny_data / "val"), "patch_size": 32},
        "train": {"pretrain_steps": 2, "steps": 2, "val_every": 2, "val_images": 1, "val_crop": 64},
    }
    (launch / "exp.yaml").write_text(json.dumps(cfg))
    res = srsweep("train", "exp.yaml", "--out", "run", cwd=launch, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert f"in {launch / 'mlflow.db'})" in res.stdout
    runs = Tracker(sqlite_uri(launch / "mlflow.db")).client.search_runs(
        [e.experiment_id for e in Tracker(sqlite_uri(launch / "mlflow.db")).client.search_experiments()]
    )
    assert [r.info.status for r in runs] == ["FINISHED"]
    study = optuna.create_study(study_name="s", storage=storage_url(launch))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert (launch / "optuna.db").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [ODD]  # no stray "sweep" file or %3F folder


# ----------------------------------------------------------------------------- 3. signed Ray state
def test_ray_state_is_put_back_from_the_signed_copy_and_a_forged_copy_is_refused(tmp_path, monkeypatch):
    from sweeper import signing

    monkeypatch.setenv(signing.KEY_ENV, str(tmp_path / "config" / "hmac.key"))
    d = tmp_path / "sweep"
    d.mkdir()
    (d / "tuner.pkl").write_bytes(b"good tuner")
    (d / "experiment_state-1.json").write_text('{"trial_data": []}')
    signing.sign(signing.Place(d), {n: p.read_bytes() for n, p in signing.ray_files(d).items()})
    (d / "tuner.pkl").write_bytes(b"planted pickle")
    (d / "experiment_state-2.json").write_text("{}")  # newer, unsigned: Ray would pick it
    assert signing.put_back(signing.Place(d))
    assert (d / "tuner.pkl").read_bytes() == b"good tuner"
    assert sorted(p.name for p in d.iterdir()) == sorted(
        ["tuner.pkl", "experiment_state-1.json", "experiment_state-2.json.unverified", signing.SIGNED_FILE]
    )
    forged = json.loads((d / signing.SIGNED_FILE).read_text())
    forged["files"]["tuner.pkl"] = "cGxhbnRlZA=="
    (d / signing.SIGNED_FILE).write_text(json.dumps(forged))
    with pytest.raises(signing.UnsignedState, match="does not carry this user's signature"):
        signing.put_back(signing.Place(d))
    monkeypatch.setenv(signing.KEY_ENV, str(tmp_path / "other.key"))  # another user's key
    (d / signing.SIGNED_FILE).unlink()
    signing.sign(signing.Place(d), {n: p.read_bytes() for n, p in signing.ray_files(d).items()})
    monkeypatch.setenv(signing.KEY_ENV, str(tmp_path / "config" / "hmac.key"))
    with pytest.raises(signing.UnsignedState):
        signing.verified(signing.Place(d))


def test_sync_while_a_driver_holds_the_sweep_is_refused_in_one_line(tmp_path):
    """The driver sends the same buffer: two senders would send records twice."""
    state, _ = _sweep_with_store(tmp_path)
    rec = {"op": "tags", "run_id": state.parent_run_id, "tags": {"a": "b"}}
    (state.dir / OUTBOX_FILE).write_text(json.dumps(rec) + "\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(state.dir)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        res = srsweep("sync", state.dir, cwd=tmp_path, timeout=300)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        f"srsweep: error: {state.dir} is being run by PID {proc.pid} on {os.uname().nodename} since "
        + res.stderr.split(" since ", 1)[1].strip()
    ]
    assert (state.dir / OUTBOX_FILE).read_text() == json.dumps(rec) + "\n"  # kept for the driver
