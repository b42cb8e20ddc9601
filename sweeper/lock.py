"""One driver per sweep: ``run`` (from the moment the folder exists) and ``resume`` hold
the sweep's lock until the process ends.

A folder (local or NFS): ``driver.lock`` in it, ``flock``-ed by the driver and holding
its host, PID and start time. The kernel (or the NFS server's lock lease) drops the lock
when the holder dies, so a stale file is taken over by simply locking it again; where the
file system has no locks, a holder on this host whose PID is gone counts as stale.

An ``s3://`` sweep: a lease object ``driver.lock`` with the same record, deleted at
exit. S3 offers no compare-and-swap here, so two drivers starting in the same second can
both win; a lease of a driver on this host whose PID is gone is taken over, one of another
host is refused (delete it once that driver is known to be gone).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import os
import socket
import time
from pathlib import Path

from trainables.errors import SrsweepError

LOCK_FILE = "driver.lock"
_held: dict[str, int] = {}  # folder -> locked fd, kept open for the life of the process


class SweepBusy(SrsweepError):
    """Another driver holds the sweep (one line naming its host and PID)."""


def _start_of(pid: int) -> str | None:
    """The kernel's start time of ``pid``: tells a reused PID apart (None: no such process)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _record() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_start": _start_of(pid), "since": time.time()}


def _parse(text: str) -> dict:
    with contextlib.suppress(ValueError):
        rec = json.loads(text)
        if isinstance(rec, dict):
            return rec
    return {}


def _gone(rec: dict) -> bool:
    """True when ``rec`` names a driver of this host that no longer runs."""
    if rec.get("host") != socket.gethostname() or not isinstance(rec.get("pid"), int):
        return False
    start = _start_of(rec["pid"])
    return start is None or (rec.get("pid_start") not in (None, start))


def _busy(where: str, rec: dict) -> SweepBusy:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(rec.get("since") or 0)))
    pid, host = rec.get("pid", "?"), str(rec.get("host", "?"))[:100]
    return SweepBusy(
        f"{where} is being run by PID {pid} on {host} since {since}; "
        f"wait for it to end, or stop that driver (kill {pid} on {host}) and resume then"
    )


def hold(sweep_dir: str | Path) -> None:
    """Take the sweep's lock for this process (again: no-op), or raise :class:`SweepBusy`."""
    from sweeper.storage import is_remote

    if is_remote(sweep_dir):
        _lease(str(sweep_dir).rstrip("/"))
        return
    folder = Path(sweep_dir).resolve()
    if str(folder) in _held:
        return
    path = folder / LOCK_FILE
    # O_NOFOLLOW: a symlink planted as driver.lock never makes us write outside the folder
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:  # read-only folder, a symlink planted as the lock (ELOOP)
        raise SweepBusy(f"{path}: cannot take the sweep's driver lock ({exc.strerror})") from None
    try:
        locked = _locked(fd)
        previous = _parse(os.pread(fd, 4096, 0).decode(errors="replace"))  # empty: ended cleanly
        other = bool(previous) and previous.get("pid") != os.getpid()
        if locked is False or (locked is None and other and not _gone(previous)):
            raise _busy(str(folder), previous)
        if other:  # the holder died without ending (killed): its lock is stale
            print(f"note: took over the lock of PID {previous.get('pid')} on {previous.get('host')}, gone")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_record()).encode(), 0)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    _held[str(folder)] = fd
    atexit.register(_release, fd)


def _release(fd: int) -> None:
    """A clean exit empties the record: the next driver takes the lock without a note."""
    with contextlib.suppress(OSError):
        if _parse(os.pread(fd, 4096, 0).decode(errors="replace")).get("pid") == os.getpid():
            os.ftruncate(fd, 0)


def _locked(fd: int) -> bool | None:
    """flock the file; False when another process holds it, None on a file system without
    locks (some NFS mounts: the host/PID check of the record decides then)."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            return None
        raise


def _lease(sweep_dir: str) -> None:
    from sweeper import storage

    if sweep_dir in _held:
        return
    where, fs = storage.resolve_storage(sweep_dir)
    path = storage.join(where, LOCK_FILE)
    if storage.exists(path, fs):
        rec = _parse(storage.read_text(path, fs))
        if rec and rec.get("pid") != os.getpid() and not _gone(rec):
            raise _busy(sweep_dir, rec)
    storage.write_text(path, json.dumps(_record()), fs)
    _held[sweep_dir] = -1
    atexit.register(_drop_lease, path, fs)


def _drop_lease(path: str, fs) -> None:
    from sweeper import storage

    with contextlib.suppress(Exception):  # exiting anyway: a lease left behind names a gone PID
        if _parse(storage.read_text(path, fs)).get("pid") == os.getpid():
            storage._fs(fs).delete_file(path)
