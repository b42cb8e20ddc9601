"""PSNR / SSIM / LPIPS against closed forms, scikit-image and the lpips package."""

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from trainables.data import load_image
from trainables.imresize import imresize_uint8
from trainables.metrics import LPIPSMetric, psnr, quantize, rgb_to_y, ssim


def _img(h=16, w=16, seed=0, b=1):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_rgb_to_y_bt601_values():
    x = torch.zeros(1, 3, 1, 4, dtype=torch.float64)
    x[0, :, 0, 1] = 1.0  # white
    x[0, 0, 0, 2] = 1.0  # pure red
    x[0, :, 0, 3] = 128 / 255  # mid gray
    y = rgb_to_y(x).flatten().tolist()
    assert y == pytest.approx([16.0, 235.0, 16 + 65.481, 16 + 219 * 128 / 255], abs=1e-9)


def test_psnr_closed_form_rgb():
    hr = torch.full((1, 3, 8, 8), 0.5, dtype=torch.float64)
    sr = hr.clone()
    sr[0, 1, 2, 3] += 10 / 255  # one value off by 10 gray levels
    mse = 100 / (3 * 64)
    assert psnr(sr, hr, y_channel=False).item() == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-9)


def test_psnr_closed_form_y_and_shave():
    # Gray images: Y = 16 + 219 v; a 10-level gray change moves Y by 219/255*10.
    hr = torch.full((1, 3, 12, 12), 100 / 255, dtype=torch.float64)
    sr = hr.clone()
    sr[..., 4:8, 4:8] += 10 / 255  # inside the area kept after shaving 2 px
    sr[..., 0, :] = 0.0  # border garbage that the shave must drop
    d = 219 / 255 * 10
    expected = 10 * math.log10(255**2 / (d**2 * 16 / 64))
    assert psnr(sr, hr, shave=2, round_y=False).item() == pytest.approx(expected, abs=1e-9)
    # MATLAB convention rounds Y first: 8.588 -> integer difference.
    yd = round(16 + 219 * 110 / 255) - round(16 + 219 * 100 / 255)
    expected_rounded = 10 * math.log10(255**2 / (yd**2 * 16 / 64))
    assert psnr(sr, hr, shave=2).item() == pytest.approx(expected_rounded, abs=1e-9)


def test_identity_cases():
    x = _img(b=2)
    assert torch.isinf(psnr(x, x)).all()
    torch.testing.assert_close(ssim(x, x), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(ssim(x, x, y_channel=False), torch.ones(2, dtype=torch.float64))


def test_ssim_of_constant_images_closed_form():
    # Constant a vs b: variances vanish, SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a, b = 0.2, 0.6
    x = torch.full((1, 3, 16, 16), a, dtype=torch.float64)
    y = torch.full((1, 3, 16, 16), b, dtype=torch.float64)
    c1 = (0.01 * 255) ** 2
    A, B = a * 255, b * 255
    assert ssim(x, y, y_channel=False).item() == pytest.approx(
        (2 * A * B + c1) / (A * A + B * B + c1), abs=1e-9
    )


def test_per_image_values_in_a_batch():
    sr, hr = _img(24, 20, 1, b=3), _img(24, 20, 2, b=3)
    for i in range(3):
        assert psnr(sr, hr, 2)[i].item() == pytest.approx(
            psnr(sr[i : i + 1], hr[i : i + 1], 2).item(), abs=1e-12
        )
        assert ssim(sr, hr, 2)[i].item() == pytest.approx(
            ssim(sr[i : i + 1], hr[i : i + 1], 2).item(), abs=1e-12
        )


def test_errors_on_shape_problems():
    with pytest.raises(ValueError, match="equal shape"):
        psnr(_img(8, 8), _img(8, 10))
    with pytest.raises(ValueError, match="too small to shave"):
        psnr(_img(8, 8), _img(8, 8), shave=4)
    with pytest.raises(ValueError, match="smaller than the 11x11"):
        ssim(_img(10, 10), _img(10, 10))


def _set5_bicubic(root):
    for hr_path in sorted((root / "Set5" / "HR").glob("*.png")):
        hr = torch.from_numpy(load_image(hr_path)).permute(2, 0, 1)
        lr = torch.from_numpy(load_image(root / "Set5" / "LR_bicubic" / "X4" / hr_path.name)).permute(2, 0, 1)
        sr = imresize_uint8(lr, 4)
        yield sr[None].double() / 255, hr[None].double() / 255


def _y_numpy(x):  # independent numpy Y (rounded, MATLAB uint8 convention)
    a = x[0].permute(1, 2, 0).numpy() * 255
    return np.round(16 + (65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]) / 255)


