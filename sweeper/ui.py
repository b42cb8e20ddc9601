"""``srsweep ui``: the MLflow dashboard server's lifecycle (start, wait, stop).

``mlflow server`` runs uvicorn (or gunicorn) workers as child processes; a signal to the
``mlflow`` process alone leaves them holding the port. So the server always starts in
its own session (its pid is its process group id) and is stopped as a whole group: by
the foreground ``serve`` on SIGINT / SIGTERM / SIGHUP, or by ``stop`` through the pid
file a background ``serve`` writes beside the store.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

PID_FILE = "mlflow-ui.pid"
LOG_FILE = "mlflow-ui.log"
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


class UIError(RuntimeError):
    """One line for the CLI: why the dashboard did not start or stop."""


def state_dir(tracking_uri: str) -> Path:
    """Where the pid and log files live: the SQLite store's folder, else the cwd."""
    from sweeper.sqlite_uri import sqlite_path

    db = sqlite_path(tracking_uri)
    return db.resolve().parent if db is not None else Path.cwd()


def security_args(host: str, port: int) -> list[str]:
    """``--allowed-hosts`` / ``--cors-allowed-origins`` for the names the server answers as."""
    names = ["127.0.0.1", "localhost"] if host in ("127.0.0.1", "localhost") else [host]
    if host in WILDCARD_HOSTS:  # bound everywhere: the machine's own names
        names = ["127.0.0.1", "localhost", socket.gethostname(), socket.getfqdn()]
    names = list(dict.fromkeys(n for n in names if n))
    hosts = [f"{n}:{port}" for n in names] + names
    origins = [f"http://{n}:{port}" for n in names]
    return ["--allowed-hosts", ",".join(hosts), "--cors-allowed-origins", ",".join(origins)]


def command(tracking_uri: str, host: str, port: int, workers: int = 1) -> tuple[list[str], dict]:
    """The full ``mlflow server`` command line and environment."""
    from sweeper.tracking import server_command

    cmd, env = server_command(tracking_uri, host, port)
    cmd += ["--workers", str(workers), *security_args(host, port)]
    return cmd, {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def base_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in WILDCARD_HOSTS else host
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def answers(url: str, timeout: float = 2.0) -> bool:
    """True when the server's health endpoint replies 200."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _proc_start(pid: int) -> Optional[str]:
    """The kernel's start time of ``pid`` (field 22 of /proc/pid/stat): tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(pgid: int, grace: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:  # reap our own child, else it stays a zombie and the group looks alive
                os.waitpid(pgid, os.WNOHANG)
            except ChildProcessError:
                pass
            if not _group_alive(pgid):
                return
            time.sleep(0.1)


def _tail(path: Path, n: int = 400) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][-n:] if lines else ""


def serve(
    tracking_uri: str,
    host: str = "127.0.0.1",
    port: int = 5000,
    background: bool = False,
    timeout: float = 120.0,
    workers: int = 1,
) -> tuple[str, int]:
    """Start the dashboard; returns (base URL, server pid).

    background: return once the server answers HTTP (UIError if it dies or does not answer
    within ``timeout`` s), output to ``mlflow-ui.log`` and a pid file, both in
    ``state_dir``. Foreground: block until the server exits or this process gets SIGINT /
    SIGTERM / SIGHUP, which stop the server's whole process group."""
    cmd, env = command(tracking_uri, host, port, workers)
    url = base_url(host, port)
    if not port_free(host, port):
        raise UIError(
            f"{host}:{port} is already in use (a dashboard running? `srsweep ui --stop`); pick another --port"
        )
    folder = state_dir(tracking_uri)
    if not background:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        _stop_on_signals(proc.pid)
        try:
            proc.wait()
        finally:
            stop_group(proc.pid)
        return url, proc.pid
    pid_file = folder / PID_FILE
    if pid_file.exists() and running(tracking_uri) is not None:
        raise UIError(f"a dashboard from {pid_file} is already running; `srsweep ui --stop` first")
    log = folder / LOG_FILE
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while not answers(url):
        code = proc.poll()
        if code is not None:
            raise UIError(
                f"mlflow server exited with code {code} before answering on {url}: "
                f"{_tail(log) or 'no output'} (log {log})"
            )
        if time.monotonic() > deadline:
            stop_group(proc.pid)
            raise UIError(
                f"mlflow server did not answer on {url} within {timeout:.0f} s; stopped it (log {log})"
            )
        time.sleep(0.25)
    pid_file.write_text(
        json.dumps(
            {
                "pid": proc.pid,
                "start": _proc_start(proc.pid),
                "host": host,
                "port": port,
                "url": url,
                "log": str(log),
            }
        )
    )
    return url, proc.pid


def _stop_on_signals(pgid: int) -> None:
    def handler(signum, _frame):
        stop_group(pgid)
        raise SystemExit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def running(tracking_uri: str) -> Optional[dict]:
    """The pid file's record when it names a live ``mlflow server`` started from it, else None."""
    pid_file = state_dir(tracking_uri) / PID_FILE
    try:
        rec = json.loads(pid_file.read_text())
        pid = int(rec["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    args = _cmdline(pid)
    ours = (
        _proc_start(pid) == rec.get("start")
        and any(a.endswith("mlflow") for a in args)
        and "server" in args
        and str(rec.get("port")) in args
    )
    return rec if ours else None


def stop(tracking_uri: str) -> int:
    """Stop the background dashboard of this store; returns its pid. The pid file goes
    either way; UIError when it names no live server of ours (nothing is killed then)."""
    pid_file = state_dir(tracking_uri) / PID_FILE
    if not pid_file.exists():
        raise UIError(f"no dashboard pid file at {pid_file}: nothing to stop")
    rec = running(tracking_uri)
    pid_file.unlink()
    if rec is None:
        raise UIError(f"{pid_file} named no running mlflow server of ours (stale); removed it")
    stop_group(int(rec["pid"]))
    return int(rec["pid"])
