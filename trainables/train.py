"""One training run: stage 1 PSNR pretraining of G, stage 2 alternating D/G updates.

The loop knows nothing of MLflow or Ray: it calls a :class:`Reporter` (metrics, sample
images, checkpoints), so ``srsweep train`` and the Ray trainable share it unchanged.
Steps are global: ``[0, stage1)`` pretraining, ``[stage1, stage1 + steps)`` GAN.
Patch ``k`` of the stream depends only on ``(seed, k)`` and batch ``s`` holds patches
``[s*B, (s+1)*B)``, so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator, Optional, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from trainables import accel, video_train
from trainables.backbones import build_info
from trainables.checkpoint import load_safe, rng_state, save_atomic, set_rng_state
from trainables.config import ConfigError, ExperimentConfig, validate
from trainables.config_files import to_dict
from trainables.data import PairedImages, TrainPatches
from trainables.edges import CannySpec
from trainables.evaluate import ImageScore, center_crop, evaluate, sample_grid
from trainables.losses import weighted_distance
from trainables.metrics import LPIPSMetric
from trainables.models import build_discriminator, build_generator
from trainables.objective import GeneratorObjective, d_loss
from trainables.panels import N_SAMPLES, image_key, label_panels
from trainables.splits import open_split

STREAM_LENGTH = 2**40  # virtual length of the patch stream (never exhausted)


class TrainingDiverged(RuntimeError):
    """A loss became NaN/inf; the message names the step and the offending terms."""


class Reporter(Protocol):
    """What the trainer tells the outside world, as three separate events."""

    def metrics(self, step: int, values: dict[str, float]) -> None: ...  # log steps: losses, shares, lr
    def validation(
        self, step: int, metrics: dict[str, float], images: dict[str, np.ndarray], scores: list[ImageScore]
    ) -> None: ...  # val_psnr/ssim/lpips, sample grids, per image
    def checkpoint(self, step: int, path: Path) -> None: ...  # a file written at this step


class PrintReporter:
    """Default reporter: one progress line per log step and per validation."""

    KEYS = ("loss_pretrain_pixel", "loss_g_total", "loss_pixel", "sa_share", "beta2")

    @staticmethod
    def _line(step: int, values: dict[str, float], keys) -> None:
        shown = "  ".join(f"{k}={values[k]:.4g}" for k in keys if k in values)
        print(f"step {step:>6}  {shown}", flush=True)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self._line(step, values, self.KEYS)

    def validation(
        self, step: int, metrics: dict[str, float], images: dict[str, np.ndarray], scores: list[ImageScore]
    ) -> None:
        self._line(step, metrics, sorted(metrics))

    def checkpoint(self, step: int, path: Path) -> None:
        pass


class Reporters:
    """Fan each event out to several reporters (console + MLflow, say)."""

    def __init__(self, *reporters: Reporter):
        self.reporters = reporters

    def metrics(self, step: int, values: dict[str, float]) -> None:
        for r in self.reporters:
            r.metrics(step, values)

    def validation(
        self, step: int, metrics: dict[str, float], images: dict[str, np.ndarray], scores: list[ImageScore]
    ) -> None:
        for r in self.reporters:
            r.validation(step, metrics, images, scores)

    def checkpoint(self, step: int, path: Path) -> None:
        for r in self.reporters:
            r.checkpoint(step, path)


class _StreamSampler(Sampler[int]):
    def __init__(self, start: int):
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, STREAM_LENGTH))

    def __len__(self) -> int:
        return STREAM_LENGTH - self.start


def load_val_items(cfg: ExperimentConfig, split: str = "val") -> list[dict]:
    """The validation images as the trainer scores them (``val_images``, ``val_crop``),
    decoded once: validation reuses the same few images every time. ``split="test"``:
    every image of ``data.test`` (the confirmation's held-out split), same crop."""
    if video_train.is_video(cfg):  # clips: every frame of the first val_images sequences
        if split == "test":
            cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"val": cfg.data.test})})
        return video_train.val_clips(cfg)
    t = cfg.train
    val = open_split(cfg.data, cfg.scale, split, cache=cfg.data.cache)
    val.validate(t.val_crop)
    items = PairedImages(val)
    n = min(len(val), (t.val_images if split == "val" else 0) or len(val))
    return [center_crop(items[i], t.val_crop, cfg.scale) for i in range(n)]


