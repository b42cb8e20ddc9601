"""Pick the winning trial of a sweep by a stated rule (DESIGN.md step 4, "Metrics").

Input: the driver's results table (sweeper/results.py), one row per trial with
``trial_id``, ``status``, ``steps``, the ``final_val_*`` metrics, ``per_image_*_json``
and ``param.*`` columns. Pure pandas/numpy (no torch, no ray), so ``srsweep best`` runs
on any machine.

Like with like: only trials that ran the full budget (TERMINATED, steps == total) can
win or sit on the Pareto front. An ASHA-stopped trial was scored after fewer steps, so
its LPIPS is not comparable; it is listed after the finished ones with its steps.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from sweeper.significance import PairedTest, paired_test, per_image_scores

FINISHED = "TERMINATED"
PARAM_PREFIX = "param."
DEFAULT_OBJECTIVES = (("final_val_lpips", "min"), ("final_val_psnr", "max"))
# The asked SA share (a searched or fixed parameter), old key name included.
SA_TARGET_PARAMS = ("param.loss.pixel.sa.sa_share_target", "param.loss.pixel.sa.sa_share")
SA_REACHED = ("sa_share", "sa_share_mean")


class NoWinnerError(RuntimeError):
    """No trial may win. ``ranked`` still holds the ranked table, so it can be reported."""

    def __init__(self, message: str, ranked: pd.DataFrame | None = None):
        super().__init__(message)
        self.ranked = ranked


def require_columns(df: pd.DataFrame, columns: Iterable[str], needed_by: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        plural = "s" * (len(missing) > 1)
        raise ValueError(f"results table is missing column{plural} {names} (needed by {needed_by})")


def is_missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and math.isnan(v))


def _numeric(s: pd.Series) -> np.ndarray:
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def finished_mask(df: pd.DataFrame, total_steps: int | None = None) -> np.ndarray:
    """Trials that ran the whole budget: TERMINATED and, when known, steps >= total."""
    done = df["status"].astype(str).str.upper().eq(FINISHED).to_numpy(dtype=bool, copy=True)
    if total_steps is not None:
        require_columns(df, ["steps"], "finished_mask")
        with np.errstate(invalid="ignore"):
            done &= _numeric(df["steps"]) >= total_steps
    return done


def band_violation(value: float, band: tuple[float, float]) -> float:
    """Optuna's constraint convention: <= 0 inside [lo, hi], else the distance to it."""
    lo, hi = band
    return max(lo - value, value - hi)


def constraint_ok(values: Sequence[float] | np.ndarray, band: tuple[float, float]) -> np.ndarray:
    """Inside the band (a missing value is not: the trial never showed it complied)."""
    v = np.asarray(values, dtype=float)
    with np.errstate(invalid="ignore"):
        return (v >= band[0]) & (v <= band[1])


@dataclass(frozen=True)
class SelectionRule:
    """Winner = best ``metric`` among trials that ran ``total_steps``, with
    ``psnr_column >= psnr_floor`` when a floor is given (the driver passes bicubic PSNR +
    a margin, so a GAN that wins LPIPS by hallucinating cannot fall below interpolation)
    and ``constraint_metric`` inside ``constraint_band`` when a constraint is given."""

    metric: str = "final_val_lpips"
    mode: str = "min"
    psnr_column: str = "final_val_psnr"
    psnr_floor: float | None = None
    total_steps: int | None = None
    constraint_metric: str | None = None
    constraint_band: tuple[float, float] | None = None

    def __post_init__(self):
        if self.mode not in ("min", "max"):
            raise ValueError(f"SelectionRule.mode: {self.mode!r} is not 'min' or 'max'")
        if self.psnr_floor is not None and not math.isfinite(float(self.psnr_floor)):
            raise ValueError(f"SelectionRule.psnr_floor: {self.psnr_floor!r} is not a finite number")
        if (self.constraint_metric is None) != (self.constraint_band is None):
            raise ValueError("SelectionRule: constraint_metric and constraint_band go together")

    def describe(self) -> str:
        budget = f"steps == {self.total_steps}" if self.total_steps is not None else "full budget"
        s = f"{self.mode} {self.metric} over trials that finished ({FINISHED}, {budget})"
        if self.psnr_floor is not None:
            s += f", {self.psnr_column} >= {self.psnr_floor:.2f}"
        if self.constraint_band is not None:
            s += f", {self.constraint_metric} in [{self.constraint_band[0]:g}, {self.constraint_band[1]:g}]"
        return s


