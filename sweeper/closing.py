"""However a sweep driver stops, the MLflow parent run says so truthfully, and the user gets one line.

``closing(guard)`` wraps every phase of ``run`` and ``resume`` (preparation, pretraining,
trials, finish). A signal: the parent KILLED with ``interrupted`` tags, the resume line
(exit 130). Any other failure while the parent is still RUNNING: FAILED with the reason as
its ``failure`` tag; an environmental failure (disk full, permissions, a locked or damaged
file, memory) becomes one line naming it, the parent's new status and the resume command.
``finished`` tells ``resume`` that there is nothing left to do.
"""

from __future__ import annotations

import contextlib
from typing import Optional

from sweeper.errors import EnvironmentProblem, describe
from trainables.errors import SrsweepError


def _state(guard):
    from sweeper.lifecycle import load_state

    with contextlib.suppress(Exception):  # a damaged sweep.json must not hide the first error
        return load_state(guard.sweep_dir)
    return None


def _fail_parent(uri: str, parent: str, reason: str) -> bool:
    """FAILED with ``failure`` = reason, if the parent is still RUNNING; True if it now is FAILED."""
    from sweeper.tracking import Tracker

    with contextlib.suppress(Exception):  # a dead store: the line below still tells the user
        tracker = Tracker(uri)
        if tracker.run_status(parent) == "RUNNING":
            tracker.set_tags(parent, {"failure": reason[:500]})
            tracker.end_run(parent, "FAILED")
        return tracker.run_status(parent) == "FAILED"
    return False


@contextlib.contextmanager
def closing(guard):
    from sweeper.interrupts import SweepInterrupted, resume_hint
    from sweeper.lifecycle import mark_interrupted

    try:
        yield
    except (SweepInterrupted, KeyboardInterrupt) as exc:
        state = _state(guard)
        if state is not None:
            mark_interrupted(state, guard.signame or "SIGINT")
        raise SweepInterrupted(guard.signame or "SIGINT", guard.sweep_dir if state else None) from exc
    except Exception as exc:
        own = isinstance(exc, SrsweepError)  # already one line: kept as it is
        state, line = _state(guard), None if own else describe(exc)
        parent: Optional[tuple[str, str]] = getattr(guard, "parent", None)
        if state is not None:
            parent = (state.tracking_uri, state.parent_run_id)
        reason = line or f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
        failed = parent is not None and _fail_parent(*parent, reason)
        if line is None:
            raise  # srsweep's own one-line error, or a bug (traceback)
        said = f"; MLflow parent run {parent[1]} marked FAILED" if failed else ""
        if guard.sweep_dir and str(guard.sweep_dir) not in line:
            line += f" (sweep folder {guard.sweep_dir})"
        hint = f"; then: {resume_hint(guard.sweep_dir)}" if state is not None else ""
        raise EnvironmentProblem(f"{line}{said}{hint}") from None


def finished(state) -> bool:
    """The sweep's parent run ended FINISHED: its finish phase ran to the end."""
    from sweeper.tracking import Tracker

    with contextlib.suppress(Exception):
        return Tracker(state.tracking_uri).run_status(state.parent_run_id) == "FINISHED"
    return False