def test_agrees_with_scikit_image_on_real_images(shared_data):
    for sr, hr in _set5_bicubic(shared_data):
        ys, yh = _y_numpy(sr)[4:-4, 4:-4], _y_numpy(hr)[4:-4, 4:-4]
        ref_p = peak_signal_noise_ratio(yh, ys, data_range=255)
        ref_s = structural_similarity(
            yh, ys, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
        assert psnr(sr, hr, shave=4).item() == pytest.approx(ref_p, abs=1e-3)
        assert ssim(sr, hr, shave=4).item() == pytest.approx(ref_s, abs=1e-4)
        # RGB variants: per-channel SSIM averaged, PSNR over all channels.
        s_rgb, h_rgb = (t[0].permute(1, 2, 0).numpy() * 255 for t in (sr, hr))
        ref_rgb = structural_similarity(
            h_rgb,
            s_rgb,
            data_range=255,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            channel_axis=2,
        )
        assert ssim(sr, hr, y_channel=False).item() == pytest.approx(ref_rgb, abs=1e-4)
        assert psnr(sr, hr, y_channel=False).item() == pytest.approx(
            peak_signal_noise_ratio(h_rgb, s_rgb, data_range=255), abs=1e-3
        )


def test_quantize_rounds_to_8_bit_grid():
    x = torch.tensor([-0.2, 0.0, 0.5 / 255, 1.4 / 255, 0.999, 1.3])
    assert (quantize(x) * 255).tolist() == pytest.approx([0, 0, 0, 1, 255, 255])  # 0.5 rounds to even


@pytest.fixture(scope="module")
def lpips_random():
    return LPIPSMetric("random", seed=0)


def test_lpips_identity_and_symmetry(lpips_random):
    x, y = _img(32, 32, 3, b=2).float(), _img(32, 32, 4, b=2).float()
    assert lpips_random(x, x).abs().max().item() < 1e-6
    d = lpips_random(x, y)
    assert d.shape == (2,) and (d > 0).all()
    torch.testing.assert_close(d, lpips_random(y, x))


def test_lpips_matches_its_formula(lpips_random):
    """LPIPS = sum_l mean_hw ||w_l * (f_l(x)/|f_l(x)| - f_l(y)/|f_l(y)|)||^2 on [-1, 1] inputs."""
    x, y = _img(32, 32, 5).float(), _img(32, 32, 6).float()
    net = lpips_random.net
    fx = net.net(net.scaling_layer(x * 2 - 1))
    fy = net.net(net.scaling_layer(y * 2 - 1))
    total = 0.0
    for a, b, lin in zip(fx, fy, net.lins):
        na = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nb = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        w = lin.model[-1].weight.view(1, -1, 1, 1)
        total += ((na - nb) ** 2 * w).sum(1).mean().item()
    assert lpips_random(x, y).item() == pytest.approx(total, rel=1e-5)
    # And the wrapper maps [0, 1] to the package's [-1, 1] convention.
    assert lpips_random(x, y).item() == pytest.approx(net(x * 2 - 1, y * 2 - 1).item(), rel=1e-6)
