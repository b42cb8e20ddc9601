"""``srsweep best``: pick the winner of a sweep, write it as a config, tag its MLflow run.

The choice itself is the pure ``sweeper.select.select``; this module only gathers its
inputs (results table, rule from the sweep file, bicubic PSNR) and writes its outputs.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

WINNER_FILE = "winner.yaml"


def find_sweep_dir(target: str, tracking_uri: str | None = None) -> Path:
    """A sweep folder, or an MLflow experiment name (latest sweep parent run in it)."""
    p = Path(target)
    if (p / "sweep.json").is_file():
        return p.resolve()
    from mlflow import MlflowClient

    from sweeper.tracking import default_tracking_uri

    client = MlflowClient(tracking_uri or default_tracking_uri())
    for name in (target, f"srsweep-{target}"):
        exp = client.get_experiment_by_name(name)
        if exp is None:
            continue
        runs = client.search_runs([exp.experiment_id], "tags.role = 'sweep'", order_by=["start_time DESC"],
                                  max_results=1)
        if runs:
            return Path(runs[0].data.tags["sweep_dir"])
    raise FileNotFoundError(f"{target}: neither a sweep folder (with sweep.json) nor an MLflow experiment "
                            f"holding a sweep in {client.tracking_uri}")


def selection_rule(sweep, state: dict):
    """The winner rule of a sweep: full budget, PSNR floor, and the Optuna constraint band."""
    from sweeper.select import SelectionRule

    c = sweep.constraint
    return SelectionRule(psnr_floor=state["bicubic_psnr"] + sweep.selection.psnr_margin,
                         total_steps=state["total_steps"], constraint_metric=c.metric if c else None,
                         constraint_band=tuple(c.band) if c else None)


def choose_winner(sweep_dir: Path, df: pd.DataFrame | None = None, n_resamples: int = 9999,
                  n_boot: int | None = None):
    """Rank, print, write winner.yaml, tag MLflow; returns the ``WinnerChoice``.
    ``n_resamples``: random sign patterns of the paired test beyond 16 images
    (``n_boot`` is the old name the CLI's ``--bootstrap`` still passes)."""
    from mlflow import MlflowClient

    from sweeper.export import read_parquet
    from sweeper.select import format_ranking, pareto_front, select, winner_config
    from sweeper.sweep_config import load_sweep

    state = json.loads((sweep_dir / "sweep.json").read_text())
    if df is None:
        table = sweep_dir / "results.parquet"
        if table.is_file():
            df = read_parquet(table)
        else:
            from sweeper.results import results_table

            df = results_table(sweep_dir)
    sweep = load_sweep(Path(state["sweep_file"]))
    rule = selection_rule(sweep, state)
    sel = select(df, rule, n_resamples=n_boot or n_resamples)
    print(f"selection: min final LPIPS s.t. PSNR >= bicubic {state['bicubic_psnr']:.2f} "
          f"{sweep.selection.psnr_margin:+.2f} dB = {rule.psnr_floor:.2f} dB")
    print(format_ranking(sel))
    if len(sweep.objective.metrics) > 1:
        front = pareto_front(sel.ranked, total_steps=rule.total_steps)
        print(f"Pareto front (LPIPS vs PSNR, finished trials only): {', '.join(front['trial_id'])}")
    cfg = winner_config(sel.winner)
    out = sweep_dir / WINNER_FILE
    header = (f"# Winner of sweep {sweep_dir.name}: trial {sel.winner['trial_id']} "
              f"(MLflow run {sel.winner['mlflow_run_id']}).\n# Rerun: srsweep train {out}\n")
    out.write_text(header + yaml.safe_dump(cfg, sort_keys=False))
    client = MlflowClient(state["tracking_uri"])
    run_id = sel.winner["mlflow_run_id"]
    if isinstance(run_id, str) and run_id:
        client.set_tag(run_id, "winner", "true")
        client.set_tag(state["parent_run_id"], "winner_run_id", run_id)
    client.set_tag(state["parent_run_id"], "winner_trial_id", sel.winner["trial_id"])
    client.log_artifact(state["parent_run_id"], str(out))
    print(f"winner: trial {sel.winner['trial_id']} -> {out}")
    return sel
