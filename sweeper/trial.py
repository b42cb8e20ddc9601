"""What runs inside one Ray Tune trial: config from sampled params, Trainer, reports.

The Ray calls of the worker side live here (``tune.report``, ``tune.get_checkpoint``,
``tune.get_context``). Each report is one validation: the scheduler metric, the
latest training losses, and a checkpoint folder holding the trainer state of that same
step, the sample grids and the per-image scores (the driver's MLflow callback and
``srsweep best`` read those files).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from sweeper import atomic
from sweeper.state import SweepState

CKPT_FILE, SCORES_FILE, IMAGES_DIR = "last.pt", "scores.json", "images"
CURVES_FILE = "curves.json"  # every log step since the previous report: [{step, loss_*, sa_share, ...}]


class RayReporter:
    """Trainer Reporter: a validation, then the checkpoint the trainer saves right after
    it at the same step, make one ``tune.report`` (Trainer(checkpoint_on_validation=True))."""

    def __init__(self):
        from sweeper.cluster import placement

        self.latest: dict[str, float] = {}
        self.pending: Optional[tuple[int, dict, dict, list]] = None
        self.curves: list[dict[str, float]] = []  # log steps buffered until the next report
        self.where = placement()  # node id, host, GPU: in every report (results table, MLflow tags)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.latest = {**values, "step": step}
        self.curves.append(self.latest)

    def validation(
        self, step: int, metrics: dict[str, float], images: dict[str, np.ndarray], scores: list
    ) -> None:
        self.pending = (step, metrics, images, scores)

    def checkpoint(self, step: int, path: Path) -> None:
        from ray import tune

        if self.pending is None or self.pending[0] != step:
            return  # a periodic save between validations: nothing to report
        _, metrics, images, scores = self.pending
        self.pending = None
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            shutil.copy2(path, d / CKPT_FILE)
            if images:
                import cv2

                (d / IMAGES_DIR).mkdir()
                for name, image in images.items():
                    cv2.imwrite(str(d / IMAGES_DIR / f"{name}.png"), image[:, :, ::-1])
            from sweeper.tracking import per_image

            atomic.write_text(d / SCORES_FILE, json.dumps(per_image(scores)))
            atomic.write_text(d / CURVES_FILE, json.dumps(self.curves))
            self.curves = []
            tune.report(
                {**self.latest, **metrics, "step": step, **self.where},
                checkpoint=tune.Checkpoint.from_directory(d),
            )


def run_trial(params: dict, state: SweepState, threads: int = 1) -> None:
    """The Ray function trainable (bound with ``tune.with_parameters``)."""
    import torch
    from ray import tune

    from sweeper.failures import report_divergence
    from trainables.train import Trainer, TrainingDiverged

    context = tune.get_context()
    cfg = state.trial_config(params, context.get_trial_id() or "")
    from sweeper.sharing import localize_pretrained

    cfg = localize_pretrained(cfg)  # a shared G uploaded to S3: read from a node-local copy
    # One trial per CPU slot: more intra-op threads only oversubscribe the node.
    torch.set_num_threads(max(1, threads))
    reporter = RayReporter()
    trainer = Trainer(cfg, Path(context.get_trial_dir()), reporter, checkpoint_on_validation=True)
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            trainer.resume(Path(d) / CKPT_FILE)
    try:
        trainer.run()
    except TrainingDiverged as exc:  # deterministic: reported and ended, never retried
        report_divergence(state, trainer.step, exc, reporter.where)


def read_checkpoint_files(path: str | os.PathLike) -> dict[str, Any]:
    """Per-image scores, the sample images and the buffered log-step curves from a
    reported checkpoint folder."""
    p = Path(path)
    scores = json.loads((p / SCORES_FILE).read_text()) if (p / SCORES_FILE).is_file() else {}
    curves = json.loads((p / CURVES_FILE).read_text()) if (p / CURVES_FILE).is_file() else []
    return {"scores": scores, "images": sorted((p / IMAGES_DIR).glob("*.png")), "curves": curves}
