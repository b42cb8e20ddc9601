"""Generators and discriminators for GAN super-resolution.

Generators (images in [0, 1] in and out, no clamping, no bicubic/bilinear base added but MSRResNet's):
  * SRResNet - SRGAN generator as used by the feature-matching paper: no batch norm,
    LeakyReLU(0.2), sub-pixel (PixelShuffle) upsampling, MSRA init scaled by 0.1.
  * RRDBNet  - ESRGAN generator: residual-in-residual dense blocks, nearest-neighbour
    upsampling + conv.
  * MSRResNet - BasicSR's SRResNet (``srresnet`` with ``variant: msrresnet``, the DP code's
    SRGAN generator): 3x3 convs, ReLU blocks, and it adds a bilinear base itself.

Discriminators return ``(logit, features)``:
  * ``logit``: shape (B,), raw score (losses apply BCE-with-logits / RaGAN themselves);
  * ``features``: one tensor per conv block, in order, taken PRE-activation (conv output,
    after its BatchNorm where the block has one, before the LeakyReLU). They are the
    tensors on the autograd path (nothing detached, LeakyReLU never in place), so the
    feature-matching loss can back-propagate through them.
    ``len(features)`` = number of convs: 10 for VGGStyleDiscriminator, 8 for SRGANDiscriminator.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import RRDBNetConfig, SRGANDiscConfig, SRResNetConfig, VGGDiscConfig
from .imresize import imresize

SLOPE = 0.2  # LeakyReLU negative slope everywhere (both papers)


def _up_factors(scale: int) -> list[int]:
    """x2^k -> k stages of 2; x3 -> one stage of 3 (both papers)."""
    if scale == 3:
        return [3]
    if scale >= 2 and scale & (scale - 1) == 0:
        return [2] * int(math.log2(scale))
    raise ValueError(f"scale: {scale} is not supported (use 3 or a power of 2)")


@torch.no_grad()
def _scaled_kaiming(modules, scale: float = 0.1) -> None:
    """MSRA (kaiming normal, fan_in, gain sqrt(2)) init times `scale`, zero bias.
    The small scale keeps residual branches near zero at start (faster convergence)."""
    for m in modules:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
            m.weight.mul_(scale)
            if m.bias is not None:
                m.bias.zero_()


def count_params(module: nn.Module) -> int:
    """Number of parameter elements (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------- SRResNet
class ResBlock(nn.Module):
    """conv3x3 - LeakyReLU - conv3x3 + identity (no BN: BN causes SR artefacts)."""

    def __init__(self, num_feat: int):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)

    def forward(self, x):
        return x + self.conv2(F.leaky_relu(self.conv1(x), SLOPE))


class SRResNet(nn.Module):
    """SRGAN generator without BN (feature-matching paper, Fig. 2 top).

    head: conv9x9 + LeakyReLU; body: num_blocks ResBlocks + conv3x3, long skip from the
    head; upsampler: per stage conv3x3 (num_feat -> num_feat*r^2) + PixelShuffle(r) +
    LeakyReLU; tail: conv9x9 -> num_out. The 9x9 head/tail follow SRGAN.
    """

    def __init__(
        self, num_in: int = 3, num_out: int = 3, num_feat: int = 64, num_blocks: int = 16, scale: int = 4
    ):
        super().__init__()
        self.scale = scale
        self.head = nn.Sequential(nn.Conv2d(num_in, num_feat, 9, 1, 4), nn.LeakyReLU(SLOPE))
        self.body = nn.Sequential(
            *[ResBlock(num_feat) for _ in range(num_blocks)], nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        )
        up = []
        for r in _up_factors(scale):
            up += [nn.Conv2d(num_feat, num_feat * r * r, 3, 1, 1), nn.PixelShuffle(r), nn.LeakyReLU(SLOPE)]
        self.upsample = nn.Sequential(*up)
        self.tail = nn.Conv2d(num_feat, num_out, 9, 1, 4)
        _scaled_kaiming(self.modules(), 0.1)  # the paper: MSRA init x 0.1 for the whole net

    def forward(self, x):
        feat = self.head(x)
        return self.tail(self.upsample(feat + self.body(feat)))


# ---------------------------------------------------------------------------- RRDBNet
class DenseBlock(nn.Module):
    """5-conv residual dense block: conv k sees x and all previous outputs; the 5th conv
    maps back to num_feat and is added to x scaled by 0.2 (ESRGAN residual scaling)."""

    def __init__(self, num_feat: int = 64, grow_ch: int = 32):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(num_feat + k * grow_ch, grow_ch if k < 4 else num_feat, 3, 1, 1) for k in range(5)
        )
        _scaled_kaiming(self.convs, 0.1)

    def forward(self, x):
        feats = [x]
        for conv in self.convs[:-1]:
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), SLOPE))
        return x + 0.2 * self.convs[-1](torch.cat(feats, 1))