def _constraint_column(df: pd.DataFrame, rule: SelectionRule) -> np.ndarray | None:
    if rule.constraint_band is not None:
        require_columns(df, [rule.constraint_metric], "the constraint")
        return constraint_ok(_numeric(df[rule.constraint_metric]), rule.constraint_band)
    if "constraint_ok" in df.columns:  # computed upstream: honour it, missing = not ok
        return df["constraint_ok"].map(lambda v: v is True or v is np.True_).to_numpy(dtype=bool)
    return None


def rank(df: pd.DataFrame, rule: SelectionRule = SelectionRule()) -> pd.DataFrame:
    """Copy of ``df`` sorted best first, with ``rank`` (1 = winner), ``may_win`` and,
    under a constraint, ``constraint_ok``. Order: (0) finished trials that may win, by
    metric; (1) finished trials below the PSNR floor or outside the constraint, by metric;
    (2) ASHA-stopped trials, most steps first, then by metric, rank NaN; (3) ERROR,
    unfinished and non-finite rows in input order, rank NaN. Ties are broken by trial_id
    so the result does not depend on row order."""
    require_columns(
        df,
        ["trial_id", "status", "steps", rule.metric]
        + ([rule.psnr_column] if rule.psnr_floor is not None else []),
        "rank",
    )
    metric = _numeric(df[rule.metric])
    finite = np.isfinite(metric)
    finished = finished_mask(df, rule.total_steps) & finite
    stopped = ~finished & finite & df["status"].astype(str).str.upper().isin([FINISHED, "STOPPED"]).to_numpy()
    may_win = finished.copy()
    if rule.psnr_floor is not None:
        with np.errstate(invalid="ignore"):
            may_win &= _numeric(df[rule.psnr_column]) >= rule.psnr_floor  # NaN PSNR fails
    ok = _constraint_column(df, rule)
    if ok is not None:
        may_win &= ok
    group = np.select([may_win, finished, stopped], [0, 1, 2], 3)
    steps = np.nan_to_num(_numeric(df["steps"]), nan=0.0)
    key = np.where(group < 3, metric if rule.mode == "min" else -metric, 0.0)
    tid = np.where(group < 3, df["trial_id"].astype(str).to_numpy(dtype=object), "")
    keys = pd.DataFrame(
        {"g": group, "s": np.where(group == 2, -steps, 0.0), "k": key, "t": tid, "p": np.arange(len(df))}
    )
    order = keys.sort_values(["g", "s", "k", "t", "p"]).index.to_numpy()
    out = df.iloc[order].copy()
    n_ranked = int((group < 2).sum())
    out["rank"] = np.r_[np.arange(1, n_ranked + 1, dtype=float), np.full(len(df) - n_ranked, np.nan)]
    if ok is not None:
        out["constraint_ok"] = ok[order]
    out["may_win"] = may_win[order]
    return out


def pareto_front(
    df: pd.DataFrame,
    objectives: Sequence[tuple[str, str]] = DEFAULT_OBJECTIVES,
    total_steps: int | None = None,
) -> pd.DataFrame:
    """Non-dominated rows among trials that ran the full budget (all objectives finite,
    ``constraint_ok`` where that column exists), best first by the first objective.
    Equal points do not dominate each other, so duplicates are all kept."""
    cols = [c for c, _ in objectives]
    require_columns(df, ["status", *cols], "pareto_front")
    for c, m in objectives:
        if m not in ("min", "max"):
            raise ValueError(f"pareto_front: mode for {c!r} is {m!r}, not 'min' or 'max'")
    # Flip maximised objectives so that smaller is better everywhere.
    v = np.column_stack([_numeric(df[c]) * (1 if m == "min" else -1) for c, m in objectives])
    keep = finished_mask(df, total_steps) & np.isfinite(v).all(axis=1)
    if "constraint_ok" in df.columns:
        keep &= df["constraint_ok"].map(lambda x: x is True or x is np.True_).to_numpy(dtype=bool)
    ok = np.flatnonzero(keep)
    v = v[ok]
    dominated = np.array([((v <= p).all(axis=1) & (v < p).any(axis=1)).any() for p in v], dtype=bool)
    front, fv = ok[~dominated], v[~dominated]
    order = np.lexsort(fv.T[::-1]) if len(fv) else np.array([], dtype=int)  # stable on full ties
    return df.iloc[front[order]].copy()


