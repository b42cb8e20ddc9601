"""``srsweep run --dry-run``: the plan of a sweep, printed before anything runs.

The trials, each searched parameter and its range, the resources of a trial and the
compute estimate (trial steps; hours when a previous sweep of the same name recorded
its time per step).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from sweeper.space import Param


def describe(p: Param) -> str:
    """``float [0.2, 20] log, or .inf``; ``choices conv3_4 | conv4_4``; ``first_k 1..10``."""
    k = p.kind
    if k in ("float", "int"):
        lo, hi = p.float_ or p.int_
        s = f"{k} [{lo:g}, {hi:g}]" + (" log" if p.log else "") + (f" step {p.step:g}" if p.step else "")
        if p.or_:
            s += ", or " + ", ".join(
                ".inf" if isinstance(v, float) and math.isinf(v) else str(v) for v in p.or_
            )
        return s
    if k == "first_k":
        return f"first k blocks, k in {p.first_k[0]}..{p.first_k[1]}"
    values = p.choices if k == "choices" else p.grid if k == "grid" else p.subset
    what = {"choices": "one of", "grid": "grid", "subset": "non-empty subset of"}[k]
    return f"{what} " + " | ".join(map(str, values))


def seconds_per_step(storage: Path, name: str) -> Optional[float]:
    """Median trial seconds per step of the newest finished sweep of this name, if any."""
    import pandas as pd

    tables = sorted(storage.glob(f"{name}-*/results.parquet"), key=lambda p: p.stat().st_mtime)
    if not tables:
        return None
    df = pd.read_parquet(tables[-1])
    rate = pd.to_numeric(df["time_s"], errors="coerce") / pd.to_numeric(df["steps"], errors="coerce")
    rate = rate[rate.notna() & (rate > 0)]
    return float(rate.median()) if len(rate) else None


def plan_lines(sweep, cfg, storage: Path, overrides=(), tiny: bool = False) -> list[str]:
    t, res, b = cfg.train, sweep.resources, sweep.budget
    algo = sweep.search.algorithm
    n = sweep.planned_trials
    reports = t.steps // t.val_every
    lines = [
        f"dry run of sweep {sweep.name}: nothing is started"
        + (f" (with --tiny{', ' if overrides else ''}" if tiny else " (with " if overrides else "")
        + (", ".join(f"--set {o}" for o in overrides))
        + (")" if tiny or overrides else ""),
        f"trials: {n} ({algo}{'' if algo == 'grid' else f', seed {sweep.search.seed}'}), "
        f"at most {b.max_concurrent} at once"
        + (f", time budget {b.time_budget_s:g} s" if b.time_budget_s else ""),
        f"per trial: {t.steps} GAN steps, validation every {t.val_every} ({reports} reports, "
        f"{t.val_images or 'all'} val images); shared pretraining {t.pretrain_steps} steps once"
        + (" (pretrained_g given: skipped)" if t.pretrained_g else ""),
        f"scheduler: {sweep.scheduler.type}"
        + (
            f", grace {sweep.scheduler.grace_period} validation rounds "
            f"({sweep.scheduler.grace_period * t.val_every} steps), reduction factor "
            f"{sweep.scheduler.reduction_factor:g}"
            if sweep.scheduler.type == "asha"
            else ""
        ),
        f"objective: {', '.join(f'{m.mode} {m.name}' for m in sweep.objective.metrics)}",
        "space:",
    ]
    for top in sweep.space:
        for where, p in top.walk(""):
            indent = "    " * (1 + where.count(".when."))
            lines.append(f"{indent}{p.path}: {describe(p)}")
    kind = "GPU" if res.gpu else "CPU"
    lines.append(f"resources per trial: {res.cpu:g} CPU, {res.gpu:g} GPU; backbones {cfg.backbones.weights}")
    total = n * t.steps
    est = f"compute: at most {n} trials x {t.steps} steps = {total} trial steps (ASHA stops some early)"
    est += f" + {t.pretrain_steps} pretraining steps" if t.pretrain_steps and not t.pretrained_g else ""
    sps = seconds_per_step(storage, sweep.name)
    if sps is not None:
        units = res.gpu if res.gpu else res.cpu
        hours = total * sps / 3600
        est += (
            f"; at {sps:.3g} s/step (last {sweep.name} sweep in {storage}): ~{hours:.2g} trial-hours, "
            f"~{hours * units:.2g} {kind}-hours, ~{hours / max(1, b.max_concurrent):.2g} h wall"
        )
    else:
        est += f"; no timing known (a finished {sweep.name} sweep in {storage} gives one)"
    return lines + [est, confirm_line(sweep, cfg)]


def confirm_line(sweep, cfg) -> str:
    """The confirmation's compute: finalists x seeds x steps, on which test split."""
    c, t = sweep.confirm, cfg.train
    if c is None:
        return "confirmation: off (confirm: false)"
    if not cfg.data.test:
        return "confirmation: skipped (no data.test)"
    return (
        f"confirmation: top {c.top_k} finalists x {c.seeds} fresh seeds x {t.steps} steps = "
        f"{c.top_k * c.seeds * t.steps} trial steps, scored on data.test = {cfg.data.test}"
        + (" (NOT held-out: allow_test_overlap)" if sweep.allow_test_overlap else "")
        + f"; search seeds: {sweep.seeds.search}"
    )
