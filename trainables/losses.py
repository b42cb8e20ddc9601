"""Loss terms as pure functions, each citing the equation it implements.

Papers: SA = sa-loss-general-method (+ the VSR poster for the SA feature loss),
DP = dual-perceptual-loss-esrgan, FM = adversarial-feature-matching.

Normalisation: every distance is ``mean(h * rho(u - v))`` over all elements of ``u``
(the papers write sums). A mean keeps weights comparable across patch sizes, batch
sizes and feature-map sizes; it rescales each paper's weights by a constant only.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

CHARBONNIER_EPS = 1e-3  # SA eq. 5
HUBER_DELTA = 1.0  # FM eq. 2's default; pixel losses take loss.pixel.huber_delta
DP_C = 1e-8  # DP eq. 9: "a tiny positive constant" keeping the ratio finite


def rho(d: torch.Tensor, criterion: str, delta: float = HUBER_DELTA) -> torch.Tensor:
    """Element-wise penalty of a difference d (SA eq. 4-5, FM eq. 2, L2). ``delta`` is Huber's
    threshold in the units of d: on [0, 1] images every |d| <= 1, so delta = 1 is 0.5 * L2."""
    if criterion == "l1":
        return d.abs()
    if criterion == "charbonnier":
        return torch.sqrt(d * d + CHARBONNIER_EPS**2)
    if criterion == "huber":
        a = d.abs()
        return torch.where(a < delta, 0.5 * d * d, delta * (a - 0.5 * delta))
    if criterion == "l2":
        return d * d
    raise ValueError(f"unknown criterion {criterion!r}; use l1, charbonnier, huber or l2")


def weighted_distance(
    u: torch.Tensor,
    v: torch.Tensor,
    weight: Optional[torch.Tensor | float] = None,
    criterion: str = "l1",
    delta: float = HUBER_DELTA,
) -> torch.Tensor:
    """``mean(h * rho(u - v))``, SA eq. 6-7; ``weight`` broadcasts (a gray map over RGB).

    A zero map gives exactly 0 (no division by the weight sum, so no NaN)."""
    r = rho(u - v, criterion, delta)
    if weight is not None:
        r = r * weight
        if r.shape != u.shape:
            raise ValueError(
                f"weight {tuple(torch.as_tensor(weight).shape)} does not broadcast to {tuple(u.shape)}"
            )
    return r.mean()


def sa_pixel(
    sr: torch.Tensor,
    hr: torch.Tensor,
    beta1: float,
    beta2: torch.Tensor | float,
    edge: Optional[torch.Tensor],
    criterion: str,
    delta: float = HUBER_DELTA,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SA pixel loss ``rho_w(hr, sr, beta1 * 1 + beta2 * W(hr))`` (SA eq. 12-13, 19, 23).

    Returns (total, sa_part, sa_raw) with total = beta1 * plain + sa_part, sa_part =
    beta2 * sa_raw and sa_raw = ``mean(W * rho)`` (what the SA share calibration needs; the
    share is linear in beta2). Without an edge map it is the plain pixel loss (eq. 8-9) and
    sa_part, sa_raw are 0. ``beta2`` may be a 0-d tensor (no host read per step)."""
    plain = weighted_distance(sr, hr, None, criterion, delta)
    if edge is None:
        zero = plain.new_zeros(())
        return beta1 * plain, zero, zero
    raw = weighted_distance(sr, hr, edge, criterion, delta)
    sa = beta2 * raw
    return beta1 * plain + sa, sa, raw


def sa_feature(
    feat_sr: torch.Tensor,
    feat_hr: torch.Tensor,
    feat_edge: torch.Tensor,
    alpha3: float,
    beta3: float,
    criterion: str = "charbonnier",
) -> torch.Tensor:
    """SA feature loss ``rho_w(VGG(hr), VGG(sr), alpha3 + beta3 * relu(VGG(W(hr))))`` (VSR poster).

    The weight takes W's post-activation features: ``relu`` of a ``conv*`` output is VGG's own
    next layer (``relu*``), and ``relu*`` / ``pool*`` outputs are already >= 0. With alpha3,
    beta3 >= 0 the weight is >= 0, so the loss is >= 0 and minimal at sr = hr; pre-activation
    W features could be negative and made the loss unbounded below."""
    weight = alpha3 + beta3 * feat_edge.detach().clamp_min(0)
    return weighted_distance(feat_sr, feat_hr.detach(), weight, criterion)


def perceptual(feat_sr: torch.Tensor, feat_hr: torch.Tensor, criterion: str = "l1") -> torch.Tensor:
    """Feature distance (DP eq. 4 for VGG, eq. 5 for ResNet with L1; FM eq. 3 with L2)."""
    return weighted_distance(feat_sr, feat_hr.detach(), None, criterion)


