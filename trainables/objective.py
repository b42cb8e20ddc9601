"""The generator and discriminator objectives composed from a loss config.

Each image goes through each network once per step, shared by every term that uses
it: VGG19 sees sr, hr and W(hr) (the W part only for the SA feature loss), ResNet50 sr
and hr, D ``[sr; hr]`` in one batch; targets (hr, W) are detached. The local-variance
map is computed on the device from hr; Canny maps arrive with the batch (made in the
data workers).

State that must survive a resume (the calibrated beta2, the FM rescale) lives in
``state_dict`` through registered buffers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from trainables import losses as L
from trainables.backbones import ResNetFeatures, VGGFeatures
from trainables.config import ExperimentConfig
from trainables.edges import local_variance


@dataclass
class GTerms:
    """Loss values of one generator step; ``total`` carries the graph."""
    total: torch.Tensor
    sa_part: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    fm_blocks: Optional[torch.Tensor] = None  # raw per-block FM losses (for the rescale)

    def scalars(self) -> dict[str, torch.Tensor]:
        """Detached 0-d tensors: no device sync here; callers convert when they report."""
        out = {f"loss/{k}": v.detach() for k, v in self.parts.items()}
        total = self.total.detach()
        out["loss/g_total"] = total
        out["sa_share"] = torch.where(total != 0, self.sa_part.detach() / total, torch.zeros_like(total))
        return out


# Measured with `srsweep bench` (README "Performance"): which backbone_pass strategy wins.
CONCAT_BACKBONES = False


def _split(t: torch.Tensor, n: int) -> list[torch.Tensor]:
    return list(t.chunk(n, dim=0))


def backbone_pass(net: nn.Module, sr: torch.Tensor, targets: list[torch.Tensor], concat: bool) -> list[torch.Tensor]:
    """Features of ``sr`` (on the graph) and of the detached targets, each image once.

    concat: one call on ``[sr; targets]``: fewer launches, but the backward pass also
    runs over the target rows. Otherwise sr with grad plus one call on the targets under
    no_grad (no saved activations, backward over sr only). ``srsweep bench`` measures both.
    """
    if concat:
        out = net(torch.cat([sr, *targets]))
        return [o.detach() if i else o for i, o in enumerate(_split(out, 1 + len(targets)))]
    with torch.no_grad():
        tgt = net(torch.cat(targets))
    return [net(sr), *_split(tgt, len(targets))]


class GeneratorObjective(nn.Module):
    def __init__(self, cfg: ExperimentConfig):
        super().__init__()
        self.cfg = cfg.loss
        lc, bb = cfg.loss, cfg.backbones
        self.vgg = (VGGFeatures([lc.perceptual.layer], bb.weights, bb.weights_dir, seed=cfg.seed)
                    if lc.perceptual is not None else None)
        use_res = lc.dp is not None and not math.isinf(lc.dp.mu)
        self.resnet = (ResNetFeatures(lc.dp.resnet_stage, bb.weights, bb.weights_dir, seed=cfg.seed)
                       if use_res else None)
        sa = lc.pixel.sa
        # beta2: fixed, or NaN until calibrate() solves it for the target share.
        beta2 = sa.beta2 if sa is not None and sa.beta2 is not None else math.nan
        self.register_buffer("beta2", torch.tensor(beta2 if sa is not None else 0.0, dtype=torch.float64))
        n_fm = len(lc.fm.blocks) if lc.fm is not None else 0
        self.register_buffer("fm_scale", torch.full((n_fm,), math.nan))
        self.concat_backbones = CONCAT_BACKBONES

    # ------------------------------------------------------------------ pieces
    def edge_map(self, hr: torch.Tensor, batch_edge: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        sa = self.cfg.pixel.sa
        if sa is None:
            return None
        if sa.edge == "lv":
            return local_variance(hr, sa.lv.window, sa.lv.delta, sa.channels)
        if batch_edge is None:
            raise ValueError("Canny edge maps must come with the batch (TrainPatches(canny=...))")
        return batch_edge

    @property
    def needs_calibration(self) -> bool:
        return bool(torch.isnan(self.beta2)) or bool(torch.isnan(self.fm_scale).any())

    def forward(self, sr: torch.Tensor, hr: torch.Tensor, d_logits: torch.Tensor,
                d_feats: list[torch.Tensor], edge: Optional[torch.Tensor]) -> GTerms:
        """d_logits / d_feats: D's outputs on ``[sr; hr]`` (see :func:`d_forward`)."""
        lc, parts, fm_blocks = self.cfg, {}, None
        w = self.edge_map(hr, edge)
        beta2 = float(self.beta2)  # one host read per step; NaN until calibrated
        calibrating = math.isnan(beta2)
        beta2 = 0.0 if calibrating else beta2
        pixel, sa_part = L.sa_pixel(sr, hr, lc.pixel.beta1, beta2, w, lc.pixel.criterion)
        parts["pixel"], parts["sa_pixel"] = pixel, sa_part
        if w is not None and calibrating:
            # Only while beta2 awaits calibration: the edge term without beta2 (the share
            # is linear in beta2), so training steps don't pay for it.
            parts["sa_raw"] = L.weighted_distance(sr.detach(), hr, w, lc.pixel.criterion)
        total = pixel

        if self.vgg is not None:
            with_w = lc.sa_feature is not None
            targets = [hr] + ([w.expand(-1, 3, -1, -1)] if with_w else [])
            f = backbone_pass(lambda x: self.vgg(x)[lc.perceptual.layer], sr, targets, self.concat_backbones)
            l_vgg = L.perceptual(f[0], f[1], lc.perceptual.criterion)
            parts["vgg"] = l_vgg
            percep = l_vgg
            if lc.dp is not None:
                l_res = None
                if self.resnet is not None:
                    r_sr, r_hr = backbone_pass(self.resnet, sr, [hr], self.concat_backbones)
                    l_res = L.perceptual(r_sr, r_hr, "l1")
                    parts["resnet"] = l_res
                percep, zeta = L.dual_perceptual(l_vgg, l_res, lc.dp.mu)
                parts["dp"], parts["dp_zeta"] = percep, zeta
            total = total + lc.perceptual.weight * percep
            if with_w:
                s = lc.sa_feature
                sf = L.sa_feature(f[0], f[1], f[2], s.alpha3, s.beta3, s.criterion)
                parts["sa_feature"] = sf
                total = total + s.weight * sf

        if lc.fm is not None:
            pairs = [_split(t, 2) for t in d_feats]
            fm_blocks = L.fm_block_losses([p[0] for p in pairs], [p[1] for p in pairs], lc.fm.blocks)
            # Before calibration (its first pass only) each step rescales by itself.
            scale = torch.where(torch.isnan(self.fm_scale), L.fm_scale(fm_blocks), self.fm_scale)
            fm, weights = L.fm_softmax(fm_blocks, scale)
            parts["fm"] = fm
            parts.update({f"fm_w{b}": weights[i] for i, b in enumerate(lc.fm.blocks)})
            total = total + lc.fm.weight * fm

        fake, real = _split(d_logits, 2)
        adv = L.gan_g(fake, real, lc.adv.kind)
        parts["adv"] = adv
        total = total + lc.adv.weight * adv
        return GTerms(total, sa_part, parts, fm_blocks)

    @torch.no_grad()
    def calibrate_fm(self, terms: list[GTerms]) -> None:
        """Freeze the one-time FM rescale: 1 / (mean raw L_i over the calibration batches)."""
        if self.cfg.fm is not None and terms:
            self.fm_scale.copy_(L.fm_scale(torch.stack([t.fm_blocks for t in terms]).mean(0)))

    @torch.no_grad()
    def calibrate_beta2(self, terms: list[GTerms]) -> None:
        """Solve beta2 for the target SA share from GTerms computed with beta2 = 0 (and the
        FM scale frozen): share = b*S / (T + b*S) gives b = share*T / ((1 - share)*S),
        S and T averaged over the calibration batches."""
        sa = self.cfg.pixel.sa
        if sa is not None and sa.sa_share is not None and terms:
            s = sum(float(t.parts["sa_raw"]) for t in terms) / len(terms)
            t = sum(float(t.total) for t in terms) / len(terms)
            if s <= 0:
                raise ValueError("SA calibration: the edge-weighted pixel loss is 0 on the calibration "
                                 "batches (flat images or an all-zero edge map); set beta2 instead")
            self.beta2.fill_(sa.sa_share * t / ((1 - sa.sa_share) * s))


def d_forward(disc: nn.Module, sr: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """D on ``[sr; hr]`` in one pass: both halves see the same BatchNorm statistics,
    which keeps FM's feature comparison about content, not batch statistics."""
    return disc(torch.cat([sr, hr]))


def d_loss(disc: nn.Module, sr: torch.Tensor, hr: torch.Tensor, kind: str) -> torch.Tensor:
    logits, _ = d_forward(disc, sr.detach(), hr)
    fake, real = _split(logits, 2)
    return L.gan_d(real, fake, kind)
