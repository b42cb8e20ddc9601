"""Sweep phases that must survive a stop: unique folders, the store's first write,
resumable pretraining, and what an interrupted sweep leaves in MLflow.

``sweep.py`` calls these; they hold no Tune logic. The shared pretraining is planned into
``sweep.json`` (``train.pretrained_g`` = ``DIR/pretrain/pretrain_g.pt``) before it runs, so
a sweep stopped while pretraining resumes it from ``DIR/pretrain/last.pt``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

from sweeper.state import SweepState
from trainables.config_files import deep_merge

PRETRAIN_DIR, PRETRAIN_FILE = "pretrain", "pretrain_g.pt"


@contextlib.contextmanager
def store_lock(tracking_uri: str):
    """One process at a time creates a SQLite store's schema and experiments (two sweeps
    on a new store otherwise race: ``table params already exists``)."""
    from sweeper.sqlite_uri import sqlite_path

    db = sqlite_path(tracking_uri)
    if db is None:
        yield
        return
    import fcntl

    lock = db.with_suffix(".lock")
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def experiment_id(tracker, name: str) -> str:
    """The experiment's id, the store created under :func:`store_lock`."""
    with store_lock(tracker.uri):
        tracker.client.search_experiments(max_results=1)  # creates / migrates the schema
        return tracker.experiment(name)


def pretrain_target(sweep_dir: str | Path) -> str:
    """Where the shared pretrained G lives: ``DIR/pretrain/pretrain_g.pt`` (a path, or an
    ``s3://`` URI for a sweep on S3)."""
    from sweeper import storage

    if storage.is_remote(sweep_dir):
        return f"{str(sweep_dir).rstrip('/')}/{PRETRAIN_DIR}/{PRETRAIN_FILE}"
    return str(Path(sweep_dir) / PRETRAIN_DIR / PRETRAIN_FILE)


def planned_pretrain(raw: dict, sweep_dir: str | Path) -> dict:
    """The experiment every trial gets: starting from the sweep's shared pretrained G."""
    return deep_merge(raw, {"train": {"pretrained_g": pretrain_target(sweep_dir)}})


def _pretrain(experiment: dict, sweep_dir: str, progress: Optional[str] = None) -> str:
    """Stage 1 (a Ray task, on any node), continuing from ``last.pt`` after a stop. The
    generator lands in the shared sweep folder, or is uploaded into the sweep's S3 prefix.
    ``progress``: a file the driver tails for progress lines (sweeper/terminal.py)."""
    from sweeper.sharing import pretrain_out_dir, publish_pretrained
    from sweeper.terminal import FileProgressReporter
    from trainables.config import validate
    from trainables.train import Trainer

    out = Path(pretrain_out_dir(sweep_dir))
    reporter = FileProgressReporter(progress) if progress else None
    trainer = Trainer(validate(experiment, source="sweep experiment"), out, reporter)
    if (out / "last.pt").is_file():
        trainer.resume(out / "last.pt")
        print(f"pretraining continues at step {trainer.step}", flush=True)
    trainer.run(until=trainer.stage1)
    if not (out / PRETRAIN_FILE).is_file():  # stopped between the last save and this one
        trainer.save_generator(out / PRETRAIN_FILE)
    return publish_pretrained(str(out / PRETRAIN_FILE), sweep_dir)


def _exists(uri: str) -> bool:
    from sweeper import storage

    if not storage.is_remote(uri):
        return Path(uri).is_file()
    path, fs = storage.resolve_storage(uri)
    return storage.exists(path, fs)


def ensure_pretrained(state: SweepState, guard=None) -> None:
    """Run (or finish) the planned shared pretraining, printing its progress; a signal
    cancels the Ray task (its ``last.pt`` stays, so a resume continues from it)."""
    import tempfile

    import ray

    from sweeper import storage
    from sweeper.terminal import wait_pretraining

    target = pretrain_target(state.sweep_dir)
    if state.experiment.get("train", {}).get("pretrained_g") != target or _exists(target):
        return
    cfg = state.base_config
    print(f"pretraining G once for the sweep ({cfg.train.pretrain_steps} steps)...", flush=True)
    res = state.sweep.resources
    experiment = deep_merge(state.experiment, {"train": {"pretrained_g": None}})
    # Progress lines: the task writes them to a file the driver tails (a local folder; with
    # S3 storage only when the task runs on the driver's node).
    folder = (
        Path(tempfile.mkdtemp(prefix="srsweep-progress-"))
        if storage.is_remote(state.sweep_dir)
        else Path(state.sweep_dir)
    )
    progress = folder / "pretrain_progress.jsonl"
    task = ray.remote(num_cpus=res.cpu, num_gpus=res.gpu, max_retries=0)(_pretrain).remote(
        experiment, str(state.sweep_dir), str(progress)
    )
    try:
        wait_pretraining(
            task, progress, cfg.train.pretrain_steps, check=guard.check if guard is not None else None
        )
    except BaseException:
        with contextlib.suppress(Exception):
            ray.cancel(task, force=True)
        raise


def mark_interrupted(state: SweepState, signame: str) -> None:
    """Parent KILLED with ``interrupted`` tags, no winner; trial runs still RUNNING closed."""
    from sweeper.tracking import Tracker

    tracker = Tracker(state.tracking_uri)
    with contextlib.suppress(Exception):  # a dead store must not hide the resume hint
        for _, run_id in tracker.children(state.experiment_id, state.parent_run_id):
            if tracker.run_status(run_id) == "RUNNING":
                tracker.set_tags(run_id, {"ray_status": "INTERRUPTED"})
                tracker.end_run(run_id, "KILLED")
    with contextlib.suppress(Exception):
        tracker.set_tags(state.parent_run_id, {"interrupted": "true", "interrupted_by": signame})
        tracker.end_run(state.parent_run_id, "KILLED")


def reopen(state: SweepState) -> None:
    """A resumed sweep's parent runs again (``interrupted`` becomes ``resumed``)."""
    from sweeper.tracking import Tracker

    tracker = Tracker(state.tracking_uri)
    tracker.reopen(state.parent_run_id)
    tags = tracker.client.get_run(state.parent_run_id).data.tags
    if tags.get("interrupted") == "true":
        tracker.set_tags(state.parent_run_id, {"interrupted": "resumed"})


def load_state(sweep_dir: Path) -> Optional[SweepState]:
    from sweeper.state import is_sweep_dir

    return SweepState.load(sweep_dir) if sweep_dir and is_sweep_dir(sweep_dir) else None