class RRDB(nn.Module):
    """Residual in residual: three dense blocks in a row, outer skip scaled by 0.2,
    i.e. out = x + 0.2 * D3(D2(D1(x)))."""

    def __init__(self, num_feat: int = 64, grow_ch: int = 32):
        super().__init__()
        self.blocks = nn.Sequential(*[DenseBlock(num_feat, grow_ch) for _ in range(3)])

    def forward(self, x):
        return x + 0.2 * self.blocks(x)


class RRDBNet(nn.Module):
    """ESRGAN generator: conv_first, RRDB trunk + trunk conv with long skip, per stage
    nearest upsampling + conv3x3 + LeakyReLU, conv_hr + LeakyReLU, conv_last.
    Only the dense blocks get the x0.1 init (as ESRGAN); other convs use PyTorch's default."""

    def __init__(
        self,
        num_in: int = 3,
        num_out: int = 3,
        num_feat: int = 64,
        num_blocks: int = 23,
        grow_ch: int = 32,
        scale: int = 4,
    ):
        super().__init__()
        self.scale = scale
        self.factors = _up_factors(scale)
        self.conv_first = nn.Conv2d(num_in, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(num_feat, grow_ch) for _ in range(num_blocks)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.up_convs = nn.ModuleList(nn.Conv2d(num_feat, num_feat, 3, 1, 1) for _ in self.factors)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out, 3, 1, 1)

    def forward(self, x):
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for r, conv in zip(self.factors, self.up_convs):
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=r, mode="nearest")), SLOPE)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), SLOPE))


# ----------------------------------------------------------------------- discriminators
class ConvBlock(nn.Module):
    """One discriminator block: conv (+BN) then LeakyReLU. Returns (pre, post) so the
    pre-activation map can feed feature matching. No conv bias when BN follows (BN's
    shift makes it redundant)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, bn: bool):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, 1, bias=not bn)
        self.bn = nn.BatchNorm2d(cout) if bn else nn.Identity()
        self.act = nn.LeakyReLU(SLOPE, inplace=False)  # in place would overwrite `pre`

    def forward(self, x):
        pre = self.bn(self.conv(x))
        return pre, self.act(pre)


class _ConvDiscriminator(nn.Module):
    """Conv blocks, flatten, linear(hidden), LeakyReLU, linear(1). Subclasses give the
    block layout; the flatten size follows from patch_size and the number of stride-2 convs."""

    divisor = 1

    def __init__(self, layout, num_hidden: int, patch_size: int):
        super().__init__()
        name = type(self).__name__
        if patch_size <= 0 or patch_size % self.divisor:
            raise ValueError(
                f"patch_size: {patch_size} is not supported by {name}: it must be a "
                f"positive multiple of {self.divisor} (one halving per stride-2 conv)"
            )
        self.patch_size = patch_size
        self.blocks = nn.ModuleList(ConvBlock(*spec) for spec in layout)
        side = patch_size // self.divisor
        self.linear1 = nn.Linear(layout[-1][1] * side * side, num_hidden)
        self.linear2 = nn.Linear(num_hidden, 1)

    def forward(self, x):
        if tuple(x.shape[-2:]) != (self.patch_size, self.patch_size):
            raise ValueError(
                f"{type(self).__name__} built for {self.patch_size}px patches, got {tuple(x.shape[-2:])}"
            )
        features = []
        for block in self.blocks:
            pre, x = block(x)
            features.append(pre)
        h = F.leaky_relu(self.linear1(x.flatten(1)), SLOPE)
        return self.linear2(h).squeeze(1), features


class VGGStyleDiscriminator(_ConvDiscriminator):
    """ESRGAN discriminator: 5 stages of conv3x3 s1 + conv4x4 s2, channels nf, 2nf, 4nf,
    8nf, 8nf; BN everywhere except the first conv; 10 feature maps; dense 100 -> 1."""

    divisor = 32

    def __init__(self, num_in: int = 3, num_feat: int = 64, patch_size: int = 128):
        chans = [num_feat, 2 * num_feat, 4 * num_feat, 8 * num_feat, 8 * num_feat]
        layout, cin = [], num_in
        for i, c in enumerate(chans):
            layout += [(cin, c, 3, 1, i > 0), (c, c, 4, 2, True)]
            cin = c
        super().__init__(layout, 100, patch_size)


class SRGANDiscriminator(_ConvDiscriminator):
    """Feature-matching paper (Fig. 2 bottom): 8 convs alternating 3x3 s1 / 4x4 s2,
    channels 64,64,128,128,256,256,512,512 (x num_feat/64), BN except the first conv;
    8 feature maps; Dense(1024) -> Dense(1)."""

    divisor = 16

    def __init__(self, num_in: int = 3, num_feat: int = 64, patch_size: int = 96):
        layout, cin = [], num_in
        for i, mult in enumerate([1, 1, 2, 2, 4, 4, 8, 8]):
            c = num_feat * mult
            layout.append((cin, c, 3, 1, i > 0) if i % 2 == 0 else (cin, c, 4, 2, True))
            cin = c
        super().__init__(layout, 1024, patch_size)


class MSRResNet(nn.Module):
    """BasicSR's MSRResNet, the generator of the DP authors' train_SRGAN_DP.yml (DP paper 4.2):
    conv3x3 + LeakyReLU(0.1) head, num_blocks conv3x3-ReLU-conv3x3 residual blocks (no long
    skip), per stage conv3x3 + PixelShuffle + LeakyReLU(0.1), conv3x3 + LeakyReLU(0.1),
    conv3x3 out, plus the bilinear upsampling of the input; MSRA init x 0.1."""

    bicubic_skip = True  # adds its own (bilinear) base: build_generator does not wrap it

    def __init__(self, num_feat: int = 64, num_blocks: int = 16, scale: int = 4):
        super().__init__()
        self.scale = scale
        self.head = nn.Sequential(nn.Conv2d(3, num_feat, 3, 1, 1), nn.LeakyReLU(0.1))
        self.body = nn.Sequential(*[_ReLUBlock(num_feat) for _ in range(num_blocks)])
        up = []
        for r in _up_factors(scale):
            up += [nn.Conv2d(num_feat, num_feat * r * r, 3, 1, 1), nn.PixelShuffle(r), nn.LeakyReLU(0.1)]
        up += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), nn.LeakyReLU(0.1), nn.Conv2d(num_feat, 3, 3, 1, 1)]
        self.tail = nn.Sequential(*up)
        _scaled_kaiming(self.modules(), 0.1)

    def forward(self, x):
        base = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return self.tail(self.body(self.head(x))) + base


class _ReLUBlock(ResBlock):
    """conv3x3 - ReLU - conv3x3 + identity (BasicSR's ResidualBlockNoBN)."""

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))


