"""Optuna constraints through Ray Tune: a metric the trial reports must stay in a band.

The mission's literal form of the SA share: Optuna searches raw ``beta2`` and the share
the trial reaches (``sa_share_mean``) is a constraint, "within a band around 15%"
(sweep file: ``constraint: {metric: sa_share_mean, band: [0.10, 0.20]}``).

Optuna's TPE / NSGA-II samplers take ``constraints_func(frozen_trial) -> [c]`` (c <= 0
feasible) and call it inside ``study.tell``. Ray's ``OptunaSearch`` calls ``tell`` in
``on_trial_complete`` with the objective only, so :class:`ConstrainedOptunaSearch`
first records the reached value on the Optuna trial as a user attribute, then lets
OptunaSearch tell the study; :class:`BandConstraint` reads it back. A trial that never
reported the metric counts as infeasible (it never showed that it complied).
"""
from __future__ import annotations

import math
from typing import Any, Optional

from ray.tune.search.optuna import OptunaSearch

from sweeper.select import band_violation

# Violation given to a trial without the metric: finite (Optuna refuses NaN) and worse
# than any share could be, so TPE ranks it among the infeasible.
MISSING_VIOLATION = 1e6


class BandConstraint:
    """``constraints_func`` for Optuna samplers: one value, <= 0 iff the user attribute
    ``metric`` is inside ``band``. A module-level class, so the sampler pickles with the
    searcher state Ray saves for ``srsweep resume``."""

    def __init__(self, metric: str, band: tuple[float, float]):
        lo, hi = (float(b) for b in band)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"constraint band [{lo:g}, {hi:g}] is not a finite interval with low < high")
        self.metric, self.band = metric, (lo, hi)

    def __call__(self, trial: Any) -> tuple[float]:
        value = trial.user_attrs.get(self.metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return (MISSING_VIOLATION,)
        return (band_violation(float(value), self.band),)


def constrained_sampler(algorithm: str, seed: int, constraint: BandConstraint):
    """The sweep's Optuna sampler with ``constraints_func`` set (tpe or nsga2)."""
    from optuna.samplers import NSGAIISampler, TPESampler

    samplers = {"tpe": TPESampler, "nsga2": NSGAIISampler}
    if algorithm not in samplers:
        raise ValueError(f"constraint: search.algorithm {algorithm!r} has no sampler that reads constraints "
                         "(use tpe or nsga2)")
    return samplers[algorithm](seed=seed, constraints_func=constraint)


class ConstrainedOptunaSearch(OptunaSearch):
    """``OptunaSearch`` whose sampler learns a band constraint on a reported metric.

    Takes OptunaSearch's arguments plus ``constraint``; ``sampler`` must carry the same
    constraint (build it with :func:`constrained_sampler`)."""

    def __init__(self, *args, constraint: BandConstraint, **kwargs):
        sampler = kwargs.get("sampler")
        if sampler is None or getattr(sampler, "_constraints_func", None) is not constraint:
            raise ValueError("ConstrainedOptunaSearch: pass sampler=constrained_sampler(..., constraint)")
        self.constraint = constraint
        super().__init__(*args, **kwargs)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and trial_id not in self._completed_trials:
            value = (result or {}).get(self.constraint.metric)
            if isinstance(value, (int, float)) and math.isfinite(value):
                # Before tell: the sampler's constraints_func reads it inside tell.
                ot_trial.set_user_attr(self.constraint.metric, float(value))
        super().on_trial_complete(trial_id, result, error)


def constrained_search(space: Any, metric: Any, mode: Any, algorithm: str, seed: int, metric_name: str,
                       band: tuple[float, float], points_to_evaluate: Optional[list] = None) -> OptunaSearch:
    """What ``build_tuner`` uses in place of ``OptunaSearch`` when the sweep has a constraint."""
    constraint = BandConstraint(metric_name, band)
    return ConstrainedOptunaSearch(space=space, metric=metric, mode=mode, points_to_evaluate=points_to_evaluate,
                                   sampler=constrained_sampler(algorithm, seed, constraint), constraint=constraint)
