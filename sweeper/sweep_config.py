"""Sweep files: YAML in, a validated ``SweepConfig`` out, checked once before Ray starts.

A sweep names its experiment (``base`` presets/files + ``set`` overrides), the search
space (sweeper/space.py), the objective, the search algorithm, budget, scheduler,
resources and the winner rule. Errors are one line each, ``file: key.path: message``,
as for experiment configs (trainables/config.py). No torch here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import ConfigDict, Field, field_validator, model_validator

from sweeper.families import check_one_family
from sweeper.space import Param, check_unique, decode, grid_points, label, suggest_all
from trainables.config import ConfigError, ExperimentConfig, Strict, validate
from trainables.config_bounds import SEED_MAX
from trainables.config_errors import unwrap_model
from trainables.config_files import deep_merge, nested, read_yaml, resolve_bases
from trainables.safe_yaml import short


class Metric(Strict):
    name: Literal["val_lpips", "val_psnr", "val_ssim"]
    mode: Literal["min", "max"]


class Objective(Strict):
    # One metric: TPE; two: a Pareto front (NSGA-II). ASHA always uses the first.
    metrics: list[Metric] = Field(
        default_factory=lambda: [Metric(name="val_lpips", mode="min")], min_length=1, max_length=2
    )

    @model_validator(mode="after")
    def _distinct(self):
        if len({m.name for m in self.metrics}) < len(self.metrics):
            raise ValueError(f"metrics: {self.metrics[0].name} is listed twice")
        return self


class Search(Strict):
    algorithm: Optional[Literal["tpe", "nsga2", "grid", "random"]] = None  # None: tpe / nsga2 by metrics
    seed: int = Field(0, ge=0, le=SEED_MAX)
    # Configurations to try first, as config assignments {dotted path: value} (mu: .inf,
    # blocks: [0, 1]); stored encoded as Optuna params, ready for OptunaSearch.
    points_to_evaluate: list[dict[str, Any]] = Field(default_factory=list, max_length=10_000)


class Budget(Strict):
    num_samples: int = Field(8, ge=1, le=10**9)  # trials (grid: repeats of the whole grid, Ray's meaning)
    max_concurrent: int = Field(2, ge=1, le=10_000)
    time_budget_s: Optional[float] = Field(None, gt=0, le=10**9)


class Scheduler(Strict):
    type: Literal["asha", "none"] = "asha"
    grace_period: int = Field(2, ge=1, le=10**6)  # in validation rounds (one report per train.val_every)
    reduction_factor: float = Field(2, gt=1, le=1000)


class Resources(Strict):
    cpu: float = Field(1, gt=0, le=10_000)
    gpu: float = Field(0, ge=0, le=1024)  # per trial; below 1 packs several trials on one GPU

    @model_validator(mode="after")
    def _whole_or_fraction(self):
        if self.gpu > 1 and self.gpu % 1:
            raise ValueError(f"gpu: {self.gpu:g}: Ray shares a GPU only below 1 (use 0.5) or whole GPUs")
        return self


class Failure(Strict):
    max_failures: int = Field(1, ge=0, le=1000)  # retries of a crashed trial, from its last checkpoint


class Selection(Strict):
    # Winner: lowest LPIPS among trials with PSNR >= bicubic PSNR + psnr_margin (dB).
    psnr_margin: float = 0.0


class Seeds(Strict):
    # same: every search trial trains with seed `base` (common random numbers: trials differ
    # by their config only, so comparisons between them have less variance); per_trial:
    # trial n trains with base + n. The confirmation always uses fresh seeds (CONFIRM_SEED0).
    search: Literal["same", "per_trial"] = "same"
    base: Optional[int] = None  # None: the experiment's `seed`


class Confirm(Strict):
    # The top_k finalists that ran the full budget, retrained with `seeds` fresh seeds each
    # and scored on data.test (sweeper/confirm.py). `confirm: false` skips the stage.
    top_k: int = Field(3, ge=1)
    seeds: int = Field(3, ge=1)


class Constraint(Strict):
    # A trial is feasible iff the metric it reports (e.g. the reached SA share) lies in
    # band; Optuna's sampler learns it (constraints_func), and only feasible trials win.
    metric: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    band: tuple[float, float]

    @model_validator(mode="after")
    def _ordered(self):
        lo, hi = self.band
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"band: [{lo:g}, {hi:g}] is not a finite interval with low < high")
        return self


class SweepConfig(Strict):
    model_config = ConfigDict(ser_json_inf_nan="constants")  # dumps keep mu: .inf (the root decides)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    base: Union[str, list[str], None] = None  # presets by name or YAML files next to the sweep
    set: dict[str, Any] = Field(default_factory=dict)  # fixed overrides, nested mapping
    space: list[Param] = Field(min_length=1)
    objective: Objective = Objective()
    search: Search = Search()
    budget: Budget = Budget()
    scheduler: Scheduler = Scheduler()
    resources: Resources = Resources()
    failure: Failure = Failure()
    selection: Selection = Selection()
    constraint: Optional[Constraint] = None
    seeds: Seeds = Seeds()
    confirm: Optional[Confirm] = Confirm()
    # data.test may share images with data.val / data.train (every report then says the
    # test numbers are not held-out)
    allow_test_overlap: bool = False

    @field_validator("confirm", mode="before")
    @classmethod
    def _confirm_switch(cls, v):
        return {} if v is True else None if v is False else v

    @property
    def planned_trials(self) -> int:
        """The one trial count: a grid runs every point num_samples times (Ray's meaning)."""
        n = self.budget.num_samples
        return n * len(grid_points(self.space)) if self.search.algorithm == "grid" else n

    @property
    def experiment_name(self) -> str:  # the MLflow experiment of every sweep with this name
        return f"srsweep-{self.name}"

    @model_validator(mode="after")
    def _cross_checks(self):
        check_unique(self.space)
        if self.search.algorithm is None:
            self.search.algorithm = "tpe" if len(self.objective.metrics) == 1 else "nsga2"
        if self.search.algorithm == "grid":
            if self.search.points_to_evaluate:
                raise ValueError("search.points_to_evaluate: a grid search runs every point anyway")
            try:
                grid_points(self.space)
            except ConfigError as exc:
                raise ValueError(f"{exc} (search.algorithm: grid)") from None
        if self.constraint is not None and self.search.algorithm not in ("tpe", "nsga2"):
            raise ValueError(
                f"constraint: search.algorithm {self.search.algorithm} has no sampler that reads "
                "constraints (use tpe or nsga2)"
            )
        self.search.points_to_evaluate = [
            self._encoded(i, p) for i, p in enumerate(self.search.points_to_evaluate)
        ]
        return self

    def _encoded(self, i: int, point: dict) -> dict:
        try:
            return encode(self.space, point)
        except ValueError as exc:
            raise ValueError(f"search.points_to_evaluate[{i}]: {exc}") from None


# ------------------------------------------------------------- points to evaluate
_NONE = object()  # no constant matched (None itself is a valid constant)


def encode(space: list[Param], point: dict) -> dict:
    """Config assignments {path: value} -> Optuna params (what ``OptunaSearch`` enqueues).
    A partial point leaves the other parameters to the sampler. Points already in Optuna
    form (a ``#`` name) are kept: re-validating a dumped sweep is idempotent."""
    if any("#" in k for k in point):
        return dict(point)
    out, left = {}, dict(point)

    def enc(entries: list[Param]) -> None:
        for p in entries:
            if p.path not in left:
                continue
            v, kind = left.pop(p.path), p.kind
            if kind in ("float", "int"):
                const = next((c for c in p.or_ or [] if label(c) == label(v)), _NONE)
                if p.or_ is not None:
                    out[f"{p.path}#choice"] = "range" if const is _NONE else label(const)
                if const is not _NONE:
                    continue
                (lo, hi), step = p.float_ or p.int_, p.step or (1 if kind == "int" else 0)
                if (
                    isinstance(v, bool)
                    or not isinstance(v, (int, float))
                    or not lo <= v <= hi
                    or (kind == "int" and (not isinstance(v, int) or (v - lo) % step))
                ):
                    raise ValueError(
                        f"{p.path}: {short(v)} is not a {kind} in [{lo:g}, {hi:g}]"
                        + (f" on steps of {step:g}" if step else "")
                    )
                out[p.path] = float(v) if kind == "float" else v
            elif kind in ("choices", "grid"):
                values = p.choices or p.grid
                if not any(v == c and type(v) is type(c) for c in values):
                    raise ValueError(f"{p.path}: {short(v)} is not one of {', '.join(map(repr, values))}")
                out[p.path] = v
                enc(p.branch(v))
            elif kind == "first_k":
                lo, hi = p.first_k
                k = v if isinstance(v, int) and not isinstance(v, bool) else None  # already Optuna's k
                if k is None and isinstance(v, list) and v == list(range(len(v))):
                    k = len(v)
                if k is None or not lo <= k <= hi:
                    raise ValueError(f"{p.path}: {short(v)} is not list(range(k)) with k in [{lo}, {hi}]")
                out[p.path] = k
            else:
                if not isinstance(v, list) or not v or any(i not in p.subset for i in v):
                    raise ValueError(f"{p.path}: {short(v)} is not a non-empty subset of {p.subset}")
                out.update({f"{p.path}#{i}": i in v for i in p.subset})

    enc(space)
    if left:
        raise ValueError(f"{next(iter(left))}: not a parameter of the space (or its branch is not chosen)")
    return out


# ------------------------------------------------------------ corners of the space
class _Corner:
    """A trial-like object: every parameter at its low bound / first choice (or high /
    last choice), except ``pins`` {optuna name: value}. Records the categoricals met."""

    def __init__(self, high: bool, pins: dict):
        self.high, self.pins, self.params, self.seen = high, pins, {}, []

    def _pick(self, name, value):
        self.params[name] = self.pins.get(name, value)
        return self.params[name]

    def suggest_float(self, name, low, high, *, log=False, step=None):
        top = low + ((high - low) // step) * step if step else high
        return self._pick(name, top if self.high else low)

    def suggest_int(self, name, low, high, *, log=False, step=1):
        return self._pick(name, low + ((high - low) // step) * step if self.high else low)

    def suggest_categorical(self, name, choices):
        self.seen.append((name, list(choices)))
        if name.endswith("#choice"):  # check the range's bounds; the constants get pinned
            return self._pick(name, "range")
        return self._pick(name, choices[-1] if self.high else choices[0])


def corners(space: list[Param]):
    """(description, assignments): every parameter at its first value, at its last value,
    then each other categorical value (children of a branch included) with the rest first."""
    todo, done = [("first values", False, {}), ("last values", True, {})], set()
    while todo:
        what, high, pins = todo.pop(0)
        trial, out = _Corner(high, pins), {}
        suggest_all(space, trial, out)
        yield what, out
        for name, choices in trial.seen if not high else []:
            for value in choices[1:]:
                if (name, repr(value)) not in done:
                    done.add((name, repr(value)))
                    todo.append((f"{name}={value!r}", False, {**pins, name: value}))


# -------------------------------------------------------------------------- loading
def experiment_dict(sweep: SweepConfig, sweep_path: str | Path) -> dict:
    """``base`` (presets by name, or files relative to the sweep file) with ``set`` merged
    on top: the raw experiment dict every trial starts from (validate after sampling)."""
    path = Path(sweep_path)
    merged = resolve_bases({"base": sweep.base}, path.parent, (path.resolve(),)) if sweep.base else {}
    return deep_merge(merged, sweep.set)


def validate_sweep(data: Any, source: str = "sweep") -> SweepConfig:
    return validate(data, SweepConfig, source)


def searched(params: dict) -> dict:
    """Ray's trial params -> config assignments {dotted path: value}. Grid sweeps pass
    one point as ``{"grid_point": {...}}`` (tune.grid_search over points)."""
    return decode(params.get("grid_point", params))


def experiment_at(experiment: dict, assignments: dict, source: str) -> ExperimentConfig:
    """The one way a point of the space becomes a validated experiment config."""
    return validate(deep_merge(experiment, nested(assignments)), ExperimentConfig, source=source)


def missing_section(exp: dict, path: str) -> Optional[str]:
    """The optional section (``loss.fm``) on ``path`` that base + set leave out, if any:
    a space must not switch a loss term on by merely searching one of its keys."""
    model, node, parts = ExperimentConfig, exp, path.split(".")
    for i, part in enumerate(parts[:-1]):
        field = model.model_fields[part]
        present = isinstance(node, dict) and part in node
        node = node[part] if present else None
        if node is None and (present or field.default is None):
            return ".".join(parts[: i + 1])
        model = unwrap_model(field.annotation)
    return None


def load_sweep(path: str | Path, patch=None) -> SweepConfig:
    """Sweep YAML -> SweepConfig, after checking that the experiment validates at the
    space's corners (so a bad base/set/space fails here, not in trial 17). ``patch``:
    dict -> dict applied before validation (``--set`` / ``--tiny``, sweeper/overrides.py)."""
    data = read_yaml(path)
    sweep = validate_sweep(patch(data) if patch else data, str(path))
    check_one_family(sweep, path)  # one shared pretraining: no model.* search, no image + video mix
    exp, first = experiment_dict(sweep, path), None
    for i, top in enumerate(sweep.space):
        for where, p in top.walk(f"space[{i}]"):
            if section := missing_section(exp, p.path):
                raise ConfigError(
                    f"{path}: {where}.path: {p.path}: the experiment (base + set) has no "
                    f"{section} section; add it under set"
                )
    for what, assignments in corners(sweep.space):
        cfg = experiment_at(exp, assignments, f"{path} (base + set + space at {what})")
        first = first or cfg
    reports = first.train.steps // first.train.val_every
    if sweep.scheduler.type == "asha" and sweep.scheduler.grace_period > reports:
        raise ConfigError(
            f"{path}: scheduler.grace_period: {sweep.scheduler.grace_period} validation rounds, but "
            f"a trial reports {reports} (train.steps {first.train.steps} // val_every "
            f"{first.train.val_every})"
        )
    return sweep
