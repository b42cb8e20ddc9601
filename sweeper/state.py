"""The sweep state: everything a sweep needs after launch, fixed once by ``prepare``.

``sweep.json`` in the sweep folder holds a snapshot of the validated sweep config, the
raw experiment dict every trial starts from (data and weights paths made absolute
against the folder ``srsweep run`` was started from), the MLflow ids and the bicubic
baseline. ``resume``, ``build_tuner``, ``best``, the callbacks and the results table
read this, never the sweep YAML again: editing that file after launch changes nothing.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any, Optional

from pydantic import ConfigDict, ValidationError

from sweeper import storage
from sweeper.sweep_config import SweepConfig, experiment_at, searched
from trainables.config import ConfigError, ExperimentConfig, Strict, validate

STATE_FILE = "sweep.json"
# Config keys that name files or folders. Ray runs every trial in its own folder, so a
# relative path must be fixed before any trial starts. "embedded" is not a path.
PATH_KEYS = ("data.train", "data.val", "data.test", "backbones.weights_dir", "train.pretrained_g")
NOT_PATHS = {"data.train": ("embedded",), "data.val": ("embedded", "holdout"), "data.test": ("embedded",)}


def absolute_paths(experiment: dict, root: Path) -> dict:
    """A copy of the raw experiment dict with every ``PATH_KEYS`` value absolute
    (relative ones are taken against ``root``, the launch folder). An unset
    ``backbones.weights_dir`` takes ``$SRSWEEP_WEIGHTS_DIR`` now, made absolute too."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in experiment.items()}
    env = os.environ.get("SRSWEEP_WEIGHTS_DIR")
    if env and not (out.get("backbones") or {}).get("weights_dir"):
        out["backbones"] = {**(out.get("backbones") or {}), "weights_dir": env}
    for key in PATH_KEYS:
        section, leaf = key.split(".")
        node = out.get(section)
        value = node.get(leaf) if isinstance(node, dict) else None
        if isinstance(value, str) and value and value not in NOT_PATHS.get(key, ()):
            node[leaf] = os.path.abspath(root / Path(value).expanduser())
    return out


class SweepState(Strict):
    model_config = ConfigDict(ser_json_inf_nan="constants")  # experiment dicts may hold mu: .inf

    sweep: SweepConfig  # the validated sweep file, as launched
    sweep_file: str  # where it came from (provenance only: never read again)
    experiment: dict[str, Any]  # base + set, absolute paths, the shared pretrained G
    sweep_dir: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    bicubic_psnr: float
    total_steps: int
    address: Optional[str] = None
    tags: dict[str, str] = {}

    @property
    def dir(self) -> Path:
        return Path(self.sweep_dir)

    @property
    def base_config(self) -> ExperimentConfig:
        """The experiment before any searched value (what every trial shares)."""
        return validate(self.experiment, source=f"{self.dir / STATE_FILE} experiment")

    def trial_seed(self, trial_id: str = "") -> int:
        """The training seed of a search trial under ``seeds.search`` (README "Seeds")."""
        s = self.sweep.seeds
        base = s.base if s.base is not None else int(self.experiment.get("seed", 0))
        if s.search == "same" or not trial_id:
            return base
        tail = trial_id.rsplit("_", 1)[-1]  # Ray numbers its trials: <experiment>_00003
        return base + 1 + (int(tail) if tail.isdigit() else zlib.crc32(trial_id.encode()) % 100_000)

    def trial_config(self, params: dict, trial_id: str = "") -> ExperimentConfig:
        """Ray's sampled params -> the trial's validated config, its seed included (the
        trial, the MLflow callback and the results table all call this)."""
        where = {**searched(params), "seed": self.trial_seed(trial_id)}
        return experiment_at(self.experiment, where, f"trial {trial_id}".strip())

    def save(self) -> Path:
        if storage.is_remote(self.sweep_dir):  # s3://...: through the storage's filesystem
            where, fs = storage.resolve_storage(self.sweep_dir)
            storage.write_text(storage.join(where, STATE_FILE), self.model_dump_json(indent=1), fs)
            return Path(STATE_FILE)
        path = self.dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=1))
        os.replace(tmp, path)  # written once, atomically
        return path

    @classmethod
    def load(cls, sweep_dir: str | Path) -> SweepState:
        if storage.is_remote(sweep_dir):
            where, fs = storage.resolve_storage(sweep_dir)
            if not storage.exists(storage.join(where, STATE_FILE), fs):
                raise ConfigError(f"{sweep_dir}: not a sweep folder (no {STATE_FILE})")
            return cls.model_validate_json(storage.read_text(storage.join(where, STATE_FILE), fs))
        path = Path(sweep_dir) / STATE_FILE
        if not path.is_file():
            raise ConfigError(f"{Path(sweep_dir)}: not a sweep folder (no {STATE_FILE})")
        try:
            return cls.model_validate_json(path.read_text())
        except ValidationError as exc:
            raise ConfigError(
                f"{path}: not a sweep state of this srsweep version "
                f"({exc.error_count()} problems, first: {exc.errors()[0]['msg']})"
            ) from None


def is_sweep_dir(path: str | Path) -> bool:
    if storage.is_remote(path):
        where, fs = storage.resolve_storage(path)
        return storage.exists(storage.join(where, STATE_FILE), fs)
    return (Path(path) / STATE_FILE).is_file()