@dataclass
class WinnerChoice:
    """What ``select`` decided (``sweeper.sweep_config.Selection`` is the YAML section)."""

    ranked: pd.DataFrame
    winner: pd.Series
    runner_up: pd.Series | None
    test: PairedTest | None
    rule: SelectionRule = SelectionRule()
    note: str = ""  # why ``test`` is None


def _no_winner_message(ranked: pd.DataFrame, rule: SelectionRule) -> str:
    n, ranked_rows = len(ranked), ranked[ranked["rank"].notna()]
    if ranked_rows.empty:
        counts = ranked["status"].astype(str).value_counts()
        seen = ", ".join(f"{v} {k}" for k, v in counts.items()) or "none"
        return (
            f"no winner: {n} trials ran, none ran the full budget with a finite {rule.metric} "
            f"(status: {seen})"
        )
    why = []
    if rule.psnr_floor is not None:
        psnr = _numeric(ranked_rows[rule.psnr_column])
        best = np.nanmax(psnr) if np.isfinite(psnr).any() else float("nan")
        why.append(f"best {rule.psnr_column} {best:.2f} vs the floor {rule.psnr_floor:.2f}")
    if "constraint_ok" in ranked_rows.columns:
        why.append(f"{int(ranked_rows['constraint_ok'].sum())} inside the constraint band")
    return (
        f"no winner: {n} trials ran ({len(ranked_rows)} finished with a finite {rule.metric}); "
        + "; ".join(why)
    )


def select(
    df: pd.DataFrame, rule: SelectionRule = SelectionRule(), n_resamples: int = 9999, seed: int = 0
) -> WinnerChoice:
    """Rank, pick the winner, and test it against the runner-up (the next trial that
    may win: one that may not is no alternative) on the per-image scores of the rule's metric."""
    name = rule.metric.removeprefix("final_").removeprefix("val_")  # final_val_psnr -> psnr
    column = f"per_image_{name}_json"
    require_columns(df, [column], "select")
    ranked = rank(df, rule)
    ok = ranked[ranked["may_win"].to_numpy(dtype=bool)]
    if ok.empty:
        raise NoWinnerError(_no_winner_message(ranked, rule), ranked)
    winner = ok.iloc[0]
    runner_up = ok.iloc[1] if len(ok) > 1 else None
    if runner_up is None:
        return WinnerChoice(ranked, winner, None, None, rule, "no other trial may win")
    a, b, name = per_image_scores(winner, column), per_image_scores(runner_up, column), name.upper()
    lacking = [str(r["trial_id"]) for r, m in ((winner, a), (runner_up, b)) if m is None]
    if lacking:
        return WinnerChoice(
            ranked, winner, runner_up, None, rule, f"no per-image {name} for trial {', '.join(lacking)}"
        )
    try:
        return WinnerChoice(
            ranked, winner, runner_up, paired_test(a, b, n_resamples, seed, metric=name), rule
        )
    except ValueError as e:  # no common image, a NaN image score: report it, the winner stands
        return WinnerChoice(ranked, winner, runner_up, None, rule, str(e))


def short_param_names(columns: Iterable[str], reserved: Iterable[str] = ()) -> dict[str, str]:
    """``param.a.b.c`` -> the shortest dotted suffix no other column shares
    (``loss.pixel.sa.lv.delta``, ``loss.x.delta`` -> ``lv.delta``, ``x.delta``)."""
    parts = {c: (c[len(PARAM_PREFIX) :] if c.startswith(PARAM_PREFIX) else c).split(".") for c in columns}
    taken = set(reserved)
    out = {}
    for c, p in parts.items():
        for k in range(1, len(p) + 1):
            name = ".".join(p[-k:])
            clash = any(".".join(q[-k:]) == name for o, q in parts.items() if o != c)
            if not clash and name not in taken:
                break
        else:
            name = ".".join(p) if ".".join(p) not in taken else c
        out[c] = name
    return out


