"""One error policy: what the environment refused is one line; a traceback means a bug in srsweep.

``describe`` turns an exception from the environment (a full disk, a permission, a read-only
or missing folder, a locked or corrupt SQLite file, an allocation the user's sizes asked
for) into one line naming what and where, or returns None for anything else. The CLI prints
that line; every other exception keeps its traceback followed by ``BUG_LINE``.
"""

from __future__ import annotations

import errno
from typing import Optional

from trainables.errors import SrsweepError
from trainables.safe_yaml import clip

BUG_LINE = "srsweep: this is a bug in srsweep; please report it with the traceback above"

_DISK = {errno.ENOSPC, errno.EDQUOT}
_FILES = {
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.ENAMETOOLONG,
    errno.ELOOP,
    errno.EMFILE,
    errno.EIO,
    errno.EBUSY,
    errno.ETXTBSY,
}


_SERVICES = {errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNRESET}


class EnvironmentProblem(SrsweepError):
    """The machine, a file or a service refused: one line naming it (not a bug)."""


def _first(exc: BaseException) -> str:
    return clip((str(exc).strip().splitlines() or [type(exc).__name__])[0], 200)


def _os_line(exc: OSError) -> Optional[str]:
    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f) or "a file"
    what = exc.strerror or _first(exc)
    if exc.errno in _DISK:
        return f"{where}: {what}: the disk is full; free space there"
    if exc.errno in _FILES:
        return f"{where}: {what}"
    if exc.errno in _SERVICES or type(exc).__module__.split(".")[0] in ("requests", "urllib3"):
        return f"a service did not answer ({_first(exc)}): is it running and reachable from here?"
    return None


def _allocation(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())
    )


def _database(exc: BaseException) -> Optional[str]:
    import sqlite3

    names = {c.__module__.split(".")[0] for c in type(exc).__mro__}
    if isinstance(exc, sqlite3.DatabaseError) or (
        "sqlalchemy" in names and type(exc).__name__ in ("OperationalError", "DatabaseError")
    ):
        msg = _first(getattr(exc, "orig", None) or exc)
        if "disk is full" in msg:
            return f"an SQLite file: {msg}: the disk is full; free space there"
        if "locked" in msg:
            return f"an SQLite file: {msg}: another process holds it; retry when it is done"
        return f"an SQLite file: {msg} (damaged, or not a database?)"
    return None


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def describe(exc: BaseException) -> Optional[str]:
    """One line for an environmental failure anywhere in ``exc``'s chain, else None (a bug)."""
    for e in _chain(exc):
        if isinstance(e, OSError) and (line := _os_line(e)):
            return line
        if _allocation(e):
            return (
                f"cannot allocate memory ({_first(e)}): lower data.batch_size, data.patch_size "
                "or the model size"
            )
        if line := _database(e):
            return line
    return None


def read_state(sweep_dir):
    """``SweepState.load`` with what a damaged or unreadable ``sweep.json`` raises as one line."""
    from pathlib import Path

    from sweeper.state import STATE_FILE, SweepState

    try:
        return SweepState.load(sweep_dir)
    except UnicodeDecodeError as exc:
        raise EnvironmentProblem(
            f"{Path(sweep_dir) / STATE_FILE}: not UTF-8 JSON (byte {exc.start}): damaged; "
            "restore it from a copy of the sweep folder"
        ) from None
    except OSError as exc:
        raise EnvironmentProblem(
            f"{Path(sweep_dir) / STATE_FILE}: cannot read ({exc.strerror or exc})"
        ) from None
