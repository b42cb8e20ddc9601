"""Benchmark of one generator step (``srsweep bench``): timings are printed, not tested.

Compares, in one process and interleaved round by round (this machine is noisy):
- ``esrgan``: plain ESRGAN G step (L1 pixel + VGG conv5_4 + RaGAN);
- ``sa+dp+fm``: the full SA (Canny) + DP + FM + SA-feature step as the trainer runs it:
  each image once through each network, targets under no_grad, Canny maps from the
  data workers (the objective's per-step feature cache, trainables/terms.py);
- ``naive``: the same loss composed naively: separate VGG/ResNet/D forwards for sr and
  hr in every term that uses them (FM through a second D pass), and the Canny map
  computed inside the step.
Same models, same data, same config; only the composition differs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from trainables import losses as L
from trainables.config import validate
from trainables.edges import canny
from trainables.models import build_discriminator, build_generator
from trainables.objective import GeneratorObjective


def _config(full: bool, args) -> dict:
    loss = {
        "pixel": {"criterion": "l1", "beta1": 0.01},
        "perceptual": {"layer": "conv5_4", "weight": 1.0},
        "adv": {"kind": "ragan", "weight": 0.005},
    }
    if full:
        loss["pixel"]["sa"] = {"edge": "canny", "beta2": 20.0}
        loss["dp"] = {"mu": 0.5, "resnet_stage": 3}
        loss["sa_feature"] = {"alpha3": 1.0, "beta3": 1.0, "weight": 0.1}
        loss["fm"] = {"blocks": list(range(10)), "weight": 1.0}
    return {
        "data": {"patch_size": args.patch},
        "backbones": {"weights": "random"},
        "loss": loss,
        "model": {
            "generator": {"arch": "rrdbnet", "num_feat": args.feat, "num_blocks": args.blocks},
            "discriminator": {"arch": "vgg", "num_feat": args.feat},
        },
    }


def _naive_terms(obj: GeneratorObjective, disc, sr, hr, lc) -> torch.Tensor:
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


def run(args: argparse.Namespace) -> dict[str, float]:
    """args: batch, patch, feat, blocks, rounds, device (see ``srsweep bench --help``)."""
    from trainables.train import resolve_device

    device = resolve_device(args.device)
    torch.manual_seed(0)
    cfg_plain, cfg_full = validate(_config(False, args)), validate(_config(True, args))
    G = build_generator(cfg_full.model.generator, 4).to(device)
    D = build_discriminator(cfg_full.model.discriminator, args.patch).to(device).requires_grad_(False)
    opt = torch.optim.Adam(G.parameters(), lr=1e-4)
    plain, full = GeneratorObjective(cfg_plain).to(device), GeneratorObjective(cfg_full).to(device)
    full.fm_scale.fill_(1.0)
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(args.batch, 3, args.patch, args.patch, generator=g).to(device)
    lr = torch.rand(args.batch, 3, args.patch // 4, args.patch // 4, generator=g).to(device)
    # What the data workers hand the trainer: the Canny map, made off the step.
    hr_u8 = (hr.cpu().permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    edge = torch.from_numpy(np.stack([canny(im, 100, 200) for im in hr_u8])).permute(0, 3, 1, 2).to(device)

    def step(kind: str) -> None:
        sr = G(lr)
        if kind == "naive":
            loss = _naive_terms(full, D, sr, hr, cfg_full.loss)
        else:
            obj = plain if kind == "esrgan" else full
            loss = obj(sr, hr, edge if kind != "esrgan" else None, disc=D).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    kinds = ["esrgan", "sa+dp+fm", "naive"]
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for k in kinds:  # warm-up (allocator, cuDNN autotune)
        step(k)
    for _ in range(args.rounds):
        for k in kinds:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step(k)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print(
        f"G step, RRDBNet {args.feat}ch x {args.blocks} blocks, batch {args.batch}, HR patch {args.patch}, "
        f"device {device}, {args.rounds} interleaved rounds, torch threads {torch.get_num_threads()}"
    )
    print(f"{'step':<10} {'median ms':>10} {'x esrgan':>9}")
    for k in kinds:
        print(f"{k:<10} {med[k]:>10.1f} {med[k] / med['esrgan']:>9.2f}")
    print(f"naive / sa+dp+fm = {med['naive'] / med['sa+dp+fm']:.2f}")
    return med
