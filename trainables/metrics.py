"""Image-quality metrics with the conventions SR papers report.

PSNR / SSIM: on 0-255 values, Y channel of ITU-R BT.601 by default, rounded to
integers as MATLAB's ``rgb2ycbcr`` does for uint8 images (this is what reproduces the
published bicubic 28.42 dB / 0.8104 on Set5; unrounded Y gives 28.43 / 0.8113),
``shave`` pixels (the scale) removed from each border, SSIM with an 11x11 Gaussian window (sigma 1.5),
valid filtering and C1/C2 from K1 = 0.01, K2 = 0.03 (the MATLAB / BasicSR recipe).
All functions take float images in [0, 1], shape (B, 3, H, W), and return one value
per image (B,), so callers can average or bootstrap per image.
LPIPS: the ``lpips`` package, AlexNet trunk, inputs mapped to [-1, 1].
"""

from __future__ import annotations

from functools import lru_cache

import torch

# BT.601 luma for R, G, B given in [0, 1]: Y in [16, 235].
_Y_WEIGHTS = (65.481, 128.553, 24.966)


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) BT.601 luma on the 0-255 scale."""
    w = x.new_tensor(_Y_WEIGHTS).view(1, 3, 1, 1)
    return 16.0 + (x * w).sum(dim=1, keepdim=True)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round to the 8-bit grid, as saving an output image would (values stay in [0, 1])."""
    return x.clamp(0, 1).mul(255).round().div(255)


def _prepare(
    sr: torch.Tensor, hr: torch.Tensor, shave: int, y_channel: bool, round_y: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    if sr.shape != hr.shape or sr.dim() != 4 or sr.shape[1] != 3:
        raise ValueError(
            f"expected two (B, 3, H, W) batches of equal shape, got {tuple(sr.shape)} and {tuple(hr.shape)}"
        )
    # float64: per-image MSE of near-identical 8-bit images needs the precision.
    sr, hr = sr.double(), hr.double()
    if y_channel:
        sr, hr = rgb_to_y(sr), rgb_to_y(hr)
        if round_y:
            sr, hr = sr.round(), hr.round()
    else:
        sr, hr = sr * 255.0, hr * 255.0
    if shave:
        if min(sr.shape[-2:]) <= 2 * shave:
            raise ValueError(f"image {tuple(sr.shape[-2:])} is too small to shave {shave} px per border")
        sr = sr[..., shave:-shave, shave:-shave]
        hr = hr[..., shave:-shave, shave:-shave]
    return sr, hr


def psnr(
    sr: torch.Tensor, hr: torch.Tensor, shave: int = 0, y_channel: bool = True, round_y: bool = True
) -> torch.Tensor:
    """Per-image PSNR in dB (peak 255). Identical images give +inf."""
    sr, hr = _prepare(sr, hr, shave, y_channel, round_y)
    mse = (sr - hr).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(255.0**2 / mse)


@lru_cache(maxsize=8)
def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _valid_gaussian(x: torch.Tensor, dim: int) -> torch.Tensor:
    """'Valid' 1-D Gaussian filtering along ``dim`` as 11 shifted in-place adds: memory-bound
    and ~10x faster on CPU than a float64 convolution (which has no fast kernel)."""
    g = _gaussian_1d()
    k, n = g.numel(), x.shape[dim] - g.numel() + 1
    out = x.narrow(dim, 0, n).mul(float(g[0]))
    for i in range(1, k):
        out.add_(x.narrow(dim, i, n), alpha=float(g[i]))
    return out


def ssim(
    sr: torch.Tensor, hr: torch.Tensor, shave: int = 0, y_channel: bool = True, round_y: bool = True
) -> torch.Tensor:
    """Per-image SSIM (mean over channels for RGB), Wang et al. 2004 with a Gaussian window."""
    sr, hr = _prepare(sr, hr, shave, y_channel, round_y)
    c = sr.shape[1]
    k = _gaussian_1d().numel()
    if min(sr.shape[-2:]) < k:
        raise ValueError(f"image {tuple(sr.shape[-2:])} is smaller than the 11x11 SSIM window")
    # The 2-D Gaussian is separable: rows then columns, over the five local moments at once
    # ('valid' filtering, per channel).
    stack = torch.cat([sr, hr, sr * sr, hr * hr, sr * hr], dim=1)
    out = _valid_gaussian(_valid_gaussian(stack, -2), -1)
    mu_x, mu_y, e_xx, e_yy, e_xy = out.split(c, dim=1)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    var_x, var_y, cov = e_xx - mu_x**2, e_yy - mu_y**2, e_xy - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1)


class LPIPSMetric(torch.nn.Module):
    """LPIPS (AlexNet trunk) on RGB in [0, 1]; returns (B,) distances.

    ``weights='pretrained'`` loads torchvision's ImageNet AlexNet from the weights
    folder (never downloads); ``'random'`` builds a seeded random trunk for plumbing
    tests (the ``backbones`` tag then says random-init, see ``backbones.build_info``).
    """

    def __init__(self, weights: str = "pretrained", weights_dir=None, seed: int = 0):
        super().__init__()
        from trainables.backbones import build_lpips

        self.net = build_lpips(weights, weights_dir=weights_dir, seed=seed)
        self.weights = weights

    @torch.no_grad()
    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        if sr.shape != hr.shape or sr.dim() != 4:
            raise ValueError(
                f"expected two (B, 3, H, W) batches of equal shape, got {tuple(sr.shape)} "
                f"and {tuple(hr.shape)}"
            )
        return self.net(sr * 2 - 1, hr * 2 - 1).flatten()
