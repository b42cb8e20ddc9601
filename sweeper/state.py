"""The sweep state: everything a sweep needs after launch, fixed once by ``prepare``.

``sweep.json`` in the sweep folder holds a snapshot of the validated sweep config, the
raw experiment dict every trial starts from (data and weights paths made absolute
against the folder ``srsweep run`` was started from; paths inside the sweep folder, such
as the shared pretrained G, relative to it, so a copied or moved folder uses its own
files), the MLflow ids and the bicubic baseline. ``resume``, ``build_tuner``, ``best``,
the callbacks and the results table read this, never the sweep YAML again: editing that
file after launch changes nothing.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any, Optional

from pydantic import ConfigDict, PrivateAttr, ValidationError

from sweeper import atomic, storage
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
    return _path_values(out, lambda v: os.path.abspath(root / Path(v).expanduser()))


def _path_values(experiment: dict, change) -> dict:
    """A copy of ``experiment`` with ``change(value)`` applied to every ``PATH_KEYS`` path."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in experiment.items()}
    for key in PATH_KEYS:
        section, leaf = key.split(".")
        node = out.get(section)
        value = node.get(leaf) if isinstance(node, dict) else None
        if isinstance(value, str) and value and value not in NOT_PATHS.get(key, ()):
            node[leaf] = change(value)
    return out


def _inside(value: str, folder: str) -> Optional[str]:
    """``value`` relative to ``folder`` when it lies inside it, else None."""
    prefix = folder.rstrip("/") + "/"
    return value[len(prefix) :] if folder not in ("", ".") and value.startswith(prefix) else None


def _placed(folder: str, rel: str) -> str:
    return f"{folder.rstrip('/')}/{rel}" if storage.is_remote(folder) else str(Path(folder) / rel)


def located(experiment: dict, recorded: str, here: str) -> dict:
    """Paths stored relative to the sweep folder (or, in files before relative paths, under
    the folder's recorded location) made absolute against where the folder is now."""

    def place(value: str) -> str:
        rel = _inside(value, recorded)
        if rel is None and not (os.path.isabs(value) or storage.is_remote(value)):
            rel = value  # relative in sweep.json: relative to the folder
        return _placed(here, rel) if rel is not None else value

    return _path_values(experiment, place)


class SweepState(Strict):
    model_config = ConfigDict(ser_json_inf_nan="constants")  # experiment dicts may hold mu: .inf

    sweep: SweepConfig  # the validated sweep file, as launched
    sweep_file: str  # where it came from (provenance only: never read again)
    experiment: dict[str, Any]  # base + set, absolute paths, the shared pretrained G
    # Where the folder is now (set on load). The file keeps where it was created: only
    # informational, and the way to tell that a folder was copied or moved.
    sweep_dir: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    bicubic_psnr: float
    total_steps: int
    address: Optional[str] = None
    tags: dict[str, str] = {}
    _origin: Optional[str] = PrivateAttr(default=None)

    @property
    def origin(self) -> str:
        """Where the folder was created (``sweep_dir`` as recorded in the file)."""
        return self._origin or self.sweep_dir

    @property
    def moved(self) -> bool:
        """A local folder loaded from elsewhere than where it was created (copied or moved)."""
        if storage.is_remote(self.sweep_dir):
            return False
        return Path(self.origin).resolve() != Path(self.sweep_dir).resolve()

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
        # Paths inside the folder are stored relative to it: a copied or moved folder uses its own.
        exp = _path_values(self.experiment, lambda v: _inside(v, self.sweep_dir) or v)
        text = self.model_copy(update={"sweep_dir": self.origin, "experiment": exp}).model_dump_json(indent=1)
        if storage.is_remote(self.sweep_dir):  # s3://...: through the storage's filesystem
            where, fs = storage.resolve_storage(self.sweep_dir)
            storage.write_text(storage.join(where, STATE_FILE), text, fs)
            return Path(STATE_FILE)
        return atomic.write_text(self.dir / STATE_FILE, text)

    @classmethod
    def load(cls, sweep_dir: str | Path) -> SweepState:
        if storage.is_remote(sweep_dir):
            where, fs = storage.resolve_storage(sweep_dir)
            if not storage.exists(storage.join(where, STATE_FILE), fs):
                raise ConfigError(f"{sweep_dir}: not a sweep folder (no {STATE_FILE})")
            state = cls.model_validate_json(storage.read_text(storage.join(where, STATE_FILE), fs))
            return state._at(str(sweep_dir).rstrip("/"))
        path = Path(sweep_dir) / STATE_FILE
        if not path.is_file():
            raise ConfigError(f"{Path(sweep_dir)}: not a sweep folder (no {STATE_FILE})")
        try:
            return cls.model_validate_json(path.read_text())._at(str(Path(sweep_dir).resolve()))
        except ValidationError as exc:
            raise ConfigError(
                f"{path}: not a sweep state of this srsweep version "
                f"({exc.error_count()} problems, first: {exc.errors()[0]['msg']})"
            ) from None

    def _at(self, here: str) -> SweepState:
        """The state of the folder where it was loaded from; a recorded absolute
        ``sweep_dir`` (older files) only says where it was created."""
        exp = located(self.experiment, self.sweep_dir, here)
        state = self.model_copy(update={"sweep_dir": here, "experiment": exp})
        state._origin = self.sweep_dir if self.sweep_dir != here else None  # (None: equal states stay ==)
        return state


def is_sweep_dir(path: str | Path) -> bool:
    if storage.is_remote(path):
        where, fs = storage.resolve_storage(path)
        return storage.exists(storage.join(where, STATE_FILE), fs)
    return (Path(path) / STATE_FILE).is_file()