def load_generator(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, ExperimentConfig]:
    """G (eval mode) and its config from a ``last.pt`` or ``pretrain_g.pt`` checkpoint."""
    state = load_safe(path, device, required=("G", "config"))  # one-line CheckpointError otherwise
    cfg = validate(state["config"], source=f"{path} config")
    g = build_generator(cfg.model.generator, cfg.scale).to(device)
    g.load_state_dict(state["G"])
    return g.eval(), cfg


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is visible")
    return torch.device(
        "cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name)
    )


class Trainer:
    """``checkpoint_on_validation``: also save the full state right after each validation
    (a Ray trial does, so each report carries the checkpoint of its own step)."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        out_dir: str | Path,
        reporter: Optional[Reporter] = None,
        checkpoint_on_validation: bool = False,
    ):
        self.cfg, self.out = cfg, Path(out_dir)
        self.reporter = reporter or PrintReporter()
        self.checkpoint_on_validation = checkpoint_on_validation
        self.device = resolve_device(cfg.train.device)
        self.info = build_info(cfg.backbones.weights)
        torch.manual_seed(cfg.seed)  # model init is the only random draw outside the data
        self.G = build_generator(cfg.model.generator, cfg.scale).to(self.device)
        self.D = build_discriminator(cfg.model.discriminator, cfg.data.patch_size).to(self.device)
        self.objective = GeneratorObjective(cfg).to(self.device)
        accel.layout(cfg.train, self.G, self.D, self.objective)  # GPU path options, off by default
        accel.backbone_layout(self.device, self.objective)
        self.g_fwd, self.d_fwd = accel.compiled(cfg.train, self.G), accel.compiled(cfg.train, self.D)
        bb = cfg.backbones  # backbones.seed, not the training seed: one metric for every run
        self.lpips = LPIPSMetric(bb.weights, bb.weights_dir, seed=bb.seed).to(self.device)
        t = cfg.train
        self.opt_pre = torch.optim.Adam(self.G.parameters(), lr=t.pretrain_lr or t.lr, betas=t.betas)
        self.sched_pre = torch.optim.lr_scheduler.MultiStepLR(self.opt_pre, t.pretrain_milestones, t.lr_gamma)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=t.lr, betas=t.betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=t.lr, betas=t.betas)
        self.sched_g = torch.optim.lr_scheduler.MultiStepLR(self.opt_g, t.milestones, t.lr_gamma)
        self.sched_d = torch.optim.lr_scheduler.MultiStepLR(self.opt_d, t.milestones, t.lr_gamma)
        self.stage1 = 0 if t.pretrained_g else t.pretrain_steps
        self.total_steps = self.stage1 + t.steps
        self.step = 0
        if t.pretrained_g:
            self.G.load_state_dict(load_safe(t.pretrained_g, self.device, required=("G",))["G"])
        self._build_data()

    # ------------------------------------------------------------------ data
    def _build_data(self) -> None:
        d, sa = self.cfg.data, self.cfg.loss.pixel.sa
        if video_train.is_video(self.cfg):  # samples are clips; the loss terms see the centre frame
            self.patches = video_train.train_clips(self.cfg, STREAM_LENGTH)
            self.val_items = load_val_items(self.cfg)
            return
        train = open_split(d, self.cfg.scale, "train", cache=d.cache)
        train.validate(d.patch_size)
        canny = (
            CannySpec(sa.canny.low, sa.canny.high, sa.channels)
            if sa is not None and sa.edge == "canny"
            else None
        )
        self.patches = TrainPatches(
            train,
            d.patch_size,
            STREAM_LENGTH,
            seed=self.cfg.seed,
            hflip=d.augment.hflip,
            vflip=d.augment.vflip,
            rot90=d.augment.rot90,
            edge=canny,
        )
        self.val_items = load_val_items(self.cfg)

    def batches(self, start_step: int) -> Iterator[dict]:
        bs, workers = self.cfg.data.batch_size, self.cfg.data.num_workers
        loader = DataLoader(
            self.patches,
            batch_size=bs,
            sampler=_StreamSampler(start_step * bs),
            num_workers=workers,
            drop_last=True,
            persistent_workers=False,
            pin_memory=self.device.type == "cuda",
        )
        for batch in loader:
            yield {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    # ----------------------------------------------------------------- steps
    def pretrain_step(self, batch: dict) -> dict[str, float]:
        px, criterion = self.cfg.loss.pixel, self.cfg.train.pretrain_criterion
        with accel.autocast(self.cfg.train, self.device):
            sr = self.g_fwd(batch["lr"])
            loss = weighted_distance(sr, batch["hr"], None, criterion or px.criterion, px.huber_delta)
        self._check_finite(loss, {"pretrain_pixel": loss})
        self.opt_pre.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_pre.step()
        self.sched_pre.step()
        return {"loss_pretrain_pixel": loss.detach()}

    def gan_step(self, batch: dict) -> dict[str, float]:
        lr, hr, edge = batch["lr"], batch["hr"], batch.get("edge")
        # G step: D frozen (no parameter grads); D sees sr and hr as separate batches.
        self.D.requires_grad_(False)
        with accel.autocast(self.cfg.train, self.device):
            sr = self.g_fwd(lr)
            terms = self.objective(sr, hr, edge, disc=self.d_fwd)
        self._check_finite(terms.total, terms.scalars())
        self.opt_g.zero_grad(set_to_none=True)
        terms.total.backward()
        self.opt_g.step()
        # D step on the detached SR batch, real and fake again as separate batches.
        self.D.requires_grad_(True)
        with accel.autocast(self.cfg.train, self.device):
            l_d = d_loss(self.d_fwd, sr, hr, self.cfg.loss.adv.kind)
        self._check_finite(l_d, {"d": l_d})
        self.opt_d.zero_grad(set_to_none=True)
        l_d.backward()
        self.opt_d.step()
        self.sched_g.step()
        self.sched_d.step()
        out = terms.scalars()  # tensors: converted (one sync) only on steps that report
        out.update(self.objective.end_step(terms))  # sa_share_mean, beta2 after tracking
        out["loss_d"] = l_d.detach()
        out["lr"] = self.opt_g.param_groups[0]["lr"]
        return out

    def _check_finite(self, loss: torch.Tensor, parts: dict) -> None:
        if not torch.isfinite(loss):
            bad = [k for k, v in parts.items() if not math.isfinite(float(v))]
            raise TrainingDiverged(
                f"step {self.step}: loss is {float(loss)} (non-finite terms: "
                f"{', '.join(bad) or 'none; the sum overflowed'}); lower the lr or the "
                f"loss weights"
            )

    def calibrate(self) -> None:
        """Stage-2 start: freeze the FM rescale, then solve beta2 for the SA share target,
        on the first stage-2 batches (forward only, no update)."""
        n = self.cfg.loss.pixel.sa.calibration_batches if self.cfg.loss.pixel.sa else 4
        it = self.batches(self.step)
        calib = [next(it) for _ in range(n)]
        del it

        @torch.no_grad()
        def run() -> list:
            return [self.objective(self.G(b["lr"]), b["hr"], b.get("edge"), disc=self.D) for b in calib]

        self.objective.calibrate(run)
        print(
            f"calibrated: beta2={float(self.objective.beta2):.4g}, "
            f"fm_scale={self.objective.fm_scale.tolist()}",
            flush=True,
        )

    # ------------------------------------------------------------ validation
    @torch.no_grad()
    def score_validation(self) -> tuple[dict[str, float], dict[str, np.ndarray], list[ImageScore]]:
        """G on the validation images: mean metrics, the sample grid, per-image scores."""
        self.G.eval()
        rows = evaluate(
            lambda lr: self.G(lr).clamp(0, 1),
            self.val_items,
            self.cfg.scale,
            lpips=self.lpips,
            device=self.device,
            batch=8,
        )  # equal sizes batched
        images = {}
        for i, item in enumerate(self.val_items[:N_SAMPLES]):  # the same few images every time
            sr = self.G(item["lr"][None].to(self.device)).clamp(0, 1)[0].cpu()
            images[image_key(i, item.get("name", ""))] = label_panels(
                sample_grid(video_train.centre(item["lr"]), sr, item["hr"], self.cfg.scale)
            )
        self.G.train()
        m = video_train.summary(rows, self.cfg)  # clips: mean of the sequence means
        return {"val_psnr": m.psnr, "val_ssim": m.ssim, "val_lpips": m.lpips}, images, rows

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "config": to_dict(self.cfg),
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "objective": self._objective_state(),
            "opt_pre": self.opt_pre.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "sched_pre": self.sched_pre.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "sched_d": self.sched_d.state_dict(),
            "rng": rng_state(),
        }

    def _objective_state(self) -> dict:
        # Term buffers and calibration only: the frozen backbones are rebuilt from the config.
        return {k: v for k, v in self.objective.state_dict().items() if not k.startswith("backbones.")}

    def load_state_dict(self, state: dict) -> None:
        if validate(state["config"]) != self.cfg:
            raise ConfigError("checkpoint was written by a different config; refusing to resume it")
        self.step = state["step"]
        objective = {**self.objective.state_dict(), **state["objective"]}  # frozen backbones: as built
        for name in ("G", "D", "opt_pre", "opt_g", "opt_d", "sched_pre", "sched_g", "sched_d"):
            if name != "sched_pre" or name in state:  # older checkpoints: no stage-1 schedule
                getattr(self, name).load_state_dict(state[name])
        self.objective.load_state_dict(objective)
        set_rng_state(state["rng"])

    def save(self, path: Path) -> Path:
        return save_atomic(self.state_dict(), path)  # a kill mid-write never leaves a torn checkpoint

    def save_generator(self, path: Path) -> Path:
        """G alone (what ``train.pretrained_g`` and ``srsweep eval --model`` read)."""
        return save_atomic({"G": self.G.state_dict(), "config": to_dict(self.cfg), "step": self.step}, path)

    def resume(self, path: str | Path) -> None:
        """Continue from a ``last.pt`` written by :meth:`save` (same config only)."""
        state = load_safe(path, self.device, required=("step", "config", "G", "D", "rng"))
        try:
            self.load_state_dict(state)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    # ------------------------------------------------------------------- run
    def run(self, until: Optional[int] = None) -> dict[str, float]:
        """Train up to global step ``until`` (default: the end); returns the last metrics."""
        until = self.total_steps if until is None else min(until, self.total_steps)
        t, last = self.cfg.train, {}
        self.G.train()
        self.D.train()
        while self.step < until:
            stage2 = self.step >= self.stage1
            if stage2 and self.objective.needs_calibration:
                self.calibrate()
            end = until if stage2 else min(until, self.stage1)
            for batch in self.batches(self.step):
                values = self.gan_step(batch) if stage2 else self.pretrain_step(batch)
                self.step += 1
                validating = self.step % t.val_every == 0 or self.step in (self.stage1, self.total_steps)
                if self.step % t.log_every == 0 or validating or self.step == until:
                    values["stage"] = 2.0 if stage2 else 1.0
                    values = {k: float(v) for k, v in values.items()}  # tensors sync only here
                    self.reporter.metrics(self.step, values)
                if validating:
                    val, images, rows = self.score_validation()
                    self.reporter.validation(self.step, val, images, rows)
                    values = {**values, **val}
                last = values
                # The full state first: a reporter pairs a validation with the next checkpoint.
                if (
                    self.step % t.checkpoint_every == 0
                    or self.step == until
                    or (validating and self.checkpoint_on_validation)
                ):
                    self.reporter.checkpoint(self.step, self.save(self.out / "last.pt"))
                if self.step == self.stage1 and self.stage1 > 0:
                    self.reporter.checkpoint(self.step, self.save_generator(self.out / "pretrain_g.pt"))
                if self.step >= end:
                    break
        return {k: float(v) for k, v in last.items()}
