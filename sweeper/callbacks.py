"""Driver-side Tune callbacks: MLflow child runs and one-line progress output.

All trial tracking writes happen here (through ``sweeper.tracking``), in the driver
process, so parallel trials never write the SQLite store concurrently (STACK-NOTES:
lock errors). Callbacks keep no state across ``Tuner.restore``, so the trial -> run
map is read back from the store: a resumed sweep finds its runs instead of duplicating
them.
"""
from __future__ import annotations

import math
import time
from typing import Optional

from ray.tune import Callback

from sweeper.buffered import BufferedTracker
from sweeper.failures import failure_of, record_failure
from sweeper.state import SweepState
from sweeper.sweep_config import searched
from sweeper.trial import read_checkpoint_files

# Result keys that are bookkeeping, not metrics worth a chart.
_SKIP = {"step", "stage", "done", "training_iteration", "trial_id", "date", "timestamp", "pid", "hostname",
         "node_ip", "time_this_iter_s", "time_total_s", "time_since_restore", "iterations_since_restore",
         "checkpoint_dir_name"}


class MLflowCallback(Callback):
    """Pickled into the Tuner state, so it holds only plain data and reconnects lazily.
    The tracking store itself maps trials to runs (tag ``ray_trial_id`` under the parent):
    a restored driver finds the runs of its trials instead of creating new ones."""

    def __init__(self, state: SweepState):
        self.state, self.tracker = state, BufferedTracker(state.tracking_uri, state.sweep_dir)  # outage-proof
        self._runs: dict[str, str] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_runs": {}}

    def run_id(self, trial) -> str:
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        st = self.state
        found = self.tracker.children(st.experiment_id, st.parent_run_id, trial.trial_id)
        if found:
            self._runs[trial.trial_id] = found[0][1]
            return self._runs[trial.trial_id]
        from trainables.config import to_dict

        cfg = to_dict(st.trial_config(trial.config, trial.trial_id))
        run_id = self.tracker.start_run(st.experiment_id, f"trial-{trial.trial_id}",
                                        {"ray_trial_id": trial.trial_id, **st.tags}, parent=st.parent_run_id)
        self.tracker.log_config(run_id, cfg, {f"search.{k}": v for k, v in searched(trial.config).items()})
        self._runs[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        self.run_id(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        values = {k: v for k, v in result.items()
                  if k not in _SKIP and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.tracker.log_metrics(self.run_id(trial), int(result.get("step", 0)), values)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        run_id = self.run_id(trial)
        step = int((trial.last_result or {}).get("step", 0))
        with checkpoint.as_directory() as d:
            files = read_checkpoint_files(d)
            for image in files["images"]:
                self.tracker.log_artifact(run_id, image, f"samples/step_{step:07d}")
            if files["scores"]:
                self.tracker.log_dict(run_id, files["scores"], f"val_scores/step_{step:07d}.json")
        self.tracker.set_tags(run_id, {"checkpoint": str(checkpoint.path)})

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self.run_id(trial)
        step = int((trial.last_result or {}).get("step", 0))
        if failure_of(trial.last_result):  # diverged: tagged, error.txt, FAILED (not retried)
            record_failure(self.tracker, run_id, failure_of(trial.last_result))
            self.tracker.end_run(run_id, "FAILED")
            return
        status = "STOPPED" if step < self.state.total_steps else "TERMINATED"
        self.tracker.set_tags(run_id, {"ray_status": status})
        self.tracker.end_run(run_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self.run_id(trial)
        self.tracker.set_tags(run_id, {"ray_status": "ERROR"})
        self.tracker.end_run(run_id, "FAILED")


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
