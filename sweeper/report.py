"""What a sweep leaves for the researcher: the dashboard link and view, the parent run's
summary and ranked table, parameter importances, and the closing lines of the terminal.

Pure text and values here; MLflow writes go through ``Tracker`` (sweeper/tracking.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import pandas as pd

from sweeper import atomic, dashboard
from sweeper.sqlite_uri import sqlite_path
from sweeper.state import SweepState
from sweeper.terminal import fmt_metric

DEFAULT_UI = "http://127.0.0.1:5000"  # `srsweep ui`'s default host and port


def short_names(state: SweepState) -> dict[str, str]:
    """Searched dotted path -> the short name of its column and child param."""
    paths = [p.path for top in state.sweep.space for _, p in top.walk("")]
    return dashboard.short_names(paths, reserved=reserved(state))


def reserved(state: SweepState) -> set[str]:
    """Param keys a child run logs besides its knobs (``KEY_PARAMS``): short names avoid them."""
    return set(dashboard.KEY_PARAMS)


def ui_base_url(state: SweepState) -> tuple[str, bool]:
    """(base URL, running): the background `srsweep ui` of this store if one runs, else the default."""
    from sweeper import ui

    rec = ui.running(state.tracking_uri) if state.tracking_uri.startswith("sqlite:///") else None
    return (rec["url"], True) if rec else (DEFAULT_UI, False)


def dashboard_lines(state: SweepState, winner_run: Optional[str] = None) -> list[str]:
    """The printed link, and the winner's run page (its samples) when there is one."""
    base, up = ui_base_url(state)
    url = dashboard.runs_url(base, state.experiment_id, state.parent_run_id)
    db = sqlite_path(state.tracking_uri)
    hint = "" if up or db is None else f"  (start it with: srsweep ui, in {db.parent})"
    if state.tracking_uri.startswith(("http://", "https://")):
        base, hint = state.tracking_uri, ""
        url = dashboard.runs_url(base, state.experiment_id, state.parent_run_id)
    page = [f"winner's page: {base.rstrip('/')}/{dashboard.run_link(state.experiment_id, winner_run)}"]
    return [f"dashboard: {url}{hint}"] + (page if winner_run else [])


def configure_dashboard(tracker, state: SweepState, winner: Optional[str] = None) -> None:
    """Experiment kind, the sweep's shared view and the experiment's description linking the
    parent run (idempotent: resume rewrites them)."""
    m = state.sweep.objective.metrics[0]
    paths = [p.path for top in state.sweep.space for _, p in top.walk("")]
    tracker.configure_experiment(state.experiment_id)
    tracker.configure_parent(
        state.experiment_id, state.parent_run_id, m.name, m.mode, paths, reserved=reserved(state)
    )
    describe_sweep(tracker, state, winner)


def backfill_final(tracker, ranked: pd.DataFrame) -> None:
    """``final_*`` metrics on the full-budget trial runs of a sweep logged before they
    existed (the view sorts by them); a run that has them gets the same values again."""
    for _, r in ranked.iterrows():
        run = r.get("mlflow_run_id")
        if str(r.get("status")) == "TERMINATED" and isinstance(run, str) and run:
            values = {m: r.get(f"final_{m}") for m in dashboard.METRICS}
            tracker.log_metrics(run, int(r["steps"]), dashboard.final_metrics(values))


def describe_sweep(tracker, state: SweepState, winner: Optional[str]) -> None:
    note = dashboard.sweep_note(state.experiment_id, state.parent_run_id, state.dir.name, winner)
    tracker.describe_experiment(state.experiment_id, note)


def ranked_markdown(ranked: pd.DataFrame, names: dict[str, str]) -> str:
    """The ranked table as markdown (a parent artifact; MLflow renders .md as text)."""
    params = [c for c in ranked.columns if c.startswith("param.")]
    cols = [
        "rank",
        "trial_id",
        *params,
        "final_val_lpips",
        "final_val_psnr",
        "final_val_ssim",
        "sa_share",
        "steps",
        "status",
        "may_win",
        "mlflow_run_id",
    ]
    cols = [c for c in cols if c in ranked.columns]
    head = [names.get(c[len("param.") :], c[len("param.") :]) if c.startswith("param.") else c for c in cols]

    def cell(c, v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        if c.startswith("final_") or c == "sa_share":
            return fmt_metric(c, v)
        if c == "rank":
            return str(int(v))
        return json.dumps(v) if isinstance(v, (list, dict)) else str(v)

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(c, row[c]) for c in cols) + " |" for _, row in ranked.iterrows()]
    return "\n".join(lines) + "\n"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def config_diff(winner: dict, other: dict) -> list[tuple[str, object, object]]:
    """(key, winner value, other value) for every leaf that differs (paths excluded)."""
    a, b = _flat(winner), _flat(other)
    return [
        (k, a.get(k), b.get(k))
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k) and k not in ("name",)
    ]


