"""Generator loss terms as parts: each term declares the networks it reads, owns its
calibration state (buffers, so it is in the checkpoint) and returns its weighted value plus
the scalars it reports (``loss_<name>``, no slashes).

The objective (:mod:`trainables.objective`) builds one :class:`Features` cache per step and
sums the terms; adding a term is one class here plus its config, registered with
:func:`register_term`. The pure loss functions live in :mod:`trainables.losses`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from trainables import losses as L
from trainables.config import ExperimentConfig

# Networks whose output depends on the batch (BatchNorm in train mode): sr and each target
# go through them as separate batches, never concatenated (ESRGAN / BasicSR practice).
BATCH_DEPENDENT = {"disc"}


class Features:
    """One step's feature cache. Each network sees sr once (on the graph) and its targets
    once (under no_grad, one call for all targets of a batch-independent network), at the
    first request. ``needs``: network -> the targets ("hr", "edge") some term asked for."""

    def __init__(
        self,
        nets: dict[str, Callable],
        needs: dict[str, set[str]],
        sr: torch.Tensor,
        hr: torch.Tensor,
        edge: Optional[torch.Tensor],
    ):
        self.nets, self.needs = nets, needs
        self.sr, self.hr, self.edge = sr, hr, edge
        self._sr: dict[str, Any] = {}
        self._tgt: dict[str, dict[str, Any]] = {}

    def _image(self, target: str) -> torch.Tensor:
        if target == "hr":
            return self.hr
        if self.edge is None:
            raise ValueError("a loss term needs the edge map, but loss.pixel.sa is not set")
        return self.edge.expand(-1, 3, -1, -1) if self.edge.shape[1] == 1 else self.edge

    def of_sr(self, net: str) -> Any:
        if net not in self._sr:
            self._sr[net] = self.nets[net](self.sr)
        return self._sr[net]

    def of(self, net: str, target: str) -> Any:
        """Detached features of a target image (``hr`` or ``edge``)."""
        if net not in self._tgt:
            wanted = sorted(self.needs.get(net, ()) | {target})
            with torch.no_grad():
                if net in BATCH_DEPENDENT or len(wanted) == 1:
                    self._tgt[net] = {t: self.nets[net](self._image(t)) for t in wanted}
                else:
                    out = self.nets[net](torch.cat([self._image(t) for t in wanted]))
                    self._tgt[net] = {t: _chunk(out, len(wanted), i) for i, t in enumerate(wanted)}
        if target not in self._tgt[net]:
            raise KeyError(f"network {net!r}: target {target!r} was not declared in a term's needs")
        return self._tgt[net][target]


def _chunk(out: Any, n: int, i: int) -> Any:
    """Part i of n of a batched output (tensor, list/tuple or dict of tensors)."""
    if isinstance(out, torch.Tensor):
        return out.chunk(n, dim=0)[i]
    if isinstance(out, dict):
        return {k: _chunk(v, n, i) for k, v in out.items()}
    return type(out)(_chunk(v, n, i) for v in out)


@dataclass
class TermOut:
    value: torch.Tensor  # weighted contribution to the total (on the graph)
    scalars: dict[str, torch.Tensor] = field(default_factory=dict)  # reported, detached later
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # calibration inputs


@dataclass
class StepOut:
    """One generator step: ``total`` carries the graph; ``parts`` maps each term to its out."""

    total: torch.Tensor
    parts: dict[str, TermOut] = field(default_factory=dict)

    def scalars(self) -> dict[str, torch.Tensor]:
        """Detached 0-d tensors: no device sync here; callers convert when they report."""
        out = {k: v.detach() for p in self.parts.values() for k, v in p.scalars.items()}
        total = self.total.detach()
        out["loss_g_total"] = total
        if "loss_sa_pixel" in out:
            out["sa_share"] = torch.where(total != 0, out["loss_sa_pixel"] / total, torch.zeros_like(total))
        return out

    def extra(self, key: str) -> torch.Tensor:
        return next(p.extra[key] for p in self.parts.values() if key in p.extra)


class Term(nn.Module):
    """A generator loss term. ``needs``: network name -> targets besides sr it reads."""

    name: str = ""
    calibration_order = 0  # terms calibrate in this order (FM's rescale before SA's beta2)

    def __init__(self):
        super().__init__()
        self.needs: dict[str, tuple[str, ...]] = {}

    @property
    def needs_calibration(self) -> bool:
        return False

    def forward(self, f: Features) -> TermOut:
        raise NotImplementedError

    def calibrate(self, steps: list[StepOut]) -> None:
        """Solve the term's calibration state from steps run with it uncalibrated."""

    def end_step(self, step: StepOut) -> dict[str, torch.Tensor]:
        """After a training G step (running statistics); returns scalars to report."""
        return {}


TermBuilder = Callable[[ExperimentConfig], Optional[Term]]
TERM_BUILDERS: list[TermBuilder] = []


