"""Checkpoints that cannot run code, cannot be torn, and cannot be written outside their folder.

- :func:`load_safe` reads with ``torch.load(weights_only=True)``: a pickle that names any
  global outside torch's allow-list (``os.system``, a numpy RNG tuple, ...) is refused,
  and every failure becomes one line ``PATH: not a loadable srsweep checkpoint (...)``.
- :func:`save_atomic` writes a temp file in the target folder, fsyncs it, renames it over
  the target and fsyncs the folder: a kill or a failing pickle leaves the old file intact.
- :func:`rng_state` / :func:`set_rng_state` carry the torch, CUDA, numpy and Python RNG
  states as tensors and plain numbers, which ``weights_only`` accepts.
- :func:`safe_child` joins a run name from a config under its root and refuses escapes.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "PathEscapeError",
    "save_atomic",
    "write_bytes_atomic",
    "load_safe",
    "rng_state",
    "set_rng_state",
    "safe_child",
]


class CheckpointError(ValueError):
    """A file that is not a loadable checkpoint; the message is one line naming it."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class PathEscapeError(ValueError):
    """A name from a config that would leave its root folder; one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


# ----------------------------------------------------------------------------- writing
def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the folder entry is on disk (POSIX; no-op elsewhere).
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_atomic(path: str | os.PathLike, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder as the target: os.replace is atomic only within one file system.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt too: never leave a partial temp file behind
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` that leaves either the old file or the complete new one."""
    return _write_atomic(path, lambda f: torch.save(obj, f))


def write_bytes_atomic(data: bytes | str, path: str | os.PathLike) -> Path:
    """Atomic replacement for ``Path.write_bytes`` / ``write_text`` (sweep.json, winner.yaml)."""
    raw = data.encode() if isinstance(data, str) else data
    return _write_atomic(path, lambda f: f.write(raw))


# ----------------------------------------------------------------------------- reading
def _reason(exc: BaseException) -> str:
    """The informative part of torch's multi-paragraph errors, on one short line."""
    text = " ".join(str(exc).split())
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if m:
        return f"it needs the Python global {m.group(1)}, which weights_only loading refuses"
    if "Weights only load failed" in text:
        m = re.search(r"Unsupported operand \d+|Unsupported class [\w.]+|Can only [^.]*", text)
        return f"weights_only unpickler: {m.group(0) if m else 'refused'}"
    m = re.search(r"PytorchStreamReader failed ([^.]*)", text)
    if m:  # torch's zip reader appends a paragraph about internal miniz errors
        return f"truncated or corrupt archive: {m.group(1)}"
    if isinstance(exc, (OSError, EOFError)) or "zip archive" in text:
        return f"truncated or corrupt archive: {type(exc).__name__}: {text[:120]}"
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_safe(path: str | os.PathLike, map_location: Any = "cpu", required: Iterable[str] = ()) -> dict:
    """A checkpoint dict read without running code; ``required`` keys must be present.

    Raises :class:`CheckpointError` (one line) for a missing file, a folder, a file that is
    not a torch checkpoint, a truncated one, or a pickle that needs globals (crafted or
    written by an srsweep that stored numpy RNG tuples)."""
    path = Path(path)
    head = f"{path}: not a loadable srsweep checkpoint"
    if not path.is_file():
        raise CheckpointError(f"{head} (no such file)" if not path.exists() else f"{head} (not a file)")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise CheckpointError(f"{head} ({type(exc).__name__}: {exc.strerror})") from None
    # torch.save writes a zip (PK..); the legacy format is a raw pickle (protocol byte 0x80).
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):
        raise CheckpointError(f"{head} (not a torch checkpoint file: starts with {magic!r})")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types: UnpicklingError, RuntimeError, EOFError, ...
        raise CheckpointError(f"{head} ({_reason(exc)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{head} (holds a {type(state).__name__}, not a dict)")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"{head} (no {', '.join(repr(k) for k in missing)} entry)")
    return state


# ----------------------------------------------------------------------------- RNG states
def rng_state() -> dict:
    """Every RNG the trainer draws from, as tensors and numbers (``weights_only``-safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(gauss),
        },
        "python": {
            "version": int(version),
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
    }


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`rng_state` (tensors may come back on any device)."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss_next"]))


# ----------------------------------------------------------------------------- paths
def safe_child(root: str | os.PathLike, name: str, what: str = "name") -> Path:
    """``root/name``, refusing names that leave ``root`` (``..``, absolute, via symlinks).

    ``what`` names the config key in the message (``name``, ``--out``...)."""
    root_path = Path(root)
    text = str(name)
    if not text or text.strip() in (".", "") or "\x00" in text:
        raise PathEscapeError(f"{what}: {text!r} is not a usable folder name")
    if Path(text).is_absolute():
        raise PathEscapeError(f"{what}: {text!r} is an absolute path; it must stay inside {root_path}")
    base = root_path.resolve()
    target = (base / text).resolve()  # follows symlinks: a link inside root that points out is caught
    if target == base or not target.is_relative_to(base):
        raise PathEscapeError(f"{what}: {text!r} leaves {base} (resolves to {target})")
    return target
