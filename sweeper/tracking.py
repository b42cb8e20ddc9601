"""MLflow in one place: every MLflow call of srsweep goes through this module.

Everything goes through an explicit client and run id (no global active run), so the
driver can log several runs at once (the sweep's parent and its children). Default
store: a SQLite file in the current folder with artifacts beside it, absolute so Ray
trials (whose working directory is their trial folder) hit the same files.

Metric names are the same for ``srsweep train`` and sweep runs: ``val_psnr``,
``val_ssim``, ``val_lpips``, ``loss_<term>``, ``sa_share``, ``beta2``, ``lr``.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow.entities import Metric, Param, RunTag  # noqa: E402

from mlflow import MlflowClient  # noqa: E402
from sweeper.sqlite_uri import sqlite_path, sqlite_uri  # noqa: E402

MAX_PARAM_LEN = 6000  # MLflow's limit on a param value
PARENT_TAG = "mlflow.parentRunId"  # what the MLflow UI nests child runs by
STORE_FILE = "mlflow.db"


def patch_mlflow_mkdir() -> None:
    """MLflow creates the store's parent folder from the URI text without decoding it: a
    ``%3F`` folder would appear beside the real one. Give it the decoded path instead."""
    from mlflow.store.db import utils

    original = getattr(utils, "_make_parent_dirs_if_sqlite", None)
    if original is None or getattr(original, "_srsweep", False):
        return

    def make_parent_dirs(db_uri: str) -> None:
        path = sqlite_path(db_uri)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    make_parent_dirs._srsweep = True
    utils._make_parent_dirs_if_sqlite = make_parent_dirs


patch_mlflow_mkdir()


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or sqlite_uri(Path.cwd().resolve() / STORE_FILE)


def _artifact_root(uri: str) -> Optional[Path]:
    """Artifacts beside a SQLite file; a server or database URI decides for itself.
    Handed to MLflow as a file:// URI: MLflow percent-decodes a plain path (``%41`` -> ``A``)."""
    db = sqlite_path(uri)
    return db.resolve().parent / "mlartifacts" if db is not None else None


