"""Search spaces: YAML entries -> an Optuna define-by-run function, and trial params back
to experiment-config assignments.

One entry searches one dotted config key (``loss.dp.mu``); ``when`` nests entries under
a choice. Optuna parameter names are the dotted path, plus ``<path>#choice`` for the
``or:`` constants and ``<path>#<item>`` (one bool per item) for ``subset``. Names carry
everything ``decode`` needs, so a trainable can decode the params Ray hands it without
the space. No torch here (and no optuna: the function only calls ``trial.suggest_*``).
"""

from __future__ import annotations

import itertools
import json
import math
import types
import typing
from typing import Any, Callable, Literal, Optional, Union

from pydantic import ConfigDict, Field, field_validator, model_validator

from trainables.config import ConfigError, ExperimentConfig, Strict, validate
from trainables.config_errors import unwrap_model
from trainables.safe_yaml import short

# The PSNR pretraining is run once per sweep and shared by every trial, so whatever it
# depends on is fixed for the sweep: only loss and GAN-stage training knobs may vary.
_FIXED, _SHARED = "the shared pretraining fixes model and data", "one pretraining run is shared by all trials"
FROZEN = {
    "model": _FIXED,
    "data": _FIXED,
    "scale": _FIXED,
    "train.pretrain_steps": _SHARED,
    "train.pretrain_lr": _SHARED,
    "train.pretrain_milestones": _SHARED,
    "train.pretrain_criterion": _SHARED,
    "train.pretrained_g": _SHARED,
}
KINDS = ("float", "int", "choices", "grid", "first_k", "subset")


def config_leaf(path: str) -> Any:
    """Type annotation of the experiment-config key at ``path``; ValueError if it is none."""
    model, ann = ExperimentConfig, None
    for part in path.split("."):
        if model is None or part not in model.model_fields:
            raise ValueError(f"{path} is not a config key")
        ann = model.model_fields[part].annotation
        model = unwrap_model(ann)  # Optional[Section] -> Section; leaves -> None
    if model is not None:
        raise ValueError(f"{path} is a config section, not a key")
    return ann


