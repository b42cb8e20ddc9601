"""The sweep's Optuna study on disk: ``optuna.db`` in the sweep folder (RDB storage).

Ray's ``OptunaSearch`` writes its trials there (``study_name`` + ``storage``), so the
study outlives the driver: ``srsweep resume`` continues it, ``optuna-dashboard
sqlite:///<sweep>/optuna.db`` opens it, and ``srsweep best`` reads parameter
importances from it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from sweeper.sqlite_uri import sqlite_uri

STUDY_FILE = "optuna.db"
# fANOVA on a handful of trials ranks knobs by noise (3-5 trials ranked `layer`, `blocks`,
# `mu` first in three runs of one sweep): below this many full-budget trials, no bars.
MIN_TRIALS = int(os.environ.get("SRSWEEP_IMPORTANCE_MIN_TRIALS", "8"))
BOOTSTRAP = 10  # resamples of the trials for the spread printed next to each importance


def storage_url(sweep_dir: str | Path) -> str:
    return sqlite_uri(Path(sweep_dir).resolve() / STUDY_FILE)


def study_name(sweep_dir: str | Path) -> str:
    return Path(sweep_dir).name


def study_storage(sweep_dir: str | Path) -> dict:
    """``OptunaSearch`` keyword arguments: the study's name and its RDB storage."""
    from optuna.storages import RDBStorage

    return {"study_name": study_name(sweep_dir), "storage": RDBStorage(storage_url(sweep_dir))}


def dashboard_command(sweep_dir: str | Path) -> str:
    return f"optuna-dashboard {storage_url(sweep_dir)}"


def importances(
    sweep_dir: str | Path, seed: int = 0, total_steps: Optional[int] = None, min_trials: Optional[int] = None
) -> tuple[Optional[dict[str, float]], str, dict[str, float]]:
    """(param -> importance of the first objective, note, param -> bootstrap spread). None
    with the reason when the study is missing or has fewer than ``min_trials`` (default
    ``MIN_TRIALS``, env ``SRSWEEP_IMPORTANCE_MIN_TRIALS``) completed trials. With
    ``total_steps``, only trials that ran the full budget count (the searcher records the
    step each trial reached): an ASHA-stopped trial's last value is not comparable. The
    spread is the standard deviation over ``BOOTSTRAP`` resamples of those trials."""
    import optuna

    need = MIN_TRIALS if min_trials is None else min_trials
    if not (Path(sweep_dir) / STUDY_FILE).is_file():
        return (
            None,
            f"no Optuna study in {sweep_dir} (grid sweeps and sweeps before srsweep 0.3 keep none)",
            {},
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name(sweep_dir), storage=storage_url(sweep_dir))
    except KeyError:
        return None, f"{storage_url(sweep_dir)} holds no study named {study_name(sweep_dir)}", {}
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    which = "completed trials"
    if total_steps is not None:
        done = [t for t in done if t.user_attrs.get("steps") == total_steps]
        which = f"trials that ran the full budget ({total_steps} steps; ASHA-stopped ones left out)"
    if len(done) < need:
        return None, f"parameter importance needs >= {need} {which}; the study has {len(done)}", {}
    varied = {k for t in done for k in t.params if len({str(u.params.get(k)) for u in done}) > 1}
    if not varied:
        return None, "every completed trial has the same parameters: no importance to measure", {}
    values = _fanova(done, study.directions, seed)
    spread = _spread(done, study.directions, seed, values)
    note = f"fANOVA over {len(done)} {which}, minimum {need}; +- the spread over {BOOTSTRAP} resamples"
    return dict(sorted(values.items(), key=lambda kv: -kv[1])), note, spread


def _fanova(trials: list, directions: list, seed: int) -> dict[str, float]:
    """Importance of the first objective per searched path (Optuna names: "loss.dp.mu" and
    "loss.dp.mu#choice", the or: branch, add up)."""
    import optuna

    kept = optuna.create_study(directions=directions)
    kept.add_trials(trials)
    target = (lambda t: t.values[0]) if len(directions) > 1 else None
    result = optuna.importance.get_param_importances(
        kept, target=target, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed)
    )
    by_path: dict[str, float] = {}
    for name, value in result.items():
        path = name.split("#")[0]
        by_path[path] = by_path.get(path, 0.0) + float(value)
    return by_path


def _spread(trials: list, directions: list, seed: int, values: dict[str, float]) -> dict[str, float]:
    """Standard deviation of each importance over bootstrap resamples of the trials (a
    resample where some knob no longer varies is skipped)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    runs = []
    for _ in range(BOOTSTRAP):
        pick = [trials[i] for i in rng.integers(0, len(trials), len(trials))]
        try:
            runs.append(_fanova(_renumbered(pick), directions, seed))
        except (RuntimeError, ValueError, ZeroDivisionError):
            continue
    return {k: float(np.std([r.get(k, 0.0) for r in runs])) if runs else float("nan") for k in values}


def _renumbered(trials: list) -> list:
    """Copies of ``trials`` (a resample repeats some) that a fresh study accepts."""
    import optuna

    return [
        optuna.trial.create_trial(
            params=t.params, distributions=t.distributions, values=t.values, user_attrs=t.user_attrs
        )
        for t in trials
    ]


def format_importances(
    values: Optional[dict[str, float]], note: str, names: dict[str, str], spread: Optional[dict] = None
) -> str:
    if values is None:
        return f"parameter importance: not available: {note}"
    spread = spread or {}
    width = max(len(names.get(k, k)) for k in values)
    rows = [
        f"  {names.get(k, k):<{width}}  {v:.2f} +- {spread.get(k, float('nan')):.2f}  {'#' * round(v * 40)}"
        for k, v in values.items()
    ]
    return "\n".join([f"parameter importance of the objective, {note}:", *rows])
