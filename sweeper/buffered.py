"""The driver's trial tracking through :class:`sweeper.outbox.Outbox`: a tracking outage
never stops the sweep. Writes go to the store at once or to ``DIR/tracking_outbox.jsonl``;
the buffer is sent on later writes, on ``srsweep resume``, at the end and by
``srsweep sync DIR``. Metric points are sent once per (run, key, step), so a resumed
trial that reports a step again adds nothing.

The trial -> run map is also kept in the sweep folder (``tracking_runs.json``), so a driver
restored during an outage finds its runs (or their placeholders) without the store.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Optional

from sweeper import atomic
from sweeper.outbox import Outbox, is_outage, short_http
from sweeper.tracking import MAX_PARAM_LEN, PARENT_TAG, Tracker, flatten
from trainables.errors import SrsweepError

OUTBOX_FILE, RUNS_FILE = "tracking_outbox.jsonl", "tracking_runs.json"


class StoreDown(SrsweepError):
    """The store did not come back before the sweep's closing writes: nothing is lost (the
    trials are done, the buffer is on disk); ``srsweep resume`` closes the sweep later."""


class BufferedTracker(Tracker):
    """The :class:`Tracker` interface the MLflow callback uses; picklable (Tune state)."""

    def __init__(self, uri: str, sweep_dir: str | Path):
        super().__init__(uri)
        self.sweep_dir = str(sweep_dir)
        self._box: Optional[Outbox] = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None, "_box": None}

    @property
    def box(self) -> Outbox:
        if self._box is None:
            self._box = Outbox(Path(self.sweep_dir) / OUTBOX_FILE, self.uri)
        return self._box

    # ---------------------------------------------------------------- trial -> run map
    def _map_file(self) -> Path:
        return Path(self.sweep_dir) / RUNS_FILE

    def _map(self) -> dict[str, str]:
        f = self._map_file()
        return json.loads(f.read_text()) if f.is_file() else {}

    def _remember(self, trial_id: str, run_id: str) -> None:
        runs = {**self._map(), trial_id: run_id}
        atomic.write_text(self._map_file(), json.dumps(runs))

    def children(
        self, experiment_id: str, parent: str, trial_id: Optional[str] = None
    ) -> list[tuple[str, str]]:
        known = self._map()
        if trial_id is not None and trial_id in known:
            return [(trial_id, known[trial_id])]
        try:
            with short_http(self.box.timeout_s, self.box.max_retries):
                return super().children(experiment_id, parent, trial_id)
        except Exception as exc:
            if not is_outage(exc):
                raise
            return [(t, r) for t, r in known.items() if trial_id in (None, t)]

    # -------------------------------------------------------------------- writes
    def start_run(
        self, experiment_id: str, name: str, tags: dict[str, str], parent: Optional[str] = None
    ) -> str:
        tags = {**tags, PARENT_TAG: parent} if parent else tags
        run_id = self.box.create_run(experiment_id, name, tags)
        if tags.get("ray_trial_id"):
            self._remember(tags["ray_trial_id"], run_id)
        return run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.box.set_terminated(run_id, status)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        self.box.log_params(run_id, {k: str(v)[:MAX_PARAM_LEN] for k, v in params.items()})

    def log_config(
        self, run_id: str, config: dict, extra: Optional[dict[str, Any]] = None, full: bool = True
    ) -> None:
        self.log_params(run_id, {**(flatten(config) if full else {}), **(extra or {})})
        self.box.log_dict(run_id, config, "config.yaml")

    def log_metrics(self, run_id: str, step: int, values: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self.box.log_metrics(
            run_id,
            [(k, float(v), step, now) for k, v in values.items() if v is not None and math.isfinite(v)],
        )

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.box.set_tags(run_id, tags)

    def log_artifact(self, run_id: str, path: str | Path, folder: Optional[str] = None) -> None:
        self.box.log_artifact(run_id, path, folder)

    def log_dict(self, run_id: str, data: dict, name: str) -> None:
        self.box.log_dict(run_id, data, name)

    def log_image(self, run_id: str, step: int, name: str, image) -> None:
        """Step-indexed images go straight to the store; during an outage they are skipped
        (each report's images stay in the trial's checkpoint folder)."""
        try:
            real = self.box.resolve(run_id)  # ConnectionError while the run is a placeholder
            with short_http(self.box.timeout_s, self.box.max_retries):
                super().log_image(real, step, name, image)
        except Exception as exc:
            if not is_outage(exc):
                raise

    def log_sequences(self, run_id: str, step: int, scores: dict[str, dict]) -> None:
        if scores and all("/" in name for name in scores):
            from trainables.video_metrics import sequence_table

            self.box.log_dict(run_id, sequence_table(scores), f"val_sequences/step_{step:07d}.json")


def flush(sweep_dir: str | Path, tracking_uri: str) -> tuple[bool, int]:
    """Send the sweep's buffered tracking writes; (all sent, records left)."""
    from sweeper.lock import hold

    box = Outbox(Path(sweep_dir) / OUTBOX_FILE, tracking_uri)
    if box.pending() == 0:
        return True, 0
    hold(sweep_dir)  # `srsweep sync` while a driver sends the same buffer: refused (the driver holds it)
    done = box.flush(force=True)
    return done, box.pending()


def flush_at_end(sweep_dir: str | Path, tracking_uri: str) -> tuple[bool, int]:
    """:func:`flush` before a sweep's closing writes. A store still down there is waited for
    (MLflow's own retries, as those writes would), then the buffer goes first: the results
    table, the winner's tags and the closed parent see every trial's run as it ended."""
    sent, left = flush(sweep_dir, tracking_uri)
    if not sent:
        try:
            Tracker(tracking_uri).client.search_experiments(max_results=1)  # MLflow's own retries
        except Exception as exc:  # noqa: BLE001  (any failure of this probe means: still down)
            if not is_outage(exc):
                raise
            down = f"tracking store {tracking_uri} still does not answer ({left} writes kept)"
            raise StoreDown(down) from exc
        sent, left = flush(sweep_dir, tracking_uri)
    return sent, left


def real_run_id(sweep_dir: str | Path, run_id: str) -> str:
    """A placeholder's real id once flushed (results tables and tags name real runs)."""
    ids = Path(sweep_dir) / (OUTBOX_FILE + ".ids.json")
    return json.loads(ids.read_text()).get(run_id, run_id) if ids.is_file() else run_id
