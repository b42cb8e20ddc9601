"""Atomic file writes: a reader (or a crash, or a full disk) sees the old file or the new
one, never a truncated one.

Every file srsweep writes into a sweep folder goes through here: the bytes go to a temp
file in the same folder (``os.replace`` is atomic only within one file system), are
fsynced, renamed over the target, and the folder is fsynced so the rename survives a
power loss.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems refuse to open a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """``with replacing(p) as tmp:`` write ``tmp`` (any writer: pandas, matplotlib); on a
    clean exit it replaces ``p``, on an exception ``p`` is untouched and ``tmp`` removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the target's suffix kept last: writers such as savefig pick the format from it
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt too: never leave a partial temp file behind
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_with(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` writes the content to a temp path; then it replaces ``path``."""
    with replacing(path) as tmp:
        write(tmp)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return write_with(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line and fsync; a symlink planted at ``path`` is refused (O_NOFOLLOW), so
    an append never lands outside the folder."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
