"""Shared fixtures: the real benchmark images live in ../shared/data beside the repo."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Set5 / Set14 / DIV2K256 (never copied into the repo). Missing data is an error,
    not a skip: these tests are the project's ground truth against published numbers."""
    root = Path(os.environ.get("SRSWEEP_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not (root / "Set5" / "HR").is_dir():
        pytest.fail(f"benchmark images not found in {root}; set SRSWEEP_SHARED_DATA to the shared/data folder")
    return root
