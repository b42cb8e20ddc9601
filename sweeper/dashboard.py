"""What the MLflow dashboard opens on: the sweep's trials, compared, in the runs table.

MLflow 3.17's UI (read from its JS bundle, checked in headless Chromium, see
tests/test_browser.py) has no URL parameter for columns or expanded rows, but it has
shared views: an experiment tag (``VIEW_TAG_PREFIX`` + key, in MLflow's reserved tag
namespace) holding JSON (search facets + table state) that
``#/experiments/<id>/runs?viewStateShareKey=<key>`` applies. The tool writes one such view
per sweep (``Tracker.configure_parent`` in sweeper/tracking.py: this module stays pure and
calls no client) and prints its URL (``runs_url``). ``workflowType=machine_learning`` keeps
the page out of the GenAI layout, whichever layout the browser last used.

Child runs carry as params only the searched knobs under short distinct names
(``child_params``: ``mu``, ``layer``) and a few key config values (``KEY_PARAMS``); the
full config is their ``config.yaml`` artifact. Tags: ``steps`` (trained steps so far),
``status`` (``STATUS_WORDS``) and ``winner`` ("true" on the winner, whose run name also
gets ``WINNER_MARK``). The view sorts by ``final_<objective>``, logged (rounded) only for
trials that ran the full budget: an ASHA-stopped trial's partial value never ranks above
a finished one, it sorts last with an empty cell and its ``status`` says why.
"""

from __future__ import annotations

import json
import math
from typing import Iterable, Mapping, Optional

import pandas as pd

# MLflow's reserved tag namespace, spelled apart so that only sweeper/tracking.py reads as
# an MLflow caller (tests/test_state.py greps for it).
_NS = "mlflow" + "."
VIEW_TAG_PREFIX = _NS + "sharedViewState."  # the UI's shared-view experiment tag
KIND_TAG = _NS + "experimentKind"  # the experiment's "type" in the UI
PARENT_TAG = _NS + "parentRunId"  # what the UI nests child runs by
NOTE_TAG = _NS + "note.content"  # a run's / an experiment's description (markdown)
SAMPLES_DIR = "samples"  # <run>/samples/<image>.png: the latest validation's sample grids
KIND_TRAINING = "custom_model_development"  # shown as "Machine learning"
METRICS = ("val_lpips", "val_psnr", "val_ssim")
STEPS_TAG, STATUS_TAG, WINNER_TAG = "steps", "status", "winner"
# Run status tag values, from results.py's trial statuses (TERMINATED = ran every step).
STATUS_WORDS = {"TERMINATED": "finished", "STOPPED": "stopped", "ERROR": "failed", "RUNNING": "running"}
FINAL = "final_"  # prefix of the full-budget metrics the view sorts and shows
WINNER_MARK = "\u2605 "  # a star before the winner's run name: marked at a glance
# Config values every trial run logs as params besides its searched knobs (if present);
# the seed wherever the config keeps it (confirmation reruns differ by it).
KEY_PARAMS = (
    "name",
    "seed",
    "train.seed",
    "scale",
    "data.kind",
    "model.generator.arch",
    "train.steps",
    "backbones.weights",
)


def short_names(paths: Iterable[str], reserved: Iterable[str] = ()) -> dict[str, str]:
    """Searched dotted paths -> the shortest distinct dotted suffixes.

    ``loss.dp.mu`` -> ``mu``; ``a.lv.delta`` and ``b.fm.delta`` -> ``lv.delta``, ``fm.delta``.
    A suffix in ``reserved`` (names already used) is lengthened like a collision."""
    paths = list(dict.fromkeys(paths))
    taken = set(reserved)
    depth = {p: 1 for p in paths}
    while True:
        names = {p: ".".join(p.split(".")[-depth[p] :]) for p in paths}
        counts: dict[str, int] = {}
        for n in names.values():
            counts[n] = counts.get(n, 0) + 1
        clash = [
            p for p, n in names.items() if (counts[n] > 1 or n in taken) and depth[p] < len(p.split("."))
        ]
        if not clash:
            return names
        for p in clash:
            depth[p] += 1


def child_params(searched: Mapping[str, object], reserved: Iterable[str] = ()) -> dict[str, str]:
    """The short params a child run logs next to its flattened config (``mu`` = "0.5").
    ``reserved``: the flattened config's keys (a short name must not overwrite one)."""
    names = short_names(searched, reserved)
    return {names[path]: str(value) for path, value in searched.items()}


def key_params(flat_config: Mapping[str, str]) -> dict[str, str]:
    """The ``KEY_PARAMS`` of a flattened config (the rest lives in ``config.yaml``)."""
    return {k: str(flat_config[k]) for k in KEY_PARAMS if k in flat_config}


def final_metrics(values: Mapping[str, object], metrics: Iterable[str] = METRICS) -> dict[str, float]:
    """``final_val_lpips`` etc. from a full-budget trial's last result, rounded to 4
    significant digits: the UI shows a metric unrounded and cuts it (the curves keep every digit)."""
    out = {}
    for m in metrics:
        v = _num(values.get(m))
        if math.isfinite(v):
            out[FINAL + m] = _round(v)
    return out


