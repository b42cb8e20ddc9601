"""A real two-node Ray cluster on this machine (`ray start --head` + `ray start --address`, token
auth as Ray 2.60 sets it up): connect, trials spread over both nodes, refusals in one line.

Each `ray start --block` process is ours; SIGTERM to it makes Ray stop the daemons it spawned.
Leftovers are found by our unique temp dir on their command line and stopped by PID.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            tail = Path(proc.log).read_text()[-2000:]
            raise RuntimeError(f"ray start exited with {proc.returncode}: {tail}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"port {port} never opened")


def _our_pids(marker: str) -> list[int]:
    """Processes whose command line names our temp dir (Ray daemons of this test only)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker in (d / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


class TwoNodeCluster:
    def __init__(self):
        self.temp = tempfile.mkdtemp(prefix="srsw-rc-", dir="/tmp")  # short: Ray's unix sockets
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
        }  # workers import _trial
        self.procs: list[subprocess.Popen] = []

    def _start(self, *args: str) -> subprocess.Popen:
        cmd = [
            RAY,
            "start",
            "--block",
            "--num-cpus=1",
            "--num-gpus=0",
            "--object-store-memory=100000000",
            "--disable-usage-stats",
            f"--temp-dir={self.temp}",
            "--node-ip-address=127.0.0.1",
            f"--dashboard-agent-listen-port={free_port()}",
            *args,
        ]
        log = open(Path(self.temp) / f"start-{len(self.procs)}.log", "w")
        proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        proc.log = log.name
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        head = self._start(
            "--head", f"--port={self.port}", "--include-dashboard=false", f"--dashboard-port={free_port()}"
        )
        _wait_port(self.port, head)
        self._start(f"--address={self.address}")
        from ray._raylet import GcsClient

        end = time.time() + 120
        while time.time() < end:  # wait for the second raylet to register
            infos = GcsClient(address=self.address).get_all_node_info(timeout=5).values()
            if sum(1 for i in infos if i.state == 0) >= 2:  # 0 = ALIVE
                return
            time.sleep(1)
        raise TimeoutError("second node never joined")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        end = time.time() + 30
        while _our_pids(self.temp) and time.time() < end:
            time.sleep(1)
        for pid in _our_pids(self.temp):  # only daemons started under our temp dir
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.temp, ignore_errors=True)


def _reset_ray_auth_cache() -> None:
    """Ray caches the auth mode and token per process at first use; tests change both."""
    try:
        from ray._private.authentication_test_utils import reset_auth_token_state
    except ImportError:
        return
    reset_auth_token_state()


@pytest.fixture(scope="module")
def cluster():
    c = TwoNodeCluster()
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    try:
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=c.token)  # this process is the driver
        _reset_ray_auth_cache()  # an earlier test in this process may have cached mode 'disabled'
        c.start()
        yield c
    finally:
        import ray

        ray.shutdown()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        _reset_ray_auth_cache()  # drop the token Ray cached for this process: later tests start clean
        c.stop()
        assert not _our_pids(c.temp), "Ray processes of this test are still running"


def _cli(cluster, *args: str, **env: str | None) -> subprocess.CompletedProcess:
    e = {**cluster.env}
    for k, v in env.items():
        e.pop(k, None) if v is None else e.__setitem__(k, v)
    return subprocess.run(
        [sys.executable, "-m", "sweeper.cluster", *args],
        capture_output=True,
        text=True,
        env=e,
        cwd=REPO,
        timeout=120,
    )


def _trial(config):
    from ray import tune

    from sweeper.cluster import placement

    time.sleep(config["hold"])  # keep both slots busy at once so the scheduler uses both nodes
    tune.report({"score": float(config["x"]), **placement()})


