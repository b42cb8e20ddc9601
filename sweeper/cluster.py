"""Joining Ray: the embedded local Ray or a running cluster, checked before a sweep writes anything.

``connect`` prints one line (the real GCS address, nodes, CPUs, GPUs) or raises ``ClusterError``
with one line: wrong or missing token (Ray 2.60 token auth), an unreachable address, or a cluster
with no node big enough for one trial. ``placement`` runs inside a trial and says where it ran;
``check_paths_on_workers`` checks on every node that the files trials read are there.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Optional

from trainables.errors import SrsweepError

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

PROBE_TIMEOUT_S = 5.0
CHECK_TIMEOUT_S = 120.0
AUTH_HELP = (
    "export RAY_AUTH_MODE=token and the cluster's token as RAY_AUTH_TOKEN=... "
    "or in ~/.ray/auth_token "
    "(on the head: `ray get-auth-token`)"
)
# Set on a cluster that adds nodes on demand (autoscaler, min_workers: 0): a cluster that is
# too small now is then only reported, not refused.
SCALE_UP_ENV = "SRSWEEP_ALLOW_SCALE_UP"


class ClusterError(SrsweepError, ValueError):
    """One line (one per failure for path checks) the CLI prints instead of a traceback."""


@dataclass(frozen=True)
class ClusterInfo:
    address: str  # the GCS address (host:port) or ray://host:port, never "auto"
    nodes: int
    cpus: float
    gpus: float
    private: bool = False  # the driver's own local Ray (no --address)

    def tags(self) -> dict[str, str]:
        """For the sweep's parent MLflow run."""
        return {f"ray_{k}": str(v) for k, v in asdict(self).items() if k != "private"}

    def line(self) -> str:
        return (
            f"{'local Ray (private)' if self.private else 'Ray cluster'} {self.address}: "
            f"{self.nodes} node{'s' * (self.nodes != 1)}, "
            f"{self.cpus:g} CPUs, {self.gpus:g} GPUs"
        )


