"""Generators / discriminators: shapes, closed-form parameter counts, residual structure,
pre-activation feature convention, gradients, determinism and init scale (CPU, tiny)."""

import math

import pytest
import torch
import torch.nn.functional as F

from trainables.config import RRDBNetConfig, SRGANDiscConfig, SRResNetConfig, VGGDiscConfig
from trainables.models import (
    RRDB,
    DenseBlock,
    RRDBNet,
    SRGANDiscriminator,
    SRResNet,
    VGGStyleDiscriminator,
    build_discriminator,
    build_generator,
    count_params,
)


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def conv(cin, cout, k, bias=True):
    return cin * cout * k * k + (cout if bias else 0)


def lin(cin, cout):
    return cin * cout + cout


def bn(c):
    return 2 * c  # weight + bias (running stats are buffers, not parameters)


def zero_(module):
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()


# -------------------------------------------------------------------------- generators
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize(
    "make",
    [
        lambda s: SRResNet(num_feat=8, num_blocks=2, scale=s),
        lambda s: RRDBNet(num_feat=8, num_blocks=1, grow_ch=4, scale=s),
    ],
)
def test_generator_output_size(make, scale):
    g = make(scale)
    out = g(rand(2, 3, 12, 10))
    assert out.shape == (2, 3, 12 * scale, 10 * scale)


@pytest.mark.parametrize("cls", [SRResNet, RRDBNet])
def test_generator_rejects_bad_scale(cls):
    with pytest.raises(ValueError, match="scale: 5"):
        cls(num_feat=8, num_blocks=1, scale=5)


def test_srresnet_param_count_closed_form():
    nf, nb = 8, 2
    expected = (
        conv(3, nf, 9)  # head
        + nb * 2 * conv(nf, nf, 3)  # residual blocks
        + conv(nf, nf, 3)  # body conv before the long skip
        + 2 * conv(nf, 4 * nf, 3)  # two x2 sub-pixel stages
        + conv(nf, 3, 9)
    )  # tail
    assert expected == 11491
    assert count_params(SRResNet(num_feat=nf, num_blocks=nb, scale=4)) == expected
    # x3: one conv nf -> 9 nf before PixelShuffle(3)
    x3 = expected - 2 * conv(nf, 4 * nf, 3) + conv(nf, 9 * nf, 3)
    assert count_params(SRResNet(num_feat=nf, num_blocks=nb, scale=3)) == x3


def test_rrdbnet_param_count_closed_form():
    nf, gc, nb = 8, 4, 2
    dense = sum(conv(nf + k * gc, gc, 3) for k in range(4)) + conv(nf + 4 * gc, nf, 3)
    expected = (
        conv(3, nf, 3)
        + nb * 3 * dense
        + conv(nf, nf, 3)  # first, trunk, trunk conv
        + 2 * conv(nf, nf, 3)  # two upsampling convs
        + conv(nf, nf, 3)
        + conv(nf, 3, 3)
    )  # conv_hr, conv_last
    assert count_params(RRDBNet(num_feat=nf, num_blocks=nb, grow_ch=gc, scale=4)) == expected
    x3 = expected - conv(nf, nf, 3)  # one nearest x3 stage
    assert count_params(RRDBNet(num_feat=nf, num_blocks=nb, grow_ch=gc, scale=3)) == x3


def test_dense_block_and_rrdb_residual_structure():
    torch.manual_seed(0)
    blk = RRDB(num_feat=8, grow_ch=4)
    x = torch.randn(2, 8, 9, 7)
    # Random weights: the outer residual is x + 0.2 * D3(D2(D1(x))).
    d1, d2, d3 = blk.blocks
    assert torch.allclose(blk(x), x + 0.2 * d3(d2(d1(x))), atol=1e-6)
    # Zeroing each dense block's last conv makes it the identity ...
    for d in blk.blocks:
        zero_(d.convs[-1])
        assert torch.equal(d(x), x)
    # ... so the RRDB returns x + 0.2 * x (the outer skip scales its branch, not x).
    assert torch.allclose(blk(x), 1.2 * x, atol=1e-6)


