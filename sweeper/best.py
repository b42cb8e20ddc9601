"""``srsweep best``: pick the winner of a sweep, write it as a config, tag its MLflow run.

The choice itself is the pure ``sweeper.select.select``; this module only gathers its
inputs (results table, rule and bicubic PSNR from the sweep state) and writes its outputs.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from sweeper import atomic
from sweeper.sqlite_uri import sqlite_path
from sweeper.state import STATE_FILE, SweepState, is_sweep_dir
from trainables.config import ConfigError

WINNER_FILE = "winner.yaml"


def find_sweep(target: str, tracking_uri: str | None = None) -> SweepState:
    """A sweep folder, or an MLflow experiment name (latest sweep parent run in it)."""
    if is_sweep_dir(target):
        from sweeper.storage import is_remote

        return SweepState.load(target if is_remote(target) else Path(target).resolve())
    from sweeper.tracking import Tracker, default_tracking_uri

    tracker = Tracker(tracking_uri or default_tracking_uri())
    db = sqlite_path(tracker.uri)
    missing_db = db is not None and not db.is_file()
    # Reading a SQLite URI creates the file: a store that is not there holds no sweep.
    found = None if missing_db else tracker.latest_sweep_dir([target, f"srsweep-{target}"])
    if found is None:
        raise ConfigError(
            f"{target}: neither a sweep folder (with {STATE_FILE}) nor an MLflow experiment "
            f"holding a sweep in {tracker.uri}"
        )
    return SweepState.load(found)


def objectives(state: SweepState, prefix: str = "final_") -> list[tuple[str, str]]:
    """The sweep's declared objective as (results column, mode): what every ranking,
    the confirmation and the Pareto front follow (ASHA and the dashboard use the first)."""
    return [(f"{prefix}{m.name}", m.mode) for m in state.sweep.objective.metrics]


def selection_rule(state: SweepState):
    """The winner rule of a sweep: the declared objective (its first metric; with two, the
    Pareto front is shown and its member best on the first metric wins), full budget,
    PSNR floor, and the Optuna constraint band."""
    from sweeper.select import SelectionRule

    sweep, c = state.sweep, state.sweep.constraint
    (metric, mode), *_ = objectives(state)
    return SelectionRule(
        metric=metric,
        mode=mode,
        psnr_floor=state.bicubic_psnr + sweep.selection.psnr_margin,
        total_steps=state.total_steps,
        constraint_metric=c.metric if c else None,
        constraint_band=tuple(c.band) if c else None,
    )


def choose_winner(
    state: SweepState, df: pd.DataFrame | None = None, n_resamples: int = 9999, verbose: bool = False
):
    """Rank, print, write winner.yaml, tag MLflow; returns the ``WinnerChoice``.
    ``n_resamples``: random sign patterns of the paired test beyond 16 images;
    ``verbose``: the table also shows where each trial ran (host, node, GPU)."""
    from sweeper.export import read_parquet
    from sweeper.select import format_ranking, pareto_front, select, winner_config
    from sweeper.tracking import Tracker

    sweep_dir, sweep = state.dir, state.sweep
    if df is None:
        table = sweep_dir / "results.parquet"
        if table.is_file():
            df = read_parquet(table)
        else:
            from sweeper.results import results_table

            df = results_table(state)
    rule = selection_rule(state)
    sel = select(df, rule, n_resamples=n_resamples)
    print(
        f"selection: {rule.mode} {rule.metric} s.t. PSNR >= bicubic {state.bicubic_psnr:.2f} "
        f"{sweep.selection.psnr_margin:+.2f} dB = {rule.psnr_floor:.2f} dB"
    )
    if verbose:
        import dataclasses

        from sweeper.cluster import PLACEMENT_VIEW, placement_view

        print(
            format_ranking(
                dataclasses.replace(sel, ranked=placement_view(sel.ranked)), extra_columns=PLACEMENT_VIEW
            )
        )
    else:
        print(format_ranking(sel))
    if len(sweep.objective.metrics) > 1:
        front = pareto_front(sel.ranked, objectives(state), total_steps=rule.total_steps)
        names = " vs ".join(c for c, _ in objectives(state))
        print(
            f"Pareto front ({names}, finished trials only; tie-break: best {rule.metric}): "
            f"{', '.join(front['trial_id'])}"
        )
    cfg = winner_config(sel.winner)
    out = sweep_dir / WINNER_FILE
    header = (
        f"# Winner of sweep {sweep_dir.name}: trial {sel.winner['trial_id']} "
        f"(MLflow run {sel.winner['mlflow_run_id']}).\n# Rerun: srsweep train {out}\n"
    )
    atomic.write_text(out, header + yaml.safe_dump(cfg, sort_keys=False))
    tracker, parent = Tracker(state.tracking_uri), state.parent_run_id
    run_id = sel.winner["mlflow_run_id"]
    if isinstance(run_id, str) and run_id:
        tracker.mark_winner(run_id)  # tag + a star before its name
        tracker.set_tags(parent, {"winner_run_id": run_id})
    tracker.set_tags(parent, {"winner_trial_id": sel.winner["trial_id"]})
    tracker.log_artifact(parent, out)
    print(f"winner: trial {sel.winner['trial_id']} -> {out}")
    return sel