def _leaf_kind(ann: Any) -> tuple[str, tuple]:
    """('float'|'int'|'bool'|'str'|'list'|'literal'|'other', literal values)."""
    if typing.get_origin(ann) in (Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        ann = args[0] if len(args) == 1 else ann
    origin = typing.get_origin(ann) or ann
    if origin is Literal:
        return "literal", typing.get_args(ann)
    named = {list: "list", tuple: "list", bool: "bool", int: "int", float: "float", str: "str"}
    return named.get(origin, "other"), ()


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def label(value: Any) -> str:
    """Categorical label of an ``or:`` constant (Optuna-safe string that decodes back)."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return json.dumps(value)


def from_label(text: str) -> Any:
    return {"inf": math.inf, "-inf": -math.inf}[text] if text in ("inf", "-inf") else json.loads(text)


class Param(Strict):
    """One space entry: ``path`` plus exactly one of float/int/choices/grid/first_k/subset."""

    # inf stays inf in JSON-mode dumps (mu: .inf), not pydantic's default null
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True, ser_json_inf_nan="constants")

    path: str
    float_: Optional[tuple[float, float]] = Field(None, alias="float")
    int_: Optional[tuple[int, int]] = Field(None, alias="int")
    log: bool = False
    step: Optional[float] = Field(None, gt=0)
    or_: Optional[list[Any]] = Field(None, alias="or")  # extra constant choices (mu: .inf)
    choices: Optional[list[Any]] = None
    grid: Optional[list[Any]] = None  # paper grids: enumerated by grid_points
    first_k: Optional[tuple[int, int]] = None  # k -> list(range(k))
    subset: Optional[list[Union[int, str]]] = None  # non-empty subset, one bool per item
    when: Optional[dict[Any, list[Param]]] = None  # choice -> entries searched only then

    @field_validator("path")
    @classmethod
    def _known_key(cls, path: str) -> str:
        for prefix, why in FROZEN.items():
            if path == prefix or path.startswith(prefix + "."):
                raise ValueError(f"{path} cannot be searched ({why})")
        config_leaf(path)
        return path

    @field_validator("or_", "choices", "grid", "subset")
    @classmethod
    def _values(cls, values: Optional[list]) -> Optional[list]:
        if values is not None:
            if not values:
                raise ValueError("must list at least one value")
            if bad := [v for v in values if not _scalar(v)]:
                raise ValueError(f"{short(bad[0])} is not a number, string, boolean or null")
            if len({json.dumps(v) for v in values}) < len(values):
                raise ValueError(f"{values} lists a value twice")
        return values

    @property
    def kind(self) -> str:
        return self._given()[0]

    def _given(self) -> list[str]:
        return [k for k in KINDS if getattr(self, {"float": "float_", "int": "int_"}.get(k, k)) is not None]

    @model_validator(mode="after")
    def _consistent(self):
        if len(given := self._given()) != 1:
            raise ValueError(f"give exactly one of {', '.join(KINDS)} (got {', '.join(given) or 'none'})")
        kind, (leaf, literal) = given[0], _leaf_kind(config_leaf(self.path))
        lo, hi = self.float_ or self.int_ or self.first_k or (None, None)
        if lo is not None and not lo < hi:
            raise ValueError(f"{kind}: low ({lo}) must be < high ({hi})")
        numeric = kind in ("float", "int")
        for key, used in (("log", self.log), ("step", self.step is not None), ("or", self.or_ is not None)):
            if used and not numeric:
                raise ValueError(f"{key}: only applies to float or int")
        if self.when is not None and kind != "choices":
            raise ValueError("when: only applies to choices")
        if self.log and self.step is not None:
            raise ValueError("step: cannot be combined with log (Optuna samples one or the other)")
        if self.log and lo <= 0:
            raise ValueError(f"{kind}: log scale needs low > 0 (got {lo})")
        if kind == "int" and self.step is not None and ((hi - lo) % self.step or self.step % 1):
            raise ValueError(f"step: {self.step:g} must be an integer dividing high - low ({hi - lo})")
        # the sampled value must fit the key's type (pydantic would only catch it per trial)
        fits = {
            "float": ("float", "other"),
            "int": ("float", "int", "other"),
            "first_k": ("list",),
            "subset": ("list",),
        }
        if kind in fits and leaf not in fits[kind]:
            what = {"int": "an integer", "bool": "a boolean", "str": "a string", "literal": "a fixed-choice"}
            raise ValueError(f"{kind}: {self.path} is {what.get(leaf, 'a ' + leaf)} key")
        if kind == "first_k" and lo < 1:
            raise ValueError(f"first_k: low must be >= 1 (got {lo}): an empty list is not a choice")
        if kind == "subset" and any(
            isinstance(i, str) and (i.lstrip("-").isdigit() or set(i) & set("#/")) for i in self.subset
        ):  # decode reads items back from "<path>#<item>"
            raise ValueError("subset: string items must not look like integers or contain '#' or '/'")
        for v in self.choices or self.grid or []:
            if leaf == "literal" and not any(v == c and type(v) is type(c) for c in literal):
                raise ValueError(f"{kind}: {short(v)} is not one of {', '.join(map(repr, literal))}")
        for key in self.when or {}:
            if not any(key == c and type(key) is type(c) for c in self.choices):
                raise ValueError(
                    f"when: {key!r} is not one of the choices {', '.join(map(repr, self.choices))}"
                )
        return self

    def branch(self, value: Any) -> list[Param]:
        return next(
            (kids for k, kids in (self.when or {}).items() if k == value and type(k) is type(value)), []
        )

    def walk(self, prefix: str):
        """(location, entry) for this entry and every nested one."""
        yield prefix, self
        for key, kids in (self.when or {}).items():
            for i, kid in enumerate(kids):
                yield from kid.walk(f"{prefix}.when.{key}[{i}]")


def check_unique(params: list[Param]) -> None:
    """Each config key is searched at most once (Optuna names must be unique too)."""
    seen: dict[str, str] = {}
    for i, top in enumerate(params):
        for where, p in top.walk(f"space[{i}]"):
            if p.path in seen:
                raise ValueError(f"{where}.path: {p.path} is searched twice (also {seen[p.path]}.path)")
            seen[p.path] = where


class _SpaceDoc(Strict):
    space: list[Param]

    @model_validator(mode="after")
    def _unique(self):
        check_unique(self.space)
        return self


def parse_space(entries: list, source: str = "space") -> list[Param]:
    """Raw YAML list (or Params) -> validated Params, or ConfigError (one line each)."""
    if entries and all(isinstance(e, Param) for e in entries):
        return list(entries)
    return validate({"space": entries}, _SpaceDoc, source).space


# ------------------------------------------------------------------- define-by-run
def suggest_all(params: list[Param], trial: Any, out: dict) -> None:
    """The one walk shared by sampling, decoding checks and corner points."""
    for p in params:
        kind = p.kind
        if kind in ("float", "int"):
            lo, hi = p.float_ or p.int_
            if p.or_ is not None:  # "VGG only" etc.: categorical first, the range only if picked
                pick = trial.suggest_categorical(f"{p.path}#choice", ["range", *map(label, p.or_)])
                if pick != "range":
                    out[p.path] = from_label(pick)
                    continue
            if kind == "float":
                out[p.path] = trial.suggest_float(p.path, lo, hi, log=p.log, step=p.step)
            else:
                out[p.path] = trial.suggest_int(p.path, lo, hi, log=p.log, step=int(p.step or 1))
        elif kind in ("choices", "grid"):
            out[p.path] = value = trial.suggest_categorical(p.path, list(p.choices or p.grid))
            suggest_all(p.branch(value), trial, out)
        elif kind == "first_k":
            out[p.path] = list(range(trial.suggest_int(p.path, *p.first_k)))
        else:  # subset: True first, so the first point of a space keeps every item
            flags = {i: trial.suggest_categorical(f"{p.path}#{i}", [True, False]) for i in p.subset}
            out[p.path] = sorted(i for i, f in flags.items() if f) or sorted(p.subset)


class SpaceFn:
    """``OptunaSearch(space=compile_space(entries))``: suggests, returns None (decode the
    params with :func:`decode`). Picklable, so Ray can checkpoint the searcher."""

    def __init__(self, params: list[Param]):
        self.params = params

    def __call__(self, trial: Any) -> None:
        suggest_all(self.params, trial, {})


def compile_space(entries: list) -> Callable[[Any], None]:
    return SpaceFn(parse_space(entries))


# ------------------------------------------------------------ params -> assignments
def decode(params: dict) -> dict:
    """Flat Optuna params -> flat config assignments {dotted path: value}:
    ``p#choice`` 'range' -> p's float, else the constant ('inf' -> inf); ``p#<item>``
    bools -> sorted list of the True items (all False -> every item); an int on a list
    key -> list(range(k)) (first_k); anything else as is."""
    plain, choice, flags = {}, {}, {}
    for name, value in params.items():
        path, sep, tag = name.partition("#")
        if not sep:
            plain[path] = value
        elif tag == "choice":
            choice[path] = value
        else:
            flags.setdefault(path, {})[int(tag) if tag.lstrip("-").isdigit() else tag] = value
    out = {}
    for path, pick in choice.items():
        if pick != "range":
            out[path] = from_label(pick)
            plain.pop(path, None)
        elif path not in plain:
            raise ConfigError(f"params: {path}#choice is 'range' but {path} is missing")
    for path, f in flags.items():
        out[path] = sorted(i for i, on in f.items() if on) or sorted(f)
    for path, value in plain.items():
        try:
            kind = _leaf_kind(config_leaf(path))[0]
        except ValueError as exc:
            raise ConfigError(f"params: {exc}") from None
        first_k = kind == "list" and isinstance(value, int) and not isinstance(value, bool)
        out[path] = list(range(value)) if first_k else value
    return out


def grid_points(space: list) -> list[dict]:
    """Cartesian product of the ``grid`` / ``choices`` entries (in order), as params
    {path: value} that :func:`decode` passes through. For ``search.algorithm: grid``."""
    params = parse_space(space)
    axes = []
    for i, p in enumerate(params):
        if p.kind not in ("grid", "choices") or p.when:
            raise ConfigError(
                f"space[{i}]: a grid search needs grid or choices entries without when "
                f"({p.path} is {p.kind}{' with when' if p.when else ''})"
            )
        axes.append([(p.path, v) for v in (p.grid or p.choices)])
    return [dict(combo) for combo in itertools.product(*axes)]
