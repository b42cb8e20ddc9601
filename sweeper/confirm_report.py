"""What the confirmation says: its table, its winner, the claim, winner.yaml.

Input: ``confirm.parquet`` rows (sweeper/confirm.py). The winner is the finalist with
the best mean over seeds of the declared objective on the test split (two objectives:
the Pareto front of the finalists' means, tie-break the first objective, which picks
the same finalist). The claim (winner vs runner-up) is ``sweeper.claim``'s.
Pure pandas/numpy apart from the MLflow tags in ``publish``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd

from sweeper.claim import Claim, claim
from sweeper.significance import independent_units
from sweeper.state import SweepState

SHOWN = (("lpips", "LPIPS", 5), ("psnr", "PSNR", 2), ("ssim", "SSIM", 4))


@dataclass
class Confirmation:
    table: pd.DataFrame  # one row per finalist: mean / sd / per-seed values, best first
    winner: str
    runner_up: Optional[str]
    claim: Optional[Claim]
    metric: str  # test_<name> of the declared objective's first metric
    seeds: list[int]


def per_finalist(df: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """Mean and sd over seeds of each test metric, per finalist, best ``metric`` mean first."""
    ok = df[df["status"] == "FINISHED"]
    out = []
    for tid, g in ok.groupby("trial_id", sort=False):
        g = g.sort_values("seed")
        row = {"trial_id": tid, "n_seeds": len(g), "seeds": [int(s) for s in g["seed"]]}
        for m, _, _ in SHOWN:
            v = pd.to_numeric(g[f"test_{m}"], errors="coerce").to_numpy(dtype=float)
            row.update({f"test_{m}_mean": v.mean(), f"test_{m}_sd": v.std(ddof=1) if len(v) > 1 else np.nan})
            row[f"test_{m}_seeds"] = [float(x) for x in v]
        out.append(row)
    table = pd.DataFrame(out)
    if table.empty:
        return table
    key = table[f"{metric}_mean"] * (1 if mode == "min" else -1)
    return table.assign(_k=key).sort_values(["_k", "trial_id"]).drop(columns="_k").reset_index(drop=True)


def scores_by_seed(df: pd.DataFrame, tid: str, metric: str) -> dict[int, dict[str, float]]:
    """{seed: {image (or video sequence): score}} of one finalist's finished runs."""
    name = metric.removeprefix("test_")
    ok = df[(df["trial_id"] == tid) & (df["status"] == "FINISHED")]
    out = {}
    for seed, raw in zip(ok["seed"], ok["per_image_json"]):
        scores = {k: float(v[name]) for k, v in json.loads(raw).items()}
        out[int(seed)] = independent_units(scores)[0]
    return out


def decide(state: SweepState, df: pd.DataFrame) -> Optional[Confirmation]:
    first = state.sweep.objective.metrics[0]  # the declared objective, scored on test
    metric, mode = "test_" + first.name.removeprefix("val_"), first.mode
    table = per_finalist(df, metric, mode)
    if table.empty:
        return None
    winner = table["trial_id"].iloc[0]
    runner = table["trial_id"].iloc[1] if len(table) > 1 else None
    c = None
    if runner is not None:
        a, b = scores_by_seed(df, winner, metric), scores_by_seed(df, runner, metric)
        c = claim(a, b, metric, mode)
    seeds = sorted({int(s) for s in df["seed"]})
    return Confirmation(table, winner, runner, c, metric, seeds)


def _fmt(v: float, digits: int) -> str:
    return "-" if not np.isfinite(v) else f"{v:.{digits}f}"


def table_lines(conf: Confirmation, search_rank: dict[str, int]) -> list[str]:
    t = conf.table
    head = ["finalist", "search rank", "seeds"] + [f"test {h} mean +- sd" for _, h, _ in SHOWN]
    head.append(f"per-seed {conf.metric}")
    name = conf.metric.removeprefix("test_")
    digits = dict((m, d) for m, _, d in SHOWN)[name]
    rows = [
        [str(r["trial_id"]), str(search_rank.get(r["trial_id"], "-")), str(r["n_seeds"])]
        + [f"{_fmt(r[f'test_{m}_mean'], d)} +- {_fmt(r[f'test_{m}_sd'], d)}" for m, _, d in SHOWN]
        + [" ".join(_fmt(v, digits) for v in r[f"{conf.metric}_seeds"])]
        for _, r in t.iterrows()
    ]
    width = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(x[i].ljust(width[i]) for i in range(len(head))).rstrip() for x in [head, *rows]]
    return [lines[0], "-" * max(map(len, lines)), *lines[1:]]


def summary_lines(state: SweepState, conf: Confirmation, search_winner: str, n_images: int) -> list[str]:
    from sweeper.confirm import split_label

    w = conf.table.iloc[0]
    name = conf.metric.removeprefix("test_")
    digits = dict((m, d) for m, _, d in SHOWN)[name]
    lines = []
    if search_winner != conf.winner:
        lines.append(
            f"the search winner {search_winner} loses the confirmation: {conf.winner} has the best "
            f"mean {conf.metric} over seeds on the test split"
        )
    claim_text = (
        f"vs runner-up {conf.runner_up}: {conf.claim.describe()}" if conf.claim else "no runner-up: no claim"
    )
    lines.append(
        f"winner (confirmed): trial {conf.winner}, {conf.metric} {_fmt(w[f'{conf.metric}_mean'], digits)} "
        f"+- {_fmt(w[f'{conf.metric}_sd'], digits)} over seeds {w['seeds']} on data.test = "
        f"{split_label(state)} ({n_images} images); {claim_text}"
    )
    return lines


def winner_header(state: SweepState, conf: Confirmation, search_winner: str) -> str:
    """The comment block of winner.yaml: seeds, test split, claim."""
    from sweeper.confirm import split_label

    w = conf.table.iloc[0]
    return "".join(
        f"# {line}\n"
        for line in (
            f"Confirmed winner: trial {conf.winner} (search winner: {search_winner}).",
            f"Confirmation seeds: {w['seeds']}; test split: data.test = {split_label(state)}.",
            f"{conf.metric}: mean {w[f'{conf.metric}_mean']:.6g}, sd {w[f'{conf.metric}_sd']:.3g}, "
            f"per seed {w[f'{conf.metric}_seeds']}.",
            f"Claim: {conf.claim.describe() if conf.claim else 'no runner-up'}",
        )
    )
