"""The errors a user can fix: one hierarchy under ``SrsweepError``, printed by the CLI in
one line (``srsweep: error: ...``, exit 2). Any other exception is a bug in srsweep."""

from __future__ import annotations


class SrsweepError(Exception):
    """Base of the errors a user can fix (bad input): the CLI prints them in one line.
    Any other exception is a bug and keeps its traceback."""


class ConfigError(SrsweepError, ValueError):
    """A configuration problem, one line per offending key."""


class WeightsFileError(SrsweepError, ValueError):  # raised by trainables.backbones
    """A weight file is there but unusable (corrupt, truncated, another network's): one line."""
