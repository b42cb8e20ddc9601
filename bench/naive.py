"""Issue 13's (c), the naive composition of the full SA + DP + FM + SA-feature loss: every
term fetches its own backbone features for sr and hr, the Canny map is made inside the step,
and feature matching gets its own discriminator passes. Benchmark-only: the trainer never
runs it (bench/step.py times it against the trainer's step)."""

from __future__ import annotations

import numpy as np
import torch

from trainables import losses as L
from trainables.edges import canny


def naive_terms(obj, disc, sr, hr, lc) -> torch.Tensor:
    """The full loss with every term fetching its own features."""
    hr_u8 = (hr.detach().cpu().permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    edge = torch.from_numpy(np.stack([canny(im, 100, 200) for im in hr_u8])).permute(0, 3, 1, 2).to(sr.device)
    layer = lc.perceptual.layer
    total, _, _ = L.sa_pixel(sr, hr, lc.pixel.beta1, 20.0, edge, "l1")
    f_sr, f_hr = obj.vgg(sr)[layer], obj.vgg(hr)[layer]
    l_vgg = L.perceptual(f_sr, f_hr)
    l_res = L.resnet_loss(obj.resnet(sr), obj.resnet(hr), lc.dp.resnet_variant)
    dp, _ = L.dual_perceptual(l_vgg, l_res, lc.dp.mu)
    total = total + dp
    f_sr2, f_hr2, f_w = obj.vgg(sr)[layer], obj.vgg(hr)[layer], obj.vgg(edge.expand(-1, 3, -1, -1))[layer]
    total = total + 0.1 * L.sa_feature(f_sr2, f_hr2, f_w, 1.0, 1.0)
    _, feats_sr = disc(sr)  # FM's own D passes ...
    _, feats_hr = disc(hr)
    blocks = L.fm_block_losses(feats_sr, feats_hr, lc.fm.blocks)
    fm, _ = L.fm_softmax(blocks, torch.ones_like(blocks))
    fake, _ = disc(sr)  # ... and the adversarial term's
    real, _ = disc(hr)
    return total + fm + 0.005 * L.gan_g(fake, real, "ragan")
