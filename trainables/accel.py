"""The GPU path options of ``train``: bf16 autocast, channels_last and torch.compile.

All three are off by default (fp32, NCHW, eager is the reference the tests compare with).
The frozen backbones and the objective run inside the same autocast region as G and D, so
the per-step feature cache sees one dtype; the backward pass and the optimiser steps run
outside it (PyTorch's recommended pattern), and validation always runs in fp32, so the
reported metrics never depend on these switches (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from trainables.config import TrainConfig


def autocast(t: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on the run's device when ``train.amp`` is ``bf16``; else a no-op."""
    if t.amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def layout(t: TrainConfig, *modules: nn.Module) -> None:
    """NHWC weights (``train.channels_last``): convolutions then pick NHWC kernels."""
    if t.channels_last:
        for m in modules:
            m.to(memory_format=torch.channels_last)


def backbone_layout(device: torch.device, objective: nn.Module) -> None:
    """The frozen feature networks (VGG, ResNet) in NHWC on the CPU, whatever
    ``train.channels_last`` says: oneDNN runs NHWC convolutions natively and reorders NCHW
    ones on every call (docs/PERFORMANCE.md, bench/step.py). Values change by float
    rounding only. On CUDA the layout stays the user's choice."""
    if device.type == "cpu" and hasattr(objective, "backbones"):
        objective.backbones.to(memory_format=torch.channels_last)


def to_layout(t: TrainConfig, x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if t.channels_last and x.dim() == 4 else x


def compiled(t: TrainConfig, module: nn.Module) -> Callable:
    """The forward to call in the steps: ``torch.compile(module)`` or the module itself.
    The module stays the object that owns the parameters and the state_dict, so
    checkpoints carry no ``_orig_mod.`` prefix and load either way."""
    return torch.compile(module) if t.compile else module
