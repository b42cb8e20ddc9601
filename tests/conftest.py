"""Shared fixtures: the real benchmark images live in ../shared/data beside the repo."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Set5 / Set14 / DIV2K256 (never copied into the repo). Missing data is an error,
    not a skip: these tests are the project's ground truth against published numbers."""
    root = Path(os.environ.get("SRSWEEP_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not (root / "Set5" / "HR").is_dir():
        pytest.fail(
            f"benchmark images not found in {root}; set SRSWEEP_SHARED_DATA to the shared/data folder"
        )
    return root


@pytest.fixture(scope="session")
def tiny_data(shared_data, tmp_path_factory):
    """4 DIV2K crops for training, 2 Set5 pairs for validation (copied: real files)."""
    root = tmp_path_factory.mktemp("data")
    (root / "train").mkdir()
    for p in sorted((shared_data / "DIV2K256" / "HR").glob("*.png"))[:4]:
        shutil.copy(p, root / "train" / p.name)
    for sub in ("HR", "LR_bicubic/X4"):
        (root / "val" / sub).mkdir(parents=True)
        for name in ("img_002.png", "img_003.png"):
            shutil.copy(shared_data / "Set5" / sub / name, root / "val" / sub / name)
    return root
