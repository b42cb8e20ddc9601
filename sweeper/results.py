"""The per-trial results table, rebuilt from the Ray experiment folder.

Reading the folder (not the in-memory ResultGrid) means ``run``, ``resume`` and
``best`` all see the same table, also after the driver died. One row per trial; the
columns are the ones ``sweeper.select`` documents.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from sweeper.cluster import PLACEMENT_KEYS
from sweeper.failures import failure_of
from sweeper.sharing import checkpoint_dir
from sweeper.state import SweepState
from sweeper.sweep_config import searched
from sweeper.tracking import Tracker
from sweeper.trial import read_checkpoint_files


def _num(x) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


def results_table(state: SweepState) -> pd.DataFrame:
    from ray.tune import ExperimentAnalysis

    tracker = Tracker(state.tracking_uri)
    # trial id -> run id; the newest run of a trial wins
    runs = dict(reversed(tracker.children(state.experiment_id, state.parent_run_id)))
    total = state.total_steps
    ea = ExperimentAnalysis(str(state.dir))
    frames = ea.trial_dataframes
    rows = []
    for trial in ea.trials:
        hist = frames.get(trial.trial_id, pd.DataFrame())
        last = trial.last_result or {}
        step = int(_num(last.get("step", 0)) or 0)
        if trial.status == "ERROR":
            status = "ERROR"
        elif trial.status == "TERMINATED":
            status = "TERMINATED" if step >= total else "STOPPED"
        else:
            status = trial.status
        if failure_of(last):  # a diverged trial ended itself: not a result that may win
            status = "DIVERGED"
        cfg = state.trial_config(trial.config, trial.trial_id)
        row = {
            "trial_id": trial.trial_id,
            "status": status,
            "mlflow_run_id": runs.get(trial.trial_id),
            "steps": step,
            "time_s": _num(last.get("time_total_s")),
            "sa_share": _num(last.get("sa_share")),
            "sa_share_mean": _num(last.get("sa_share_mean")),
            "beta2": _num(last.get("beta2")),
            "failure": failure_of(last),
            "retries": int(getattr(trial, "num_failures", 0) or 0),  # infrastructure failures retried
            "seed": cfg.seed,  # the training seed (README "Seeds")
            "config_json": json.dumps(cfg.model_dump(mode="json")),
        }
        for m, best in (("lpips", "min"), ("psnr", "max"), ("ssim", "max")):
            col = f"val_{m}"
            series = pd.to_numeric(hist[col], errors="coerce") if col in hist else pd.Series(dtype=float)
            row[f"final_{col}"] = _num(last.get(col))
            row[f"best_{col}"] = float(getattr(series, best)()) if series.notna().any() else math.nan
        row.update({k: last.get(k) for k in PLACEMENT_KEYS})  # where the trial last reported from
        for path, value in searched(trial.config).items():
            row[f"param.{path}"] = value
        # a trial that diverged before its first validation has none (and Ray logs an ERROR)
        ckpt = ea.get_last_checkpoint(trial) if trial.checkpoint is not None else None
        path = checkpoint_dir(state, ckpt.path) if ckpt is not None else None
        row["checkpoint"] = path
        scores = read_checkpoint_files(path)["scores"] if ckpt is not None else {}
        for m in ("lpips", "psnr", "ssim"):  # per image, for whichever metric the objective names
            row[f"per_image_{m}_json"] = json.dumps({k: v[m] for k, v in scores.items()}) if scores else None
        rows.append(row)
    return pd.DataFrame(rows)