class BicubicSkip(nn.Module):
    """``net(x) + bicubic(x)``: global residual learning (as in VDSR). Not in the paper
    presets; tiny CPU runs use it so a few hundred steps already beat bicubic."""

    def __init__(self, net: nn.Module, scale: int):
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + imresize(x, self.scale)


# ---------------------------------------------------------------------------- registry
# arch name -> builder(cfg, scale | patch_size). A new family (the video generators, say)
# registers its own builders from its module; the image ones stay untouched.
GENERATORS: dict[str, Callable[..., nn.Module]] = {}
DISCRIMINATORS: dict[str, Callable[..., nn.Module]] = {}


def register_generator(arch: str):
    def deco(fn):
        GENERATORS[arch] = fn
        return fn

    return deco


def register_discriminator(arch: str):
    def deco(fn):
        DISCRIMINATORS[arch] = fn
        return fn

    return deco


@register_generator("srresnet")
def _srresnet(cfg: SRResNetConfig, scale: int) -> nn.Module:
    net = MSRResNet if cfg.variant == "msrresnet" else SRResNet
    return net(num_feat=cfg.num_feat, num_blocks=cfg.num_blocks, scale=scale)


@register_generator("rrdbnet")
def _rrdbnet(cfg: RRDBNetConfig, scale: int) -> nn.Module:
    return RRDBNet(num_feat=cfg.num_feat, num_blocks=cfg.num_blocks, grow_ch=cfg.grow_ch, scale=scale)


@register_discriminator("vgg")
def _vgg_d(cfg: VGGDiscConfig, patch_size: int) -> nn.Module:
    return VGGStyleDiscriminator(num_feat=cfg.num_feat, patch_size=patch_size)


@register_discriminator("srgan")
def _srgan_d(cfg: SRGANDiscConfig, patch_size: int) -> nn.Module:
    return SRGANDiscriminator(num_feat=cfg.num_feat, patch_size=patch_size)


@register_generator("vsrresfeat")
def _vsrresfeat(cfg, scale: int) -> nn.Module:
    from trainables.vsr_models import build_vsr_generator  # imports this module: import at call time

    return build_vsr_generator(cfg, scale)


@register_discriminator("vsrresfeat")
def _vsrresfeat_d(cfg, patch_size: int) -> nn.Module:
    from trainables.vsr_models import build_vsr_discriminator

    return build_vsr_discriminator(cfg, patch_size)


def _lookup(table: dict, arch: str, what: str):
    if arch not in table:
        raise ValueError(f"{what}.arch: {arch!r} is not one of {', '.join(map(repr, table))}")
    return table[arch]


def build_generator(cfg, scale: int) -> nn.Module:
    net = _lookup(GENERATORS, cfg.arch, "generator")(cfg, scale)
    # A net that adds its own skip (the video generator: bicubic of the centre frame) is not wrapped.
    own = getattr(net, "bicubic_skip", False)
    return BicubicSkip(net, scale) if getattr(cfg, "bicubic_skip", False) and not own else net


def build_discriminator(cfg, patch_size: int) -> nn.Module:
    return _lookup(DISCRIMINATORS, cfg.arch, "discriminator")(cfg, patch_size)
