"""Typed loss configuration (``loss.*``): one class per generator loss term, each citing
the paper equation it configures (trainables/losses.py and terms.py compute them)."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from trainables.config_bounds import STEPS_MAX, Strict

# ---------------------------------------------------------------------------- losses
Criterion = Literal["l1", "charbonnier", "huber", "l2"]


class LocalVariance(Strict):  # SA eq. 1-3; the paper gives no window or delta: ours
    window: int = Field(5, ge=3, le=31)
    delta: float = Field(0.01, gt=0)

    @model_validator(mode="after")
    def _odd(self):
        if self.window % 2 == 0:
            raise ValueError(f"window: {self.window} must be odd")
        return self


class Canny(Strict):  # cv2.Canny thresholds (0-255 gray); the paper gives none: ours
    low: float = Field(100, ge=0, le=255)
    high: float = Field(200, ge=0, le=255)

    @model_validator(mode="after")
    def _ordered(self):
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        return self


class SAConfig(Strict):
    edge: Literal["lv", "canny"] = "lv"
    channels: Literal["gray", "rgb"] = "gray"
    lv: LocalVariance = LocalVariance()
    canny: Canny = Canny()
    # Exactly one: a fixed beta2, or a target SA share that calibrates beta2. The share
    # reached is reported as `sa_share` (this step) and `sa_share_mean` (GAN stage).
    beta2: Optional[float] = Field(None, ge=0)
    sa_share_target: Optional[float] = Field(None, gt=0, lt=1)
    calibration_batches: int = Field(4, ge=1, le=10_000)  # batches that solve beta2 for sa_share_target
    # Tracking: every N GAN steps re-solve beta2 from the means of the last N steps, so the
    # reached share follows the target as the other terms change. 0: solve once, then frozen.
    track_every: int = Field(0, ge=0, le=STEPS_MAX)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "sa_share" in data:
            raise ValueError(
                "sa_share: renamed to sa_share_target (the share asked for; "
                "the reached share is reported as sa_share)"
            )
        return data

    @model_validator(mode="after")
    def _one_mode(self):
        if (self.beta2 is None) == (self.sa_share_target is None):
            raise ValueError("give exactly one of beta2 (fixed) or sa_share_target (calibrated target)")
        if self.track_every and self.sa_share_target is None:
            raise ValueError("track_every: needs sa_share_target (a fixed beta2 is never re-solved)")
        return self


class PixelLoss(Strict):
    criterion: Criterion = "l1"
    beta1: float = Field(0.01, ge=0)
    # Huber's delta on the image range the trainer uses ([0, 1]): residuals below it are
    # penalised 0.5*d^2, above it linearly. 1.0 makes Huber exactly 0.5*L2 on [0, 1] images.
    huber_delta: float = Field(1.0, gt=0)
    sa: Optional[SAConfig] = None


# torchvision's VGG19 trunk (cfg "E"): conv/relu per conv, a pool closing each block; no torch
# here, tests/test_bad_inputs.py checks this list against backbones.vgg19_layer_names().
VGG19_LAYERS = tuple(
    name
    for b, n in enumerate((2, 2, 4, 4, 4), 1)
    for name in [f"{k}{b}_{c}" for c in range(1, n + 1) for k in ("conv", "relu")] + [f"pool{b}"]
)


class PerceptualLoss(Strict):
    layer: str = "conv5_4"  # VGG19 layer name, checked against the backbone's names
    criterion: Criterion = "l1"
    weight: float = Field(1.0, ge=0)

    @model_validator(mode="after")
    def _known_layer(self):
        if self.layer not in VGG19_LAYERS:
            raise ValueError(f"layer: {self.layer!r} is not a VGG19 layer ({', '.join(VGG19_LAYERS)})")
        return self


class SAFeatureLoss(Strict):
    # VSR poster: rho_w(VGG(hr), VGG(sr), alpha3 + beta3 * relu(VGG(W(hr)))) at perceptual.layer;
    # the weight uses W's post-activation features (the ReLU after that conv), so it is >= 0.
    alpha3: float = Field(1.0, ge=0)
    beta3: float = Field(1.0, ge=0)
    criterion: Criterion = "charbonnier"
    weight: float = Field(1.0, ge=0)  # 1 in eq. 13 (alpha3, beta3 are the weights)
    # replace: poster eq. 13, the SA feature term IS the perceptual term (no plain VGG term;
    # perceptual gives the layer only). add: the plain VGG term stays, this one is added.
    mode: Literal["replace", "add"] = "replace"


class DPLoss(Strict):
    mu: float = Field(0.5, gt=0)  # .inf means VGG only
    resnet_stage: Literal[1, 2, 3, 4] = 3
    # released: the authors' ESRGAN-DP code (sum of the L1 over stages 1..m, ResNet on the raw
    # [0, 1] image), which produced the paper's tables; paper: the text (stage m alone, ImageNet-
    # normalised input). README "DP ResNet term".
    resnet_variant: Literal["released", "paper"] = "released"


class FMLoss(Strict):
    blocks: list[int] = Field(default_factory=lambda: [0, 1, 2, 3])
    weight: float = Field(1.0, ge=0)

    @model_validator(mode="after")
    def _some_blocks(self):
        if not self.blocks or min(self.blocks) < 0 or len(set(self.blocks)) < len(self.blocks):
            raise ValueError(
                f"blocks: {self.blocks} must be distinct discriminator block indices >= 0, at least one"
            )
        return self


class AdvLoss(Strict):
    kind: Literal["vanilla", "ragan"] = "ragan"
    weight: float = Field(0.005, ge=0)


class LossConfig(Strict):
    pixel: PixelLoss = PixelLoss()
    perceptual: Optional[PerceptualLoss] = PerceptualLoss()
    dp: Optional[DPLoss] = None  # replaces the VGG term by l_vgg + zeta/mu * l_res
    sa_feature: Optional[SAFeatureLoss] = None
    fm: Optional[FMLoss] = None
    adv: AdvLoss = AdvLoss()

    @model_validator(mode="after")
    def _needs_vgg(self):
        for name in ("dp", "sa_feature"):
            if getattr(self, name) is not None and self.perceptual is None:
                raise ValueError(f"{name}: needs a perceptual section (it uses the VGG layer and weight)")
        if self.sa_feature is not None and self.pixel.sa is None:
            raise ValueError("sa_feature: needs pixel.sa (it weights features by VGG(W(hr)))")
        if self.sa_feature is not None and self.sa_feature.mode == "replace" and self.dp is not None:
            raise ValueError("sa_feature.mode: replace drops the plain VGG term; with dp use mode: add")
        return self
