"""The per-trial results table, rebuilt from the Ray experiment folder.

Reading the folder (not the in-memory ResultGrid) means ``run``, ``resume`` and
``best`` all see the same table, also after the driver died. One row per trial; the
columns are the ones ``sweeper.select`` documents.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from sweeper.callbacks import child_runs
from sweeper.trial import read_checkpoint_files, trial_config


def _num(x) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


def results_table(sweep_dir: str | Path) -> pd.DataFrame:
    from ray.tune import ExperimentAnalysis

    from sweeper.space import decode
    from trainables.config import validate

    sweep_dir = Path(sweep_dir)
    state = json.loads((sweep_dir / "sweep.json").read_text())
    from mlflow import MlflowClient

    client = MlflowClient(state["tracking_uri"])
    runs = {r.data.tags.get("ray_trial_id"): r.info.run_id
            for r in reversed(child_runs(client, state["experiment_id"], state["parent_run_id"]))}
    total = state["total_steps"]
    ea = ExperimentAnalysis(str(sweep_dir))
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
        cfg = validate(trial_config(trial.config, state["experiment"]), source=f"trial {trial.trial_id}")
        row = {"trial_id": trial.trial_id, "status": status, "mlflow_run_id": runs.get(trial.trial_id),
               "steps": step, "time_s": _num(last.get("time_total_s")),
               "sa_share": _num(last.get("sa_share")), "beta2": _num(last.get("beta2")),
               "config_json": json.dumps(cfg.model_dump(mode="json"))}
        for m, best in (("lpips", "min"), ("psnr", "max"), ("ssim", "max")):
            col = f"val_{m}"
            series = pd.to_numeric(hist[col], errors="coerce") if col in hist else pd.Series(dtype=float)
            row[f"final_{col}"] = _num(last.get(col))
            row[f"best_{col}"] = float(getattr(series, best)()) if series.notna().any() else math.nan
        for path, value in decode(trial.config.get("grid_point", trial.config)).items():  # as trial_config
            row[f"param.{path}"] = value
        ckpt = ea.get_last_checkpoint(trial) if trial.last_result else None
        row["checkpoint"] = ckpt.path if ckpt is not None else None
        scores = read_checkpoint_files(ckpt.path)["scores"] if ckpt is not None else {}
        row["per_image_lpips_json"] = json.dumps({k: v["lpips"] for k, v in scores.items()}) if scores else None
        rows.append(row)
    return pd.DataFrame(rows)
