"""``srsweep run/resume --set KEY=VALUE --tiny`` and ``--dry-run``: shrink and preview a sweep.

Syntax: a key whose first part is a sweep-file key (``budget.num_samples=2``,
``scheduler.grace_period=1``, ``search.seed=3``) sets the sweep file; any other key
(``train.steps=20``, ``loss.dp.mu=1``) goes into the sweep's ``set`` (the fixed
experiment values); ``set.name=x`` reaches an experiment key that shares a sweep key's
name. Values are YAML (``.inf``, ``[0, 1]``). ``--tiny`` merges the ``tiny_cpu`` overlay
(``tiny_cpu_video`` for video presets) into ``set``, runs on CPU (``resources.gpu: 0``)
with ASHA's grace at one validation round, before any ``--set``. The patched file is
what validates, so ``sweep.json`` holds the overrides.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from trainables import safe_yaml
from trainables.config import ConfigError
from trainables.config_files import PRESETS_DIR, TINY_VIDEO, deep_merge, nested, read_yaml, resolve_bases
from trainables.safe_yaml import short

TINY = "tiny_cpu"


def sweep_keys() -> set[str]:
    from sweeper.sweep_config import SweepConfig

    return set(SweepConfig.model_fields) - {"set"}


def parse(items: tuple[str, ...] | list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``KEY=VALUE`` items -> (sweep assignments, experiment assignments), dotted keys."""
    top, to_sweep, to_exp = sweep_keys(), {}, {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or "" in key.split("."):
            raise ConfigError(
                f"--set {short(item)}: expected KEY.PATH=VALUE (e.g. budget.num_samples=2, train.steps=20)"
            )
        try:
            value = safe_yaml.load(raw)
        except yaml.YAMLError as exc:
            problem = str(exc).splitlines()[0]
            raise ConfigError(f"--set {short(item)}: the value is not YAML ({problem})") from None
        first = key.split(".")[0]
        if first == "set":
            to_exp[key[len("set.") :]] = value
        elif first in top:
            to_sweep[key] = value
        else:
            to_exp[key] = value
    return to_sweep, to_exp


def _bases(data: dict) -> list[str]:
    base = data.get("base")
    return [base] if isinstance(base, str) else list(base or [])


def tiny_overlay(data: dict, origin: Path | str = ".") -> tuple[str, dict]:
    """(overlay name, its dict) for a sweep file: the video overlay when the experiment its
    bases (presets or files next to the sweep) and ``set`` describe is a video one."""
    return overlay_for(deep_merge(resolve_bases({"base": _bases(data)}, Path(origin)), data.get("set") or {}))


def overlay_for(experiment: dict) -> tuple[str, dict]:
    """(overlay name, its dict) for a merged experiment dict: by its ``data.kind``."""
    video = isinstance(experiment.get("data"), dict) and experiment["data"].get("kind") == "video"
    name = TINY_VIDEO if video else TINY
    return name, read_yaml(PRESETS_DIR / f"{name}.yaml")


def apply(data: dict, overrides: tuple[str, ...] | list[str], tiny: bool, origin: Path | str = ".") -> dict:
    """The sweep file's dict with ``--tiny`` and ``--set`` applied (not yet validated)."""
    out = copy.deepcopy(data)
    to_sweep, to_exp = parse(overrides)
    if tiny:
        _, overlay = tiny_overlay(out, origin)
        out["set"] = deep_merge(out.get("set") or {}, overlay)
        out = deep_merge(out, {"resources": {"gpu": 0}, "scheduler": {"grace_period": 1}})
    if to_exp:
        out["set"] = deep_merge(out.get("set") or {}, nested(to_exp, "--set"))
    if to_sweep:
        out = deep_merge(out, nested(to_sweep, "--set"))
    return out


def patcher(overrides, tiny: bool, source: Path | str = "") -> Optional[Callable[[dict], dict]]:
    """A ``load_sweep`` hook, or None when there is nothing to apply."""
    if not overrides and not tiny:
        return None
    return lambda data: apply(data, overrides, tiny, Path(source).parent if source else ".")


def _get(d: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return _MISSING
        d = d[part]
    return d


_MISSING = object()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, (int, float)):
        return a == b or (math.isnan(a) and math.isnan(float(b)))
    return a == b


def check_resume(state, overrides, tiny: bool) -> None:
    """``resume`` continues the recorded sweep: flags may repeat the launch's (so the same
    command line works), never change it (trials already ran under those values)."""
    sweep = state.sweep.model_dump(mode="python")
    to_sweep, to_exp = parse(overrides)
    wanted = [("sweep", k, v, _get(sweep, k)) for k, v in to_sweep.items()]
    wanted += [("experiment", k, v, _get(state.experiment, k)) for k, v in to_exp.items()]
    if tiny:
        name, overlay = overlay_for(state.experiment)  # bases were merged at launch
        flat = _leaves(overlay)
        wanted += [
            (f"--tiny ({name})", k, v, _get(state.experiment, k)) for k, v in flat.items() if k not in to_exp
        ]
    for where, key, value, recorded in wanted:
        if recorded is _MISSING or not _same(recorded, value):
            shown = "unset" if recorded is _MISSING else repr(recorded)
            raise ConfigError(
                f"resume: {where} key {key} was {shown} at launch, not {short(value)}; resume "
                "continues the recorded sweep (start a new one with srsweep run ... --set)"
            )


def _leaves(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out
