"""Tests for trainables.edges: local-variance and Canny edge maps, checked on values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.edges import CannySpec, canny, local_variance

LUMA = np.array([0.299, 0.587, 0.114])


# ----------------------------------------------------------------------------- local variance
def lv_reference(x: np.ndarray, window: int, delta: float, channels: str) -> np.ndarray:
    """Eq. 1-3 literally: for every pixel, mean and biased variance of its reflect-padded
    window x window neighbourhood, in float64."""
    if channels == "gray":
        x = np.einsum("bchw,c->bhw", x, LUMA)[:, None]
    p = window // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), mode="reflect")
    b, c, h, w = x.shape
    out = np.zeros(x.shape)
    for i in range(h):
        for j in range(w):
            win = xp[:, :, i : i + window, j : j + window]
            m = win.mean(axis=(2, 3), keepdims=True)  # eq. 2
            mu = ((win - m) ** 2).mean(axis=(2, 3))  # eq. 1, divided by |window| = k^2
            out[:, :, i, j] = mu / (mu + delta)  # eq. 3
    return out


@pytest.mark.parametrize("window", [3, 5])
@pytest.mark.parametrize("channels", ["gray", "rgb"])
def test_local_variance_matches_direct_computation(window, channels):
    rng = np.random.default_rng(window)
    x = rng.random((1, 3, 9, 11))
    delta = 0.01
    want = lv_reference(x, window, delta, channels)
    got = local_variance(torch.from_numpy(x).float(), window, delta, channels)
    assert got.shape == (1, 1 if channels == "gray" else 3, 9, 11)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, atol=2e-6, rtol=0)
    # float64 input is computed in float64: the formula to rounding error.
    got64 = local_variance(torch.from_numpy(x), window, delta, channels)
    assert got64.dtype == torch.float64
    np.testing.assert_allclose(got64.numpy(), want, atol=1e-12, rtol=0)


def test_local_variance_reflect_border():
    """Reflect padding (mirror without repeating the edge pixel, np.pad "reflect"): a lone
    bright corner pixel is seen once by the corner window; replicate padding would count
    it 4 times, zero padding would change the window mean."""
    x = torch.zeros(1, 3, 5, 5, dtype=torch.float64)
    x[..., 0, 0] = 1.0
    w = local_variance(x, 3, delta=1.0, channels="rgb")[0, 0]
    mu = 1 / 9 - 1 / 81  # one bright pixel of 9
    want = mu / (mu + 1)
    # (0, 0): rows/cols -1, 0, 1 read 1, 0, 1; (0, 1): rows 1, 0, 1 x cols 0..2; (1, 1): 0..2
    for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)):
        assert w[i, j].item() == pytest.approx(want, abs=1e-12)
    assert w[2:, :].abs().max() < 1e-12 and w[:, 2:].abs().max() < 1e-12


@pytest.mark.parametrize("channels", ["gray", "rgb"])
@pytest.mark.parametrize("value", [0.0, 0.37, 1.0])
def test_constant_image_is_exactly_zero(channels, value):
    x = torch.full((2, 3, 12, 10), value)
    w = local_variance(x, 5, 1e-6, channels)
    assert not torch.isnan(w).any()
    assert (w == 0).all()


def step_image(h: int = 8, w: int = 12, col: int = 6) -> torch.Tensor:
    """0 left of ``col``, 1 from ``col`` on, in all three channels."""
    x = torch.zeros(1, 3, h, w)
    x[..., col:] = 1.0
    return x


@pytest.mark.parametrize("channels", ["gray", "rgb"])
def test_step_edge_window3(channels):
    delta, col = 0.01, 6
    w = local_variance(step_image(col=col), 3, delta, channels)[0, 0]
    # Column col-1: its 3x3 window holds 3 ones out of 9 -> mu = 3/9 - (3/9)^2 = 2/9.
    # Column col: 6 ones out of 9 -> mu = 6/9 - (6/9)^2 = 2/9 as well.
    want = (2 / 9) / (2 / 9 + delta)
    # gray: 0.299 + 0.587 + 0.114 is 1 only up to float32 rounding
    assert torch.allclose(w[:, col - 1], torch.full((8,), want), atol=1e-5)
    assert torch.allclose(w[:, col], torch.full((8,), want), atol=1e-5)
    far = torch.cat([w[:, : col - 1], w[:, col + 1 :]], dim=1)
    assert far.abs().max() < 1e-5  # windows that do not straddle the step
    assert (w.argmax(dim=1) >= col - 1).all() and (w.argmax(dim=1) <= col).all()


def test_step_edge_window5_profile():
    delta, col = 0.01, 6
    w = local_variance(step_image(col=col), 5, delta, "rgb")[0, 0, 0]
    # 5x5 windows: columns col-2..col+1 straddle the step with 5, 10, 15, 20 ones of 25.
    for c, ones in zip(range(col - 2, col + 2), (5, 10, 15, 20)):
        p = ones / 25
        mu = p - p * p
        assert w[c].item() == pytest.approx(mu / (mu + delta), abs=1e-5)
    assert w[col - 1].item() == pytest.approx(w[col].item(), abs=1e-6)  # symmetric maximum
    assert w[col - 1] > w[col - 2] and w[: col - 2].abs().max() < 1e-5
    assert w[col + 2 :].abs().max() < 1e-5


def test_values_in_unit_interval():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((3, 3, 16, 16))).float()
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2
    x[2] = checker.float()  # the largest possible local variance (~1/4)
    for channels in ("gray", "rgb"):
        for delta in (1e-4, 1e-2, 1.0):
            w = local_variance(x, 3, delta, channels)
            assert (w >= 0).all() and (w < 1).all()
    assert local_variance(x[2:], 3, 1e-4, "rgb").min() > 0.99  # edges everywhere -> ~1


def test_batch_consistency():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.random((4, 3, 10, 13))).float()
    for channels in ("gray", "rgb"):
        full = local_variance(x, 5, 0.02, channels)
        for i in range(4):
            one = local_variance(x[i : i + 1], 5, 0.02, channels)
            assert torch.allclose(full[i : i + 1], one, atol=1e-7)


def test_delta_monotone():
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.random((2, 3, 12, 12))).float()
    x[1, :, :, :6] = 0.5  # a flat half: w stays 0 for every delta
    prev = None
    for delta in (1e-4, 1e-3, 1e-2, 1e-1, 1.0):
        w = local_variance(x, 5, delta, "gray")
        if prev is not None:
            active = prev > 0
            assert (w[active] < prev[active]).all()  # mu > 0: strictly smaller
            assert (w[~active] == 0).all()
        prev = w


def test_no_gradient_and_input_untouched():
    x = torch.rand(1, 3, 8, 8, requires_grad=True)
    before = x.detach().clone()
    w = local_variance(x, 3, 0.01)
    assert not w.requires_grad and w.grad_fn is None
    assert torch.equal(x.detach(), before)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window": 4},
        {"window": 2},
        {"window": 1},
        {"window": 3.5},
        {"delta": 0.0},
        {"delta": -1.0},
        {"channels": "yuv"},
    ],
)
def test_local_variance_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        local_variance(torch.rand(1, 3, 8, 8), **kwargs)


def test_local_variance_bad_shapes():
    with pytest.raises(ValueError, match="B, 3, H, W"):
        local_variance(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="B, 3, H, W"):
        local_variance(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="too small"):
        local_variance(torch.rand(1, 3, 2, 8), window=5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_local_variance_cuda_matches_cpu():
    x = torch.rand(2, 3, 32, 40)
    for channels in ("gray", "rgb"):
        cpu = local_variance(x, 5, 0.01, channels)
        gpu = local_variance(x.cuda(), 5, 0.01, channels)
        assert gpu.device.type == "cuda"
        assert torch.allclose(gpu.cpu(), cpu, atol=1e-5)


# ----------------------------------------------------------------------------- canny
def square_image(size: int = 32, lo: int = 10, hi: int = 21, colour=(255, 255, 255)) -> np.ndarray:
    """Black image with a filled square on rows/cols lo..hi (inclusive)."""
    img = np.zeros((size, size, 3), np.uint8)
    img[lo : hi + 1, lo : hi + 1] = colour
    return img


def test_canny_square_border():
    lo, hi = 10, 21
    e = canny(square_image(lo=lo, hi=hi), 50, 150, "gray")
    assert e.shape == (32, 32, 1) and e.dtype == np.float32
    assert set(np.unique(e)) == {0.0, 1.0}
    rows, cols = np.nonzero(e[..., 0])
    # Every edge pixel is within 1 px of the square's border: inside the square grown by
    # one pixel and outside the square shrunk by one pixel.
    in_grown = (rows >= lo - 1) & (rows <= hi + 1) & (cols >= lo - 1) & (cols <= hi + 1)
    in_core = (rows > lo) & (rows < hi) & (cols > lo) & (cols < hi)
    assert len(rows) > 0 and in_grown.all() and not in_core.any()
    # All four sides are found, along (almost) their whole length.
    for side in (rows <= lo, rows >= hi, cols <= lo, cols >= hi):
        assert side.sum() >= hi - lo - 1


def test_canny_thresholds_above_every_gradient():
    # 3x3 Sobel on a 0/255 step reaches at most 4 * 255 per direction, 2040 in L1.
    for channels in ("gray", "rgb"):
        e = canny(square_image(), 5000, 10000, channels)
        assert e.dtype == np.float32 and (e == 0).all()
    assert (canny(np.full((16, 16, 3), 200, np.uint8), 0, 0) == 0).all()  # no gradient at all


def test_canny_rgb_per_channel():
    img = square_image(colour=(255, 0, 0))  # the square exists in the red plane only
    e = canny(img, 50, 150, "rgb")
    assert e.shape == (32, 32, 3) and e.dtype == np.float32
    assert set(np.unique(e)) == {0.0, 1.0}
    assert e[..., 0].sum() > 0 and (e[..., 1:] == 0).all()
    # Red-only white square: channel 0 is the same map as the white square's gray map.
    assert np.array_equal(e[..., :1], canny(square_image(), 50, 150, "gray"))
    # gray sees it through the luma (0.299 * 255 = 76 levels: still a strong step)
    assert canny(img, 50, 150, "gray").sum() > 0


def test_canny_accepts_strided_views():
    img = square_image()
    view = img[::-1].transpose(1, 0, 2)  # what augmentation hands over
    assert np.array_equal(canny(view, 50, 150), canny(np.ascontiguousarray(view), 50, 150))


def test_canny_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        canny(np.zeros((8, 8, 3), np.float32), 10, 20)
    with pytest.raises(ValueError, match="uint8"):
        canny(np.zeros((8, 8), np.uint8), 10, 20)
    with pytest.raises(ValueError, match="channels"):
        canny(np.zeros((8, 8, 3), np.uint8), 10, 20, "bgr")


def test_canny_spec():
    spec = CannySpec(50, 150, "rgb")
    assert np.array_equal(spec(square_image()), canny(square_image(), 50, 150, "rgb"))
    with pytest.raises(ValueError, match="low"):
        CannySpec(200, 100)
    with pytest.raises(ValueError, match="channels"):
        CannySpec(1, 2, "luma")
