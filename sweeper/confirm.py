"""The confirmation stage: retrain the search's finalists with fresh seeds, score on test.

After the search (DESIGN.md "Selection"), the ``confirm.top_k`` finalists that ran the
full budget (by the declared objective; two objectives: the Pareto front first) are
retrained from the shared pretrained G with ``confirm.seeds`` fresh seeds each, as Ray
tasks (the trial's own Trainer, a fixed config), and scored once on ``data.test``, the
split the search never saw. Each run is an MLflow child run tagged ``stage=confirm``.

``confirm.parquet`` (one row per finalist x seed) is rewritten after every finished run,
so an interrupted confirmation resumes (``srsweep resume``) with the finished runs kept.
The winner, its table and the claim are ``sweeper.confirm_report``'s.
"""

from __future__ import annotations

import json
import time
from typing import Optional

import pandas as pd

from sweeper.state import SweepState
from sweeper.terminal import fmt_metric

CONFIRM_FILE = "confirm.parquet"
CONFIRM_SEED0 = 10_000  # confirmation seeds: base + 10000 + k, never a search trial's seed
METRICS = ("lpips", "psnr", "ssim")


def confirm_seeds(state: SweepState) -> list[int]:
    c, s = state.sweep.confirm, state.sweep.seeds
    base = s.base if s.base is not None else int(state.experiment.get("seed", 0))
    return [base + CONFIRM_SEED0 + k for k in range(c.seeds if c else 0)]


def finalists(state: SweepState, ranked: pd.DataFrame) -> pd.DataFrame:
    """The top_k trials that may win, best first by the declared objective; with two
    objectives, the Pareto front (among those that may win) comes first."""
    from sweeper.best import objectives
    from sweeper.select import pareto_front

    ok = ranked[ranked["may_win"].to_numpy(dtype=bool)]
    objs = objectives(state)
    if len(objs) > 1 and len(ok):
        front = set(pareto_front(ok, objs, total_steps=state.total_steps)["trial_id"])
        ok = pd.concat([ok[ok["trial_id"].isin(front)], ok[~ok["trial_id"].isin(front)]])
    return ok.head(state.sweep.confirm.top_k)


def run_config(row: pd.Series, seed: int) -> dict:
    """The finalist's full config with a confirmation seed; validation only at the end
    (the confirmation makes no decision during training, so scoring earlier is waste)."""
    from sweeper.select import winner_config

    cfg = winner_config(row)
    cfg["seed"] = int(seed)
    cfg["train"]["val_every"] = cfg["train"]["steps"]
    return cfg


class _Last:
    """Trainer reporter that keeps the last validation only (Ray's logs stay short)."""

    def __init__(self):
        self.val: dict = {}

    def metrics(self, step, values) -> None:
        pass

    def validation(self, step, metrics, images, scores) -> None:
        self.val = dict(metrics)

    def checkpoint(self, step, path) -> None:
        pass


def train_and_test(config: dict, threads: int = 1) -> dict:
    """One confirmation run (a Ray task): train, then score val and the test split."""
    import tempfile
    from pathlib import Path

    import torch

    from sweeper.sharing import localize_pretrained
    from sweeper.tracking import per_image
    from trainables.config import validate
    from trainables.train import Trainer, load_val_items

    t0 = time.time()
    cfg = localize_pretrained(validate(config, source="confirmation run"))
    torch.set_num_threads(max(1, threads))
    reporter = _Last()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp), reporter)
        trainer.run()
        trainer.val_items = load_val_items(cfg, "test")
        test, _, rows = trainer.score_validation()
    return {
        **{k.replace("val_", "test_"): float(v) for k, v in test.items()},
        **{k: float(v) for k, v in reporter.val.items()},
        "per_image_json": json.dumps(per_image(rows)),
        "time_s": time.time() - t0,
    }


def _existing(state: SweepState) -> pd.DataFrame:
    from sweeper.export import read_parquet

    path = state.dir / CONFIRM_FILE
    return read_parquet(path) if path.is_file() else pd.DataFrame()


