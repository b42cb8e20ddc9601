"""Tests for trainables.vsr_models: VSRResFeatGAN generator and discriminator."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainables.config import ConfigError, validate
from trainables.imresize import imresize
from trainables.models import count_params
from trainables.vsr_models import (
    VSRDiscConfig,
    VSRDiscriminator,
    VSRResFeatGenConfig,
    VSRResFeatGenerator,
    build_vsr_discriminator,
    build_vsr_generator,
)


def conv_params(cin: int, cout: int, k: int = 3, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def gen_params_by_hand(t: int, nf: int, blocks: int) -> int:
    return (
        t * conv_params(3, nf)  # one conv per frame
        + conv_params(t * nf, nf)  # first conv after the concat
        + conv_params(nf, nf)  # second conv
        + blocks * 2 * conv_params(nf, nf)
        + conv_params(nf, 3)
    )  # to the centre frame


def test_generator_parameter_count_at_paper_size():
    g = build_vsr_generator(VSRResFeatGenConfig(), 4)
    # 5*(3*64*9+64) + (320*64*9+64) + (64*64*9+64) + 15*2*(64*64*9+64) + (64*3*9+3)
    assert count_params(g) == 8960 + 184384 + 36928 + 1107840 + 1731 == 1_339_843
    tiny = count_params(VSRResFeatGenerator(3, 8, 2))
    assert tiny == gen_params_by_hand(3, 8, 2) == 672 + 1736 + 584 + 2336 + 219 == 5547


def test_generator_output_shape_and_centre_skip():
    torch.manual_seed(0)
    g = VSRResFeatGenerator(num_frames=5, num_feat=8, num_blocks=2, scale=4, bicubic_skip=True)
    lr = torch.rand(2, 5, 3, 6, 7)
    assert g(lr).shape == (2, 3, 24, 28)
    with torch.no_grad():  # last conv zeroed: the output is exactly the bicubic centre frame
        g.conv_last.weight.zero_()
        g.conv_last.bias.zero_()
    torch.testing.assert_close(g(lr), imresize(lr[:, 2], 4), rtol=0, atol=1e-6)


def test_generator_sees_every_frame_through_its_own_conv():
    torch.manual_seed(0)
    g = VSRResFeatGenerator(num_frames=3, num_feat=4, num_blocks=1, scale=2)
    assert len(g.frame_convs) == 3
    assert g.frame_convs[0].weight.data_ptr() != g.frame_convs[1].weight.data_ptr()
    lr = torch.rand(1, 3, 3, 8, 8)
    base = g(lr)
    for t in range(3):
        moved = lr.clone()
        moved[:, t] += 0.1
        assert not torch.allclose(g(moved), base), t
    with pytest.raises(ValueError, match=r"\(B, 3, 3, h, w\)"):
        g(torch.rand(1, 5, 3, 8, 8))


def test_discriminator_parameter_count_at_paper_size():
    d = build_vsr_discriminator(VSRDiscConfig(), 128)
    conv1 = conv_params(3, 64, 4)  # no BN, with bias
    conv2 = conv_params(64, 128, 4, bias=False) + 2 * 128
    conv3 = conv_params(128, 256, 4, bias=False) + 2 * 256
    fc = 256 * 16 * 16 + 1
    assert count_params(d) == conv1 + conv2 + conv3 + fc == 724_801


def test_discriminator_features_are_pre_activation_values():
    torch.manual_seed(0)
    d = VSRDiscriminator(num_feat=4, num_blocks=3, patch_size=16).eval()
    for block in d.blocks[1:]:  # non-trivial BN statistics so BN really does something
        block.bn.running_mean.uniform_(-0.5, 0.5)
        block.bn.running_var.uniform_(0.5, 2.0)
    x = torch.rand(2, 3, 16, 16)
    logit, feats = d(x)
    b = d.blocks
    f0 = F.conv2d(x, b[0].conv.weight, b[0].conv.bias, stride=2, padding=1)

    def bn(z, m):
        return (z - m.running_mean[:, None, None]) / torch.sqrt(
            m.running_var[:, None, None] + m.eps
        ) * m.weight[:, None, None] + m.bias[:, None, None]

    f1 = bn(F.conv2d(F.leaky_relu(f0, 0.2), b[1].conv.weight, None, stride=2, padding=1), b[1].bn)
    f2 = bn(F.conv2d(F.leaky_relu(f1, 0.2), b[2].conv.weight, None, stride=2, padding=1), b[2].bn)
    for got, want in zip(feats, (f0, f1, f2)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert [f.shape for f in feats] == [(2, 4, 8, 8), (2, 8, 4, 4), (2, 16, 2, 2)]
    assert (f0 < 0).any()  # pre-activation: negatives kept
    want_logit = F.linear(F.leaky_relu(f2, 0.2).flatten(1), d.fc.weight, d.fc.bias).squeeze(1)
    torch.testing.assert_close(logit, want_logit, rtol=1e-5, atol=1e-6)


def test_discriminator_features_carry_gradients_and_check_the_patch():
    d = VSRDiscriminator(num_feat=4, num_blocks=2, patch_size=8)
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    _, feats = d(x)
    feats[1].pow(2).mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="8px patches"):
        d(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="multiple of 8"):
        VSRDiscriminator(num_blocks=3, patch_size=20)


def test_configs_validate_once_with_one_line_errors():
    cfg = validate({"arch": "vsrresfeat", "num_feat": 16, "num_blocks": 3}, VSRResFeatGenConfig)
    assert (cfg.num_frames, cfg.num_feat, cfg.num_blocks) == (5, 16, 3)
    with pytest.raises(ConfigError) as e:
        validate({"num_frames": 4}, VSRResFeatGenConfig, source="model.generator")
    assert str(e.value) == "model.generator: num_frames: 4 must be odd (the target is the centre frame)"
    with pytest.raises(ConfigError) as e:
        validate({"arch": "vgg"}, VSRDiscConfig, source="model.discriminator")
    assert str(e.value) == "model.discriminator: arch: 'vgg' is not one of 'vsrresfeat'"


def test_video_presets_carry_the_paper_values():
    from trainables.config import LossConfig
    from trainables.config_files import PRESETS_DIR, read_yaml, resolve_bases

    # the paper chose beta2 (5 lv, 1.5 Canny) for a ~15% SA share: the presets ask for the share
    want = {"vsrresfeatgan": None, "sa_vsr_lv": ("lv", 0.15), "sa_vsr_canny": ("canny", 0.15)}
    for name, sa in want.items():
        d = resolve_bases(read_yaml(PRESETS_DIR / f"{name}.yaml"), PRESETS_DIR)
        gen = validate(d["model"]["generator"], VSRResFeatGenConfig, name)
        disc = validate(d["model"]["discriminator"], VSRDiscConfig, name)
        loss = validate(d["loss"], LossConfig, name)
        assert (gen.num_frames, gen.num_feat, gen.num_blocks, disc.num_blocks) == (5, 64, 15, 3)
        assert d["data"]["num_frames"] == gen.num_frames and d["data"]["batch_size"] == 64
        assert (loss.pixel.criterion, loss.pixel.beta1) == ("charbonnier", 0.001)
        assert (loss.perceptual.weight, loss.adv.kind, loss.adv.weight) == (0.998, "vanilla", 0.001)
        assert (None if loss.pixel.sa is None else (loss.pixel.sa.edge, loss.pixel.sa.sa_share_target)) == sa
        assert d["train"]["lr"] == 1e-4 and d["train"]["steps"] == 20000  # 40 epochs of 500 steps


def test_one_gan_step_on_a_batch_of_embedded_clips():
    from torch.utils.data import DataLoader

    from trainables.edges import local_variance
    from trainables.losses import gan_d, gan_g, sa_pixel
    from trainables.video_data import TrainClips, embedded_video

    torch.manual_seed(0)
    ds = TrainClips(embedded_video("val", 4, n_frames=5, size=64), patch=32, length=4)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    g = VSRResFeatGenerator(num_feat=8, num_blocks=1, bicubic_skip=True)
    d = VSRDiscriminator(num_feat=4, num_blocks=3, patch_size=32)
    opt_g, opt_d = torch.optim.Adam(g.parameters(), 1e-4), torch.optim.Adam(d.parameters(), 1e-4)
    sr = g(batch["lr"])
    pixel, sa, _ = sa_pixel(sr, batch["hr"], 0.001, 5.0, local_variance(batch["hr"]), "charbonnier")
    loss_g = pixel + 0.001 * gan_g(d(sr)[0], None, "vanilla")
    opt_g.zero_grad()
    loss_g.backward()
    opt_g.step()
    loss_d = gan_d(d(batch["hr"])[0], d(sr.detach())[0], "vanilla")
    opt_d.zero_grad()
    loss_d.backward()
    opt_d.step()
    assert torch.isfinite(loss_g) and torch.isfinite(loss_d)
    assert 0 < float(sa.detach()) < float(pixel.detach())
    assert all(p.grad is not None for p in g.frame_convs.parameters())
