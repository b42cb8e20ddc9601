"""Driver-side Tune callbacks: MLflow child runs and one-line progress output.

All MLflow writes happen here, in the driver process, so parallel trials never write
the SQLite store concurrently (STACK-NOTES: lock errors). Callbacks keep no state
across ``Tuner.restore``, so the trial -> MLflow run map lives in a JSON file in the
sweep folder: a resumed sweep finds its runs instead of duplicating them.
"""
from __future__ import annotations

import math
import time
from typing import Optional

from mlflow import MlflowClient
from mlflow.entities import RunTag
from ray.tune import Callback

from sweeper.tracking import MLflowReporter, flatten, log_params
from sweeper.trial import read_checkpoint_files, trial_config



def child_runs(client: MlflowClient, experiment_id: str, parent: str, trial_id: Optional[str] = None) -> list:
    """The sweep's trial runs (optionally of one trial), newest first."""
    query = f"tags.`mlflow.parentRunId` = '{parent}'"
    if trial_id is not None:
        query += f" and tags.ray_trial_id = '{trial_id}'"
    return client.search_runs([experiment_id], query, order_by=["start_time DESC"], max_results=5000)

# Result keys that are bookkeeping, not metrics worth a chart.
_SKIP = {"step", "stage", "done", "training_iteration", "trial_id", "date", "timestamp", "pid", "hostname",
         "node_ip", "time_this_iter_s", "time_total_s", "time_since_restore", "iterations_since_restore",
         "checkpoint_dir_name"}


class MLflowCallback(Callback):
    """Pickled into the Tuner state, so it holds only plain data and reconnects lazily.
    The MLflow store itself maps trials to runs (tag ``ray_trial_id`` under the parent):
    a restored driver finds the runs of its trials instead of creating new ones."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str,
                 experiment: dict, total_steps: int, tags: dict[str, str]):
        self.tracking_uri, self.experiment_id, self.parent = tracking_uri, experiment_id, parent_run_id
        self.experiment, self.total_steps, self.tags = experiment, total_steps, tags
        self._client: Optional[MlflowClient] = None
        self._runs: dict[str, str] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None, "_runs": {}}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def run_id(self, trial) -> str:
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        found = child_runs(self.client, self.experiment_id, self.parent, trial.trial_id)
        if found:
            self._runs[trial.trial_id] = found[0].info.run_id
            return self._runs[trial.trial_id]
        from sweeper.space import decode
        from trainables.config import to_dict, validate

        cfg = to_dict(validate(trial_config(trial.config, self.experiment), source=f"trial {trial.trial_id}"))
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{trial.trial_id}", tags={
            "mlflow.parentRunId": self.parent, "ray_trial_id": trial.trial_id, **self.tags})
        searched = decode(trial.config.get("grid_point", trial.config))
        log_params(self.client, run.info.run_id, {**flatten(cfg), **{f"search.{k}": v for k, v in searched.items()}})
        self.client.log_dict(run.info.run_id, cfg, "config.yaml")
        self._runs[trial.trial_id] = run.info.run_id
        return run.info.run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        self.run_id(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        values = {k: v for k, v in result.items()
                  if k not in _SKIP and isinstance(v, (int, float)) and not isinstance(v, bool)}
        MLflowReporter(self.client, self.run_id(trial)).metrics(int(result.get("step", 0)), values)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        run_id = self.run_id(trial)
        step = int((trial.last_result or {}).get("step", 0))
        with checkpoint.as_directory() as d:
            files = read_checkpoint_files(d)
            if files["sample"] is not None:
                self.client.log_artifact(run_id, str(files["sample"]), f"samples/step_{step:07d}")
            if files["scores"]:
                self.client.log_dict(run_id, files["scores"], f"val_scores/step_{step:07d}.json")
        self.client.set_tag(run_id, "checkpoint", str(checkpoint.path))

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self.run_id(trial)
        step = int((trial.last_result or {}).get("step", 0))
        stopped = step < self.total_steps
        self.client.log_batch(run_id, tags=[RunTag("ray_status", "STOPPED" if stopped else "TERMINATED")])
        self.client.set_terminated(run_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self.run_id(trial)
        self.client.set_tag(run_id, "ray_status", "ERROR")
        self.client.set_terminated(run_id, "FAILED")


class ProgressCallback(Callback):
    """One line per validation report: trial counts, best metric so far, ETA."""

    def __init__(self, metric: str, mode: str, num_samples: int, total_steps: int):
        self.metric, self.mode, self.n, self.total = metric, mode, num_samples, total_steps
        self.start = time.monotonic()
        self.best: Optional[tuple[float, str]] = None

    def __setstate__(self, state: dict) -> None:  # a restored sweep restarts the clock
        self.__dict__.update(state, start=time.monotonic())

    def _better(self, v: float) -> bool:
        return self.best is None or (v < self.best[0] if self.mode == "min" else v > self.best[0])

    def on_trial_result(self, iteration, trials, trial, result, **info):
        v = result.get(self.metric)
        if isinstance(v, (int, float)) and math.isfinite(v) and self._better(v):
            self.best = (float(v), trial.trial_id)
        status = {}
        for t in trials:
            status[t.status] = status.get(t.status, 0) + 1
        # ETA from the steps done so far; stopped trials count as complete.
        done_steps = sum(self.total if t.status in ("TERMINATED", "ERROR") else
                         int((t.last_result or {}).get("step", 0)) for t in trials)
        elapsed = time.monotonic() - self.start
        frac = done_steps / max(1, self.n * self.total)
        eta = f"{elapsed * (1 - frac) / frac / 60:.1f} min" if frac > 0.02 else "?"
        best = f"{self.best[0]:.5g} ({self.best[1]})" if self.best else "-"
        counts = ", ".join(f"{k.lower()} {c}" for k, c in sorted(status.items()))
        print(f"[{elapsed / 60:5.1f} min] {trial.trial_id} step {result.get('step')}: {self.metric} {v:.4f}"
              f" | trials {len(trials)}/{self.n} ({counts}) | best {self.metric} {best} | ETA {eta}",
              flush=True)
