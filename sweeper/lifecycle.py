"""Sweep phases that must survive a stop: unique folders, the store's first write,
resumable pretraining, and what an interrupted sweep leaves in MLflow.

``sweep.py`` calls these; they hold no Tune logic. The shared pretraining is planned into
``sweep.json`` (``train.pretrained_g`` = ``DIR/pretrain/pretrain_g.pt``) before it runs, so
a sweep stopped while pretraining resumes it from ``DIR/pretrain/last.pt``.
"""
from __future__ import annotations

import contextlib
import secrets
import time
from pathlib import Path
from typing import Optional

from sweeper.state import SweepState
from trainables.config import deep_merge

PRETRAIN_DIR, PRETRAIN_FILE = "pretrain", "pretrain_g.pt"


def new_sweep_dir(storage: Path, name: str) -> Path:
    """``NAME-YYYYmmdd-HHMMSS-xxxx``, created here and never reused (two sweeps started in
    the same second get different folders)."""
    for _ in range(20):
        path = storage / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"{storage}: could not create a new sweep folder for {name}")


@contextlib.contextmanager
def store_lock(tracking_uri: str):
    """One process at a time creates a SQLite store's schema and experiments (two sweeps
    on a new store otherwise race: ``table params already exists``)."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    lock = Path(tracking_uri[len("sqlite:///"):]).with_suffix(".lock")
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


def planned_pretrain(raw: dict, sweep_dir: Path) -> dict:
    """The experiment every trial gets: starting from the sweep's shared pretrained G."""
    return deep_merge(raw, {"train": {"pretrained_g": str(sweep_dir / PRETRAIN_DIR / PRETRAIN_FILE)}})


def _pretrain(experiment: dict, out_dir: str) -> str:
    """Stage 1 (a Ray task), continuing from ``out_dir/last.pt`` after a stop."""
    from trainables.config import validate
    from trainables.train import Trainer

    out = Path(out_dir)
    trainer = Trainer(validate(experiment, source="sweep experiment"), out)
    if (out / "last.pt").is_file():
        trainer.resume(out / "last.pt")
        print(f"pretraining continues at step {trainer.step}", flush=True)
    trainer.run(until=trainer.stage1)
    if not (out / PRETRAIN_FILE).is_file():  # stopped between the last save and this one
        trainer.save_generator(out / PRETRAIN_FILE)
    return str(out / PRETRAIN_FILE)


def ensure_pretrained(state: SweepState, guard=None) -> None:
    """Run (or finish) the planned shared pretraining; a signal cancels the Ray task."""
    import ray

    target = state.dir / PRETRAIN_DIR / PRETRAIN_FILE
    if state.experiment.get("train", {}).get("pretrained_g") != str(target) or target.is_file():
        return
    cfg = state.base_config
    print(f"pretraining G once for the sweep ({cfg.train.pretrain_steps} steps)...", flush=True)
    res = state.sweep.resources
    experiment = deep_merge(state.experiment, {"train": {"pretrained_g": None}})
    task = ray.remote(num_cpus=res.cpu, num_gpus=res.gpu, max_retries=0)(_pretrain).remote(
        experiment, str(target.parent))
    try:  # poll: a Python exception raised inside Ray's C++ wait turns into a SystemError
        while not ray.wait([task], timeout=0.5)[0]:
            if guard is not None:
                guard.check()
        ray.get(task)
    except BaseException:
        with contextlib.suppress(Exception):  # its last.pt stays: the resume continues from it
            ray.cancel(task, force=True)
        raise


def mark_interrupted(state: SweepState, signame: str) -> None:
    """Parent KILLED with ``interrupted`` tags, no winner; trial runs still RUNNING closed."""
    from sweeper.tracking import Tracker

    tracker = Tracker(state.tracking_uri)
    with contextlib.suppress(Exception):  # a dead store must not hide the resume hint
        for _, run_id in tracker.children(state.experiment_id, state.parent_run_id):
            if tracker.client.get_run(run_id).info.status == "RUNNING":
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