def register_term(builder: TermBuilder) -> TermBuilder:
    """Register ``builder(cfg) -> Term | None`` (None: the config does not ask for it)."""
    TERM_BUILDERS.append(builder)
    return builder


# ------------------------------------------------------------------------ pixel / SA
class PixelTerm(Term):
    """beta1 * rho(sr, hr) + beta2 * mean(W * rho) (SA eq. 12-13); beta2 fixed, or solved for
    ``sa_share_target`` (share = b*S / (T + b*S)) once, and with ``track_every`` = N re-solved
    every N steps from the means of the last N steps. Reports the reached share's GAN-stage
    mean as ``sa_share_mean`` (kept in the state, so a resume continues it exactly)."""

    name = "pixel"
    calibration_order = 1

    def __init__(self, cfg: ExperimentConfig):
        super().__init__()
        px = cfg.loss.pixel
        self.beta1, self.criterion, self.delta, self.sa = px.beta1, px.criterion, px.huber_delta, px.sa
        beta2 = math.nan if self.sa is None or self.sa.beta2 is None else self.sa.beta2
        self.register_buffer("beta2", torch.tensor(0.0 if self.sa is None else beta2, dtype=torch.float64))
        # window sums of the SA-raw part and of the rest of the loss (tracking), share sum
        self.register_buffer("sums", torch.zeros(3, dtype=torch.float64))  # raw, rest, share
        self.n_window = self.n_steps = 0  # host counters (extra state): no device read per step

    @property
    def needs_calibration(self) -> bool:
        return bool(torch.isnan(self.beta2))

    def forward(self, f: Features) -> TermOut:
        beta2 = torch.nan_to_num(self.beta2, nan=0.0).to(f.sr.dtype)  # 0 until calibrated
        value, sa_part, raw = L.sa_pixel(f.sr, f.hr, self.beta1, beta2, f.edge, self.criterion, self.delta)
        scalars = {"loss_pixel": value}
        if self.sa is not None:
            scalars.update(loss_sa_pixel=sa_part, beta2=self.beta2)
        return TermOut(value, scalars, {"sa_raw": raw.detach()})

    def _solve(self, rest: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        s = self.sa.sa_share_target
        return s * rest / ((1 - s) * raw)

    @torch.no_grad()
    def calibrate(self, steps: list[StepOut]) -> None:
        if self.sa is None or self.sa.sa_share_target is None or not steps:
            return
        raw = sum(float(st.extra("sa_raw")) for st in steps) / len(steps)
        rest = sum(float(st.total) for st in steps) / len(steps)  # beta2 = 0: the total is the rest
        if raw <= 0:
            raise ValueError(
                "SA calibration: the edge-weighted pixel loss is 0 on the calibration "
                "batches (flat images or an all-zero edge map); set beta2 instead"
            )
        self.beta2.fill_(self._solve(torch.tensor(rest), torch.tensor(raw)).item())

    @torch.no_grad()
    def end_step(self, step: StepOut) -> dict[str, torch.Tensor]:
        if self.sa is None:
            return {}
        total = step.total.detach().double()
        sa_part = step.parts[self.name].scalars["loss_sa_pixel"].detach().double()
        raw = step.parts[self.name].extra["sa_raw"].double()
        share = torch.where(total != 0, sa_part / total, torch.zeros_like(total))
        self.sums += torch.stack([raw, total - sa_part, share])
        self.n_window, self.n_steps = self.n_window + 1, self.n_steps + 1
        every = self.sa.track_every
        if every and self.n_window >= every:
            raw_m, rest_m = self.sums[0] / every, self.sums[1] / every
            self.beta2.copy_(torch.where(raw_m > 0, self._solve(rest_m, raw_m), self.beta2))
            self.sums[:2] = 0
            self.n_window = 0
        return {"sa_share_mean": (self.sums[2] / self.n_steps).float(), "beta2": self.beta2.clone()}

    def get_extra_state(self) -> dict:
        return {"n_window": self.n_window, "n_steps": self.n_steps}

    def set_extra_state(self, state: dict) -> None:
        self.n_window, self.n_steps = state["n_window"], state["n_steps"]


# ------------------------------------------------------------------ VGG / DP / SA feature
class VGGTerm(Term):
    """Perceptual distance of VGG19 features at ``perceptual.layer`` (DP eq. 4)."""

    name = "vgg"

    def __init__(self, cfg: ExperimentConfig):
        super().__init__()
        self.p = cfg.loss.perceptual
        self.needs = {"vgg": ("hr",)}

    def vgg_loss(self, f: Features) -> torch.Tensor:
        return L.perceptual(f.of_sr("vgg")[self.p.layer], f.of("vgg", "hr")[self.p.layer], self.p.criterion)

    def forward(self, f: Features) -> TermOut:
        l_vgg = self.vgg_loss(f)
        return TermOut(self.p.weight * l_vgg, {"loss_vgg": l_vgg})


class DPTerm(VGGTerm):
    """l_vgg + (1/mu) zeta l_res (DP eq. 8-9), the ResNet term per ``dp.resnet_variant``."""

    name = "dp"

    def __init__(self, cfg: ExperimentConfig):
        super().__init__(cfg)
        self.dp = cfg.loss.dp
        self.with_resnet = not math.isinf(self.dp.mu)
        if self.with_resnet:
            self.needs = {"vgg": ("hr",), "resnet": ("hr",)}

    def forward(self, f: Features) -> TermOut:
        l_vgg, l_res, scalars = self.vgg_loss(f), None, {}
        if self.with_resnet:
            r_sr, r_hr = f.of_sr("resnet"), f.of("resnet", "hr")
            l_res = L.resnet_loss(r_sr, r_hr, self.dp.resnet_variant)
            scalars["loss_resnet"] = l_res
        dp, zeta = L.dual_perceptual(l_vgg, l_res, self.dp.mu)
        scalars.update(loss_vgg=l_vgg, loss_dp=dp, loss_dp_zeta=zeta)
        return TermOut(self.p.weight * dp, scalars)


class SAFeatureTerm(Term):
    """rho_w(VGG(hr), VGG(sr), alpha3 + beta3 * relu(VGG(W(hr)))) at the perceptual layer.
    ``mode: replace`` (default): it is eq. 13's perceptual term and no plain VGG term is built
    (the plain distance is not counted twice); ``add``: summed with the VGG / DP term."""

    name = "sa_feature"

    def __init__(self, cfg: ExperimentConfig):
        super().__init__()
        self.s, self.layer = cfg.loss.sa_feature, cfg.loss.perceptual.layer
        self.needs = {"vgg": ("hr", "edge")}

    def forward(self, f: Features) -> TermOut:
        s, k = self.s, self.layer
        sf = L.sa_feature(
            f.of_sr("vgg")[k], f.of("vgg", "hr")[k], f.of("vgg", "edge")[k], s.alpha3, s.beta3, s.criterion
        )
        return TermOut(s.weight * sf, {"loss_sa_feature": sf})


# -------------------------------------------------------------------- discriminator terms
class FMTerm(Term):
    """Softmax-reweighted feature matching (FM eq. 6-7) on D's block features of the fake
    and the real pass, after a one-time rescale (buffer ``fm_scale``, NaN until calibrated;
    until then each step rescales by itself)."""

    name = "fm"

    def __init__(self, cfg: ExperimentConfig):
        super().__init__()
        self.fm = cfg.loss.fm
        self.needs = {"disc": ("hr",)}
        self.register_buffer("fm_scale", torch.full((len(self.fm.blocks),), math.nan))

    @property
    def needs_calibration(self) -> bool:
        return bool(torch.isnan(self.fm_scale).any())

    def forward(self, f: Features) -> TermOut:
        (_, fake), (_, real) = f.of_sr("disc"), f.of("disc", "hr")
        blocks = L.fm_block_losses(fake, real, self.fm.blocks)
        scale = torch.where(torch.isnan(self.fm_scale), L.fm_scale(blocks), self.fm_scale)
        fm, weights = L.fm_softmax(blocks, scale)
        scalars = {"loss_fm": fm, **{f"fm_w{b}": weights[i] for i, b in enumerate(self.fm.blocks)}}
        return TermOut(self.fm.weight * fm, scalars, {"fm_blocks": blocks.detach()})

    @torch.no_grad()
    def calibrate(self, steps: list[StepOut]) -> None:
        if steps:
            self.fm_scale.copy_(L.fm_scale(torch.stack([s.extra("fm_blocks") for s in steps]).mean(0)))


class AdvTerm(Term):
    """Adversarial term on D's fake-batch logits (RaGAN also reads the real batch's)."""

    name = "adv"

    def __init__(self, cfg: ExperimentConfig):
        super().__init__()
        self.adv = cfg.loss.adv
        self.needs = {"disc": ("hr",) if self.adv.kind == "ragan" else ()}

    def forward(self, f: Features) -> TermOut:
        fake = f.of_sr("disc")[0]
        real = f.of("disc", "hr")[0] if self.adv.kind == "ragan" else None
        adv = L.gan_g(fake, real, self.adv.kind)
        return TermOut(self.adv.weight * adv, {"loss_adv": adv})


register_term(PixelTerm)


@register_term
def _perceptual_term(c: ExperimentConfig) -> Optional[Term]:
    """DP, or the plain VGG term unless the SA feature term replaces it (VSR poster eq. 13)."""
    sf = c.loss.sa_feature
    if c.loss.perceptual is None or (sf is not None and sf.mode == "replace" and not c.loss.dp):
        return None
    return (DPTerm if c.loss.dp else VGGTerm)(c)


register_term(lambda c: None if c.loss.sa_feature is None else SAFeatureTerm(c))
register_term(lambda c: None if c.loss.fm is None else FMTerm(c))
register_term(AdvTerm)