def test_rrdbnet_with_zeroed_branches_reduces_to_head_and_upsampler():
    torch.manual_seed(0)
    g = RRDBNet(num_feat=8, num_blocks=2, grow_ch=4, scale=4).eval()
    zero_(g.conv_body)  # trunk branch contributes nothing -> long skip carries conv_first
    x = rand(1, 3, 8, 8)
    feat = g.conv_first(x)
    for conv_up in g.up_convs:
        feat = F.leaky_relu(conv_up(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
    manual = g.conv_last(F.leaky_relu(g.conv_hr(feat), 0.2))
    assert torch.allclose(g(x), manual, atol=1e-6)


def test_srresnet_with_zeroed_body_is_upsampler_of_head():
    torch.manual_seed(0)
    g = SRResNet(num_feat=8, num_blocks=2, scale=4).eval()
    x = rand(1, 3, 8, 8)
    before = g(x)
    zero_(g.body)
    manual = g.tail(g.upsample(g.head(x)))
    out = g(x)
    assert torch.allclose(out, manual, atol=1e-6)
    assert not torch.allclose(out, before)  # the body did contribute before zeroing
    # A residual block with its last conv zeroed is the identity.
    blk = SRResNet(num_feat=8, num_blocks=1).body[0]
    zero_(blk.conv2)
    h = torch.randn(1, 8, 5, 5)
    assert torch.equal(blk(h), h)


def test_srresnet_init_is_scaled_msra():
    torch.manual_seed(0)
    g = SRResNet(num_feat=32, num_blocks=2, scale=2)
    target = 0.1 * math.sqrt(2 / (32 * 9))
    for blk in list(g.body)[:-1]:
        for c in (blk.conv1, blk.conv2):
            assert abs(c.weight.std().item() / target - 1) < 0.2
            assert torch.count_nonzero(c.bias) == 0


def test_dense_block_init_is_scaled():
    torch.manual_seed(0)
    d = DenseBlock(num_feat=32, grow_ch=16)
    for k, c in enumerate(d.convs):
        target = 0.1 * math.sqrt(2 / ((32 + k * 16) * 9))
        assert abs(c.weight.std().item() / target - 1) < 0.2


@pytest.mark.parametrize(
    "make",
    [
        lambda: SRResNet(num_feat=8, num_blocks=2, scale=4),
        lambda: RRDBNet(num_feat=8, num_blocks=1, grow_ch=4, scale=3),
    ],
)
def test_generator_batch_independence_and_determinism(make):
    torch.manual_seed(7)
    g = make().eval()
    torch.manual_seed(7)
    g2 = make().eval()
    x = rand(3, 3, 10, 10, seed=1)
    with torch.no_grad():
        batch = g(x)
        assert torch.equal(batch, g2(x))
        for i in range(3):
            assert torch.allclose(batch[i : i + 1], g(x[i : i + 1]), atol=1e-5)


# ---------------------------------------------------------------------- discriminators
@pytest.mark.parametrize(
    "cls,valid,invalid,rule",
    [
        (VGGStyleDiscriminator, [32, 64, 96, 128], [16, 48, 100, 0], "multiple of 32"),
        (SRGANDiscriminator, [16, 32, 48, 64, 96, 128], [8, 40, 100, 0], "multiple of 16"),
    ],
)
def test_discriminator_patch_sizes(cls, valid, invalid, rule):
    for p in valid:
        logit, feats = cls(num_feat=8, patch_size=p)(rand(2, 3, p, p))
        assert logit.shape == (2,)
    for p in invalid:
        with pytest.raises(ValueError, match=rf"patch_size: {p} .*{rule}"):
            cls(num_feat=8, patch_size=p)
    d = cls(num_feat=8, patch_size=valid[0])
    with pytest.raises(ValueError, match="patches"):
        d(rand(2, 3, valid[0] * 2, valid[0] * 2))


def test_discriminator_param_counts_closed_form():
    nf, p = 8, 64
    chans = [nf, 2 * nf, 4 * nf, 8 * nf, 8 * nf]
    vgg, cin = 0, 3
    for i, c in enumerate(chans):
        vgg += conv(cin, c, 3) if i == 0 else conv(cin, c, 3, bias=False) + bn(c)
        vgg += conv(c, c, 4, bias=False) + bn(c)
        cin = c
    vgg += lin(8 * nf * (p // 32) ** 2, 100) + lin(100, 1)
    assert count_params(VGGStyleDiscriminator(num_feat=nf, patch_size=p)) == vgg

    ch = [nf, nf, 2 * nf, 2 * nf, 4 * nf, 4 * nf, 8 * nf, 8 * nf]
    srg = conv(3, nf, 3)
    for i in range(1, 8):
        srg += conv(ch[i - 1], ch[i], 3 if i % 2 == 0 else 4, bias=False) + bn(ch[i])
    srg += lin(8 * nf * (p // 16) ** 2, 1024) + lin(1024, 1)
    assert count_params(SRGANDiscriminator(num_feat=nf, patch_size=p)) == srg


@pytest.mark.parametrize(
    "cls,p,n,strides",
    [
        (VGGStyleDiscriminator, 64, 10, [1, 2] * 5),
        (SRGANDiscriminator, 32, 8, [1, 2] * 4),
    ],
)
def test_discriminator_features_are_pre_activation(cls, p, n, strides):
    torch.manual_seed(0)
    d = cls(num_feat=8, patch_size=p)
    for s in range(3):  # non-trivial BN running statistics
        d(rand(4, 3, p, p, seed=10 + s))
    d.eval()
    x = rand(2, 3, p, p)
    logit, feats = d(x)
    assert len(feats) == n == len(d.blocks)
    side = p
    for i, f in enumerate(feats):
        side //= strides[i]
        assert f.shape[-1] == side and f.requires_grad and f.grad_fn is not None
        assert (f < 0).any(), f"feature {i} has no negative values: not pre-activation"
    assert torch.allclose(feats[0], d.blocks[0].conv(x), atol=1e-6)  # first block: no BN
    for i in range(n - 1):
        blk = d.blocks[i + 1]
        again = blk.bn(blk.conv(F.leaky_relu(feats[i], 0.2)))
        assert torch.allclose(again, feats[i + 1], atol=1e-5), f"block {i + 1}"
    head = d.linear2(F.leaky_relu(d.linear1(F.leaky_relu(feats[-1], 0.2).flatten(1)), 0.2))
    assert torch.allclose(head.squeeze(1), logit, atol=1e-5)


@pytest.mark.parametrize("cls,p", [(VGGStyleDiscriminator, 32), (SRGANDiscriminator, 16)])
def test_discriminator_gradients_reach_input(cls, p):
    d = cls(num_feat=8, patch_size=p)
    x = rand(2, 3, p, p).requires_grad_()
    logit, feats = d(x)
    (g_logit,) = torch.autograd.grad(logit.sum(), x, retain_graph=True)
    assert g_logit.abs().sum() > 0
    for i, f in enumerate(feats):
        (g,) = torch.autograd.grad(f.sum(), x, retain_graph=True)
        assert g.abs().sum() > 0, f"no gradient from feature {i}"


@pytest.mark.parametrize("cls", [VGGStyleDiscriminator, SRGANDiscriminator])
def test_discriminator_determinism(cls):
    x = rand(2, 3, 32, 32)
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        logit, feats = cls(num_feat=8, patch_size=32)(x)
        outs.append((logit, feats))
    assert torch.equal(outs[0][0], outs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(outs[0][1], outs[1][1]))


# ---------------------------------------------------------------------------- factories
def test_factories():
    g = build_generator(SRResNetConfig(num_feat=8, num_blocks=2), scale=4)
    assert isinstance(g, SRResNet) and count_params(g) == 11491
    g = build_generator(RRDBNetConfig(num_feat=8, num_blocks=1, grow_ch=4), 2)
    assert isinstance(g, RRDBNet) and g(rand(1, 3, 6, 6)).shape == (1, 3, 12, 12)
    d = build_discriminator(VGGDiscConfig(num_feat=8), patch_size=64)
    assert isinstance(d, VGGStyleDiscriminator) and d.patch_size == 64
    d = build_discriminator(SRGANDiscConfig(num_feat=8), patch_size=96)
    assert isinstance(d, SRGANDiscriminator) and len(d(rand(2, 3, 96, 96))[1]) == 8
    with pytest.raises(ValueError, match="patch_size: 100"):
        build_discriminator(VGGDiscConfig(), patch_size=100)


def test_a_new_architecture_slots_in_by_registering(monkeypatch):
    # What a video family does: its own config class (validated by arch) and a builder,
    # with no edit to the image architectures.
    from typing import Annotated, Literal, Union

    from pydantic import Field

    import trainables.config as C
    import trainables.models as M

    class ToyConfig(C.Strict):
        arch: Literal["toy"] = "toy"
        frames: int = 5

    union = Annotated[Union[(*C.GENERATOR_CONFIGS, ToyConfig)], Field(discriminator="arch")]
    model_cls = C.ModelConfig.__class__("M", (C.ModelConfig,), {"__annotations__": {"generator": union}})
    cfg = C.validate({"generator": {"arch": "toy", "frames": 3}}, model_cls)
    monkeypatch.setitem(M.GENERATORS, "toy", lambda c, scale: torch.nn.Conv2d(3 * c.frames, 3, 1))
    g = build_generator(cfg.generator, 4)
    assert isinstance(g, torch.nn.Conv2d) and g.in_channels == 9
    with pytest.raises(ValueError, match="generator.arch: 'nope' is not one of 'srresnet', 'rrdbnet'"):
        build_generator(SRResNetConfig().model_copy(update={"arch": "nope"}), 4)


def test_paper_default_sizes():
    # ESRGAN RRDBNet (23 blocks, 64 ch, gc 32) has 16.7M parameters; SRResNet 16 blocks ~1.5M.
    assert abs(count_params(RRDBNet()) / 16_697_987 - 1) < 1e-9
    assert 1.4e6 < count_params(SRResNet()) < 1.7e6


def test_msrresnet_is_basicsr_layout_with_a_bilinear_base():
    # DP paper 4.2 / the authors' train_SRGAN_DP.yml: BasicSR's MSRResNet, 64 ch, 16 blocks x4.
    from trainables.models import MSRResNet

    nf, nb = 64, 16
    expected = (
        conv(3, nf, 3) + nb * 2 * conv(nf, nf, 3) + 2 * conv(nf, 4 * nf, 3) + conv(nf, nf, 3) + conv(nf, 3, 3)
    )
    assert count_params(MSRResNet(nf, nb, 4)) == expected == 1_517_571  # BasicSR's MSRResNet x4
    assert all(
        m.kernel_size == (3, 3) for m in MSRResNet(8, 2, 4).modules() if isinstance(m, torch.nn.Conv2d)
    )
    g = build_generator(SRResNetConfig(variant="msrresnet", num_feat=8, num_blocks=2, bicubic_skip=True), 4)
    assert isinstance(g, MSRResNet)  # its own base: not wrapped in BicubicSkip
    x = rand(2, 3, 8, 8)
    zero_(g.tail[-1])  # last conv zeroed: the output is the bilinear upsampling of the input
    assert torch.allclose(g(x), F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False))
    # residual blocks use ReLU: a block with conv1 output all negative is the identity
    blk = g.body[0]
    with torch.no_grad():
        blk.conv1.weight.zero_()
        blk.conv1.bias.fill_(-1.0)
    h = torch.randn(1, 8, 5, 5)
    assert torch.equal(blk(h), h)