def closing_lines(state: SweepState, sel, winner_file: Path) -> list[str]:
    """The end of `srsweep run` / `best`: winner, its diff against the runner-up, the rerun
    command, the dashboard link."""
    from sweeper.select import winner_config

    w = sel.winner
    lines = [
        f"winner: trial {w['trial_id']}  LPIPS {fmt_metric('val_lpips', w.get('final_val_lpips'))}  "
        f"PSNR {fmt_metric('val_psnr', w.get('final_val_psnr'))} dB  "
        f"SSIM {fmt_metric('val_ssim', w.get('final_val_ssim'))}  (MLflow run {w.get('mlflow_run_id')})"
    ]
    other, what = sel.runner_up, "runner-up"
    if other is None:  # nobody else may win: compare with the next trial of the ranking
        rest = sel.ranked[sel.ranked["trial_id"] != w["trial_id"]]
        other, what = (rest.iloc[0], "next trial (not eligible)") if len(rest) else (None, "")
    if other is not None:
        diff = config_diff(winner_config(w), winner_config(other))
        lines.append(
            f"config diff, winner {w['trial_id']} vs {what} {other['trial_id']}:" + ("" if diff else " none")
        )
        lines += [f"  {k}: {_v(a)}  (vs {_v(b)})" for k, a, b in diff]
    lines.append(f"rerun the winner: srsweep train {winner_file}")
    run = w.get("mlflow_run_id")
    return lines + dashboard_lines(state, run if isinstance(run, str) and run else None)


def _v(x) -> str:
    return f"{x:.4g}" if isinstance(x, float) else json.dumps(x) if isinstance(x, (list, dict)) else str(x)


def parent_outputs(
    tracker, state: SweepState, df: pd.DataFrame, sel, winner_id: Optional[str] = None
) -> None:
    """Parent summary metrics and the ranked table (markdown) as an artifact. ``winner_id``:
    the confirmed winner, when the confirmation overturned the search's (``sel.winner``)."""
    winner_id = winner_id or (sel.winner["trial_id"] if sel is not None else None)
    describe_sweep(tracker, state, winner_id)
    tracker.log_metrics(
        state.parent_run_id, state.total_steps, dashboard.parent_summary(df, winner_id, state.bicubic_psnr)
    )
    ranked = sel.ranked if sel is not None else df
    md = state.dir / "ranked.md"
    atomic.write_text(md, ranked_markdown(ranked, short_names(state)))
    tracker.log_artifact(state.parent_run_id, md)
    # the parent's Overview page: who won, the plots and the top of the ranking
    top = ranked_markdown(ranked.head(dashboard.NOTE_ROWS), short_names(state))
    summary = dashboard.parent_summary(df, winner_id, state.bicubic_psnr)
    note = dashboard.parent_note(state.parent_run_id, winner_id, summary, top, len(ranked))
    tracker.set_tags(state.parent_run_id, {dashboard.NOTE_TAG: note})


def importance_report(tracker, state: SweepState, log: bool = True) -> str:
    """Optuna's parameter importances as text; logged to the parent (metrics + JSON)."""
    from sweeper.study import format_importances, importances

    values, note, spread = importances(state.dir, seed=state.sweep.search.seed, total_steps=state.total_steps)
    names = short_names(state)
    if values is not None and log:
        tracker.log_metrics(
            state.parent_run_id,
            state.total_steps,
            {f"importance.{names.get(k, k)}": v for k, v in values.items()},
        )
        tracker.log_dict(
            state.parent_run_id,
            {"note": note, "importances": values, "spread": spread},
            "param_importances.json",
        )
    return format_importances(values, note, names, spread)


def child_extras(state: SweepState, trial_config: dict, searched: dict) -> dict[str, str]:
    """The params of a child run: its searched knobs under their short names (``mu``) and
    the key config values (``seed``, ``train.steps``...)."""
    from sweeper.tracking import flatten

    keys = dashboard.key_params(flatten(trial_config))
    return {**keys, **dashboard.child_params(searched, reserved=reserved(state))}


def status_word(status: str) -> str:
    return dashboard.STATUS_WORDS.get(status, status.lower())


def winner_file(state: SweepState) -> Path:
    from sweeper.best import WINNER_FILE

    return state.dir / WINNER_FILE


def print_lines(lines: list[str]) -> None:
    print("\n".join(lines), flush=True)
