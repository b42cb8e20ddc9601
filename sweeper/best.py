"""``srsweep best``: pick the winner of a sweep, write it as a config, tag its MLflow run.

The choice itself is the pure ``sweeper.select.select``; this module only gathers its
inputs (results table, rule and bicubic PSNR from the sweep state) and writes its outputs.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from sweeper.state import STATE_FILE, SweepState, is_sweep_dir
from trainables.config import ConfigError

WINNER_FILE = "winner.yaml"


def find_sweep(target: str, tracking_uri: str | None = None) -> SweepState:
    """A sweep folder, or an MLflow experiment name (latest sweep parent run in it)."""
    if is_sweep_dir(target):
        return SweepState.load(Path(target).resolve())
    from sweeper.tracking import Tracker, default_tracking_uri

    tracker = Tracker(tracking_uri or default_tracking_uri())
    found = tracker.latest_sweep_dir([target, f"srsweep-{target}"])
    if found is None:
        raise ConfigError(f"{target}: neither a sweep folder (with {STATE_FILE}) nor an MLflow experiment "
                          f"holding a sweep in {tracker.uri}")
    return SweepState.load(found)


def choose_winner(state: SweepState, df: pd.DataFrame | None = None, n_boot: int = 10000):
    """Rank, print, write winner.yaml, tag MLflow; returns the ``Selection``."""
    from sweeper.export import read_parquet
    from sweeper.select import SelectionRule, format_ranking, pareto_front, select, winner_config
    from sweeper.tracking import Tracker

    sweep_dir, sweep = state.dir, state.sweep
    if df is None:
        table = sweep_dir / "results.parquet"
        if table.is_file():
            df = read_parquet(table)
        else:
            from sweeper.results import results_table

            df = results_table(state)
    floor = state.bicubic_psnr + sweep.selection.psnr_margin
    rule = SelectionRule(psnr_floor=floor)
    sel = select(df, rule, n_boot=n_boot)
    print(f"selection: min final LPIPS s.t. PSNR >= bicubic {state.bicubic_psnr:.2f} "
          f"{sweep.selection.psnr_margin:+.2f} dB = {floor:.2f} dB")
    print(format_ranking(sel))
    if len(sweep.objective.metrics) > 1:
        front = pareto_front(df)
        print(f"Pareto front (LPIPS vs PSNR): {', '.join(front['trial_id'])}")
    cfg = winner_config(sel.winner)
    out = sweep_dir / WINNER_FILE
    header = (f"# Winner of sweep {sweep_dir.name}: trial {sel.winner['trial_id']} "
              f"(MLflow run {sel.winner['mlflow_run_id']}).\n# Rerun: srsweep train {out}\n")
    out.write_text(header + yaml.safe_dump(cfg, sort_keys=False))
    tracker, parent = Tracker(state.tracking_uri), state.parent_run_id
    run_id = sel.winner["mlflow_run_id"]
    if isinstance(run_id, str) and run_id:
        tracker.set_tags(run_id, {"winner": "true"})
        tracker.set_tags(parent, {"winner_run_id": run_id})
    tracker.set_tags(parent, {"winner_trial_id": sel.winner["trial_id"]})
    tracker.log_artifact(parent, out)
    print(f"winner: trial {sel.winner['trial_id']} -> {out}")
    return sel
