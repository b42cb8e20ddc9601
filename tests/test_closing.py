"""The sweep driver's closing guard against a real SQLite MLflow store (issue 17 item 10, fast).

A parent run is created as ``prepare`` creates it; a failure after that (memory for a batch
the config asked for, a bug, a signal) must leave it FAILED with its reason, or KILLED.
"""

from __future__ import annotations

import errno

import pytest

from sweeper.closing import closing
from sweeper.errors import EnvironmentProblem, describe
from sweeper.interrupts import Interrupts, SweepInterrupted
from sweeper.tracking import Tracker


@pytest.fixture
def parent(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = tracker.start_run(tracker.experiment("srsweep-closing"), "x (sweep)", {"role": "sweep"})
    return tracker, run


def _run(tracker, run_id):
    return tracker.client.get_run(run_id)


@pytest.mark.parametrize(
    "exc, words",
    [
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 TB"), "allocate"),
        (OSError(errno.ENOSPC, "No space left on device", "/full/x.pt"), "disk is full"),
    ],
)
def test_an_environmental_failure_after_the_parent_fails_it_in_one_line(parent, exc, words):
    tracker, run_id = parent
    guard = Interrupts()
    guard.parent = (tracker.uri, run_id)
    with pytest.raises(EnvironmentProblem) as info, closing(guard):
        raise exc
    assert words in str(info.value) and f"MLflow parent run {run_id} marked FAILED" in str(info.value)
    assert "\n" not in str(info.value)
    run = _run(tracker, run_id)
    assert run.info.status == "FAILED" and words.split()[0] in run.data.tags["failure"]


def test_a_bug_keeps_its_exception_and_still_fails_the_parent(parent):
    tracker, run_id = parent
    guard = Interrupts()
    guard.parent = (tracker.uri, run_id)
    with pytest.raises(KeyError), closing(guard):
        raise KeyError("a bug")
    run = _run(tracker, run_id)
    assert run.info.status == "FAILED" and run.data.tags["failure"].startswith("KeyError")


def test_a_finished_parent_is_left_as_it_is(parent):
    tracker, run_id = parent
    tracker.end_run(run_id, "FINISHED")
    guard = Interrupts()
    guard.parent = (tracker.uri, run_id)
    with pytest.raises(ValueError), closing(guard):
        raise ValueError("after the end")
    assert _run(tracker, run_id).info.status == "FINISHED"


def test_a_signal_before_the_folder_exists_is_the_plain_hint():
    guard = Interrupts()
    with pytest.raises(SweepInterrupted, match="before the sweep folder was written"), closing(guard):
        raise KeyboardInterrupt


def test_unreachable_services_are_one_line():
    assert "did not answer" in describe(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"))