def columns(
    searched: Iterable[str], metrics: Iterable[str] = METRICS, reserved: Iterable[str] = ()
) -> list[str]:
    """The runs-table column keys (the UI's ``type.`name``` form) for a sweep: the final
    objective metrics next to the run name, then status and steps, then the searched knobs
    (status and steps first: always in view, however many knobs follow)."""
    names = short_names(searched, reserved)
    return (
        [f"metrics.`{FINAL}{m}`" for m in metrics]
        + [f"tags.`{t}`" for t in (STATUS_TAG, STEPS_TAG, WINNER_TAG)]
        + [f"params.`{names[p]}`" for p in names]
    )


def _widths(cols: list[str]) -> dict[str, int]:
    """Column widths (px) that keep status, steps and winner in view at 1600 px, even with
    the MLflow Assistant panel that the UI opens on a first visit to a local server (the
    pinned name and "Created" columns ignore a width)."""
    narrow = {f"tags.`{STATUS_TAG}`": 75, f"tags.`{STEPS_TAG}`": 55, f"tags.`{WINNER_TAG}`": 65}
    return {c: narrow.get(c, 100) for c in cols}


def sample_note(run_id: str, names: Iterable[str]) -> str:
    """A trial run's description: its latest sample grids, images first (the Overview page
    shows the description's top, folded). Served by the server's ``get-artifact`` endpoint,
    relative to the UI's root."""
    images = "\n\n".join(f"![{n}](get-artifact?path={SAMPLES_DIR}/{n}.png&run_uuid={run_id})" for n in names)
    return (
        f"{images}\n\nValidation samples ({', '.join(names)}) at the latest validation: "
        "LR | bicubic over SR | HR, enlarged nearest-neighbour where the crop is small "
        "(artifacts `samples/`; every validation step: the Model metrics tab's images)."
    )


NOTE_ROWS = 10  # ranked trials in the parent's description (all of them: ranked.md)
MAX_NOTE = 7500  # characters: under MLflow's 8000 per tag value


def parent_note(
    run_id: str, winner: Optional[str], summary: Mapping[str, float], ranked_md: str, n: int
) -> str:
    """The parent run's description: the winner with its final metrics, the trial counts,
    the plots (``pareto.png``, ``parallel.png``) and the top of the ranked table."""
    if winner:
        values = ", ".join(f"{m} {summary[f'winner_{m}']:.4g}" for m in METRICS if f"winner_{m}" in summary)
        head = f"**Winner: \u2605 trial-{winner}** ({values})"
    else:
        head = "**No winner** (no trial that ran the full budget may win)"
    counts = ", ".join(f"{int(summary.get(f'trials_{k}', 0))} {k}" for k in ("finished", "stopped", "failed"))
    plots = " ".join(f"![{p}](get-artifact?path={p}.png&run_uuid={run_id})" for p in ("pareto", "parallel"))
    more = f" (top {NOTE_ROWS} of {n}: all in `ranked.md`)" if n > NOTE_ROWS else ""
    text = (
        f"{head}. Trials: {counts}; bicubic val PSNR {summary.get('bicubic_val_psnr', math.nan):.2f} dB. "
        f"Importances: `param_importances.json`.\n\n{plots}\n\n**Ranking**{more}\n\n{ranked_md}"
    )
    # MLflow refuses a tag value over 8000 characters: then the table stays in ranked.md only
    return text if len(text) <= MAX_NOTE else text[: text.index("**Ranking**")] + "**Ranking**: `ranked.md`"


def sweep_note(experiment_id: str, parent_run_id: str, sweep_name: str, winner: Optional[str]) -> str:
    """The experiment's description (shown above the runs table): the newest sweep, its
    winner and a link to its parent run (summary metrics, importances, plots, ranked.md)."""
    link = run_link(experiment_id, parent_run_id)
    won = f"winner \u2605 trial-{winner}" if winner else "no winner yet"
    return (
        f"**Sweep {sweep_name}** (newest in this experiment): {won}. [Summary, importances and plots]({link})"
    )


def run_link(experiment_id: str, run_id: str) -> str:
    """A run page link relative to the UI root, in the model-training layout (without
    ``workflowType`` the UI opens runs in its GenAI layout)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def view_key(parent_run_id: str) -> str:
    """The shared-view key of a sweep (tag keys allow letters, digits, ``_-. /:``)."""
    return f"srsweep-{parent_run_id}"


def view_state(parent_run_id: str, objective: str, mode: str, cols: list[str]) -> dict:
    """The shared view: the parent's children, best objective first, ``cols`` shown."""
    if mode not in ("min", "max"):
        raise ValueError(f"objective mode: expected 'min' or 'max', got {mode!r}")
    return {
        "searchFilter": f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
        "orderByKey": f"metrics.`{FINAL}{objective}`",
        "orderByAsc": mode == "min",
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "selectedColumns": cols,
        "columnOrder": cols,
        "columnWidths": _widths(cols),
        "runListHidden": False,
        "viewMaximized": False,
        "hideEmptyCharts": True,
    }