def _start_run(tracker, state: SweepState, tid: str, seed: int, config: dict) -> str:
    """A confirm child run (an unfinished one of an earlier driver is discarded first)."""
    for run_id in tracker.stage_runs(state.experiment_id, state.parent_run_id, "confirm", tid, seed):
        tracker.discard(run_id, "RESTARTED_ON_RESUME")
    run_id = tracker.start_run(
        state.experiment_id,
        f"confirm-{tid}-seed{seed}",
        {
            **state.tags,
            "stage": "confirm",
            "confirm_of": tid,
            "seed": str(seed),
            "test_split": split_label(state),
        },
        parent=state.parent_run_id,
    )
    tracker.log_config(run_id, config, {"stage": "confirm", "confirm_of": tid})
    return run_id


def split_label(state: SweepState) -> str:
    """data.test as the reports name it, with the held-out caveat when overlap is allowed."""
    spec = state.base_config.data.test or "-"
    return spec + (" (NOT held-out: allow_test_overlap)" if state.sweep.allow_test_overlap else "")


def run_confirmation(state: SweepState, sel) -> Optional[pd.DataFrame]:
    """Train what ``confirm.parquet`` lacks; returns the whole table (None: skipped)."""
    c = state.sweep.confirm
    if c is None:
        print("confirmation: off (confirm: false)", flush=True)
        return None
    if not state.base_config.data.test:
        print(
            "confirmation skipped: the experiment has no data.test (held-out images); the winner above "
            "is the search winner on its own validation images, one seed, not confirmed "
            "(set data.test to confirm it, or confirm: false to say so in the sweep file)",
            flush=True,
        )
        return None
    fin, seeds = finalists(state, sel.ranked), confirm_seeds(state)
    done = _existing(state)
    have = set(zip(done["trial_id"], done["seed"])) if len(done) else set()
    todo = [(r, s) for _, r in fin.iterrows() for s in seeds if (r["trial_id"], s) not in have]
    steps = state.total_steps
    print(
        f"confirmation: {len(fin)} finalists x {len(seeds)} seeds (seeds {seeds}) x {steps} steps "
        f"from the shared pretrained G, scored on data.test = {split_label(state)}; "
        f"{len(todo)} runs to train, {len(have)} kept",
        flush=True,
    )
    rows = done.to_dict("records") if len(done) else []
    _train_all(state, todo, rows)
    return pd.DataFrame(rows)


def _train_all(state: SweepState, todo: list, rows: list) -> None:
    """Ray tasks, at most budget.max_concurrent at once; a signal marks the sweep
    interrupted (finished runs are kept in confirm.parquet)."""
    import ray

    from sweeper.driver import connect_ray
    from sweeper.interrupts import Interrupts, SweepInterrupted
    from sweeper.lifecycle import mark_interrupted
    from sweeper.tracking import Tracker

    res, tracker = state.sweep.resources, Tracker(state.tracking_uri)
    if not ray.is_initialized():
        connect_ray(state.address, state.base_config, res)
    task = ray.remote(num_cpus=res.cpu, num_gpus=res.gpu, max_retries=state.sweep.failure.max_failures)(
        train_and_test
    )
    pending: dict = {}
    try:
        with Interrupts(state.sweep_dir) as guard:
            while todo or pending:
                guard.check()  # a signal during the bookkeeping below stops here
                while todo and len(pending) < state.sweep.budget.max_concurrent:
                    row, seed = todo.pop(0)
                    config = run_config(row, seed)
                    run_id = _start_run(tracker, state, row["trial_id"], seed, config)
                    pending[task.remote(config, max(1, int(res.cpu)))] = (row["trial_id"], seed, run_id)
                with guard.raising():  # only the wait is cut short: a record is never half-written
                    (ref,), _ = ray.wait(list(pending), num_returns=1)
                _record(state, tracker, ref, pending.pop(ref), rows)
    except (SweepInterrupted, KeyboardInterrupt) as exc:
        for ref, (_, _, run_id) in pending.items():
            ray.cancel(ref, force=True)
            tracker.end_run(run_id, "KILLED")
        mark_interrupted(state, getattr(exc, "signame", "SIGINT"))
        raise SweepInterrupted(getattr(exc, "signame", "SIGINT"), state.sweep_dir) from None


