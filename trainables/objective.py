"""The generator objective: the registered loss terms (:mod:`trainables.terms`) summed over
one per-step feature cache, and the discriminator step.

Each network sees each image once per step, shared by every term that reads it: sr on the
graph, the targets (hr, W(hr)) under no_grad (the measured-best strategy, README
"Performance"). The discriminator sees sr and hr as separate batches, in the G step and in
the D step, as ESRGAN, BasicSR, SRGAN and the DP authors' code do: with BatchNorm in train
mode a joint ``[sr; hr]`` batch would let each half's logits depend on the other half.
The local-variance map is computed on the device from hr; Canny maps arrive with the batch.

State that must survive a resume (beta2, the FM rescale, the SA-share running sums) lives
in the terms' buffers, so in this module's ``state_dict``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from trainables import losses as L
from trainables.backbones import ResNetFeatures, VGGFeatures
from trainables.config import ExperimentConfig
from trainables.edges import local_variance
from trainables.terms import TERM_BUILDERS, Features, StepOut, Term

NetworkBuilder = Callable[[ExperimentConfig], nn.Module]


def _vgg(cfg: ExperimentConfig) -> nn.Module:
    bb = cfg.backbones
    return VGGFeatures([cfg.loss.perceptual.layer], bb.weights, bb.weights_dir, seed=bb.seed)


def _resnet(cfg: ExperimentConfig) -> nn.Module:
    bb, dp = cfg.backbones, cfg.loss.dp
    released = dp.resnet_variant == "released"  # stages 1..m on the raw [0, 1] image
    return ResNetFeatures(
        dp.resnet_stage,
        bb.weights,
        bb.weights_dir,
        seed=bb.seed,
        all_stages=released,
        normalize=not released,
    )


# Frozen feature networks the terms may name in ``needs``; "disc" is the trainer's D.
NETWORKS: dict[str, NetworkBuilder] = {"vgg": _vgg, "resnet": _resnet}


class GeneratorObjective(nn.Module):
    def __init__(self, cfg: ExperimentConfig):
        super().__init__()
        self.cfg = cfg.loss
        self.terms = nn.ModuleList(t for build in TERM_BUILDERS if (t := build(cfg)) is not None)
        names = [t.name for t in self.terms]
        if len(set(names)) != len(names):
            raise ValueError(f"loss terms with the same name: {names}")
        self.needs: dict[str, set[str]] = {}
        for t in self.terms:
            for net, targets in t.needs.items():
                self.needs.setdefault(net, set()).update(targets)
        unknown = set(self.needs) - set(NETWORKS) - {"disc"}
        if unknown:
            raise ValueError(f"loss terms need unknown networks {sorted(unknown)}; known: {sorted(NETWORKS)}")
        self.backbones = nn.ModuleDict({n: NETWORKS[n](cfg) for n in NETWORKS if n in self.needs})

    # ---------------------------------------------------------------- accessors
    def term(self, name: str) -> Optional[Term]:
        return next((t for t in self.terms if t.name == name), None)

    @property
    def vgg(self) -> Optional[nn.Module]:
        return self.backbones["vgg"] if "vgg" in self.backbones else None

    @property
    def resnet(self) -> Optional[nn.Module]:
        return self.backbones["resnet"] if "resnet" in self.backbones else None

    @property
    def beta2(self) -> torch.Tensor:
        return self.term("pixel").beta2

    @property
    def fm_scale(self) -> torch.Tensor:
        fm = self.term("fm")
        return fm.fm_scale if fm is not None else torch.zeros(0)

    @property
    def needs_calibration(self) -> bool:
        return any(t.needs_calibration for t in self.terms)

    # ------------------------------------------------------------------- pieces
    def edge_map(self, hr: torch.Tensor, batch_edge: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        sa = self.cfg.pixel.sa
        if sa is None:
            return None
        if sa.edge == "lv":
            return local_variance(hr, sa.lv.window, sa.lv.delta, sa.channels)
        if batch_edge is None:
            raise ValueError("Canny edge maps must come with the batch (TrainPatches(canny=...))")
        return batch_edge

    def forward(
        self,
        sr: torch.Tensor,
        hr: torch.Tensor,
        edge: Optional[torch.Tensor] = None,
        disc: Optional[nn.Module] = None,
    ) -> StepOut:
        """The generator loss of one step; ``disc`` (frozen by the caller) is D."""
        nets: dict[str, Callable] = dict(self.backbones)
        if disc is not None:
            nets["disc"] = disc
        elif "disc" in self.needs:
            raise ValueError("the loss terms need the discriminator: pass disc=")
        f = Features(nets, self.needs, sr, hr, self.edge_map(hr, edge))
        parts = {t.name: t(f) for t in self.terms}
        total = sum(p.value for p in parts.values())
        return StepOut(total, parts)

    def end_step(self, step: StepOut) -> dict[str, torch.Tensor]:
        """After a training G step: the terms' running statistics (SA share, tracking)."""
        out: dict[str, torch.Tensor] = {}
        for t in self.terms:
            out.update(t.end_step(step))
        return out

    def calibrate(self, run: Callable[[], list[StepOut]]) -> None:
        """Calibrate the terms that need it, in their order, each from fresh ``run()`` steps
        (computed with the terms before it already frozen: beta2 sees the FM rescale)."""
        for t in sorted((t for t in self.terms if t.needs_calibration), key=lambda t: t.calibration_order):
            t.calibrate(run())


def d_loss(disc: nn.Module, sr: torch.Tensor, hr: torch.Tensor, kind: str) -> torch.Tensor:
    """D step loss: real and fake (detached) as separate batches, as ESRGAN / BasicSR."""
    real, _ = disc(hr)
    fake, _ = disc(sr.detach())
    return L.gan_d(real, fake, kind)
