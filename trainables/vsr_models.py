"""VSRResFeatGAN (Lucas et al., [16] in sa-loss-general-method; Figs. 6-7 there).

Generator (Fig. 6): the 2k+1 LR frames are bicubic-upsampled (MATLAB imresize), each
goes through its own conv, the feature maps are concatenated, then two convs, 15
residual blocks (conv-ReLU-conv-ReLU, input added to the output) and one conv to the
centre SR frame. The papers here give the layer order and the 64 channels (the poster's
figure) but no kernel sizes: every conv here is 3x3, stride 1, padding 1, with a ReLU
after each conv but the last, as Fig. 6's blocks show; one conv per frame (separate
weights, "5 conv operations applied separately on each input frame").

Discriminator (Fig. 7): conv / BatchNorm / LeakyReLU blocks, one fully connected layer,
sigmoid. Fig. 7 gives no sizes: 3 blocks of 4x4 stride-2 convs with 64, 128, 256
channels (x num_feat / 64), BN on all but the first, LeakyReLU 0.2, FC to one logit.
Like the image discriminators it returns ``(logit, features)``: the raw logit (B,)
(losses apply the sigmoid inside BCE-with-logits) and each block's PRE-activation map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainables.config import VSRDiscConfig, VSRResFeatGenConfig  # noqa: F401  (re-exported)
from trainables.imresize import imresize
from trainables.models import SLOPE, ConvBlock, count_params  # noqa: F401  (count_params re-exported)


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, 1, 1)


class VSRResBlock(nn.Module):
    """conv - ReLU - conv - ReLU, plus the input (Fig. 6)."""

    def __init__(self, num_feat: int):
        super().__init__()
        self.conv1, self.conv2 = _conv(num_feat, num_feat), _conv(num_feat, num_feat)

    def forward(self, x):
        return x + F.relu(self.conv2(F.relu(self.conv1(x))))


class VSRResFeatGenerator(nn.Module):
    """(B, T, 3, h, w) LR clip in [0, 1] -> (B, 3, h*scale, w*scale) centre SR frame."""

    def __init__(
        self,
        num_frames: int = 5,
        num_feat: int = 64,
        num_blocks: int = 15,
        scale: int = 4,
        bicubic_skip: bool = False,
    ):
        super().__init__()
        self.num_frames, self.scale, self.bicubic_skip = num_frames, scale, bicubic_skip
        self.frame_convs = nn.ModuleList(_conv(3, num_feat) for _ in range(num_frames))
        self.fuse1 = _conv(num_frames * num_feat, num_feat)
        self.fuse2 = _conv(num_feat, num_feat)
        self.body = nn.Sequential(*[VSRResBlock(num_feat) for _ in range(num_blocks)])
        self.conv_last = _conv(num_feat, 3)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        if lr.dim() != 5 or lr.shape[1] != self.num_frames or lr.shape[2] != 3:
            raise ValueError(
                f"VSRResFeatGenerator expects (B, {self.num_frames}, 3, h, w) clips, got {tuple(lr.shape)}"
            )
        up = imresize(lr, self.scale)  # (B, T, 3, H, W): the bicubic frames the paper feeds in
        feats = [F.relu(conv(up[:, t])) for t, conv in enumerate(self.frame_convs)]
        x = F.relu(self.fuse2(F.relu(self.fuse1(torch.cat(feats, 1)))))
        out = self.conv_last(self.body(x))
        return out + up[:, self.num_frames // 2] if self.bicubic_skip else out


class VSRDiscriminator(nn.Module):
    """Conv(4x4, s2)/BN/LeakyReLU blocks, flatten, one linear layer -> logit (B,).

    ``features``: the pre-activation map of each block (conv output, after BN where the
    block has one), on the autograd path, as trainables.models' discriminators give them.
    """

    def __init__(self, num_feat: int = 64, num_blocks: int = 3, patch_size: int = 128, num_in: int = 3):
        super().__init__()
        divisor = 2**num_blocks
        if patch_size <= 0 or patch_size % divisor:
            raise ValueError(
                f"patch_size: {patch_size} is not supported by VSRDiscriminator with "
                f"{num_blocks} blocks: it must be a positive multiple of {divisor}"
            )
        self.patch_size = patch_size
        chans = [num_feat * 2**i for i in range(num_blocks)]
        self.blocks = nn.ModuleList(
            ConvBlock(cin, cout, 4, 2, i > 0) for i, (cin, cout) in enumerate(zip([num_in, *chans], chans))
        )
        side = patch_size // divisor
        self.fc = nn.Linear(chans[-1] * side * side, 1)

    def forward(self, x: torch.Tensor):
        if tuple(x.shape[-2:]) != (self.patch_size, self.patch_size):
            raise ValueError(
                f"VSRDiscriminator built for {self.patch_size}px patches, got {tuple(x.shape[-2:])}"
            )
        features = []
        for block in self.blocks:
            pre, x = block(x)
            features.append(pre)
        return self.fc(x.flatten(1)).squeeze(1), features


def build_vsr_generator(cfg: VSRResFeatGenConfig, scale: int) -> VSRResFeatGenerator:
    return VSRResFeatGenerator(cfg.num_frames, cfg.num_feat, cfg.num_blocks, scale, cfg.bicubic_skip)


def build_vsr_discriminator(cfg: VSRDiscConfig, patch_size: int) -> VSRDiscriminator:
    return VSRDiscriminator(cfg.num_feat, cfg.num_blocks, patch_size)


if __name__ == "__main__":  # parameter counts at paper size, for the README
    g = build_vsr_generator(VSRResFeatGenConfig(), 4)
    d = build_vsr_discriminator(VSRDiscConfig(), 128)
    print(f"VSRResFeatGAN generator (5 frames, 64 ch, 15 blocks): {count_params(g):,} parameters")
    print(f"VSRResFeatGAN discriminator (3 blocks 64-128-256, 128 px): {count_params(d):,} parameters")
