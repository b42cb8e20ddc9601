"""SQLite paths <-> ``sqlite:///`` URIs, for any legal folder name.

SQLAlchemy (and so MLflow and Optuna) splits the URI's database part at ``?`` (query)
and percent-decodes it; ``#`` is a fragment to URL parsers. Those three characters are
therefore percent-encoded and nothing else, so a plain path gives the same URI as
before (stores recorded by older sweeps keep matching). Spaces and unicode pass as they
are. Every place that builds or reads such a URI goes through this pair.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional
from urllib.parse import unquote

PREFIX = "sqlite:///"
_QUOTE = {"%": "%25", "?": "%3F", "#": "%23"}  # "%" first: it is the escape itself


def sqlite_uri(path: str | os.PathLike) -> str:
    """``sqlite:////abs/path`` for a file (made absolute: Ray trials run in other folders)."""
    text = str(Path(path).expanduser().absolute())
    return PREFIX + "".join(_QUOTE.get(c, c) for c in text)


def sqlite_path(uri: str) -> Optional[Path]:
    """The file a ``sqlite:///`` URI opens, as SQLAlchemy reads it (query dropped, percent
    escapes decoded); None for any other URI and for in-memory databases."""
    if not uri.startswith(PREFIX):
        return None
    db = unquote(uri[len(PREFIX) :].split("?", 1)[0])
    return Path(db) if db and db != ":memory:" else None