def server_command(tracking_uri: str, host: str = "127.0.0.1", port: int = 5000) -> tuple[list[str], dict]:
    """``mlflow server`` over a SQLite store (the dashboard), and its environment.

    Job execution is off: it makes the server take ~2.4 GiB instead of ~0.5 GiB."""
    import shutil
    import sys

    from trainables.config import ConfigError

    if not tracking_uri.startswith(("sqlite:///", "postgresql", "mysql")):
        raise ConfigError(
            f"{tracking_uri}: srsweep ui serves a database store (sqlite:///..., postgresql://...)"
        )
    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    cmd = [exe, "server", "--backend-store-uri", tracking_uri, "--host", host, "--port", str(port)]
    root = _artifact_root(tracking_uri)
    if root:
        cmd += ["--artifacts-destination", root.as_uri()]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return cmd, env


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"loss.dp.mu": "0.5", ...}`` (readable, sortable params)."""
    out: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:MAX_PARAM_LEN]
    return out


def per_image(rows: list) -> dict[str, dict[str, float]]:
    """Per-image validation scores as logged (and read back by ``srsweep best``)."""
    return {r.name: {"psnr": r.psnr, "ssim": r.ssim, "lpips": r.lpips} for r in rows}


class Tracker:
    """One tracking store. Picklable (Ray pickles the driver callbacks into the Tuner
    state): the client is rebuilt lazily after unpickling."""

    def __init__(self, uri: str):
        self.uri = uri
        self._client: Optional[MlflowClient] = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.uri)
        return self._client

    # ---------------------------------------------------------------- experiments
    def experiment(self, name: str) -> str:
        """The id of experiment ``name``, created (artifacts beside a SQLite store) if new."""
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        root = _artifact_root(self.uri)
        return self.client.create_experiment(name, artifact_location=(root / name).as_uri() if root else None)

    def latest_sweep_dir(self, names: list[str]) -> Optional[str]:
        """The sweep folder of the newest sweep parent run in the first named experiment
        that has one (read-only: an unknown name finds nothing)."""
        for name in names:
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                continue
            runs = self.client.search_runs(
                [exp.experiment_id], "tags.role = 'sweep'", order_by=["start_time DESC"], max_results=1
            )
            if runs:
                return runs[0].data.tags["sweep_dir"]
        return None

    def configure_experiment(self, experiment_id: str) -> None:
        """Mark the experiment as model training (the UI labels it "Machine learning")."""
        from sweeper import dashboard

        self.client.set_experiment_tag(experiment_id, dashboard.KIND_TAG, dashboard.KIND_TRAINING)

    def describe_experiment(self, experiment_id: str, markdown: str) -> None:
        """The experiment's description, shown above its runs table."""
        from sweeper import dashboard

        self.client.set_experiment_tag(experiment_id, dashboard.NOTE_TAG, markdown)

    def configure_parent(
        self,
        experiment_id: str,
        parent_run_id: str,
        objective: str,
        mode: str,
        searched: list[str],
        reserved: Any = (),
    ) -> str:
        """Write the sweep's shared dashboard view (an experiment tag, sweeper/dashboard.py)
        and point the parent at it; returns the view key. Idempotent (a resume rewrites it)."""
        from sweeper import dashboard

        key = dashboard.view_key(parent_run_id)
        value = dashboard.view_json(parent_run_id, objective, mode, searched, reserved=reserved)
        self.client.set_experiment_tag(experiment_id, dashboard.VIEW_TAG_PREFIX + key, value)
        self.client.set_tag(parent_run_id, "dashboard_view", key)
        return key

    def newest_sweep(self) -> Optional[tuple[str, str]]:
        """(experiment id, parent run id) of the newest sweep in the store, or None."""
        exps = [e.experiment_id for e in self.client.search_experiments()]
        runs = (
            self.client.search_runs(exps, "tags.role = 'sweep'", order_by=["start_time DESC"], max_results=1)
            if exps
            else []
        )
        return (runs[0].info.experiment_id, runs[0].info.run_id) if runs else None

    # ----------------------------------------------------------------------- runs
    def start_run(
        self, experiment_id: str, name: str, tags: dict[str, str], parent: Optional[str] = None
    ) -> str:
        tags = {**tags, PARENT_TAG: parent} if parent else tags
        return self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id

    def reopen(self, run_id: str) -> None:
        self.client.update_run(run_id, "RUNNING")

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        """status: FINISHED, FAILED or KILLED."""
        self.client.set_terminated(run_id, status)

    def children(
        self, experiment_id: str, parent: str, trial_id: Optional[str] = None
    ) -> list[tuple[str, str]]:
        """(ray trial id, run id) of the sweep's trial runs (optionally of one trial), newest
        first; the confirmation's runs (tag stage=confirm) are not trial runs."""
        query = f"tags.`{PARENT_TAG}` = '{parent}'"
        if trial_id is not None:
            query += f" and tags.ray_trial_id = '{trial_id}'"
        runs = self.client.search_runs([experiment_id], query, order_by=["start_time DESC"], max_results=5000)
        return [
            (r.data.tags.get("ray_trial_id"), r.info.run_id)
            for r in runs
            if r.data.tags.get("stage") != "confirm"
        ]

    def stage_runs(self, experiment_id: str, parent: str, stage: str, of: str, seed: int) -> list[str]:
        """Run ids of the ``stage`` child runs of trial ``of`` with ``seed`` (confirmation)."""
        query = (
            f"tags.`{PARENT_TAG}` = '{parent}' and tags.stage = '{stage}' and tags.confirm_of = '{of}' "
            f"and tags.seed = '{seed}'"
        )
        return [r.info.run_id for r in self.client.search_runs([experiment_id], query, max_results=100)]

    def discard(self, run_id: str, reason: str) -> None:
        """Close and soft-delete a run that must not count (``mlflow gc`` purges it, the UI
        can restore it)."""
        self.set_tags(run_id, {"ray_status": reason})
        self.end_run(run_id, "KILLED")
        self.client.delete_run(run_id)

    # ------------------------------------------------------------------- contents
    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        items = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_config(
        self, run_id: str, config: dict, extra: Optional[dict[str, Any]] = None, full: bool = True
    ) -> None:
        """A run's config as ``config.yaml`` (to rerun it) and params: ``extra``, plus one
        param per config key when ``full`` (``srsweep train``; sweep trials log only their knobs)."""
        self.log_params(run_id, {**(flatten(config) if full else {}), **(extra or {})})
        self.client.log_dict(run_id, config, "config.yaml")

    def log_metrics(self, run_id: str, step: int, values: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, step) for k, v in values.items() if v is not None and math.isfinite(v)
        ]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def run_status(self, run_id: str) -> str:
        """RUNNING / FINISHED / FAILED / KILLED of a run."""
        return self.client.get_run(run_id).info.status

    def mark_winner(self, run_id: str) -> None:
        """Tag the winning run and star its name: the runs table marks it at a glance."""
        from sweeper import dashboard

        self.set_tags(run_id, {dashboard.WINNER_TAG: "true"})
        name = self.client.get_run(run_id).info.run_name or ""
        if not name.startswith(dashboard.WINNER_MARK):
            self.client.update_run(run_id, name=dashboard.WINNER_MARK + name)

    def unmark_winner(self, run_id: str, why: str) -> None:
        """A search winner the confirmation overturned: tagged ``why``, its star removed."""
        from sweeper import dashboard

        self.set_tags(run_id, {dashboard.WINNER_TAG: why})
        name = self.client.get_run(run_id).info.run_name or ""
        if name.startswith(dashboard.WINNER_MARK):
            self.client.update_run(run_id, name=name[len(dashboard.WINNER_MARK) :])

    def log_artifact(self, run_id: str, path: str | Path, folder: Optional[str] = None) -> None:
        self.client.log_artifact(run_id, str(path), folder)

    def log_dict(self, run_id: str, data: dict, name: str) -> None:
        self.client.log_dict(run_id, data, name)

    def log_image(self, run_id: str, step: int, name: str, image: np.ndarray) -> None:
        self.client.log_image(run_id, image, key=name, step=step)

    def log_sequences(self, run_id: str, step: int, scores: dict[str, dict]) -> None:
        """Clip scores (every name ``<seq>/<frame>``): the per-sequence table with its mean row
        as ``val_sequences/step_N.json``; image scores log nothing here."""
        if scores and all("/" in name for name in scores):
            from trainables.video_metrics import sequence_table

            self.client.log_table(run_id, sequence_table(scores), f"val_sequences/step_{step:07d}.json")


class MLflowReporter:
    """The trainer's :class:`~trainables.train.Reporter`, writing to one MLflow run."""

    def __init__(self, tracker: Tracker, run_id: str):
        self.tracker, self.run_id = tracker, run_id

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.tracker.log_metrics(self.run_id, step, values)

    def validation(
        self, step: int, metrics: dict[str, float], images: dict[str, np.ndarray], scores: list
    ) -> None:
        self.tracker.log_metrics(self.run_id, step, metrics)
        for name, image in images.items():
            self.tracker.log_image(self.run_id, step, name, image)
        self.tracker.log_dict(self.run_id, per_image(scores), f"val_scores/step_{step:07d}.json")
        self.tracker.log_sequences(self.run_id, step, per_image(scores))

    def checkpoint(self, step: int, path: Path) -> None:
        self.tracker.set_tags(self.run_id, {f"checkpoint.{path.stem}": str(path.resolve())})
