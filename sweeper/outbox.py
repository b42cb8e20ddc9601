"""Write-ahead buffer for MLflow writes: a tracking outage never stops the sweep.

Every write goes to the store at once with a short HTTP budget (MLflow's default retries
for minutes: 7 retries, backoff 2, 120 s timeout). If the store is unreachable the record
is appended to a JSONL file in the sweep folder instead, and later writes queue behind it
so the order is kept. :meth:`Outbox.flush` (called on the next write once
``retry_every_s`` has passed, on ``srsweep resume`` and by ``srsweep sync``) sends the
file in order and removes what was sent.

Metric points are never duplicated: a point is identified by (run, key, step); before
sending a key the outbox reads the steps the store already holds (once per key and
process, and again after any failed send, which may have been committed server-side).

Runs can be created during an outage too: :meth:`create_run` then returns a placeholder
id (``pending-...``) that later records may use; the flush creates the run and maps the
placeholder to the real id (kept in ``<file>.ids.json``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

from mlflow import MlflowClient  # noqa: E402
from sweeper import atomic  # noqa: E402
from sweeper.tracking import patch_mlflow_mkdir  # noqa: E402

patch_mlflow_mkdir()  # a SQLite store whose folder name holds "?" (idempotent)

Point = tuple[str, float, int, int]  # (key, value, step, timestamp in ms)
_TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}
PLACEHOLDER = "pending-"


class OutsideRecord(ValueError):
    """A buffered record that names a file the outbox did not stage (never sent, never deleted)."""


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` means "the store is unreachable or overloaded, try later";
    False for a request the store rejected (bad value, unknown run), which is re-raised."""
    import requests

    if isinstance(
        exc, (ConnectionError, TimeoutError, requests.exceptions.ConnectionError, requests.exceptions.Timeout)
    ):
        return True
    with contextlib.suppress(ImportError):
        from sqlalchemy.exc import OperationalError

        if isinstance(exc, OperationalError):  # database locked / server gone
            return True
    if isinstance(exc, MlflowException):
        return exc.error_code in _TRANSIENT_CODES or exc.get_http_status_code() >= 500
    return False


