"""Edge maps W(x) for the spatially adaptive (SA) pixel loss (sa-loss-general-method III-A).

Two methods, both computed on the HR target only (never differentiated through):
- :func:`local_variance`: eq. 1-3, ``w = mu / (mu + delta)`` with ``mu`` the biased
  variance over a ``window x window`` neighbourhood; torch, runs on the batch's device.
- :func:`canny`: OpenCV's binary Canny map; numpy, runs in the DataLoader workers
  (:class:`trainables.data.TrainPatches` with a :class:`CannySpec`), never in the GPU step.

``channels="gray"`` works on BT.601 luma (one map shared by R, G and B through
broadcasting); ``"rgb"`` gives one map per channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

CHANNELS = ("gray", "rgb")
# BT.601 luma weights, the ones cv2.COLOR_RGB2GRAY uses: both methods see the same gray.
LUMA = (0.299, 0.587, 0.114)


def _check_channels(channels: str) -> None:
    if channels not in CHANNELS:
        raise ValueError(f"channels must be 'gray' or 'rgb', got {channels!r}")


def _box_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """Mean over a window x window neighbourhood, reflect-padded so the size is kept."""
    p = window // 2
    x = F.pad(x, (p, p, p, p), mode="reflect")
    # Separable: two 1-D means cost 2k instead of k^2 per pixel.
    x = F.avg_pool2d(x, (1, window), stride=1)
    return F.avg_pool2d(x, (window, 1), stride=1)


@torch.no_grad()
def local_variance(
    x: torch.Tensor, window: int = 5, delta: float = 0.01, channels: str = "gray"
) -> torch.Tensor:
    """Local-variance edge map of a (B, 3, H, W) batch in [0, 1] -> values in [0, 1).

    Returns (B, 1, H, W) for ``"gray"`` and (B, 3, H, W) for ``"rgb"``, float32 (float64
    if ``x`` is float64), on ``x``'s device, detached.
    """
    if int(window) != window or window < 3 or window % 2 == 0:
        raise ValueError(f"window must be an odd integer >= 3, got {window}")
    if not delta > 0:
        raise ValueError(f"delta must be > 0, got {delta}")
    _check_channels(channels)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, H, W) batch, got shape {tuple(x.shape)}")
    window, p = int(window), int(window) // 2
    if min(x.shape[2:]) <= p:
        raise ValueError(
            f"image {x.shape[2]}x{x.shape[3]} too small for window {window} "
            f"(reflect padding needs more than {p} pixels per side)"
        )
    x = x.detach()
    x = x.double() if x.dtype == torch.float64 else x.float()  # half would lose mu entirely
    if channels == "gray":
        r, g, b = x.unbind(1)
        x = (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(1)
    # Variance is shift invariant: removing each image's mean shrinks the cancellation in
    # E[x^2] - E[x]^2 and makes constant images exactly zero.
    x = x - x.mean(dim=(2, 3), keepdim=True)
    m = _box_mean(x, window)
    mu = (_box_mean(x * x, window) - m * m).clamp_(min=0)  # rounding can go below 0
    return mu / (mu + delta)


@dataclass(frozen=True)
class CannySpec:
    """Canny settings for the data workers (frozen and plain: pickles into workers)."""

    low: float = 100.0
    high: float = 200.0
    channels: str = "gray"

    def __post_init__(self):
        _check_channels(self.channels)
        if not 0 <= self.low <= self.high:
            raise ValueError(f"canny thresholds need 0 <= low <= high, got low={self.low}, high={self.high}")

    def __call__(self, img_uint8: np.ndarray) -> np.ndarray:
        return canny(img_uint8, self.low, self.high, self.channels)


def canny(img_uint8: np.ndarray, low: float, high: float, channels: str = "gray") -> np.ndarray:
    """Binary Canny map of a uint8 (H, W, 3) RGB image -> float32 (H, W, 1|3) in {0, 1}.

    ``cv2.Canny`` with its defaults (3x3 Sobel, L1 gradient magnitude), as the paper uses
    it; ``"rgb"`` runs it on each channel separately.
    """
    _check_channels(channels)
    if img_uint8.dtype != np.uint8 or img_uint8.ndim != 3 or img_uint8.shape[2] != 3:
        raise ValueError(
            f"canny expects a uint8 (H, W, 3) RGB image, got {img_uint8.dtype} {img_uint8.shape}"
        )
    img = np.ascontiguousarray(img_uint8)  # augmented patches are strided views
    if channels == "gray":
        planes = [cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)]
    else:
        planes = [np.ascontiguousarray(img[:, :, c]) for c in range(3)]
    edges = [cv2.Canny(p, float(low), float(high)) for p in planes]  # 0 or 255
    return (np.stack(edges, axis=2) > 0).astype(np.float32)
