"""imresize against hand-computed MATLAB ``contributions`` and MATLAB-made LR files."""

import numpy as np
import pytest
import torch

from trainables.data import load_image
from trainables.imresize import cubic, imresize, imresize_uint8, resize_matrix


def test_cubic_kernel_values():
    x = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, -0.5])
    expected = [1.0, 0.8671875, 0.5625, 0.2265625, 0.0, -0.0703125, -0.0625, -0.0234375, 0.0, 0.0, 0.5625]
    assert cubic(x).tolist() == expected


def test_upscale_two_pixels_by_hand():
    # [0, 1] x2: u = 0.75, 1.25, 1.75, 2.25; with the symmetric border the first output is
    # cubic(.75)+cubic(.25) on pixel 1 and cubic(1.75)+cubic(1.25) on pixel 2 (see module).
    out = imresize(torch.tensor([[0.0, 1.0]], dtype=torch.float64), size=(1, 4))
    assert out[0].tolist() == pytest.approx([-0.09375, 0.203125, 0.796875, 1.09375], abs=1e-12)
    rep = imresize(torch.tensor([[0.0, 1.0]], dtype=torch.float64), size=(1, 4), border="replicate")
    assert rep[0, 0].item() == pytest.approx(-0.0703125, abs=1e-12)


def test_matrix_rows_sum_to_one_and_output_size_is_ceil():
    m = resize_matrix(37, 10, 1 / 4)
    assert m.shape == (10, 37)
    torch.testing.assert_close(m.sum(1), torch.ones(10, dtype=torch.float64))
    assert imresize(torch.zeros(1, 3, 37, 21), 1 / 4).shape == (1, 3, 10, 6)


def test_antialiased_downscale_of_a_ramp_is_the_block_mean():
    # A linear ramp is reproduced exactly by a symmetric, normalised kernel: output k
    # sits at the centre of input block k, i.e. 4k + 1.5 (0-based).
    ramp = torch.arange(64, dtype=torch.float64).repeat(64, 1)
    out = imresize(ramp, 1 / 4)
    interior = out[:, 3:-3]
    expected = (4 * torch.arange(16, dtype=torch.float64) + 1.5)[3:-3].expand_as(interior)
    torch.testing.assert_close(interior, expected)


def test_constant_image_stays_constant_both_borders():
    x = torch.full((2, 3, 20, 28), 0.3, dtype=torch.float64)
    for border in ("symmetric", "replicate"):
        for s in (1 / 4, 1 / 3, 2, 4):
            torch.testing.assert_close(imresize(x, s, border=border), torch.full_like(imresize(x, s), 0.3))


def test_batch_equals_single_images_and_is_differentiable():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 24, 16, generator=g, requires_grad=True)
    out = imresize(x, 1 / 2)
    for i in range(3):
        torch.testing.assert_close(out[i], imresize(x[i].detach(), 1 / 2))
    out.sum().backward()
    # Rows of the matrices sum to one, so d(sum out)/dx sums to the number of outputs.
    assert x.grad.sum().item() == pytest.approx(out.numel(), rel=1e-5)


def test_bad_arguments():
    x = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match="exactly one"):
        imresize(x)
    with pytest.raises(ValueError, match="scale must be > 0"):
        imresize(x, 0)
    with pytest.raises(ValueError, match="border"):
        imresize(x, 2, border="wrap")


def _set5_pairs(root):
    for hr_path in sorted((root / "Set5" / "HR").glob("*.png")):
        hr = torch.from_numpy(load_image(hr_path)).permute(2, 0, 1)
        lr = torch.from_numpy(load_image(root / "Set5" / "LR_bicubic" / "X4" / hr_path.name)).permute(2, 0, 1)
        yield hr_path.name, hr, lr


def test_reproduces_matlab_made_set5_lr(shared_data):
    """The shipped LR files were made by MATLAB: uint8 path, border clamped."""
    for name, hr, lr in _set5_pairs(shared_data):
        ours = imresize_uint8(hr, 1 / 4, border="replicate")
        assert torch.equal(ours, lr), (name, (ours.int() - lr.int()).abs().max().item())
        # Symmetric border (current MATLAB) agrees everywhere the border does not reach.
        sym = imresize_uint8(hr, 1 / 4)
        assert torch.equal(sym[:, 3:-3, 3:-3], lr[:, 3:-3, 3:-3]), name
        assert not torch.equal(sym, lr), name  # ...and differs at the border


def test_float_path_agrees_with_uint8_path_within_rounding(shared_data):
    _, hr, _ = next(_set5_pairs(shared_data))
    f = imresize(hr.double(), 1 / 4)
    u = imresize_uint8(hr, 1 / 4)
    assert (f.round().clamp(0, 255) - u.double()).abs().max().item() <= 1
    assert np.isclose((f - u.double()).abs().mean().item(), 0.25, atol=0.1)
