"""The per-trial results table, rebuilt from the Ray experiment folder.

Reading the folder (not the in-memory ResultGrid) means ``run``, ``resume`` and
``best`` all see the same table, also after the driver died. One row per trial; the
columns are the ones ``sweeper.select`` documents.

Only plain JSON is read (Ray's newest ``experiment_state-*.json`` for each trial's
status, config and failure count; the trial folder's ``result.json`` for its history),
never through Ray's ``ExperimentAnalysis``: its decoder unpickles ``CLOUDPICKLE_FALLBACK``
values, and the folder may sit on storage others can write. Such values stay inert dicts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from sweeper.cluster import PLACEMENT_KEYS
from sweeper.failures import failure_of
from sweeper.state import SweepState
from sweeper.sweep_config import searched
from sweeper.tracking import Tracker
from sweeper.trial import read_checkpoint_files
from trainables.errors import SrsweepError


class ResultsError(SrsweepError):
    """The folder's Ray state cannot give a results table (one line)."""


def _num(x) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


def _json(text, where: str):
    try:
        return json.loads(text) if isinstance(text, str) else text
    except ValueError:
        raise ResultsError(f"{where}: not valid JSON (a damaged Ray state file)") from None


def ray_trials(folder: Path) -> list[dict]:
    """[{trial_id, status, config, logdir, num_failures, last_result}] from the newest
    experiment state, plain JSON only."""
    states = sorted(folder.glob("experiment_state-*.json"))
    if not states:
        raise ResultsError(f"{folder}: no Ray experiment state (experiment_state-*.json): no trial ran")
    path = states[-1]
    data = _json(path.read_text(errors="replace"), str(path))
    trials = []
    for entry in data.get("trial_data", []) if isinstance(data, dict) else []:
        state = _json(entry[0], str(path))
        meta = _json(entry[1], str(path)) if len(entry) > 1 else {}
        logdir = state.get("relative_logdir")
        # a plain folder of this sweep: no path, no symlink that leads out of it
        plain = isinstance(logdir, str) and "/" not in logdir and logdir not in ("", ".", "..")
        if not plain or (folder / logdir).is_symlink():
            raise ResultsError(f"{path}: trial {state.get('trial_id')!r} names no folder of this sweep")
        trials.append(
            {
                "trial_id": str(state.get("trial_id")),
                "status": str(state.get("status")),
                "config": state.get("config") if isinstance(state.get("config"), dict) else {},
                "logdir": folder / logdir,
                "num_failures": int(_num(meta.get("num_failures")) or 0),
                "last_result": meta.get("last_result") if isinstance(meta.get("last_result"), dict) else {},
            }
        )
    return trials


def _history(logdir: Path) -> pd.DataFrame:
    """The trial's reports (Ray's ``result.json``, one JSON object a line)."""
    rows = []
    f = logdir / "result.json"
    for line in f.read_text(errors="replace").splitlines() if f.is_file() else ():
        try:
            row = json.loads(line)
        except ValueError:  # a line torn by a killed trial
            continue
        if isinstance(row, dict):
            rows.append(row)
    return pd.DataFrame(rows)


def last_checkpoint(logdir: Path) -> Path | None:
    """The trial's newest ``checkpoint_NNNNNN`` folder (Ray always keeps the latest)."""
    found = sorted(p for p in logdir.glob("checkpoint_*") if p.is_dir() and not p.is_symlink())
    return found[-1] if found else None


def results_table(state: SweepState) -> pd.DataFrame:
    tracker = Tracker(state.tracking_uri)
    # trial id -> run id; the newest run of a trial wins
    runs = dict(reversed(tracker.children(state.experiment_id, state.parent_run_id)))
    total = state.total_steps
    rows = []
    for trial in ray_trials(state.dir):
        hist = _history(trial["logdir"])
        last = trial["last_result"]
        step = int(_num(last.get("step", 0)) or 0)
        status = trial["status"]
        if status == "TERMINATED" and step < total:
            status = "STOPPED"
        if failure_of(last):  # a diverged trial ended itself: not a result that may win
            status = "DIVERGED"
        cfg = state.trial_config(trial["config"], trial["trial_id"])
        row = {
            "trial_id": trial["trial_id"],
            "status": status,
            "mlflow_run_id": runs.get(trial["trial_id"]),
            "steps": step,
            "time_s": _num(last.get("time_total_s")),
            "sa_share": _num(last.get("sa_share")),
            "sa_share_mean": _num(last.get("sa_share_mean")),
            "beta2": _num(last.get("beta2")),
            "failure": failure_of(last),
            "retries": trial["num_failures"],  # infrastructure failures retried
            "seed": cfg.seed,  # the training seed (README "Seeds")
            "config_json": json.dumps(cfg.model_dump(mode="json")),
        }
        for m, best in (("lpips", "min"), ("psnr", "max"), ("ssim", "max")):
            col = f"val_{m}"
            series = pd.to_numeric(hist[col], errors="coerce") if col in hist else pd.Series(dtype=float)
            row[f"final_{col}"] = _num(last.get(col))
            row[f"best_{col}"] = float(getattr(series, best)()) if series.notna().any() else math.nan
        row.update({k: last.get(k) for k in PLACEMENT_KEYS})  # where the trial last reported from
        for path, value in searched(trial["config"]).items():
            row[f"param.{path}"] = value
        # a trial that diverged before its first validation has none (and Ray logs an ERROR)
        ckpt = last_checkpoint(trial["logdir"])
        row["checkpoint"] = str(ckpt) if ckpt is not None else None
        scores = read_checkpoint_files(str(ckpt))["scores"] if ckpt is not None else {}
        for m in ("lpips", "psnr", "ssim"):  # per image, for whichever metric the objective names
            row[f"per_image_{m}_json"] = json.dumps({k: v[m] for k, v in scores.items()}) if scores else None
        rows.append(row)
    return pd.DataFrame(rows)
