"""SIGINT / SIGTERM in the sweep driver: stop at a safe point, say how to resume.

``with Interrupts(sweep_dir) as guard:`` installs handlers that only record the signal;
the driver calls ``guard.check()`` between phases, which raises :class:`SweepInterrupted`
(its message is the one-line ``srsweep resume DIR`` hint). A second signal raises at once.
``with guard.raising():`` wraps blocking waits (``ray.get`` of the pretraining task) so the
first signal interrupts them too. The previous handlers come back on exit.

Ray Tune installs its own SIGINT handler inside ``Tuner.fit`` (it saves the experiment
state and returns normally) and puts the previous handler back only when a SIGINT came:
:meth:`Interrupts.after_tune` reads that to know whether ``fit`` was interrupted. SIGTERM
is forwarded to whichever SIGINT handler is current, so Tune stops as gracefully on it.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Optional

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def resume_hint(sweep_dir: str | Path) -> str:
    """The exact command that continues this sweep."""
    return f"srsweep resume {shlex.quote(str(Path(sweep_dir).resolve()))}"


class SweepInterrupted(Exception):
    """The driver was asked to stop; ``str()`` is the one-line resume hint."""

    def __init__(self, signame: str, sweep_dir: Optional[str | Path]):
        self.signame, self.sweep_dir = signame, sweep_dir
        where = (
            f"; resume with: {resume_hint(sweep_dir)}"
            if sweep_dir
            else " before the sweep folder was written"
        )
        super().__init__(f"interrupted by {signame}{where}")


class Interrupts:
    def __init__(self, sweep_dir: Optional[str | Path] = None):
        self.sweep_dir = sweep_dir  # may be set later, once the folder exists
        self.parent: Optional[tuple[str, str]] = None  # (tracking URI, run id) once it exists
        self.received: Optional[int] = None
        self._raising = False
        self._previous: dict[int, object] = {}

    @property
    def signame(self) -> str:
        return signal.Signals(self.received).name if self.received else ""

    def _error(self) -> SweepInterrupted:
        return SweepInterrupted(self.signame, self.sweep_dir)

    def _handler(self, signum: int, frame: Optional[FrameType]) -> None:
        again = self.received is not None
        self.received = self.received or signum
        if again or self._raising:
            raise self._error()

    def _on_term(self, signum: int, frame: Optional[FrameType]) -> None:
        current = signal.getsignal(signal.SIGINT)
        if current == self._handler or not callable(current):
            self._handler(signum, frame)
        else:  # inside Tuner.fit: let Tune stop and save its state, remember why
            self.received = self.received or signum
            current(signal.SIGINT, frame)

    def __enter__(self) -> "Interrupts":
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread
        for sig in _SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
        signal.signal(signal.SIGINT, self._handler)
        signal.signal(signal.SIGTERM, self._on_term)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)
        self._previous.clear()

    def reclaim(self) -> None:
        """``ray.init`` sets its own SIGTERM handler (exit, then Ray's C++ handler aborts): ours back."""
        if self._previous and signal.getsignal(signal.SIGTERM) != self._on_term:
            signal.signal(signal.SIGTERM, self._on_term)

    def check(self) -> None:
        """Raise :class:`SweepInterrupted` if a signal came since entering."""
        self.reclaim()
        if self.received is not None:
            raise self._error()

    @contextlib.contextmanager
    def raising(self):
        """Within this block the first signal raises at once (for blocking waits)."""
        self.check()
        self._raising = True
        try:
            yield self
        finally:
            self._raising = False

    def after_tune(self) -> None:
        """Call right after ``Tuner.fit()`` returns: raises if Tune stopped on a signal."""
        if not self._previous:
            self.check()
            return
        current = signal.getsignal(signal.SIGINT)
        if current == self._handler and self.received is None:
            # Tune restores the handler it replaced only after catching SIGINT.
            self.received = signal.SIGINT
        elif current != self._handler:
            signal.signal(signal.SIGINT, self._handler)  # Tune left its handler installed
        self.check()