def _record(state: SweepState, tracker, ref, key: tuple, rows: list) -> None:
    import ray

    from sweeper.export import write_parquet

    tid, seed, run_id = key
    try:
        out, status = ray.get(ref), "FINISHED"
    except Exception as exc:  # a crashed run is listed, and left out of the means
        out, status = {"error": " ".join(str(exc).split())[:300]}, "ERROR"
    rows.append({"trial_id": tid, "seed": seed, "status": status, "mlflow_run_id": run_id, **out})
    rows.sort(key=lambda r: (str(r["trial_id"]), int(r["seed"])))
    write_parquet(pd.DataFrame(rows), state.dir / CONFIRM_FILE)  # after each run: resume keeps it
    metrics = {k: v for k, v in out.items() if k.startswith(("test_", "val_")) and isinstance(v, float)}
    tracker.log_metrics(run_id, state.total_steps, metrics)
    if "per_image_json" in out:
        tracker.log_dict(run_id, json.loads(out["per_image_json"]), "test_scores.json")
    tracker.end_run(run_id, "FINISHED" if status == "FINISHED" else "FAILED")
    shown = "  ".join(
        f"{k} {fmt_metric('val_' + k[5:], v)}" for k, v in metrics.items() if k.startswith("test_")
    )
    print(f"confirm {tid} seed {seed}: {status.lower()}  {shown}", flush=True)


def confirm_stage(state: SweepState, sel) -> None:
    """The confirmation after the search's winner: train, table, confirmed winner, claim.
    A failure here closes the parent FAILED through the driver's guard (sweeper/closing.py)."""
    df = run_confirmation(state, sel)
    if df is not None:
        report_confirmation(state, sel, df)


def report_existing(state: SweepState, sel) -> None:
    """``srsweep best`` on a confirmed sweep: the confirmation's table and winner again
    (from confirm.parquet, nothing trained), so winner.yaml stays the confirmed one."""
    df = _existing(state)
    if len(df):
        report_confirmation(state, sel, df)


def report_confirmation(state: SweepState, sel, df: pd.DataFrame) -> None:
    from sweeper import confirm_report as cr

    conf = cr.decide(state, df)
    if conf is None:
        print("confirmation: no run finished, no confirmed winner (the search winner stands)", flush=True)
        return
    rank = {t: int(r) for t, r in zip(sel.ranked["trial_id"], sel.ranked["rank"]) if r == r}
    first = df[df["status"] == "FINISHED"]["per_image_json"].iloc[0]
    n_images = len(json.loads(first))
    print("\n".join(cr.table_lines(conf, rank)), flush=True)
    print("\n".join(cr.summary_lines(state, conf, str(sel.winner["trial_id"]), n_images)), flush=True)
    _publish(state, sel, conf)


def _publish(state: SweepState, sel, conf) -> None:
    """winner.yaml now holds the confirmed winner (first confirmation seed); MLflow tags."""
    import yaml

    from sweeper import atomic
    from sweeper import confirm_report as cr
    from sweeper.best import WINNER_FILE
    from sweeper.select import winner_config
    from sweeper.tracking import Tracker

    row = sel.ranked[sel.ranked["trial_id"] == conf.winner].iloc[0]
    cfg = {**winner_config(row), "seed": int(conf.table.iloc[0]["seeds"][0])}
    out = state.dir / WINNER_FILE
    header = cr.winner_header(state, conf, str(sel.winner["trial_id"]))
    atomic.write_text(out, header + f"# Rerun: srsweep train {out}\n" + yaml.safe_dump(cfg, sort_keys=False))
    tracker, parent = Tracker(state.tracking_uri), state.parent_run_id
    old, new = sel.winner.get("mlflow_run_id"), row.get("mlflow_run_id")
    if isinstance(old, str) and old and old != new:
        tracker.unmark_winner(old, "search-only")
    if isinstance(new, str) and new:
        tracker.mark_winner(new)
        tracker.set_tags(parent, {"winner_run_id": new})
    tracker.set_tags(parent, {"winner_trial_id": conf.winner, "confirm_seeds": json.dumps(conf.seeds)})
    for path in (out, state.dir / CONFIRM_FILE):
        tracker.log_artifact(parent, path)
    if conf.winner != sel.winner["trial_id"]:  # the dashboard's description and summary name it too
        from sweeper import report

        report.parent_outputs(tracker, state, sel.ranked, sel, conf.winner)