def _quiet_ray_logs() -> None:
    # The driver's Python loggers (ray.init's own level is set by its logging_level argument).
    for name in ("ray", "ray.tune", "ray.train", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _resolve_auto() -> str:
    """``auto``: RAY_ADDRESS, else the cluster `ray start` made last on this host, else the only
    Ray running here. Ray itself would pick any of several running clusters without a word."""
    from ray._private.services import find_bootstrap_address, find_gcs_addresses

    env = os.environ.get("RAY_ADDRESS")
    if env:
        return env
    running = sorted(set(find_gcs_addresses()))
    started = find_bootstrap_address(None)
    if started:
        if len(running) > 1:
            print(
                f"note: {len(running)} Ray clusters run on this host; --address auto joins the one "
                f"`ray start` made last ({started})",
                flush=True,
            )
        return started
    if len(running) == 1:
        return running[0]
    if not running:
        raise ClusterError(
            "--address auto: no Ray cluster runs on this host "
            "(start one with `ray start --head`, "
            "or give HOST:PORT)"
        )
    raise ClusterError(
        f"--address auto: {len(running)} Ray clusters run on this host "
        f"({', '.join(running)}) and "
        "none was made by `ray start`: give HOST:PORT"
    )


def _resolve(address: str) -> str:
    """``auto`` / ``HOST:PORT`` -> the GCS address Ray would join; ``ray://`` stays as it is."""
    if address.startswith("ray://"):
        return address
    from ray._private.services import canonicalize_bootstrap_address

    if address == "auto":
        address = _resolve_auto()
    try:
        return canonicalize_bootstrap_address(address)
    except (ValueError, OSError) as exc:  # a malformed address or a host name that does not resolve
        raise ClusterError(f"--address {address}: {str(exc).splitlines()[0]}") from None


def _host_port(address: str) -> tuple[str, int]:
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    return host, int(port)


def _check_reachable(address: str) -> None:
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise ClusterError(
            f"Ray cluster {address} is unreachable ({exc.strerror or exc}): "
            "is `ray start --head` "
            "running there, and is the port open from this machine?"
        ) from None


_PROBE = (
    """
import sys
from ray._raylet import GcsClient
from ray.exceptions import AuthenticationError
try:
    GcsClient(address=sys.argv[1]).internal_kv_get(b"srsweep-probe", None, timeout=%r)
except AuthenticationError:
    print("AUTH")
except Exception as exc:
    print("ERROR", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
else:
    print("OK")
"""
    % PROBE_TIMEOUT_S
)


def _token_source() -> str:
    """What Ray 2.60 sends: the mode and the first token source it reads."""
    if os.environ.get("RAY_AUTH_MODE", "") != "token":
        return "RAY_AUTH_MODE is not 'token', so no token is sent"
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "the token in RAY_AUTH_TOKEN is wrong"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if os.path.isfile(path):
        return f"the token in {path} is wrong"
    return f"no token: RAY_AUTH_TOKEN unset, no {path}"


def _check_auth(address: str) -> None:
    """Ask the GCS once, in a child process: Ray's own connect retries for ~20 s, logging a
    warning per attempt, before a bare ConnectionError that does not mention the token."""
    if os.environ.get("RAY_AUTH_MODE") == "token" and _token_source().startswith("no token"):
        # Ray aborts the process (a failed RAY_CHECK with a C++ stack trace) in this case.
        raise ClusterError(f"Ray cluster {address}: RAY_AUTH_MODE=token but {_token_source()}: {AUTH_HELP}")
    try:
        out = subprocess.run(
            [sys.executable, "-c", _PROBE, address], capture_output=True, text=True, timeout=60
        ).stdout.strip()
    except subprocess.TimeoutExpired:
        raise ClusterError(f"Ray cluster {address} did not answer within 60 s") from None
    verdict = out.splitlines()[-1] if out else "ERROR the connection probe died without an answer"
    if verdict == "AUTH":
        raise ClusterError(
            f"Ray cluster {address} refused this driver's token ({_token_source()}): {AUTH_HELP}"
        )
    if verdict != "OK":
        raise ClusterError(f"Ray cluster {address}: {verdict.removeprefix('ERROR ')}")


def _alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def _fits(need: dict, nodes: list[dict]) -> bool:
    cpu, gpu = float(need.get("cpu", 1)), float(need.get("gpu", 0))
    return any(n["Resources"].get("CPU", 0) >= cpu and n["Resources"].get("GPU", 0) >= gpu for n in nodes)


def connect(address: Optional[str], need: dict) -> ClusterInfo:
    """Start the embedded local Ray (``address`` None) or join a running cluster (``auto``,
    ``HOST:PORT``, ``ray://HOST:PORT``); ``need`` is one trial's ``{"cpu": .., "gpu": ..}``."""
    import ray

    _quiet_ray_logs()
    if not ray.is_initialized():
        if address:
            target = _resolve(address)
            _check_reachable(target)
            if not target.startswith("ray://"):
                _check_auth(target)
            try:
                ray.init(address=target, log_to_driver=False, logging_level=logging.ERROR)
            except Exception as exc:  # ray:// auth / version mismatch: Ray's first line is the useful one
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ClusterError(
                    f"Ray cluster {target}: {msg[:300]}"
                    + (f" ({AUTH_HELP})" if "auth" in msg.lower() else "")
                ) from None
        else:  # a private local Ray sized for one machine (STACK-NOTES): "local" starts a new
            # one whatever /tmp/ray says; RAY_ADDRESS would reach trials and Ray's own clients
            os.environ.pop("RAY_ADDRESS", None)
            ray.init(
                address="local",
                object_store_memory=2 * 2**30,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,
            )
    nodes = _alive_nodes()
    total = ray.cluster_resources()
    gcs = ray.get_runtime_context().gcs_address
    resolved = address if address and address.startswith("ray://") else gcs
    info = ClusterInfo(
        resolved, len(nodes), float(total.get("CPU", 0)), float(total.get("GPU", 0)), private=not address
    )
    if not _fits(need, nodes):
        biggest = max(nodes, key=lambda n: (n["Resources"].get("GPU", 0), n["Resources"].get("CPU", 0)))
        msg = (
            f"Ray cluster {info.address} is too small for one trial: "
            f"it needs {float(need.get('cpu', 1)):g} CPU "
            f"and {float(need.get('gpu', 0)):g} GPU on one node, the largest node has "
            f"{biggest['Resources'].get('CPU', 0):g} CPU and {biggest['Resources'].get('GPU', 0):g} GPU "
            f"({info.nodes} node(s), {info.cpus:g} CPUs, {info.gpus:g} GPUs in all)"
        )
        if os.environ.get(SCALE_UP_ENV) != "1":
            if not address:
                ray.shutdown()  # ours: do not leave an unusable local Ray behind
            raise ClusterError(
                msg + f"; lower `resources` in the sweep YAML, or set {SCALE_UP_ENV}=1 on an "
                "autoscaling cluster"
            )
        print(f"note: {msg}; waiting for the autoscaler ({SCALE_UP_ENV}=1)", flush=True)
    print(info.line(), flush=True)
    return info


PLACEMENT_KEYS = ("node_id", "host", "node_ip", "gpu_count", "gpu_name")


def placement_tags(result: dict) -> dict[str, str]:
    """A trial result carrying ``placement()`` -> MLflow tags (``placement.node_id``, ...)."""
    return {f"placement.{k}": str(result[k]) for k in PLACEMENT_KEYS if k in result}


def placement() -> dict:
    """Where the calling trial runs: node id, host, node IP, GPU name and count (0 and "" on CPU)."""
    import ray

    ctx = ray.get_runtime_context()
    out = {
        "node_id": ctx.get_node_id(),
        "host": socket.gethostname(),
        "node_ip": ray.util.get_node_ip_address(),
        "gpu_count": 0,
        "gpu_name": "",
    }
    try:
        import torch

        if torch.cuda.is_available():
            out["gpu_count"] = torch.cuda.device_count()  # Ray sets CUDA_VISIBLE_DEVICES to the trial's GPUs
            out["gpu_name"] = torch.cuda.get_device_name(0)
    except Exception:  # a broken CUDA install must not fail the trial; the node is still recorded
        pass
    return out


def _check_here(paths: list[str]) -> list[str]:
    """Problems with ``paths`` on this node, one string each."""
    bad = []
    for p in paths:
        if not os.path.exists(p):
            bad.append(f"{p} does not exist")
        elif not os.access(p, os.R_OK | (os.X_OK if os.path.isdir(p) else 0)):
            bad.append(f"{p} is not readable")
    return bad


def check_paths_on_workers(paths: list[str]) -> None:
    """Check on every alive node that ``paths`` exist and are readable (Ray must be connected).

    A 0-CPU task pinned to each node (hard node affinity), so busy nodes answer too. Raises
    ClusterError listing one line per node and path."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    paths = [str(p) for p in paths if p]
    if not paths:
        return
    task = ray.remote(num_cpus=0, max_retries=0)(_check_here)
    nodes = _alive_nodes()
    pinned = {n["NodeID"]: NodeAffinitySchedulingStrategy(n["NodeID"], soft=False) for n in nodes}
    refs = {node_id: task.options(scheduling_strategy=s).remote(paths) for node_id, s in pinned.items()}
    names = {n["NodeID"]: f"node {n['NodeManagerAddress']} ({n['NodeID'][:8]})" for n in nodes}
    lines = []
    for node_id, ref in refs.items():
        try:
            lines += [f"{names[node_id]}: {problem}" for problem in ray.get(ref, timeout=CHECK_TIMEOUT_S)]
        except ray.exceptions.GetTimeoutError:
            lines.append(f"{names[node_id]}: did not answer the path check within {CHECK_TIMEOUT_S:g} s")
        except ray.exceptions.RayError as exc:
            lines.append(f"{names[node_id]}: path check failed ({str(exc).splitlines()[0][:200]})")
    if lines:
        raise ClusterError("\n".join(lines))


def placement_view(df):
    """Short placement columns for the ranked table (``srsweep best --verbose``): host,
    node (first 8 characters of the node id) and gpu ("2x NVIDIA H100", "-" on CPU)."""
    out = df.copy()
    out["host"] = df["host"] if "host" in df else None
    out["node"] = [v[:8] if isinstance(v, str) else None for v in df.get("node_id", [None] * len(df))]
    counts = df.get("gpu_count", [None] * len(df))
    names = df.get("gpu_name", [None] * len(df))
    out["gpu"] = [
        f"{int(c)}x {n}" if isinstance(c, (int, float)) and c == c and c > 0 else ("-" if c == 0 else None)
        for c, n in zip(counts, names)
    ]
    return out


PLACEMENT_VIEW = ("host", "node", "gpu")


class ClusterWatch:
    """While a sweep runs on a joined cluster, probe its GCS port every ``every`` s. Lost for
    ``misses`` probes in a row: ``on_lost`` runs once (the parent MLflow run is marked FAILED
    then, because Ray ends a driver whose GCS is gone without running Python cleanup)."""

    def __init__(self, address: str, on_lost, every: float = 5.0, misses: int = 3):
        import threading

        self.address, self.on_lost, self.every, self.misses = address, on_lost, every, misses
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="srsweep-cluster-watch", daemon=True)

    def _reachable(self) -> bool:
        host, port = _host_port(self.address)
        try:
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
            return True
        except OSError:
            return False

    def _run(self) -> None:
        missed = 0
        while not self._stop.wait(self.every):
            missed = 0 if self._reachable() else missed + 1
            if missed >= self.misses and not self.lost:
                self.lost = True
                self.on_lost()

    def __enter__(self) -> "ClusterWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every + PROBE_TIMEOUT_S)


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m sweeper.cluster --address A [--cpu N --gpu N] [--paths P ...]``: the same
    checks a sweep makes, without running one (one line on success, one line per problem)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m sweeper.cluster", description=main.__doc__)
    ap.add_argument("--address", default=None, help="auto, HOST:PORT or ray://HOST:PORT (default: local Ray)")
    ap.add_argument("--cpu", type=float, default=1.0, help="CPUs of one trial")
    ap.add_argument("--gpu", type=float, default=0.0, help="GPUs of one trial")
    ap.add_argument("--paths", nargs="*", default=[], help="files every node must be able to read")
    args = ap.parse_args(argv)
    try:
        connect(args.address, {"cpu": args.cpu, "gpu": args.gpu})
        check_paths_on_workers(args.paths)
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
