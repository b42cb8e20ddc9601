"""Config files: YAML reading, ``base:`` presets, ``--set`` overrides, and ``load_config``.

The typed schema and ``validate`` are in :mod:`trainables.config`; this module turns files
and command-line overrides into the dict ``validate`` checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from trainables import safe_yaml
from trainables.config import ConfigError, ExperimentConfig, validate
from trainables.safe_yaml import clip, short


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = safe_yaml.load(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} invalid YAML ({getattr(exc, 'problem', exc)})") from None
    return {} if data is None else data


PRESETS_DIR = Path(__file__).resolve().parents[1] / "search_spaces" / "presets"
TINY_VIDEO = "tiny_cpu_video"  # what `--tiny` (the tiny_cpu overlay) means for a video config


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` wins; nested mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in over.items():
        out[key] = (
            deep_merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def resolve_bases(data: dict, origin: Path, _seen: tuple = ()) -> dict:
    """Expand ``base: name | [names]``: presets by name (search_spaces/presets/NAME.yaml) or
    YAML paths relative to the including file, merged in order, then this file's keys."""
    bases = data.pop("base", None) if isinstance(data, dict) else None
    if bases is None:
        return data
    merged: dict = {}
    for name in [bases] if isinstance(bases, str) else list(bases):
        cand = [origin / name, PRESETS_DIR / f"{name}.yaml"]
        path = next((p for p in cand if p.is_file()), None)
        if path is None:
            known = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
            raise ConfigError(f"base: {name!r} is neither a file next to the config nor a preset ({known})")
        if path.resolve() in _seen:
            raise ConfigError(f"base: {path} includes itself")
        sub = resolve_bases(read_yaml(path), path.parent, _seen + (path.resolve(),))
        merged = deep_merge(merged, sub)
    return deep_merge(merged, data)


def nested(assignments: dict[str, Any], source: str = "params") -> dict:
    """``{"loss.dp.mu": 0.5}`` -> ``{"loss": {"dp": {"mu": 0.5}}}`` (deep-merge it on a config)."""
    out: dict = {}
    for path, value in assignments.items():
        node, (*parents, leaf) = out, path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: {path} is inside {part}, which is assigned a value")
        node[leaf] = value
    return out


def parse_overrides(items: list[str]) -> dict:
    """``["train.steps=100", "loss.dp.mu=.inf"]`` -> nested dict (values parsed as YAML)."""
    flat: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {short(item)}: expected KEY.PATH=VALUE")
        try:
            flat[key] = safe_yaml.load(raw)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", exc)
            raise ConfigError(f"--set {short(item)}: value is not valid YAML ({problem})") from None
    return nested(flat, "--set")


def config_path(name_or_path: str | Path) -> Path:
    """A YAML path, or the name of a preset in search_spaces/presets."""
    path = Path(name_or_path)
    preset = PRESETS_DIR / f"{name_or_path}.yaml"
    return preset if not path.exists() and preset.is_file() else path


def load_config(
    path: str | Path, overrides: list[str] | None = None, overlays: list[str] | None = None
) -> ExperimentConfig:
    """YAML file (or preset name) -> validated config; ``overlays`` are presets merged on
    top (e.g. ``tiny_cpu``), then ``overrides`` (``KEY.PATH=VALUE``)."""
    path = config_path(path)
    data = resolve_bases(read_yaml(path), path.parent, (path.resolve(),))
    if overlays and isinstance(data.get("data"), dict) and data["data"].get("kind") == "video":
        # --tiny names the CPU-size overlay of the config's family: video presets get their own.
        overlays = [TINY_VIDEO if o == "tiny_cpu" else o for o in overlays]
    if overlays:
        data = deep_merge(data, resolve_bases({"base": list(overlays)}, path.parent))
    if overrides:
        try:  # the file alone is valid: a failure after the overrides is the --set's fault
            validate(data, ExperimentConfig, source=str(path))
        except ConfigError:
            pass
        else:
            return validate(
                deep_merge(data, parse_overrides(overrides)),
                ExperimentConfig,
                source=f"--set {clip(' '.join(overrides))}",
            )
        data = deep_merge(data, parse_overrides(overrides))
    return validate(data, ExperimentConfig, source=str(path))


def to_dict(cfg: BaseModel) -> dict:
    """Plain dict (YAML-safe: inf stays a float) for logging and rewriting config files."""
    return cfg.model_dump(mode="python")
