"""The sweep's Optuna study on disk: ``optuna.db`` in the sweep folder (RDB storage).

Ray's ``OptunaSearch`` writes its trials there (``study_name`` + ``storage``), so the
study outlives the driver: ``srsweep resume`` continues it, ``optuna-dashboard
sqlite:///<sweep>/optuna.db`` opens it, and ``srsweep best`` reads parameter
importances from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from sweeper.sqlite_uri import sqlite_uri

STUDY_FILE = "optuna.db"
MIN_TRIALS = 3  # fANOVA on fewer completed trials says nothing


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
    sweep_dir: str | Path, seed: int = 0, total_steps: Optional[int] = None
) -> tuple[Optional[dict[str, float]], str]:
    """(param -> importance of the first objective, note). None with the reason when the
    study is missing or has fewer than ``MIN_TRIALS`` completed trials. With
    ``total_steps``, only trials that ran the full budget count (the searcher records the
    step each trial reached): an ASHA-stopped trial's last value is not comparable."""
    import optuna

    if not (Path(sweep_dir) / STUDY_FILE).is_file():
        return None, f"no Optuna study in {sweep_dir} (grid sweeps and sweeps before srsweep 0.3 keep none)"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name(sweep_dir), storage=storage_url(sweep_dir))
    except KeyError:
        return None, f"{storage_url(sweep_dir)} holds no study named {study_name(sweep_dir)}"
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    which = "completed trials"
    if total_steps is not None:
        done = [t for t in done if t.user_attrs.get("steps") == total_steps]
        which = f"trials that ran the full budget ({total_steps} steps; ASHA-stopped ones left out)"
    if len(done) < MIN_TRIALS:
        return None, (f"parameter importance needs >= {MIN_TRIALS} {which}; the study has {len(done)}")
    varied = {k for t in done for k in t.params if len({str(u.params.get(k)) for u in done}) > 1}
    if not varied:
        return None, "every completed trial has the same parameters: no importance to measure"
    multi = len(study.directions) > 1
    target = (lambda t: t.values[0]) if multi else None
    if len(done) < len(study.trials):  # importance of the kept trials only
        kept = optuna.create_study(directions=study.directions)
        kept.add_trials(done)
        study = kept
    result = optuna.importance.get_param_importances(
        study, target=target, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed)
    )
    note = f"fANOVA over {len(done)} {which}"
    by_path: dict[str, float] = {}
    for name, value in result.items():  # Optuna names: "loss.dp.mu", "loss.dp.mu#choice" (the or: branch)
        path = name.split("#")[0]
        by_path[path] = by_path.get(path, 0.0) + float(value)
    return dict(sorted(by_path.items(), key=lambda kv: -kv[1])), note


def format_importances(values: Optional[dict[str, float]], note: str, names: dict[str, str]) -> str:
    if values is None:
        return f"parameter importance: not available: {note}"
    width = max(len(names.get(k, k)) for k in values)
    rows = [f"  {names.get(k, k):<{width}}  {v:.3f}  {'#' * round(v * 40)}" for k, v in values.items()]
    return "\n".join([f"parameter importance of the objective, {note}:", *rows])