CHART_SECTION = "srsweep-objective"


def _chart(kind: str, key: str, **fields) -> dict:
    """One chart card as the UI stores it (its RunsChartsCardConfig fields)."""
    base = {"uuid": f"srsweep-{kind.lower()}-{key}", "type": kind, "runsCountToCompare": 100}
    return {**base, "metricSectionId": CHART_SECTION, "deleted": False, "isGenerated": False, **fields}


CURVES = (*METRICS, "sa_share")  # curves the chart view opens with (after the objective's)


def charts(objectives: list[str], params: list[str]) -> dict:
    """The chart view's section: the final objective against the searched knobs (parallel
    coordinates), then the curves over steps, the objective's first. The UI shows only
    these when it opens a shared view (the rest: "Add chart", or a run's Model metrics)."""
    line = {"lineSmoothness": 0, "xAxisKey": "step", "scaleType": "linear", "xAxisScaleType": "linear"}
    line |= {"yAxisKey": "metric", "yAxisExpressions": [], "useGlobalXaxisKey": True, "range": {}}
    cards = [
        _chart(
            "PARALLEL",
            "knobs",
            selectedParams=params,
            selectedMetrics=[FINAL + m for m in objectives],
            showAllRuns=True,
        )
    ]
    curves = list(dict.fromkeys([*objectives, *CURVES]))
    cards += [_chart("LINE", m, metricKey=m, selectedMetricKeys=[m], **line) for m in curves]
    section = {"uuid": CHART_SECTION, "name": "Objective vs knobs", "display": True}
    # two cards a row, taller than the default: the parallel chart's axis labels need room
    section |= {"isReordered": False, "deleted": False, "isGenerated": False, "columns": 2, "cardHeight": 420}
    return {"compareRunCharts": cards, "compareRunSections": [section]}


def view_json(
    parent_run_id: str,
    objective: str,
    mode: str,
    searched: Iterable[str],
    metrics: Iterable[str] = METRICS,
    reserved: Iterable[str] = (),
) -> str:
    """The shared view's tag value (compact JSON) for a sweep."""
    searched = list(searched)
    state = view_state(parent_run_id, objective, mode, columns(searched, metrics, reserved))
    knobs = list(short_names(searched, reserved).values())
    state |= charts([objective], knobs)
    return json.dumps(state, separators=(",", ":"))


def runs_url(base_url: str, experiment_id: str, parent_run_id: str) -> str:
    """The dashboard link of a sweep (its view must exist: ``Tracker.configure_parent``).

    No search facet may be in the URL: the UI ignores a shared view when one is."""
    base = base_url.rstrip("/")
    return (
        f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
        f"&compareRunsMode=TABLE&viewStateShareKey={view_key(parent_run_id)}"
    )


def _round(v: float) -> float:
    return float(f"{v:.4g}")


def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def parent_summary(df: pd.DataFrame, winner_id: Optional[str], bicubic_psnr: float) -> dict[str, float]:
    """The parent run's summary metrics from the results table (one row per trial).

    best_* are each metric's best final value over trials that ran the full budget (LPIPS
    min, PSNR/SSIM max: an ASHA-stopped trial's partial value is not a result); winner_*
    the winner's final values (absent without a winner); rounded like ``final_metrics``."""
    need = {"trial_id", "status", "steps", "final_val_lpips", "final_val_psnr", "final_val_ssim"}
    missing = sorted(need - set(df.columns))
    if missing:
        raise ValueError(f"results table: missing columns {', '.join(missing)}")
    status = df["status"].astype(str)
    ok = df[status == "TERMINATED"]
    out: dict[str, float] = {
        "trials_finished": float((status == "TERMINATED").sum()),
        "trials_stopped": float((status == "STOPPED").sum()),
        "trials_failed": float((status == "ERROR").sum()),
        "bicubic_val_psnr": _round(float(bicubic_psnr)),
    }
    for metric, best in (("lpips", "min"), ("psnr", "max"), ("ssim", "max")):
        values = pd.to_numeric(ok[f"final_val_{metric}"], errors="coerce").dropna()
        if len(values):
            out[f"best_val_{metric}"] = _round(float(getattr(values, best)()))
    if winner_id is not None:
        row = df[df["trial_id"] == winner_id]
        if row.empty:
            raise ValueError(f"winner {winner_id!r} is not a trial of the results table")
        for metric in ("lpips", "psnr", "ssim"):
            v = _num(row.iloc[0][f"final_val_{metric}"])
            if math.isfinite(v):
                out[f"winner_val_{metric}"] = _round(v)
        out["winner_steps"] = float(_num(row.iloc[0]["steps"]))
    return out
