"""What runs inside one Ray Tune trial: config from sampled params, Trainer, reports.

The Ray calls of the worker side live here (``tune.report``, ``tune.get_checkpoint``,
``tune.get_context``). Each report is one validation: the scheduler metric, the
latest training losses, and a checkpoint folder holding the trainer state, the sample
grid and the per-image scores (the driver's MLflow callback and ``srsweep best`` read
those two files).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

CKPT_FILE, SAMPLE_FILE, SCORES_FILE = "last.pt", "sample.png", "scores.json"


def metric_key(name: str) -> str:
    """Trainer metric names (``val/psnr``) -> Ray result keys (``val_psnr``)."""
    return name.replace("/", "_")


def trial_config(params: dict, experiment: dict) -> dict:
    """Sampled params (Optuna names) merged onto the sweep's experiment dict."""
    from sweeper.space import decode, to_overrides
    from trainables.config import deep_merge

    # Grid sweeps pass one point as {"grid_point": {...}} (tune.grid_search over points).
    return deep_merge(experiment, to_overrides(decode(params.get("grid_point", params))))


class RayReporter:
    """Trainer Reporter that turns each validation into one ``tune.report``."""

    def __init__(self):
        self.latest: dict[str, float] = {}
        self.sample: np.ndarray | None = None
        self.rows: list = []

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.latest.update({metric_key(k): float(v) for k, v in values.items()})
        self.latest["step"] = step

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        self.sample = image

    def scores(self, step: int, rows: list) -> None:
        self.rows = rows

    def checkpoint(self, step: int, path: Path) -> None:
        from ray import tune

        if path.name != CKPT_FILE or "val_lpips" not in self.latest:
            return
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            shutil.copy2(path, d / CKPT_FILE)
            if self.sample is not None:
                import cv2

                cv2.imwrite(str(d / SAMPLE_FILE), self.sample[:, :, ::-1])
            scores = {r.name: {"psnr": r.psnr, "ssim": r.ssim, "lpips": r.lpips} for r in self.rows}
            (d / SCORES_FILE).write_text(json.dumps(scores))
            tune.report(dict(self.latest), checkpoint=tune.Checkpoint.from_directory(d))


def run_trial(params: dict, experiment: dict, threads: int = 1) -> None:
    """The Ray function trainable (bound with ``tune.with_parameters``)."""
    import torch
    from ray import tune

    from trainables.config import validate
    from trainables.train import Trainer

    cfg = validate(trial_config(params, experiment), source="trial config")
    # One trial per CPU slot: more intra-op threads only oversubscribe the node.
    torch.set_num_threads(max(1, threads))
    out = Path(tune.get_context().get_trial_dir())
    trainer = Trainer(cfg, out, RayReporter())
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            trainer.resume(Path(d) / CKPT_FILE)
    trainer.run()


def read_checkpoint_files(path: str | os.PathLike) -> dict[str, Any]:
    """Per-image scores and the sample path from a reported checkpoint folder."""
    p = Path(path)
    scores = json.loads((p / SCORES_FILE).read_text()) if (p / SCORES_FILE).is_file() else {}
    return {"scores": scores, "sample": p / SAMPLE_FILE if (p / SAMPLE_FILE).is_file() else None}