_HEADERS = {
    "trial_id": "trial",
    "final_val_lpips": "LPIPS",
    "final_val_psnr": "PSNR",
    "final_val_ssim": "SSIM",
    **{c: "sa_share_target" for c in SA_TARGET_PARAMS},
}
_DIGITS = {
    "final_val_lpips": 5,
    "final_val_psnr": 2,
    "final_val_ssim": 4,
    "sa_share": 3,
    "sa_share_mean": 3,
    **{c: 3 for c in SA_TARGET_PARAMS},
}
SA_LEGEND = {
    "sa_share_target": "SA share of the generator loss asked for",
    "sa_share": "share reached (last value)",
    "sa_share_mean": "share reached, mean over the GAN stage",
}


def _cell(col: str, v: Any) -> str:
    if is_missing(v):
        return "-"
    if col in ("rank", "steps"):
        return str(int(v))
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        if math.isinf(v):
            return str(float(v))
        return f"{v:.{_DIGITS[col]}f}" if col in _DIGITS else f"{v:.4g}"
    s = json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)
    return s if len(s) <= 24 else s[:21] + "..."


def default_columns(ranked: pd.DataFrame) -> list[str]:
    """rank, trial, searched params, SA share asked / reached side by side, metrics, budget."""
    sa_target = [c for c in SA_TARGET_PARAMS if c in ranked.columns][:1]
    params = [c for c in ranked.columns if c.startswith(PARAM_PREFIX) and c not in SA_TARGET_PARAMS]
    wanted = [
        "rank",
        "trial_id",
        *params,
        *sa_target,
        *SA_REACHED,
        "final_val_lpips",
        "final_val_psnr",
        "final_val_ssim",
        "steps",
        "status",
        "constraint_ok",
        "may_win",
    ]
    return [c for c in wanted if c in ranked.columns]


def ranking_table(ranked: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """Fixed-width table of a ``rank`` output: numbers right-aligned, text left."""
    columns = default_columns(ranked) if columns is None else list(columns)
    require_columns(ranked, columns, "ranking_table")
    heads = {c: _HEADERS.get(c, c) for c in columns}
    searched = [c for c in columns if c.startswith(PARAM_PREFIX) and c not in SA_TARGET_PARAMS]
    heads.update(short_param_names(searched, reserved=heads.values()))
    cells = {c: [heads[c]] + [_cell(c, v) for v in ranked[c]] for c in columns}
    width = {c: max(len(s) for s in cells[c]) for c in columns}
    right = {
        c: all(
            isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_))
            for v in ranked[c]
            if not is_missing(v)
        )
        for c in columns
    }
    lines = [
        "  ".join(
            cells[c][i].rjust(width[c]) if right[c] else cells[c][i].ljust(width[c]) for c in columns
        ).rstrip()
        for i in range(len(ranked) + 1)
    ]
    lines.insert(1, "-" * max(len(s) for s in lines))
    return "\n".join(lines)


def significance_line(choice: WinnerChoice) -> str:
    if choice.test is None:
        return f"winner vs runner-up: significance not tested ({choice.note})"
    return (
        f"winner vs runner-up ({choice.winner['trial_id']} vs {choice.runner_up['trial_id']}): "
        + choice.test.describe()
    )


def format_ranking(
    choice: WinnerChoice, columns: Sequence[str] | None = None, extra_columns: Sequence[str] = ()
) -> str:
    """Rule line, ranking table (winner first), SA legend, winner-vs-runner-up sentence.
    ``extra_columns`` (present ones only) follow the default or given columns."""
    ranked = choice.ranked
    if extra_columns:
        columns = [
            *(default_columns(ranked) if columns is None else columns),
            *(c for c in extra_columns if c in ranked.columns),
        ]
    n, n_done = len(ranked), int(ranked["rank"].notna().sum())
    head = (
        f"{n} trials ({n_done} ran the full budget; stopped and failed trials listed after them, "
        f"unranked); winner {choice.winner['trial_id']} by {choice.rule.describe()}"
    )
    table = ranking_table(ranked, columns)
    shown = {
        "sa_share_target" if c in SA_TARGET_PARAMS else c
        for c in (default_columns(ranked) if columns is None else columns)
    }
    legend = ["; ".join(f"{k}: {v}" for k, v in SA_LEGEND.items() if k in shown)]
    legend = legend if shown & set(SA_LEGEND) else []
    return "\n".join([head, table, *legend, significance_line(choice)])


def winner_config(row: pd.Series) -> dict:
    """The winner's full validated config (what ``srsweep train`` reruns)."""
    raw = row.get("config_json")
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(f"trial {row.get('trial_id')!r} has no config_json")
    return json.loads(raw)  # json accepts Infinity, which is how mu = inf is stored
