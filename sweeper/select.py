"""Pick the winning trial of a sweep by a stated rule (DESIGN.md step 4, "Metrics").

Input: the driver's results table, one row per trial (``RESULT_COLUMNS`` + ``param.*``).
Pure pandas/numpy (no torch, no ray), so ``srsweep best`` runs on any machine."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

# ASHA-stopped trials count: their last validation is a real, comparable measurement.
FINISHED = ("TERMINATED", "STOPPED")
PARAM_PREFIX = "param."
DEFAULT_OBJECTIVES = (("final_val_lpips", "min"), ("final_val_psnr", "max"))
RESULT_COLUMNS = ("trial_id", "status", "mlflow_run_id", "steps", "time_s", "final_val_lpips", "final_val_psnr",
                  "final_val_ssim", "best_val_lpips", "best_val_psnr", "best_val_ssim", "sa_share", "beta2",
                  "config_json", "per_image_lpips_json", "checkpoint")  # plus param.<dotted path> columns


class NoWinnerError(RuntimeError):
    """No trial may win. ``ranked`` still holds the ranked table, so it can be reported."""

    def __init__(self, message: str, ranked: pd.DataFrame | None = None):
        super().__init__(message)
        self.ranked = ranked


def require_columns(df: pd.DataFrame, columns: Iterable[str], needed_by: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        raise ValueError(f"results table is missing column{'s' * (len(missing) > 1)} {names} (needed by {needed_by})")


def is_missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and math.isnan(v))


def _numeric(s: pd.Series) -> np.ndarray:
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def finished_mask(df: pd.DataFrame) -> np.ndarray:
    return df["status"].astype(str).str.upper().isin(FINISHED).to_numpy()


@dataclass(frozen=True)
class SelectionRule:
    """Winner = best ``metric`` among finished trials, with ``psnr_column >= psnr_floor``
    when a floor is given (the driver passes bicubic PSNR + a margin, so a GAN that
    wins LPIPS by hallucinating cannot fall below the interpolation baseline)."""

    metric: str = "final_val_lpips"
    mode: str = "min"
    psnr_column: str = "final_val_psnr"
    psnr_floor: float | None = None

    def __post_init__(self):
        if self.mode not in ("min", "max"):
            raise ValueError(f"SelectionRule.mode: {self.mode!r} is not 'min' or 'max'")
        if self.psnr_floor is not None and not math.isfinite(float(self.psnr_floor)):
            raise ValueError(f"SelectionRule.psnr_floor: {self.psnr_floor!r} is not a finite number")

    def describe(self) -> str:
        s = f"{self.mode} {self.metric} over TERMINATED/STOPPED trials"
        return s + (f", {self.psnr_column} >= {self.psnr_floor:.2f}" if self.psnr_floor is not None else "")


def rank(df: pd.DataFrame, rule: SelectionRule = SelectionRule()) -> pd.DataFrame:
    """Copy of ``df`` sorted best first, with ``rank`` (1 = winner) and ``feasible`` (may win).
    Order: feasible rows by metric; rows below the PSNR floor by metric (reported, never
    ahead of a feasible row); then ERROR/unfinished/non-finite rows in input order, rank
    NaN. Ties are broken by trial_id so the result does not depend on row order."""
    require_columns(df, ["trial_id", "status", rule.metric]
                    + ([rule.psnr_column] if rule.psnr_floor is not None else []), "rank")
    metric = _numeric(df[rule.metric])
    eligible = finished_mask(df) & np.isfinite(metric)
    feasible = eligible.copy()
    if rule.psnr_floor is not None:
        with np.errstate(invalid="ignore"):
            feasible &= _numeric(df[rule.psnr_column]) >= rule.psnr_floor  # NaN PSNR fails
    group = np.where(feasible, 0, np.where(eligible, 1, 2))
    key = np.where(group < 2, metric if rule.mode == "min" else -metric, 0.0)
    tid = np.where(group < 2, df["trial_id"].astype(str).to_numpy(dtype=object), "")
    keys = pd.DataFrame({"g": group, "k": key, "t": tid, "p": np.arange(len(df))})
    order = keys.sort_values(["g", "k", "t", "p"]).index.to_numpy()
    out = df.iloc[order].copy()
    n_ranked = int((group < 2).sum())
    out["rank"] = np.r_[np.arange(1, n_ranked + 1, dtype=float), np.full(len(df) - n_ranked, np.nan)]
    out["feasible"] = feasible[order]
    return out


def pareto_front(df: pd.DataFrame, objectives: Sequence[tuple[str, str]] = DEFAULT_OBJECTIVES) -> pd.DataFrame:
    """Non-dominated finished rows (all objectives finite), best first by the first
    objective. Equal points do not dominate each other, so duplicates are all kept."""
    cols = [c for c, _ in objectives]
    require_columns(df, ["status", *cols], "pareto_front")
    for c, m in objectives:
        if m not in ("min", "max"):
            raise ValueError(f"pareto_front: mode for {c!r} is {m!r}, not 'min' or 'max'")
    # Flip maximised objectives so that smaller is better everywhere.
    v = np.column_stack([_numeric(df[c]) * (1 if m == "min" else -1) for c, m in objectives])
    ok = np.flatnonzero(finished_mask(df) & np.isfinite(v).all(axis=1))
    v = v[ok]
    dominated = np.array([((v <= p).all(axis=1) & (v < p).any(axis=1)).any() for p in v], dtype=bool)
    front, fv = ok[~dominated], v[~dominated]
    order = np.lexsort(fv.T[::-1]) if len(fv) else np.array([], dtype=int)  # stable on full ties
    return df.iloc[front[order]].copy()


@dataclass(frozen=True)
class BootstrapResult:
    """Paired bootstrap of mean(a - b) over images. For LPIPS (lower is better), a
    negative mean means ``a`` is better; ``p_value`` is the fraction of resampled means
    >= 0, a one-sided p for "a has lower LPIPS than b" (0 means < 1 / n_boot)."""

    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n_images: int
    n_boot: int = 10_000

    @property
    def significant(self) -> bool:
        return self.ci_high < 0


def paired_bootstrap(a: Mapping[str, float], b: Mapping[str, float],
                     n_boot: int = 10_000, seed: int = 0) -> BootstrapResult:
    """Resample the common images with replacement ``n_boot`` times; CI = 2.5/97.5
    percentiles of the resampled mean differences. With one image every resample is that
    image, so the CI collapses to a point: no evidence either way."""
    common = sorted(set(a) & set(b))  # sorted: the result must not depend on dict order
    if not common:
        raise ValueError(f"paired_bootstrap: no image in common ({len(a)} vs {len(b)} images)")
    if int(n_boot) < 1:
        raise ValueError(f"paired_bootstrap: n_boot must be >= 1, got {n_boot}")
    d = np.array([float(a[k]) - float(b[k]) for k in common])
    if not np.isfinite(d).all():
        raise ValueError(f"paired_bootstrap: non-finite LPIPS for image {common[int(np.argmin(np.isfinite(d)))]!r}")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(int(n_boot), len(d)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return BootstrapResult(float(d.mean()), float(lo), float(hi), float(np.mean(means >= 0)), len(d), int(n_boot))


def per_image_lpips(row: pd.Series) -> dict[str, float] | None:
    raw = row.get("per_image_lpips_json")
    if isinstance(raw, str) and raw.strip():
        raw = json.loads(raw)
    return {str(k): float(v) for k, v in raw.items()} if isinstance(raw, dict) and raw else None


@dataclass
class Selection:
    ranked: pd.DataFrame
    winner: pd.Series
    runner_up: pd.Series | None
    bootstrap: BootstrapResult | None
    rule: SelectionRule = SelectionRule()
    note: str = ""  # why ``bootstrap`` is None


def _no_winner_message(ranked: pd.DataFrame, rule: SelectionRule) -> str:
    n, ranked_rows = len(ranked), ranked[ranked["rank"].notna()]
    if ranked_rows.empty:
        counts = ranked["status"].astype(str).value_counts()
        seen = ", ".join(f"{v} {k}" for k, v in counts.items()) or "none"
        return f"no winner: {n} trials ran, none finished with a finite {rule.metric} (status: {seen})"
    psnr = _numeric(ranked_rows[rule.psnr_column])
    best = np.nanmax(psnr) if np.isfinite(psnr).any() else float("nan")
    return (f"no winner: {n} trials ran ({len(ranked_rows)} finished with a finite {rule.metric}); "
            f"best {rule.psnr_column} {best:.2f} is below the floor {rule.psnr_floor:.2f}")


def select(df: pd.DataFrame, rule: SelectionRule = SelectionRule(),
           n_boot: int = 10_000, seed: int = 0) -> Selection:
    """Rank, pick the winner, and test it against the runner-up (the next *feasible*
    trial: an infeasible one is not an alternative) on per-image LPIPS."""
    require_columns(df, ["per_image_lpips_json"], "select")
    ranked = rank(df, rule)
    ok = ranked[ranked["feasible"].to_numpy(dtype=bool)]
    if ok.empty:
        raise NoWinnerError(_no_winner_message(ranked, rule), ranked)
    winner = ok.iloc[0]
    runner_up = ok.iloc[1] if len(ok) > 1 else None
    if runner_up is None:
        return Selection(ranked, winner, None, None, rule, "no other feasible trial")
    a, b = per_image_lpips(winner), per_image_lpips(runner_up)
    lacking = [str(r["trial_id"]) for r, m in ((winner, a), (runner_up, b)) if m is None]
    if lacking:
        return Selection(ranked, winner, runner_up, None, rule, f"no per-image LPIPS for trial {', '.join(lacking)}")
    if not set(a) & set(b):
        return Selection(ranked, winner, runner_up, None, rule, "winner and runner-up share no validation image")
    try:
        return Selection(ranked, winner, runner_up, paired_bootstrap(a, b, n_boot, seed), rule)
    except ValueError as e:  # e.g. a NaN image score: report it, the winner stands
        return Selection(ranked, winner, runner_up, None, rule, str(e))


def short_param_names(columns: Iterable[str], reserved: Iterable[str] = ()) -> dict[str, str]:
    """``param.a.b.c`` -> the shortest dotted suffix no other column shares
    (``loss.pixel.sa.lv.delta``, ``loss.x.delta`` -> ``lv.delta``, ``x.delta``)."""
    parts = {c: (c[len(PARAM_PREFIX):] if c.startswith(PARAM_PREFIX) else c).split(".") for c in columns}
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


_HEADERS = {"trial_id": "trial", "final_val_lpips": "LPIPS", "final_val_psnr": "PSNR", "final_val_ssim": "SSIM"}
_DIGITS = {"final_val_lpips": 5, "final_val_psnr": 2, "final_val_ssim": 4, "sa_share": 3}


def _cell(col: str, v: Any) -> str:
    if is_missing(v):
        return "-"
    if col == "rank":
        return str(int(v))
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return str(float(v)) if math.isinf(v) else (f"{v:.{_DIGITS[col]}f}" if col in _DIGITS else f"{v:.4g}")
    s = json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)
    return s if len(s) <= 24 else s[:21] + "..."


def format_table(ranked: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """Fixed-width table of a ``rank`` output: numbers right-aligned, text left."""
    params = [c for c in ranked.columns if c.startswith(PARAM_PREFIX)]
    if columns is None:
        columns = [c for c in ["rank", "trial_id", *params, "final_val_lpips", "final_val_psnr",
                               "final_val_ssim", "sa_share", "status", "feasible"] if c in ranked.columns]
    require_columns(ranked, columns, "format_ranking")
    heads = {c: _HEADERS.get(c, c) for c in columns}
    heads.update(short_param_names([c for c in columns if c.startswith(PARAM_PREFIX)],
                                   reserved=[h for c, h in heads.items() if not c.startswith(PARAM_PREFIX)]))
    cells = {c: [heads[c]] + [_cell(c, v) for v in ranked[c]] for c in columns}
    width = {c: max(len(s) for s in cells[c]) for c in columns}
    right = {c: all(isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_))
                    for v in ranked[c] if not is_missing(v)) for c in columns}
    lines = ["  ".join(cells[c][i].rjust(width[c]) if right[c] else cells[c][i].ljust(width[c])
                       for c in columns).rstrip() for i in range(len(ranked) + 1)]
    lines.insert(1, "-" * max(len(s) for s in lines))
    return "\n".join(lines)


def significance_line(sel: Selection) -> str:
    if sel.bootstrap is None:
        return f"winner vs runner-up: significance not tested ({sel.note})"
    r = sel.bootstrap
    p = f"p < {1 / r.n_boot:.2g}" if r.p_value == 0 else f"p = {r.p_value:.3g}"
    s = (f"winner vs runner-up ({sel.winner['trial_id']} vs {sel.runner_up['trial_id']}): "
         f"mean LPIPS difference {r.mean_diff:.3g} (95% CI {r.ci_low:.3g} .. {r.ci_high:.3g}, {p}, "
         f"{r.n_images} image{'s' * (r.n_images != 1)}): {'significant' if r.significant else 'not significant'}")
    return s + (" (one image: the CI is a single point, not evidence)" if r.n_images < 2 else "")


def format_ranking(selection: Selection, columns: Sequence[str] | None = None) -> str:
    """Rule line, ranking table (winner first) and the winner-vs-runner-up sentence."""
    n = len(selection.ranked)
    head = f"{n} trials; winner {selection.winner['trial_id']} by {selection.rule.describe()}"
    return "\n".join([head, format_table(selection.ranked, columns), significance_line(selection)])


def winner_config(row: pd.Series) -> dict:
    """The winner's full validated config (what ``srsweep train`` reruns)."""
    raw = row.get("config_json")
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(f"trial {row.get('trial_id')!r} has no config_json")
    return json.loads(raw)  # json accepts Infinity, which is how mu = inf is stored
