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


@pytest.fixture(scope="session")
def tiny_config(tiny_data):
    """``tiny_config({...})`` -> a validated experiment at test size on ``tiny_data``: an
    8-channel SRResNet, the SRGAN D, random-init backbones, 32 px patches; the argument is
    deep-merged on top (the keys a test is about)."""
    from trainables.config import validate
    from trainables.config_files import deep_merge

    base = {
        "data": {
            "train": str(tiny_data / "train"),
            "val": str(tiny_data / "val"),
            "patch_size": 32,
            "batch_size": 2,
            "num_workers": 0,
        },
        "model": {
            "generator": {"arch": "srresnet", "num_feat": 8, "num_blocks": 1},
            "discriminator": {"arch": "srgan", "num_feat": 8},
        },
        "backbones": {"weights": "random"},
    }
    return lambda over=None: validate(deep_merge(base, over or {}))