def dual_perceptual(
    l_vgg: torch.Tensor, l_res: Optional[torch.Tensor], mu: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """DP loss ``l_vgg + (1/mu) * zeta * l_res`` with ``zeta = value((l_vgg + c)/(l_res + c))``
    (DP eq. 8-9). zeta is detached: the gradient is grad l_vgg + (zeta/mu) grad l_res.
    mu = inf is VGG only. Returns (loss, zeta)."""
    if math.isinf(mu) or l_res is None:
        return l_vgg, l_vgg.new_zeros(())
    zeta = ((l_vgg + DP_C) / (l_res + DP_C)).detach()
    return l_vgg + zeta * l_res / mu, zeta


def _stage_list(feats: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Stage outputs as a list: :class:`~trainables.backbones.ResNetFeatures` returns one
    (B, C, H, W) tensor for stage m alone (``all_stages=False``), a list for stages 1..m.
    Indexing a tensor with [-1] would pick the last *image*, not the last stage."""
    return [feats] if isinstance(feats, torch.Tensor) else list(feats)


def resnet_loss(
    feats_sr: torch.Tensor | Sequence[torch.Tensor],
    feats_hr: torch.Tensor | Sequence[torch.Tensor],
    variant: str,
) -> torch.Tensor:
    """DP's ResNet term from ResNet50 stage outputs: a list of stages 1..m (``feats_*[s - 1]``
    is stage s) or stage m's (B, C, H, W) tensor alone.

    paper (DP eq. 5): mean L1 of stage m's output alone, over every image of the batch;
    released (the authors' ESRGAN-DP code, behind the paper's tables): the sum over stages
    1..m of each stage's mean L1, so it needs the list. Which input the ResNet saw
    (normalised or raw) is the backbone's business (:class:`~trainables.backbones.ResNetFeatures`)."""
    sr, hr = _stage_list(feats_sr), _stage_list(feats_hr)
    if variant == "paper":
        return perceptual(sr[-1], hr[-1], "l1")
    if variant == "released":
        if isinstance(feats_sr, torch.Tensor):
            raise TypeError("released ResNet term: needs the list of stages 1..m (all_stages=True)")
        return torch.stack([perceptual(a, b, "l1") for a, b in zip(sr, hr)]).sum()
    raise ValueError(f"unknown ResNet variant {variant!r}; use paper or released")


def fm_block_losses(
    feats_sr: Sequence[torch.Tensor], feats_hr: Sequence[torch.Tensor], blocks: Sequence[int]
) -> torch.Tensor:
    """``L_i = ||phi_i(sr) - phi_i(hr)||^2`` (FM eq. 6) per chosen D block, as means; (n,)."""
    return torch.stack([weighted_distance(feats_sr[i], feats_hr[i].detach(), None, "l2") for i in blocks])


def fm_softmax(block_losses: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax reweighing (FM eq. 7) of rescaled block losses ``scale * L_i``.

    ``scale`` is the one-time normalisation (1 / L_i at the first step, see
    :func:`fm_scale`) that brings the L_i to a common scale; the softmax weights are
    detached. Returns (loss, weights)."""
    scaled = block_losses * scale
    weights = torch.softmax(scaled.detach(), dim=0)
    return (weights * scaled).sum(), weights


def fm_scale(block_losses: torch.Tensor) -> torch.Tensor:
    """One-time rescale factors 1 / L_i (detached), guarding zero losses."""
    return 1.0 / block_losses.detach().clamp_min(1e-12)


# --------------------------------------------------------------------- adversarial
def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def gan_g(fake: torch.Tensor, real: Optional[torch.Tensor], kind: str) -> torch.Tensor:
    """Generator adversarial loss on raw logits.

    vanilla: ``-log D(G(y))`` (SA eq. 14 / SRGAN non-saturating form);
    ragan: ``-log(1 - D_Ra(x_r, x_f)) - log D_Ra(x_f, x_r)`` with
    ``D_Ra(a, b) = sigmoid(C(a) - mean C(b))`` (DP eq. 3, ESRGAN), halved as in the
    official ESRGAN code."""
    if kind == "vanilla":
        return _bce(fake, 1.0)
    if kind == "ragan":
        real = real.detach()
        return 0.5 * (_bce(real - fake.mean(), 0.0) + _bce(fake - real.mean(), 1.0))
    raise ValueError(f"unknown GAN kind {kind!r}; use vanilla or ragan")


def gan_d(real: torch.Tensor, fake: torch.Tensor, kind: str) -> torch.Tensor:
    """Discriminator loss: vanilla ``-log D(x) - log(1 - D(G(y)))``; ragan its relativistic
    counterpart ``-log D_Ra(x_r, x_f) - log(1 - D_Ra(x_f, x_r))`` (halved, as above). As in
    ESRGAN / BasicSR, each half back-propagates through its own logits only: the other
    batch's mean is detached (same value, BasicSR's gradient)."""
    if kind == "vanilla":
        return _bce(real, 1.0) + _bce(fake, 0.0)
    if kind == "ragan":
        return 0.5 * (_bce(real - fake.detach().mean(), 1.0) + _bce(fake - real.detach().mean(), 0.0))
    raise ValueError(f"unknown GAN kind {kind!r}; use vanilla or ragan")
