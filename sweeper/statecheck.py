"""A sweep folder's own files checked before ``resume`` / ``best`` use them: one line each.

Optuna, MLflow and pyarrow meet a damaged file with a traceback deep inside (and SQLAlchemy
silently *creates* a missing SQLite file: a truncated or lost store file would come back
as an empty store). Here each file is opened read-only first and refused, named, with what
to do: the study, the SQLite tracking store, ``results.parquet``, ``tracking_runs.json``, a
store another process holds locked, and a folder this process cannot write in.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from sweeper.errors import EnvironmentProblem
from sweeper.sqlite_uri import sqlite_path

RESTORE = "restore it from a copy of the sweep folder"


def _sqlite(path: Path, tables: tuple[str, ...], what: str) -> None:
    """``path`` is an SQLite database holding ``tables``, and no other process holds it locked."""
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=2)
        try:
            names = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        finally:
            con.close()
    except sqlite3.Error as exc:
        if "locked" in str(exc):
            raise EnvironmentProblem(
                f"{path}: {what} is locked by another process; retry when done"
            ) from None
        raise EnvironmentProblem(f"{path}: not a usable {what} ({exc}); {RESTORE}") from None
    missing = [t for t in tables if t not in names]
    if missing:
        raise EnvironmentProblem(f"{path}: not a {what} (no {missing[0]} table: truncated?); {RESTORE}")
    _unlocked(path, what)


def _unlocked(path: Path, what: str) -> None:
    try:
        con = sqlite3.connect(str(path), timeout=2)
        try:
            con.execute("begin immediate")  # the write lock a driver needs, given back at once
            con.rollback()
        finally:
            con.close()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise EnvironmentProblem(
                f"{path}: {what} is locked by another process; retry when it is done"
            ) from None
        if "readonly" not in str(exc):  # a read-only folder is said by check_writable
            raise EnvironmentProblem(f"{path}: {what}: {exc}") from None


def check_tracking_store(uri: str) -> None:
    """A SQLite store a sweep recorded must still be there and whole: never recreated empty."""
    db = sqlite_path(uri)  # percent-decoded: a folder named `sweep?v2 #1` is its own
    if db is None:
        return
    if not db.is_file():
        raise EnvironmentProblem(
            f"{db}: the sweep's MLflow store is missing (it would be recreated empty); {RESTORE}, "
            "or pass the store it moved to"
        )
    _sqlite(db, ("experiments", "runs", "metrics"), "MLflow store")


def check_files(folder: Path) -> None:
    """The sweep folder's own state files, where present."""
    from sweeper.buffered import RUNS_FILE
    from sweeper.study import STUDY_FILE

    if (folder / STUDY_FILE).exists():
        _sqlite(folder / STUDY_FILE, ("studies", "trials"), "Optuna study")
    runs = folder / RUNS_FILE
    if runs.exists():
        try:
            if not isinstance(json.loads(runs.read_bytes()), dict):
                raise ValueError("not a mapping")
        except (ValueError, UnicodeDecodeError) as exc:
            raise EnvironmentProblem(f"{runs}: damaged ({str(exc)[:80]}); {RESTORE}, or delete it") from None
    table = folder / "results.parquet"
    if table.exists():
        import pyarrow.parquet as pq

        try:
            pq.read_metadata(table)
        except Exception as exc:  # noqa: BLE001  (pyarrow's errors have no common base worth naming)
            raise EnvironmentProblem(
                f"{table}: not a readable Parquet table ({str(exc)[:80]}); delete it and run "
                f"`srsweep resume {folder}` to rebuild it"
            ) from None


def check_writable(folder: Path, command: str) -> None:
    from sweeper.preflight import PreflightError, _probe_write

    try:
        _probe_write(folder, command, folder)
    except PreflightError as exc:
        raise EnvironmentProblem(f"{exc}: {command} writes its results there") from None


def check_sweep(state, command: str) -> None:
    """Everything ``command`` (resume, best) will open in the sweep ``state`` describes."""
    from sweeper.storage import is_remote

    check_tracking_store(state.tracking_uri)
    if not is_remote(state.sweep_dir):
        folder = Path(state.sweep_dir)
        check_files(folder)
        check_writable(folder, command)
