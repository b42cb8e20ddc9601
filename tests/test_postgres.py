"""A team's tracking server for real: PostgreSQL (Debian's `postgresql`, initdb into a temp dir,
127.0.0.1 on a free port) and `mlflow/serve_postgres.sh` over it, used over HTTP: a run with
metrics and an artifact is logged and read back. Everything started here is stopped here, by PID."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _pg_bin() -> Path | None:
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    found = shutil.which("initdb") or (versions[0] if versions else None)
    return Path(found).resolve().parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """Child processes of ``pid`` (recursively), read from /proc."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        kids = [p for p, pp in parent.items() if pp == todo[-1]]
        todo.pop()
        out += kids
        todo += kids
    return out


def _stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    """Stop ``proc`` and the processes it spawned, each by PID."""
    for pid in [proc.pid, *_descendants(proc.pid)]:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        for pid in [proc.pid, *_descendants(proc.pid)]:
            os.kill(pid, signal.SIGKILL)
        proc.wait()


def _wait(check, what: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready after {timeout} s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def postgres():
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, postgres) not installed: "
            "apt-get install -y postgresql (.ci/run does it when run as root)"
        )
    psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2-binary missing (it is in the dev extra)")
    root = Path(tempfile.mkdtemp(prefix="srsw-pg-", dir="/tmp"))  # /tmp: readable by the postgres user
    # initdb refuses to run as root: run the server as the `postgres` system user then.
    user = "postgres" if os.geteuid() == 0 else None
    if user:
        shutil.chown(root, user)
    log = root / "postgres.log"
    port = free_port()
    subprocess.run(
        [str(bindir / "initdb"), "-D", str(root / "data"), "-U", "mlflow", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
        user=user,
    )
    with open(log, "w") as out:
        if user:
            shutil.chown(log, user)
        proc = subprocess.Popen(
            [
                str(bindir / "postgres"),
                "-D",
                str(root / "data"),
                "-p",
                str(port),
                "-k",
                str(root),
                "-c",
                "listen_addresses=127.0.0.1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            user=user,
        )
    try:
        dsn = f"host=127.0.0.1 port={port} user=mlflow dbname=postgres"
        _wait(lambda: psycopg2.connect(dsn).close() is None, "postgres", proc, log)
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE mlflow")
        conn.close()
        yield f"postgresql://mlflow@127.0.0.1:{port}/mlflow", root
    finally:
        _stop(proc, signal.SIGINT)  # postgres: SIGINT = fast shutdown
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def team_server(db: str, tmp_path: Path):
    """``mlflow/serve_postgres.sh`` over ``db`` on a free port, artifacts in tmp_path; yields
    (process, URL) once ``/health`` answers, and stops the server's process group after."""
    port = free_port()
    log = tmp_path / "mlflow.log"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(REPO / "mlflow" / "serve_postgres.sh"), db, str(tmp_path / "artifacts"), str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(
            lambda: urllib.request.urlopen(f"{url}/health", timeout=2).status == 200,
            "mlflow server",
            proc,
            log,
            timeout=180,
        )
        yield proc, url
    finally:
        _stop(proc)


def test_mlflow_server_on_postgres_over_http(postgres, tmp_path):
    from mlflow import MlflowClient

    db, root = postgres
    with team_server(db, tmp_path) as (proc, url):
        client = MlflowClient(url)
        exp = client.create_experiment("team-sweep")
        run = client.create_run(exp, run_name="trial-0", tags={"ray_node_id": "abc"})
        for step, value in enumerate([30.5, 31.25, 32.0]):
            client.log_metric(run.info.run_id, "val_psnr", value, step=step * 100)
        (tmp_path / "note.txt").write_text("hello")
        client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
        client.set_terminated(run.info.run_id, "FINISHED")

        history = client.get_metric_history(run.info.run_id, "val_psnr")
        assert [(m.step, m.value) for m in history] == [(0, 30.5), (100, 31.25), (200, 32.0)]
        got = client.get_run(run.info.run_id)
        assert got.data.tags["ray_node_id"] == "abc" and got.info.status == "FINISHED"
        # Proxied artifacts: the client went through the server, the file lands in the server's folder.
        assert [f.path for f in client.list_artifacts(run.info.run_id)] == ["note.txt"]
        assert list((tmp_path / "artifacts").rglob("note.txt"))
        # ...and the run lives in PostgreSQL, not in a SQLite file.
        import psycopg2

        with psycopg2.connect(db) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT value FROM metrics WHERE run_uuid = %s AND key = 'val_psnr' ORDER BY step",
                (run.info.run_id,),
            )
            assert [r[0] for r in cur.fetchall()] == [30.5, 31.25, 32.0]
        # Security middleware: a foreign Host header is refused.
        req = urllib.request.Request(
            f"{url}/api/2.0/mlflow/experiments/search?max_results=1", headers={"Host": "evil.example.com"}
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=5)
        assert err.value.code in (400, 403)
        print(f"\nmlflow server on {db}: run {run.info.run_id} val_psnr {[m.value for m in history]}")
    assert not _descendants(proc.pid)


def test_serve_postgres_refuses_other_uris(tmp_path):
    r = subprocess.run(
        [str(REPO / "mlflow" / "serve_postgres.sh"), "sqlite:///x.db", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.strip() == (
        "serve_postgres.sh: sqlite:///x.db: expected postgresql://USER@HOST:PORT/DB"
    )
