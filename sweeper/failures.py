"""Trial failures by kind: a divergence (NaN/inf loss) is deterministic, so the trial
reports it as its last result and ends (Ray 2.60's FailureConfig retries every raised
error alike); infrastructure failures still raise and are retried from the checkpoint.

The reason travels in the result (``failure``), so the driver's MLflow callback tags the
run and writes ``error.txt``, and the results table has a ``failure`` column.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Optional

FAILURE_KEY = "failure"


def report_divergence(state, step: int, exc: BaseException, where: Optional[dict] = None) -> None:
    """The trial's final report: NaN objective metrics (Optuna records a failed trial,
    nothing can win with them), ``diverged``, the reason (step, terms) and the placement."""
    from ray import tune

    nan = {m.name: math.nan for m in state.sweep.objective.metrics}
    tune.report({**nan, "step": step, "diverged": 1.0, FAILURE_KEY: f"diverged: {exc}", **(where or {})})


def failure_of(result: Optional[dict]) -> Optional[str]:
    value = (result or {}).get(FAILURE_KEY)
    return value if isinstance(value, str) and value else None


def record_failure(tracker, run_id: str, reason: str) -> None:
    """Tag plus ``error.txt`` in the trial's MLflow run."""
    tracker.set_tags(run_id, {FAILURE_KEY: reason[:5000], "ray_status": "DIVERGED"})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "error.txt"
        path.write_text(reason + "\n")
        tracker.log_artifact(run_id, path)
