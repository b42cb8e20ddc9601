"""Driver-side Tune callbacks: MLflow child runs and one-line progress output.

All trial tracking writes happen here (through ``sweeper.tracking``), in the driver
process, so parallel trials never write the SQLite store concurrently (STACK-NOTES:
lock errors). Callbacks keep no state across ``Tuner.restore``, so the trial -> run
map is read back from the store: a resumed sweep finds its runs instead of duplicating
them.
"""

from __future__ import annotations

from ray.tune import Callback

from sweeper import dashboard
from sweeper.buffered import BufferedTracker
from sweeper.cluster import PLACEMENT_KEYS, placement_tags
from sweeper.dashboard import final_metrics
from sweeper.failures import failure_of, record_failure
from sweeper.report import child_extras, status_word
from sweeper.state import SweepState
from sweeper.sweep_config import searched
from sweeper.terminal import ProgressCallback as _ProgressCallback
from sweeper.terminal import error_reason
from sweeper.trial import read_checkpoint_files
from trainables.panels import sample_name

# Result keys that are bookkeeping, not metrics worth a chart.
_SKIP = {
    "step",
    "stage",
    "done",
    "training_iteration",
    "trial_id",
    "date",
    "timestamp",
    "pid",
    "hostname",
    "node_ip",
    "time_this_iter_s",
    "time_total_s",
    "time_since_restore",
    "iterations_since_restore",
    "checkpoint_dir_name",
    *PLACEMENT_KEYS,
}


def _read_rgb(path):
    import cv2

    return cv2.imread(str(path))[:, :, ::-1].copy()


class MLflowCallback(Callback):
    """Pickled into the Tuner state, so it holds only plain data and reconnects lazily.
    The tracking store itself maps trials to runs (tag ``ray_trial_id`` under the parent):
    a restored driver finds the runs of its trials instead of creating new ones."""

    def __init__(self, state: SweepState):
        from sweeper.sharing import local_dir

        # outage-proof: writes the store refuses wait in a file beside the sweep (its local
        # cache for a sweep on S3)
        self.state, self.tracker = state, BufferedTracker(state.tracking_uri, local_dir(state.sweep_dir))
        self._runs: dict[str, str] = {}
        self._nodes: dict[str, str] = {}  # trial id -> the node its run is tagged with

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_runs": {}, "_nodes": {}}

    def run_id(self, trial) -> str:
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        st = self.state
        found = self.tracker.children(st.experiment_id, st.parent_run_id, trial.trial_id)
        if found:
            self._runs[trial.trial_id] = found[0][1]
            return self._runs[trial.trial_id]
        from trainables.config_files import to_dict

        cfg = to_dict(st.trial_config(trial.config, trial.trial_id))
        run_id = self.tracker.start_run(
            st.experiment_id,
            f"trial-{trial.trial_id}",
            {"ray_trial_id": trial.trial_id, **st.tags, "steps": "0", "status": "running"},
            parent=st.parent_run_id,
        )
        # Params: the searched knobs (short names) and a few key values; the full config
        # is config.yaml (86 params per run made every picker of the UI unusable).
        self.tracker.log_config(run_id, cfg, child_extras(st, cfg, searched(trial.config)), full=False)
        self._runs[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        self.tracker.set_tags(self.run_id(trial), {"status": "running"})  # again "running" on a resume

    def on_trial_result(self, iteration, trials, trial, result, **info):
        values = {
            k: v
            for k, v in result.items()
            if k not in _SKIP and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        self.tracker.log_metrics(self.run_id(trial), int(result.get("step", 0)), values)
        self.tracker.set_tags(self.run_id(trial), {"steps": str(int(result.get("step", 0)))})
        where = placement_tags(result)
        if where and self.__dict__.setdefault("_nodes", {}).get(trial.trial_id) != result.get("node_id"):
            self.tracker.set_tags(self.run_id(trial), where)  # a trial restored on another node: re-tag
            self._nodes[trial.trial_id] = result.get("node_id")

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        run_id = self.run_id(trial)
        step = int((trial.last_result or {}).get("step", 0))
        with checkpoint.as_directory() as d:
            files = read_checkpoint_files(d)
            # Log steps between reports, each at its own step (the report's own step was
            # logged with the result).
            for point in files["curves"]:
                at = int(point.get("step", 0))
                if at != step:
                    self.tracker.log_metrics(run_id, at, {k: v for k, v in point.items() if k not in _SKIP})
            for image in files["images"]:  # step-indexed images: the UI's slider
                self.tracker.log_image(run_id, step, image.stem, _read_rgb(image))
            self._log_samples(trial, run_id, files["images"])
            if files["scores"]:
                self.tracker.log_dict(run_id, files["scores"], f"val_scores/step_{step:07d}.json")
                self.tracker.log_sequences(run_id, step, files["scores"])
        self.tracker.set_tags(run_id, {"checkpoint": str(checkpoint.path)})

    def _log_samples(self, trial, run_id: str, images: list) -> None:
        """The latest sample grids under readable names (``samples/chelsea.png``, overwritten
        each validation), shown in the run's description. Copied beside the sweep first: a
        write the store refuses waits in the outbox with its path, which must stay valid."""
        import shutil

        from sweeper.sharing import local_dir

        if not images:
            return
        folder = local_dir(self.state.sweep_dir) / dashboard.SAMPLES_DIR / trial.trial_id
        folder.mkdir(parents=True, exist_ok=True)
        names = [sample_name(p.stem) for p in images]
        for path, name in zip(images, names):
            shutil.copyfile(path, folder / f"{name}.png")
            self.tracker.log_artifact(run_id, folder / f"{name}.png", dashboard.SAMPLES_DIR)
        self.tracker.set_tags(run_id, {dashboard.NOTE_TAG: dashboard.sample_note(run_id, names)})

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self.run_id(trial)
        step = int((trial.last_result or {}).get("step", 0))
        if failure_of(trial.last_result):  # diverged: tagged, error.txt, FAILED (not retried)
            record_failure(self.tracker, run_id, failure_of(trial.last_result))
            self.tracker.set_tags(run_id, {"status": status_word("ERROR"), "steps": str(step)})
            self.tracker.end_run(run_id, "FAILED")
            return
        status = "STOPPED" if step < self.state.total_steps else "TERMINATED"
        if status == "TERMINATED":  # the sorted, shown final_* columns: full-budget trials only
            self.tracker.log_metrics(run_id, step, final_metrics(trial.last_result or {}))
        self.tracker.set_tags(
            run_id, {"ray_status": status, "status": status_word(status), "steps": str(step)}
        )
        # KILLED: the UI's status icon tells an ASHA-stopped trial from a finished one at a glance
        self.tracker.end_run(run_id, "FINISHED" if status == "TERMINATED" else "KILLED")

    def on_trial_recover(self, iteration, trials, trial, **info):
        # An infrastructure failure Ray retries from the last checkpoint: counted on the run.
        tags = {"retries": str(trial.num_failures), "last_failure": error_reason(trial)}
        self.tracker.set_tags(self.run_id(trial), tags)

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self.run_id(trial)
        self.tracker.set_tags(run_id, {"ray_status": "ERROR", "status": status_word("ERROR")})
        self.tracker.end_run(run_id, "FAILED")


# The progress lines moved to sweeper/terminal.py; the name stays importable here because
# sweeps launched before keep it pickled in their Tuner state (``srsweep resume``).
ProgressCallback = _ProgressCallback
