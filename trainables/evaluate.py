"""Score an upscaler on full validation images with the paper metrics.

Used by ``srsweep eval`` (bicubic baseline, later checkpoints) and by training-time
validation, so both report numbers computed the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from trainables.imresize import imresize_uint8
from trainables.metrics import LPIPSMetric, psnr, quantize, ssim

Upscaler = Callable[[torch.Tensor], torch.Tensor]  # (1,3,h,w) in [0,1] -> (1,3,H,W)


@dataclass(frozen=True)
class ImageScore:
    name: str
    psnr: float
    ssim: float
    lpips: Optional[float] = None


def bicubic(scale: int) -> Upscaler:
    """MATLAB ``imresize(lr_uint8, scale, 'bicubic')``: the published baseline."""

    def up(lr: torch.Tensor) -> torch.Tensor:
        return imresize_uint8(quantize(lr) * 255, scale).float() / 255

    return up


@torch.no_grad()
def evaluate(
    upscale: Upscaler,
    items: Iterable[dict],
    scale: int,
    lpips: Optional[LPIPSMetric] = None,
    device: str | torch.device = "cpu",
    batch: int = 1,
) -> list[ImageScore]:
    """items: dicts with name, lr (3,h,w) and hr (3,H,W) float tensors in [0, 1].

    The SR output is rounded to 8 bits first, as a saved image would be; PSNR/SSIM on
    Y with ``scale`` pixels shaved, LPIPS on RGB over the whole image. ``batch`` > 1:
    images of equal size go through ``upscale`` and the metrics together, up to ``batch``
    at a time (the upscaler must take a batch); the rows keep the items' order.
    """
    items = list(items)
    groups: dict[tuple, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault((tuple(item["lr"].shape), tuple(item["hr"].shape)), []).append(i)
    step = max(1, batch)
    rows: list[Optional[ImageScore]] = [None] * len(items)
    for idx in (g[k : k + step] for g in groups.values() for k in range(0, len(g), step)):
        lr = torch.stack([items[i]["lr"] for i in idx]).to(device)
        hr = torch.stack([items[i]["hr"] for i in idx]).to(device)
        sr = quantize(upscale(lr))
        if sr.shape != hr.shape:
            got, want = tuple(sr.shape[-2:]), tuple(hr.shape[-2:])
            raise ValueError(f"{items[idx[0]]['name']}: upscaler returned {got}, HR is {want}")
        # One device read per chunk, not three per image.
        p, s = psnr(sr, hr, scale).reshape(-1).tolist(), ssim(sr, hr, scale).reshape(-1).tolist()
        lp = lpips(sr, hr).reshape(-1).tolist() if lpips is not None else [None] * len(idx)
        for j, i in enumerate(idx):
            rows[i] = ImageScore(items[i]["name"], p[j], s[j], lp[j])
    return rows


def mean_score(rows: list[ImageScore]) -> ImageScore:
    if not rows:
        raise ValueError("no images were evaluated")
    n = len(rows)
    lp = None if rows[0].lpips is None else sum(r.lpips for r in rows) / n
    return ImageScore("mean", sum(r.psnr for r in rows) / n, sum(r.ssim for r in rows) / n, lp)


def format_table(rows: list[ImageScore], title: str) -> str:
    has_lpips = bool(rows) and rows[0].lpips is not None
    width = max([len(r.name) for r in rows] + [5])
    head = f"{'image':<{width}}  {'PSNR-Y':>7}  {'SSIM-Y':>7}" + (f"  {'LPIPS':>7}" if has_lpips else "")

    def line(r: ImageScore) -> str:
        p = "inf" if math.isinf(r.psnr) else f"{r.psnr:.2f}"
        s = f"{r.name:<{width}}  {p:>7}  {r.ssim:>7.4f}"
        return s + (f"  {r.lpips:>7.4f}" if has_lpips else "")

    rule = "-" * len(head)
    return "\n".join([title, head, rule, *map(line, rows), rule, line(mean_score(rows))])


def center_crop(item: dict, size: int, scale: int) -> dict:
    """Centre HR crop of ``size`` (rounded down to the scale) and the matching LR; 0 = none."""
    if not size:
        return item
    lr, hr = item["lr"], item["hr"]
    s = size // scale
    y, x = max(0, (lr.shape[1] - s) // 2), max(0, (lr.shape[2] - s) // 2)
    return {
        **item,
        "lr": lr[:, y : y + s, x : x + s],
        "hr": hr[:, y * scale : (y + s) * scale, x * scale : (x + s) * scale],
    }


def sample_grid(
    lr: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor, scale: int, max_side: int = 256
) -> np.ndarray:
    """LR (nearest) | bicubic | SR | HR side by side, uint8 HxWx3, for visual checks."""
    crop = {"name": "", "lr": lr, "hr": hr}
    if max(hr.shape[-2:]) > max_side:
        crop = center_crop(crop, max_side, scale)
        sr = center_crop({"lr": lr, "hr": sr}, max_side, scale)["hr"]
    lr_c, hr_c = crop["lr"], crop["hr"]
    panels = [
        F.interpolate(lr_c[None], scale_factor=scale, mode="nearest")[0],
        bicubic(scale)(lr_c[None])[0],
        sr.clamp(0, 1),
        hr_c,
    ]
    grid = torch.cat([p.cpu().float() for p in panels], dim=2)
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
