"""SIGINT / SIGTERM to a real driver-like subprocess: a clean stop at a safe point, one line."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sweeper.interrupts import SweepInterrupted, resume_hint

REPO = Path(__file__).resolve().parents[1]

PRELUDE = """
import signal, sys, time
from sweeper.interrupts import Interrupts, SweepInterrupted
def main(guard):
{body}
before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
try:
    with Interrupts(sys.argv[1]) as guard:
        main(guard)
    print("finished", flush=True)
except SweepInterrupted as exc:
    print(f"srsweep: {{exc}}", file=sys.stderr, flush=True)
    restored = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    print(f"restored={{restored}}", flush=True)
    sys.exit(130)
"""


def _run(tmp_path, body: str, signals: list, sweep_dir="my sweep-1") -> subprocess.CompletedProcess:
    script = tmp_path / "driver.py"
    script.write_text(PRELUDE.format(body=textwrap.indent(textwrap.dedent(body), "    ")))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / sweep_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.stdout.readline().strip() == "ready"
    for i, sig in enumerate(signals):
        proc.send_signal(sig)
        if i + 1 < len(signals):  # the driver saw the first one and is now stuck
            assert proc.stdout.readline().strip() == "got one"
    # Not communicate(): it reads the pipe's fd and would miss what readline() buffered.
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.wait(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


LOOP = """
print("ready", flush=True)
for _ in range(100000):  # the driver's phases; check() between them
    time.sleep(0.01)
    guard.check()
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_at_the_next_safe_point_with_the_resume_command(tmp_path, sig):
    r = _run(tmp_path, LOOP, [sig])
    want = f"srsweep: interrupted by {sig.name}; resume with: srsweep resume '{tmp_path / 'my sweep-1'}'"
    assert r.returncode == 130 and r.stderr.strip() == want  # one line, no traceback
    assert r.stdout.strip() == "restored=True"


def test_raising_interrupts_a_blocking_wait(tmp_path):
    r = _run(
        tmp_path,
        """
        print("ready", flush=True)
        with guard.raising():
            time.sleep(600)  # stands in for ray.get(pretraining task)
        print("not reached", flush=True)
    """,
        [signal.SIGTERM],
    )
    assert r.returncode == 130 and "interrupted by SIGTERM" in r.stderr and "not reached" not in r.stdout


def test_a_second_signal_raises_even_without_a_check(tmp_path):
    r = _run(
        tmp_path,
        """
        print("ready", flush=True)
        while guard.received is None:
            time.sleep(0.01)
        print("got one", flush=True)
        time.sleep(600)  # stuck: the user presses Ctrl-C again
    """,
        [signal.SIGINT, signal.SIGINT],
    )
    assert r.returncode == 130 and r.stderr.count("\n") == 1 and "interrupted by SIGINT" in r.stderr


def test_after_tune_tells_an_interrupted_fit_from_a_finished_one(tmp_path):
    # Ray Tune's own handler setup, as Tuner.fit runs it (no cluster needed for this part).
    body = """
    from ray.tune.tune import _setup_signal_catching
    event = _setup_signal_catching()  # fit() #1 starts: Tune owns SIGINT
    guard.after_tune()  # fit() #1 ended without a signal: nothing raised, our handler is back
    assert not event.is_set() and signal.getsignal(signal.SIGINT) == guard._handler
    event = _setup_signal_catching()  # fit() #2
    print("ready", flush=True)
    while not event.is_set():  # Tune's loop runs until its handler fires
        time.sleep(0.01)
    print(f"tune saw it", flush=True)
    guard.after_tune()
    """
    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGTERM is forwarded to Tune's handler
        r = _run(tmp_path, body, [sig])
        assert r.returncode == 130 and r.stdout.splitlines() == ["tune saw it", "restored=True"], r.stderr
        assert r.stderr.strip().endswith(
            f"srsweep: interrupted by {sig.name}; resume with: srsweep resume '{tmp_path / 'my sweep-1'}'"
        ), r.stderr


def test_no_signal_finishes_normally_and_the_hint_is_exact(tmp_path):
    r = _run(tmp_path, 'print("ready", flush=True)\nguard.check()', [])
    assert r.returncode == 0 and r.stdout.splitlines() == ["finished"]
    assert resume_hint(tmp_path / "s") == f"srsweep resume {tmp_path / 's'}"
    msg = "interrupted by SIGINT before the sweep folder was written"
    assert str(SweepInterrupted("SIGINT", None)) == msg