@contextlib.contextmanager
def short_http(timeout_s: float, max_retries: int, backoff: int = 1):
    """MLflow's REST client reads these per request: an outage then costs seconds."""
    new = {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(max(1, timeout_s))),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(max_retries),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(int(backoff)),
    }
    old = {k: os.environ.get(k) for k in new}
    os.environ.update(new)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Outbox:
    def __init__(
        self,
        path: str | os.PathLike,
        tracking_uri: str,
        *,
        timeout_s: float = 5.0,
        max_retries: int = 1,
        retry_every_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.path = Path(path)
        self.client = MlflowClient(tracking_uri)
        self.timeout_s, self.max_retries, self.retry_every_s, self.clock = (
            timeout_s,
            max_retries,
            retry_every_s,
            clock,
        )
        self.files = self.path.with_name(self.path.name + ".files")  # artifacts waiting to be sent
        self.ids_file = self.path.with_name(self.path.name + ".ids.json")
        self.rejected = self.path.with_name(self.path.name + ".rejected.jsonl")
        self._down_since: Optional[float] = None
        self._steps: dict[tuple[str, str], set[int]] = {}  # steps the store holds, per (run, key)
        self._stale: set[tuple[str, str]] = set()
        self.stats = {
            "sent": 0,
            "buffered": 0,
            "flushed": 0,
            "duplicates_skipped": 0,
            "rejected": 0,
            "points_logged": 0,
            "points_buffered": 0,
            "points_sent": 0,
        }

    # ------------------------------------------------------------------ public writes
    def create_run(
        self, experiment_id: str, run_name: Optional[str] = None, tags: Optional[dict[str, str]] = None
    ) -> str:
        """A real run id, or a placeholder when the store is down (resolved on flush)."""
        rec = {
            "op": "create_run",
            "experiment_id": experiment_id,
            "run_name": run_name,
            "tags": dict(tags or {}),
            "placeholder": f"{PLACEHOLDER}{uuid.uuid4().hex}",
        }
        if self.pending() == 0 and not self._is_down():
            try:
                with short_http(self.timeout_s, self.max_retries):
                    return self.client.create_run(
                        experiment_id, run_name=run_name, tags=rec["tags"]
                    ).info.run_id
            except Exception as exc:
                if not is_outage(exc):
                    raise
                self._down_since = self.clock()
        self._append(rec)
        return rec["placeholder"]

    def log_metrics(self, run_id: str, points: Iterable[Point]) -> bool:
        pts = [[str(k), float(v), int(s), int(t)] for k, v, s, t in points]
        self.stats["points_logged"] += len(pts)
        return self._submit({"op": "metrics", "run_id": run_id, "points": pts}) if pts else True

    def log_params(self, run_id: str, params: dict[str, Any]) -> bool:
        strs = {k: str(v) for k, v in params.items()}
        return self._submit({"op": "params", "run_id": run_id, "params": strs})

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> bool:
        return self._submit({"op": "tags", "run_id": run_id, "tags": {k: str(v) for k, v in tags.items()}})

    def set_tag(self, run_id: str, key: str, value: Any) -> bool:
        return self.set_tags(run_id, {key: value})

    def set_terminated(self, run_id: str, status: str = "FINISHED") -> bool:
        return self._submit({"op": "terminated", "run_id": run_id, "status": status})

    def log_dict(self, run_id: str, obj: Any, artifact_file: str) -> bool:
        return self._submit({"op": "dict", "run_id": run_id, "obj": obj, "artifact_file": artifact_file})

    def log_artifact(
        self, run_id: str, local_path: str | os.PathLike, artifact_path: Optional[str] = None
    ) -> bool:
        rec = {
            "op": "artifact",
            "run_id": run_id,
            "local_path": str(local_path),
            "artifact_path": artifact_path,
        }
        return self._submit(rec)

    # ------------------------------------------------------------------ flushing
    def pending(self) -> int:
        return len(self._read())

    def flush(self, force: bool = False) -> bool:
        """Send buffered records in order; True when the buffer is empty afterwards.
        Without ``force`` it does not retry within ``retry_every_s`` of an outage."""
        records = self._read()
        if not records:
            return True
        if self._is_down() and not force:
            return False
        for i, rec in enumerate(records):
            try:
                self._staged(rec)
                self._send(rec)
            except Exception as exc:
                if is_outage(exc):
                    self._down_since = self.clock()
                    self._rewrite(records[i:])
                    return False
                # The store refuses this record for good: set it aside, keep the queue moving.
                self.stats["rejected"] += 1
                if isinstance(exc, OutsideRecord):
                    print(f"srsweep: {exc}: skipped (kept in {self.rejected.name})", flush=True)
                error = " ".join(str(exc).split())[:300]
                atomic.append_line(self.rejected, json.dumps({**rec, "error": error}))
            else:
                self.stats["flushed"] += 1
                self._done_with(rec)
        self._down_since = None
        self._rewrite([])
        return True

    # ------------------------------------------------------------------ internals
    def _is_down(self) -> bool:
        return self._down_since is not None and self.clock() - self._down_since < self.retry_every_s

    def _submit(self, rec: dict) -> bool:
        """Send now (True) or buffer (False); never raises for an outage."""
        if self.pending() and not self.flush():
            self._append(rec)
            return False
        try:
            self._send(rec)
        except Exception as exc:
            if not is_outage(exc):
                raise
            self._down_since = self.clock()
            self._append(rec)
            return False
        self.stats["sent"] += 1
        self._done_with(rec)
        return True

    def _append(self, rec: dict) -> None:
        if rec["op"] == "artifact":  # the caller's file may be a temp file: keep a copy
            src = Path(rec["local_path"])
            dst = self.files / uuid.uuid4().hex / src.name
            dst.parent.mkdir(parents=True)
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
            # relative to the buffer's folder: a copied or moved sweep sends its own copy
            rec = {**rec, "local_path": str(dst.relative_to(self.path.parent)), "owned": True}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic.append_line(self.path, json.dumps(rec))
        self.stats["buffered"] += 1
        self.stats["points_buffered"] += len(rec.get("points", ()))

    def _read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line torn by a crash mid-append
                out.append(json.loads(line))
        return out

    def _rewrite(self, records: list[dict]) -> None:
        if not records:
            self.path.unlink(missing_ok=True)
            return
        atomic.write_text(self.path, "".join(json.dumps(r) + "\n" for r in records))

    def _ids(self) -> dict[str, str]:
        return json.loads(self.ids_file.read_text()) if self.ids_file.is_file() else {}

    def resolve(self, run_id: str) -> str:
        """The real id of a placeholder from :meth:`create_run` (itself once flushed)."""
        if not run_id.startswith(PLACEHOLDER):
            return run_id
        real = self._ids().get(run_id)
        if real is None:
            raise ConnectionError(f"run {run_id} is not created yet (tracking store unreachable)")
        return real

    def _staged(self, rec: dict) -> None:
        """A buffered artifact must be one of the outbox's own copies: the buffer file sits
        in a folder others may write, and a record naming any other file is refused."""
        if rec.get("op") == "artifact" and self._own_copy(rec) is None:
            raise OutsideRecord(
                f"{self.path}: artifact {rec.get('local_path')!r} is not a file this buffer staged"
            )

    def _own_copy(self, rec: dict) -> Optional[Path]:
        """``<files>/<hex>/`` holding the record's file, when the outbox made it (symlinks
        resolved, so a link cannot lead out of the staging folder); else None."""
        if not isinstance(rec.get("local_path"), str):
            return None
        staging = self.files.resolve()
        path = self._local(rec)
        folder = path.parent
        if folder.is_symlink() or path.is_symlink() or folder.resolve().parent != staging:
            return None
        return folder.resolve() if len(folder.name) == 32 and folder.name.isalnum() else None

    def _local(self, rec: dict) -> Path:
        return self.path.parent / rec["local_path"]  # an absolute path stays itself

    def _done_with(self, rec: dict) -> None:
        folder = self._own_copy(rec) if rec.get("owned") else None
        if folder is not None:  # only the copy this outbox staged, inside its own folder
            shutil.rmtree(folder, ignore_errors=True)

    def _known_steps(self, run_id: str, key: str) -> set[int]:
        k = (run_id, key)
        if k not in self._steps or k in self._stale:
            self._steps[k] = {m.step for m in self.client.get_metric_history(run_id, key)}
            self._stale.discard(k)
        return self._steps[k]

    def _send(self, rec: dict) -> None:
        with short_http(self.timeout_s, self.max_retries):
            op = rec["op"]
            if op == "create_run":
                ids = self._ids()
                if rec["placeholder"] not in ids:
                    run = self.client.create_run(
                        rec["experiment_id"], run_name=rec["run_name"], tags=rec["tags"]
                    )
                    ids[rec["placeholder"]] = run.info.run_id
                    atomic.write_text(self.ids_file, json.dumps(ids))
                return
            run_id = self.resolve(rec["run_id"])
            if op == "metrics":
                self._send_metrics(run_id, rec["points"])
            elif op == "params":
                items = [Param(k, v) for k, v in rec["params"].items()]
                for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
                    self.client.log_batch(run_id, params=items[i : i + 100])
            elif op == "tags":
                self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in rec["tags"].items()])
            elif op == "terminated":
                self.client.set_terminated(run_id, rec["status"])
            elif op == "dict":
                self.client.log_dict(run_id, rec["obj"], rec["artifact_file"])
            elif op == "artifact":
                self.client.log_artifact(run_id, str(self._local(rec)), rec["artifact_path"])
            else:
                raise ValueError(f"{self.path}: unknown outbox record {op!r}")

    def _send_metrics(self, run_id: str, points: list) -> None:
        keys = {p[0] for p in points}
        try:
            known = {k: self._known_steps(run_id, k) for k in keys}
            batch, seen = [], set()
            for key, value, step, ts in points:
                if step in known[key] or (key, step) in seen:
                    self.stats["duplicates_skipped"] += 1
                    continue
                seen.add((key, step))
                batch.append(Metric(key, value, ts, step))
            for i in range(0, len(batch), 1000):  # MLflow caps a batch at 1000 metrics
                self.client.log_batch(run_id, metrics=batch[i : i + 1000])
            self.stats["points_sent"] += len(batch)
        except Exception:
            # The store may have committed part of it: read the history again next time.
            self._stale.update((run_id, k) for k in keys)
            raise
        for key, _, step, _ in points:
            known[key].add(step)
