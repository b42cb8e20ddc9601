"""Optuna constraints through Ray Tune: a metric the trial reports must stay in a band.

The mission's literal form of the SA share: Optuna searches raw ``beta2`` and the share
the trial reaches (``sa_share_mean``) is a constraint, "within a band around 15%"
(sweep file: ``constraint: {metric: sa_share_mean, band: [0.10, 0.20]}``).

Optuna 5 samplers (TPE, NSGA-II, GP) read each trial's constraint values (<= 0 feasible)
from the trial itself, set with ``Trial.set_constraint``; the older
``constraints_func=`` sampler argument does the same but is deprecated since Optuna 5.0
(FutureWarning, removal planned for 7.0). Ray's ``OptunaSearch`` tells the study the
objective in ``on_trial_complete`` and a finished trial cannot be changed afterwards, so
:class:`ConstrainedOptunaSearch` records the reached value (user attribute) and the band
violation (constraint) on the Optuna trial first, then lets OptunaSearch tell the study.
A trial that never reported the metric counts as infeasible (it never showed that it
complied); a crashed or diverged trial is told as FAIL and samplers ignore it anyway. A
trial stopped before the full budget (ASHA) is told as PRUNED: its last value is partial.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional

from ray.tune.search.optuna import OptunaSearch

from sweeper.failures import FAILURE_KEY, failure_of
from sweeper.select import band_violation

# Violation given to a trial without the metric: finite (Optuna refuses NaN) and worse
# than any share could be, so TPE ranks it last among the infeasible.
MISSING_VIOLATION = 1e6


class BandConstraint:
    """``metric`` must lie in ``band``; ``violation`` follows Optuna's sign convention."""

    def __init__(self, metric: str, band: tuple[float, float]):
        lo, hi = (float(b) for b in band)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"constraint band [{lo:g}, {hi:g}] is not a finite interval with low < high")
        self.metric, self.band = metric, (lo, hi)

    def violation(self, value: Any) -> float:
        """<= 0 inside the band, else the distance to it; MISSING_VIOLATION without a value."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return MISSING_VIOLATION
        return band_violation(float(value), self.band)


def run_ref(state) -> tuple[str, str, str]:
    """Where a sweep's trial runs are (plain strings: saved with the searcher state). An
    ASHA-stopped trial is told PRUNED (``total_steps``), any trial gets its ids."""
    return (state.tracking_uri, state.experiment_id, state.parent_run_id)


class ConstrainedOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that records each trial's reached ``steps`` on the Optuna trial, and
    whose sampler learns a band constraint on a reported metric when ``constraint`` is given.
    Takes OptunaSearch's arguments plus ``constraint``; any Optuna 5 sampler works."""

    def __init__(
        self,
        *args,
        constraint: Optional[BandConstraint] = None,
        total_steps: Optional[int] = None,
        mlflow_runs: Optional[tuple[str, str, str]] = None,
        **kwargs,
    ):
        self.constraint = constraint  # plain attributes: saved and restored with the searcher state
        self.total_steps = total_steps
        self.mlflow_runs = mlflow_runs  # (tracking URI, experiment id, parent run id)
        super().__init__(*args, **kwargs)

    def _setup_study(self, mode):
        super()._setup_study(mode)
        names = self._metric if isinstance(self._metric, list) else [self._metric]
        with warnings.catch_warnings():  # set_metric_names is "experimental" in Optuna
            warnings.simplefilter("ignore")
            # optuna-dashboard then shows val_lpips, not "Objective 0"
            self._ot_study.set_metric_names(list(names))

    def suggest(self, trial_id: str):
        params = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and "trial_id" not in ot_trial.user_attrs:
            ot_trial.set_user_attr("trial_id", trial_id)  # the id the terminal and MLflow show
        return params

    def _link_run(self, trial_id: str, ot_trial) -> None:
        """The trial's MLflow run id as a user attribute (read from the store: the driver's
        MLflow callback created it when the trial started), and the Optuna number (``#4``, as
        optuna-dashboard shows it) as the run's tag ``optuna_trial``. Best effort: the store
        may be down."""
        runs = getattr(self, "mlflow_runs", None)  # older searcher state: none
        if runs is None or "mlflow_run_id" in ot_trial.user_attrs:
            return
        try:
            from sweeper.tracking import Tracker

            tracker = Tracker(runs[0])
            found = tracker.children(runs[1], runs[2], trial_id)
            if found:
                tracker.set_tags(found[0][1], {"optuna_trial": f"#{ot_trial.number}"})
        except Exception:  # noqa: BLE001 - an outage must not fail the search
            return
        if found:
            ot_trial.set_user_attr("mlflow_run_id", found[0][1])

    def _stopped_early(self, result: Optional[dict]) -> bool:
        """The trial ended before the full budget (ASHA, a time budget): its last value is
        a partial one, so Optuna must see it as PRUNED, not as a final COMPLETE value."""
        step, total = (result or {}).get("step"), getattr(self, "total_steps", None)  # older state: none
        if total is None or not isinstance(step, (int, float)) or isinstance(step, bool):
            return False
        return step < total

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        reason = failure_of(result)
        if reason:  # diverged: Optuna refuses its NaN metrics and the trial stayed RUNNING for good
            if ot_trial is not None and trial_id not in self._completed_trials:
                ot_trial.set_user_attr(FAILURE_KEY, reason[:1000])
            result, error = None, True  # told as FAIL, as a crash: samplers skip it
        if ot_trial is not None and trial_id not in self._completed_trials:
            self._link_run(trial_id, ot_trial)
        if ot_trial is not None and trial_id not in self._completed_trials and not error:
            # The step the trial reached (ASHA stops some early): importances and any later
            # analysis of the study can then compare trials at equal training.
            step = (result or {}).get("step")
            if isinstance(step, (int, float)) and not isinstance(step, bool):
                ot_trial.set_user_attr("steps", int(step))
        if ot_trial is not None and trial_id not in self._completed_trials and not error and self.constraint:
            value = (result or {}).get(self.constraint.metric)
            v = self.constraint.violation(value)
            if v != MISSING_VIOLATION:
                ot_trial.set_user_attr(self.constraint.metric, float(value))
            # Before tell: the study is told below, and a finished trial is read-only.
            ot_trial.set_constraint(self.constraint.metric, v)
        if not error and self._stopped_early(result):
            # No value + no error: OptunaSearch tells the study PRUNED; the trial keeps its
            # intermediate values (reported per validation), which TPE reads as Optuna intends.
            result = None
        super().on_trial_complete(trial_id, result, error)
