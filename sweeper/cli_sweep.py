"""The sweep commands' CLI glue that is more than argument parsing: ``run --dry-run``,
``resume``'s flag check, ``best``'s closing report and ``ui`` (start, background, stop)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sweeper.sqlite_uri import sqlite_path
from trainables.errors import SrsweepError


def dry_run(args: argparse.Namespace) -> int:
    """Validate the patched sweep file and print its plan; nothing starts (no Ray, no MLflow)."""
    from sweeper.overrides import patcher
    from sweeper.plan import plan_lines
    from sweeper.state import absolute_paths
    from sweeper.sweep_config import experiment_dict, load_sweep
    from trainables.config import validate

    path = Path(args.sweep).resolve()
    sweep = load_sweep(path, patcher(tuple(args.set), args.tiny, path))
    cfg = validate(absolute_paths(experiment_dict(sweep, path), Path.cwd()), source=str(path))
    print("\n".join(plan_lines(sweep, cfg, Path(args.storage).resolve(), args.set, args.tiny)))
    return 0


def check_resume_flags(args: argparse.Namespace) -> bool:
    """Refuse flags that would change a recorded sweep; True when ``--dry-run`` printed the plan."""
    from sweeper.errors import read_state
    from sweeper.overrides import check_resume
    from sweeper.plan import plan_lines
    from sweeper.storage import is_remote

    where = args.sweep_dir if is_remote(args.sweep_dir) else Path(args.sweep_dir).resolve()
    state = read_state(where)
    check_resume(state, tuple(args.set), args.tiny)
    if not args.dry_run:
        return False
    lines = plan_lines(state.sweep, state.base_config, state.dir.parent)
    lines[0] = f"dry run of resuming {state.dir}: nothing is started"
    done = _recorded_trials(state.dir)
    print("\n".join([*lines, f"recorded trials in the folder: {done}"]))
    return True


def _recorded_trials(sweep_dir: Path) -> int:
    return sum(1 for p in sweep_dir.iterdir() if p.is_dir() and (p / "params.json").is_file())


def after_best(state, sel) -> None:
    """``srsweep best``'s last lines: importances (logged to the parent), winner, diff, rerun, link."""
    from sweeper import report
    from sweeper.tracking import Tracker

    tracker = Tracker(state.tracking_uri)
    report.configure_dashboard(tracker, state, sel.winner["trial_id"])  # older sweeps get a view too
    report.backfill_final(tracker, sel.ranked)
    report.print_lines(
        [
            report.importance_report(tracker, state),
            *report.closing_lines(state, sel, report.winner_file(state)),
        ]
    )
    from sweeper.confirm import report_existing

    report_existing(state, sel)  # a confirmed sweep keeps its confirmed winner


def ui(args: argparse.Namespace) -> int:
    from sweeper import dashboard
    from sweeper import ui as server
    from sweeper.tracking import Tracker, default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri()
    try:
        if args.stop:
            pid = server.stop(uri)
            print(f"stopped the dashboard (pid {pid}) of {uri}")
            return 0
        cmd, _ = server.command(uri, args.host, args.port)
        if args.dry_run:
            print(" ".join(cmd))
            return 0
        base = server.base_url(args.host, args.port)
        db = sqlite_path(uri)
        exists = db.is_file() if db is not None else not uri.startswith("sqlite")  # never create a store here
        newest = Tracker(uri).newest_sweep() if exists else None
        link = dashboard.runs_url(base, *newest) if newest else f"{base}/#/experiments"
        if args.background:
            base, pid = server.serve(uri, args.host, args.port, background=True)
            log = server.state_dir(uri) / server.LOG_FILE
            print(
                f"dashboard: {link}\nmlflow server pid {pid} (log {log}); stop it with: srsweep ui --stop",
                flush=True,
            )
            return 0
        print(f"dashboard: {link}\n(serving {uri}; Ctrl-C stops it)", flush=True)
        server.serve(uri, args.host, args.port)
        return 0
    except server.UIError as exc:
        raise SrsweepError(str(exc)) from None