def test_connect_spreads_trials_over_two_nodes(cluster, capsys, tmp_path):
    from ray import tune

    from sweeper.cluster import ClusterInfo, check_paths_on_workers, connect

    info = connect(cluster.address, {"cpu": 1, "gpu": 0})
    line = capsys.readouterr().out.strip()
    assert line.splitlines() == [f"Ray cluster {info.address}: 2 nodes, 2 CPUs, 0 GPUs"]
    assert info == ClusterInfo(info.address, 2, 2.0, 0.0) and info.address.endswith(f":{cluster.port}")
    assert info.tags()["ray_nodes"] == "2"

    tuner = tune.Tuner(
        tune.with_resources(_trial, {"cpu": 1}),
        param_space={"x": tune.grid_search([1, 2, 3, 4]), "hold": 3.0},
        tune_config=tune.TuneConfig(metric="score", mode="max"),
        run_config=tune.RunConfig(name="spread", storage_path=str(tmp_path), verbose=0),
    )
    grid = tuner.fit()
    df = grid.get_dataframe()
    assert len(df) == 4 and not grid.errors
    per_node = df.groupby("node_id").size().to_dict()
    print(f"trials per node: {per_node}")
    assert len(per_node) == 2, per_node  # both raylets ran trials
    assert set(df["host"]) == {socket.gethostname()} and set(df["gpu_count"]) == {0}
    import ray

    ips = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
    assert (df["node_ip"] == df["node_id"].map(ips)).all()  # the address the cluster knows each node by
    from sweeper.cluster import placement_tags

    last = grid[0].metrics
    assert placement_tags(last) == {
        "placement.node_id": last["node_id"],
        "placement.host": socket.gethostname(),
        "placement.node_ip": ips[last["node_id"]],
        "placement.gpu_count": "0",
        "placement.gpu_name": "",
    }

    # Path checks run on each node: one line per node for a missing path, none for a real one.
    check_paths_on_workers([str(REPO / "pyproject.toml")])
    from sweeper.cluster import ClusterError

    with pytest.raises(ClusterError) as err:
        check_paths_on_workers([str(REPO / "pyproject.toml"), "/nonexistent/weights.pt"])
    lines = str(err.value).splitlines()
    assert len(lines) == 2 and all(ln.endswith(": /nonexistent/weights.pt does not exist") for ln in lines)
    assert {ln.split("(")[1].split(")")[0] for ln in lines} == {n[:8] for n in per_node}


def test_auto_reports_the_cluster_it_joined(cluster):
    r = _cli(cluster, "--address", "auto", RAY_ADDRESS=cluster.address)
    assert r.returncode == 0, r.stderr
    (line,) = r.stdout.splitlines()
    assert line.startswith("Ray cluster ") and line.endswith(f":{cluster.port}: 2 nodes, 2 CPUs, 0 GPUs")
    assert "auto" not in line


def test_undersized_cluster_is_refused_in_one_line(cluster):
    r = _cli(cluster, "--address", cluster.address, "--cpu", "2")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1, r.stderr
    assert (
        "is too small for one trial: it needs 2 CPU and 0 GPU on one node, the largest node has 1 CPU"
    ) in r.stderr
    assert "(2 node(s), 2 CPUs, 0 GPUs in all)" in r.stderr


@pytest.mark.parametrize(
    "env,expect",
    [
        ({"RAY_AUTH_TOKEN": "0" * 32}, "the token in RAY_AUTH_TOKEN is wrong"),
        ({"RAY_AUTH_MODE": None, "RAY_AUTH_TOKEN": None}, "RAY_AUTH_MODE is not 'token'"),
        ({"RAY_AUTH_TOKEN": None, "HOME": "/nonexistent-home"}, "no token: RAY_AUTH_TOKEN unset"),
    ],
)
def test_auth_problems_are_one_line(cluster, env, expect):
    r = _cli(cluster, "--address", cluster.address, **env)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1, r.stderr  # no Ray warnings, no traceback
    assert expect in r.stderr and "RAY_AUTH_MODE=token" in r.stderr


@pytest.mark.parametrize(
    "address,expect",
    [
        (
            "127.0.0.1:{port}",
            ":{port} is unreachable (Connection refused)",
        ),  # nothing listens on a fresh port
        ("no-such-host.invalid:6379", "no-such-host.invalid:6379 is unreachable"),
        ("ray-head", "--address ray-head: Invalid address format: ray-head"),
    ],
)
def test_bad_address_is_one_line(address, expect):
    port = free_port()
    r = subprocess.run(
        [sys.executable, "-m", "sweeper.cluster", "--address", address.format(port=port)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1, r.stderr
    assert expect.format(port=port) in r.stderr


def test_embedded_local_ray():
    """No --address: a private Ray on this machine, reported the same way; too small is refused."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    ok = subprocess.run(
        [sys.executable, "-m", "sweeper.cluster", "--cpu", "1"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env=env,
    )
    assert ok.returncode == 0, ok.stderr
    (line,) = ok.stdout.splitlines()
    m = re.fullmatch(r"local Ray \(private\) [\d.]+:\d+: 1 node, (\d+) CPUs, (\d+) GPUs", line)
    from ray._private.utils import get_num_cpus  # what Ray counts here (cgroup limits included)

    assert m and int(m[1]) == get_num_cpus(), line
    big = subprocess.run(
        [sys.executable, "-m", "sweeper.cluster", "--cpu", "1", "--gpu", "64"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env=env,
    )
    assert big.returncode == 2 and big.stdout == "" and big.stderr.count("\n") == 1, big.stderr
    assert "is too small for one trial: it needs 1 CPU and 64 GPU on one node" in big.stderr
