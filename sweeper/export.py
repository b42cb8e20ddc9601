"""The results table on disk (Parquet via pyarrow) and two PNG plots of it.

Pure pandas/pyarrow/matplotlib (no torch, no ray). Plots draw on a bare
``matplotlib.figure.Figure`` with the Agg canvas and never import pyplot: rendering
needs no display, keeps no global figure list, and does not switch the backend of a
notebook or GUI session that happens to import this module.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from . import atomic
from .select import (
    DEFAULT_OBJECTIVES,
    PARAM_PREFIX,
    finished_mask,
    is_missing,
    pareto_front,
    require_columns,
    short_param_names,
)

# Schema metadata key listing the columns stored as JSON text, so reading decodes them.
JSON_COLUMNS_KEY = b"srsweep.json_columns"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"cannot store a {type(o).__name__} in the results table")


def _needs_json(col: pd.Series) -> bool:
    """Object columns Arrow cannot type (lists, str mixed with numbers) become JSON text.
    Pure number columns stay numeric (float inf included), pure strings stay strings."""
    if col.dtype != object:
        return False
    vals = [v for v in col if not is_missing(v)]
    if all(isinstance(v, str) for v in vals):
        return False
    if any(isinstance(v, (list, tuple, dict, np.ndarray)) for v in vals):
        return True
    try:
        pa.array(vals, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        return True
    return False


def write_parquet(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write the table atomically (temp file + rename: a crash never leaves half a file
    where the last good one was). The index is not stored."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = df.copy()
    encoded = [str(c) for c in out.columns if _needs_json(out[c])]
    for c in encoded:
        out[c] = pd.Series(
            [None if is_missing(v) else json.dumps(v, default=_json_default) for v in out[c]],
            index=out.index,
            dtype=object,
        )
    table = pa.Table.from_pandas(out, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[JSON_COLUMNS_KEY] = json.dumps(encoded).encode()
    return atomic.write_with(path, lambda tmp: pq.write_table(table.replace_schema_metadata(meta), tmp))


def read_parquet(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by ``write_parquet``; JSON-stored columns come back as the
    Python values they were (lists, mixed str/float), inf as float inf."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results table not found: {path}")
    table = pq.read_table(path)
    encoded = json.loads((table.schema.metadata or {}).get(JSON_COLUMNS_KEY, b"[]"))
    df = table.to_pandas()
    for c in encoded:
        df[c] = pd.Series(
            [json.loads(v) if isinstance(v, str) else None for v in df[c]], index=df.index, dtype=object
        )
    return df


def _winner(df: pd.DataFrame) -> np.ndarray:
    """Row mask of the winner of a ``rank`` output (all False for a plain table)."""
    if "rank" not in df.columns:
        return np.zeros(len(df), dtype=bool)
    w = pd.to_numeric(df["rank"], errors="coerce").to_numpy(dtype=float, na_value=np.nan) == 1
    if "may_win" in df.columns:  # rank 1 below the PSNR floor is not a winner
        w &= df["may_win"].fillna(False).to_numpy(dtype=bool)
    return w


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    return atomic.write_with(path, lambda tmp: FigureCanvasAgg(fig).print_png(str(tmp)))


def plot_pareto(
    df: pd.DataFrame,
    path: str | os.PathLike,
    objectives: Sequence[tuple[str, str]] = DEFAULT_OBJECTIVES,
    psnr_floor: float | None = None,
    total_steps: int | None = None,
) -> Path:
    """Scatter of trials that ran the full budget (x: first objective, y: second), the
    Pareto front (of those) as a line, ASHA-stopped trials as small grey crosses (scored
    after fewer steps: shown, not compared), the winner starred when ``df`` is a ``rank``
    output, the PSNR floor dashed."""
    (xc, xm), (yc, ym) = objectives[:2]
    require_columns(df, ["status", xc, yc], "plot_pareto")
    x = pd.to_numeric(df[xc], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    y = pd.to_numeric(df[yc], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    shown = np.isfinite(x) & np.isfinite(y)
    ok = finished_mask(df, total_steps) & shown
    early = ~ok & shown & df["status"].astype(str).str.upper().isin(["TERMINATED", "STOPPED"]).to_numpy()
    can = (
        df["may_win"].fillna(False).to_numpy(dtype=bool)
        if "may_win" in df.columns
        else np.ones(len(df), dtype=bool)
    )
    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(x[ok & can], y[ok & can], s=22, color="tab:blue", alpha=0.7, label="finished trials")
    if (ok & ~can).any():
        ax.scatter(
            x[ok & ~can],
            y[ok & ~can],
            s=22,
            facecolors="none",
            edgecolors="grey",
            label="may not win (PSNR floor / constraint)",
        )
    if early.any():
        ax.scatter(
            x[early], y[early], s=16, marker="x", color="lightgrey", label="stopped early (not compared)"
        )
    front = pareto_front(df, objectives[:2], total_steps)
    if len(front):
        front = front.sort_values(xc)
        ax.plot(
            front[xc].astype(float),
            front[yc].astype(float),
            "-o",
            color="tab:red",
            ms=4,
            label=f"Pareto front ({len(front)})",
        )
    for _, w in df[_winner(df)].iterrows():
        ax.scatter(
            [w[xc]],
            [w[yc]],
            marker="*",
            s=260,
            color="gold",
            edgecolors="black",
            zorder=5,
            label=f"winner {w['trial_id']}",
        )
    if psnr_floor is not None:
        ax.axhline(psnr_floor, ls="--", color="grey", lw=1, label=f"PSNR floor {psnr_floor:.2f}")
    if not ok.any():
        ax.text(0.5, 0.5, "no finished trials", transform=ax.transAxes, ha="center", va="center")
    ax.set_xlabel(f"{xc} ({'lower' if xm == 'min' else 'higher'} is better)")
    ax.set_ylabel(f"{yc} ({'lower' if ym == 'min' else 'higher'} is better)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="best")
    return _save(fig, path)


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _axis(col: pd.Series) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """Map one column to vertical positions in [-0.1, 1] plus (position, label) ticks.
    Missing values (a conditional parameter that did not apply) sit at -0.1, "n/a";
    numbers scale linearly (log when positive and spanning >= 2 decades); +inf (e.g.
    mu = inf, "VGG only") takes the top slot; anything else is a category."""
    vals = list(col)
    miss = np.array([is_missing(v) for v in vals], dtype=bool)
    pos = np.full(len(vals), -0.1)
    ticks = [(-0.1, "n/a")] if miss.any() else []
    present = [v for v, m in zip(vals, miss) if not m]
    if present and all(_is_number(v) for v in present):
        x = np.array([float(v) for v in vals], dtype=float)
        fin, pinf, ninf = np.isfinite(x), x == np.inf, x == -np.inf
        lo_slot, hi_slot = (0.12 if ninf.any() else 0.0), (0.88 if pinf.any() else 1.0)
        pos[pinf], pos[ninf] = 1.0, 0.0
        ticks += [(1.0, "inf")] * bool(pinf.any()) + [(0.0, "-inf")] * bool(ninf.any())
        if fin.any():
            lo, hi = x[fin].min(), x[fin].max()
            log = lo > 0 and hi / lo >= 100
            t = np.log10(x[fin]) if log else x[fin]
            tlo, thi = (np.log10(lo), np.log10(hi)) if log else (lo, hi)
            frac = (t - tlo) / (thi - tlo) if thi > tlo else np.full(len(t), 0.5)
            pos[fin] = lo_slot + frac * (hi_slot - lo_slot)
            ticks += (
                [(lo_slot, _fmt(lo)), (hi_slot, _fmt(hi))] if hi > lo else [(float(pos[fin][0]), _fmt(lo))]
            )
        return pos, ticks
    labels = [json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v) for v in present]
    cats = sorted(set(labels))
    slot = {c: (i / (len(cats) - 1) if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
    pos[~miss] = [slot[s] for s in labels]
    step = max(1, len(cats) // 12)  # label at most ~12 categories per axis
    ticks += [(slot[c], c if len(c) <= 16 else c[:13] + "...") for c in cats[::step]]
    return pos, ticks


def _stopped(df: pd.DataFrame) -> np.ndarray:
    """Row mask of the trials ASHA stopped (status STOPPED): their value is a partial one."""
    if "status" not in df.columns:
        return np.zeros(len(df), dtype=bool)
    return df["status"].astype(str).str.upper().eq("STOPPED").to_numpy(dtype=bool)


def _trial_lines(
    ax, xs: np.ndarray, ys: np.ndarray, cval: np.ndarray, stopped: np.ndarray, cmap, norm
) -> None:
    """Finished trials coloured by value (points on the axes too); stopped ones grey dashed."""
    done = ~stopped
    segments = [np.column_stack([xs, y]) for y in ys[done]]
    ax.add_collection(
        LineCollection(segments, array=cval[done], cmap=cmap, norm=norm, linewidths=1.2, alpha=0.8)
    )
    grey = [np.column_stack([xs, y]) for y in ys[stopped]]
    ax.add_collection(LineCollection(grey, colors="darkgrey", linewidths=0.8, linestyles="--"))
    n = len(xs)
    ax.scatter(
        np.tile(xs, int(done.sum())),
        ys[done].ravel(),
        c=np.repeat(cval[done], n),
        cmap=cmap,
        norm=norm,
        s=10,
        zorder=3,
        plotnonfinite=True,
    )


def _axis_labels(ax, axes: list) -> None:
    for i, (_, ticks) in enumerate(axes):
        ax.axvline(i, color="black", lw=0.8)
        for p, label in ticks:
            box = {"fc": "white", "ec": "none", "alpha": 0.7, "pad": 0.5}
            ax.text(i + 0.04, p, label, fontsize=7, va="center", zorder=5, bbox=box)


def plot_parallel(df: pd.DataFrame, path: str | os.PathLike, color: str = "final_val_lpips") -> Path:
    """Parallel coordinates: one vertical axis per ``param.*`` column plus ``color`` as
    the last axis, one line per trial coloured by ``color`` (grey where it is NaN).
    ASHA-stopped trials are thin dashed grey lines: scored after fewer steps, not compared
    (as in the Pareto plot); the colour scale spans the other trials only."""
    require_columns(df, [color], "plot_parallel")
    params = [c for c in df.columns if str(c).startswith(PARAM_PREFIX)]
    names = list(short_param_names(params).values()) + [color]
    axes = [_axis(df[c]) for c in params] + [_axis(pd.to_numeric(df[color], errors="coerce"))]
    ys = np.column_stack([p for p, _ in axes]) if len(df) else np.zeros((0, len(axes)))
    cval = pd.to_numeric(df[color], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    stopped = _stopped(df)
    finite = cval[np.isfinite(cval) & ~stopped]
    norm = Normalize(finite.min(), finite.max()) if finite.size else Normalize(0.0, 1.0)
    cmap = colormaps["viridis"].with_extremes(bad="lightgrey")  # low LPIPS dark: the best stand out on white
    n = len(axes)
    fig = Figure(figsize=(max(5.0, 1.7 * n + 2.0), 4.8), layout="constrained")
    ax = fig.add_subplot()
    xs = np.arange(n, dtype=float)
    _trial_lines(ax, xs, ys, cval, stopped, cmap, norm)
    title = f"{len(df)} trials"
    if stopped.any():
        title += f"; grey dashed: {int(stopped.sum())} stopped early (not compared)"
    for i in np.flatnonzero(_winner(df)):  # named in the title: a legend would cover axis labels
        ax.plot(xs, ys[i], color="black", lw=2.5, ls="--", zorder=4)
        title += f"; dashed: winner {df['trial_id'].iloc[i]}"
    ax.set_title(title, fontsize=9)
    _axis_labels(ax, axes)
    if not len(df):
        ax.text(0.5, 0.5, "no trials", transform=ax.transAxes, ha="center", va="center")
    ax.set_xticks(xs, names, rotation=20, ha="right", fontsize=8)
    ax.set_xlim(-0.3, n - 0.4)
    ax.set_ylim(-0.2, 1.08)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=f"{color} (lower is better)")
    return _save(fig, path)
