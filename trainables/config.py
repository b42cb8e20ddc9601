"""Typed experiment configuration: YAML in, validated objects out, checked once.

Every later stage (data, models, losses, training, sweeps) reads these objects and
trusts them. Bad input fails here with one line per problem that names the key path
and what is allowed, e.g. ``loss.dp.resnet_stage: 5 is not one of 1, 2, 3, 4``.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, Field, ValidationError, model_validator

from trainables.config_bounds import SEED_MAX, STEPS_MAX, Strict
from trainables.config_errors import arch_tag, format_error
from trainables.errors import ConfigError
from trainables.loss_config import Criterion, LossConfig


# ----------------------------------------------------------------------------- data
class Augment(Strict):
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True


class VideoDataConfig(Strict):
    """Video-only data keys (sit beside DataConfig's patch_size / batch_size; read when
    ``data.kind`` is video, refused otherwise). trainables.video_data re-exports it."""

    num_frames: int = Field(5, ge=1, le=15, description="2k+1 frames per clip")
    synth_frames: int = Field(7, ge=1, le=1000, description="frames per embedded synthetic sequence")
    synth_size: int = Field(192, ge=16, le=4096, description="HR side of embedded synthetic frames")
    max_speed: float = Field(1.0, ge=0, le=1000, description="embedded motion: HR px per frame")

    @model_validator(mode="after")
    def _odd(self):
        if self.num_frames % 2 == 0:
            raise ValueError(f"num_frames: {self.num_frames} must be odd (2k+1, centre frame target)")
        return self


class DataConfig(VideoDataConfig):
    # image: "embedded" (images shipped with scikit-image) or a folder: BasicSR layout
    # HR/ + LR_bicubic/X{scale}/, or HR images only (LR made with MATLAB bicubic).
    # video: samples are clips of num_frames frames; "embedded" (synthetic motion over the
    # embedded stills) or a Vid4-layout folder (trainables.video_data).
    kind: Literal["image", "video"] = "image"
    train: str = "embedded"
    val: str = "embedded"  # the search's images (ASHA, Optuna, ranking); "holdout": see below
    # The confirmation's held-out images (sweeper/confirm.py), never seen by the search;
    # same forms as val ("embedded": a split disjoint from the embedded train and val).
    test: Optional[str] = None
    # >0 with val: holdout: the last N images (by name) of data.train validate and the
    # train loader skips them: validation from the training distribution.
    holdout: int = Field(0, ge=0)
    patch_size: int = Field(128, ge=8, le=1024, description="HR patch side")
    batch_size: int = Field(16, ge=1, le=1024)
    num_workers: int = Field(2, ge=0, le=64)
    augment: Augment = Augment()
    cache: bool = True  # keep decoded HR/LR images in memory (small data sets)

    @model_validator(mode="after")
    def _holdout(self):
        if (self.val == "holdout") != (self.holdout > 0):
            raise ValueError(f"holdout: {self.holdout} goes with val: holdout (val is {self.val!r})")
        if self.holdout and self.kind == "video":
            raise ValueError("holdout: image data only")
        return self

    @model_validator(mode="after")
    def _video_keys(self):
        # Defaults are allowed: a dumped image config (winner.yaml, a checkpoint) lists them.
        stray = sorted(k for k, f in VideoDataConfig.model_fields.items() if getattr(self, k) != f.default)
        if self.kind == "image" and stray:
            raise ValueError(f"{stray[0]}: a video key, but data.kind is image (set kind: video)")
        return self


# ---------------------------------------------------------------------------- models
class _GeneratorBase(Strict):
    num_feat: int = Field(64, ge=1, le=1024)
    num_blocks: int = Field(23, ge=1, le=256)
    bicubic_skip: bool = False  # add bicubic(lr) to the output (global residual; not in papers)


class RRDBNetConfig(_GeneratorBase):
    arch: Literal["rrdbnet"] = "rrdbnet"
    grow_ch: int = Field(32, ge=1, le=1024)  # dense-block growth channels


class SRResNetConfig(_GeneratorBase):
    arch: Literal["srresnet"] = "srresnet"
    num_blocks: int = Field(16, ge=1, le=256)
    variant: Literal["srgan", "msrresnet"] = "srgan"  # msrresnet: BasicSR's, the DP authors' SRGAN G


class VGGDiscConfig(Strict):
    arch: Literal["vgg"] = "vgg"  # ESRGAN's VGG-style D, 10 conv blocks
    num_feat: int = Field(64, ge=1, le=1024)
    feature_blocks: ClassVar[int] = 10  # what loss.fm.blocks may index (models.py layout)


class SRGANDiscConfig(Strict):
    arch: Literal["srgan"] = "srgan"  # SRGAN / feature-matching paper D, 8 conv blocks
    num_feat: int = Field(64, ge=1, le=1024)
    feature_blocks: ClassVar[int] = 8


class VSRResFeatGenConfig(Strict):
    """VSRResFeatGAN generator (trainables.vsr_models): clips of num_frames in, centre frame out."""

    arch: Literal["vsrresfeat"] = "vsrresfeat"
    num_frames: int = Field(5, ge=1, le=15)
    num_feat: int = Field(64, ge=1, le=1024)
    num_blocks: int = Field(15, ge=0, le=256)
    bicubic_skip: bool = False  # add the bicubic centre frame (global residual; not in the paper)

    @model_validator(mode="after")
    def _odd(self):
        if self.num_frames % 2 == 0:
            raise ValueError(f"num_frames: {self.num_frames} must be odd (the target is the centre frame)")
        return self


class VSRDiscConfig(Strict):
    arch: Literal["vsrresfeat"] = "vsrresfeat"
    num_feat: int = Field(64, ge=1, le=1024)
    num_blocks: int = Field(3, ge=1, le=6)  # stride-2 conv blocks: channels num_feat * 2^i


# Each architecture owns its typed section, chosen by `arch`. A new family (video SR, say)
# adds its config class here and registers its builder in its own module (models.register_*).
GENERATOR_CONFIGS: tuple[type[BaseModel], ...] = (RRDBNetConfig, SRResNetConfig, VSRResFeatGenConfig)
DISCRIMINATOR_CONFIGS: tuple[type[BaseModel], ...] = (VGGDiscConfig, SRGANDiscConfig, VSRDiscConfig)
GeneratorConfig = Annotated[Union[GENERATOR_CONFIGS], Field(discriminator="arch")]
DiscriminatorConfig = Annotated[Union[DISCRIMINATOR_CONFIGS], Field(discriminator="arch")]


class ModelConfig(Strict):
    generator: GeneratorConfig = RRDBNetConfig()
    discriminator: DiscriminatorConfig = VGGDiscConfig()

    @model_validator(mode="before")
    @classmethod
    def _default_arch(cls, data: Any) -> Any:
        # `arch` may be left out (the defaults apply). An overlay meant for any architecture
        # (tiny_cpu) puts arch-only keys under the arch's name: {rrdbnet: {grow_ch: 8}} is
        # merged when the generator is an RRDBNet and dropped otherwise.
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key, arch, configs in (
            ("generator", "rrdbnet", GENERATOR_CONFIGS),
            ("discriminator", "vgg", DISCRIMINATOR_CONFIGS),
        ):
            if isinstance(data.get(key), dict):
                section = {"arch": arch, **data[key]}
                for tag in (arch_tag(c) for c in configs):
                    extra = section.pop(tag, None)
                    if tag == section["arch"] and isinstance(extra, dict):
                        section = {**section, **extra}
                data[key] = section
        return data


class BackbonesConfig(Strict):
    # pretrained: ImageNet weights from weights_dir / $SRSWEEP_WEIGHTS_DIR / torch hub
    # cache (never downloaded). random: seeded init, runs are tagged random-init.
    weights: Literal["pretrained", "random"] = "pretrained"
    weights_dir: Optional[str] = None
    # Seed of random-init VGG19, ResNet50 and the LPIPS trunk: it defines the loss and the metric,
    seed: int = Field(0, ge=0, le=2**31 - 1)  # so one per sweep; `seed` is the training seed


# -------------------------------------------------------------------------- training
Step = Annotated[int, Field(ge=0, le=STEPS_MAX)]


class TrainConfig(Strict):
    pretrain_steps: int = Field(1000, ge=0, le=STEPS_MAX)
    # PSNR pretraining (stage 1): its own lr, milestones (stage-1 steps, lr *= lr_gamma) and
    # pixel criterion; None: train.lr / loss.pixel.criterion (ESRGAN: 2e-4 halved every 200k).
    pretrain_lr: Optional[float] = Field(None, gt=0)
    pretrain_milestones: list[Step] = Field(default_factory=list, max_length=1000)
    pretrain_criterion: Optional[Criterion] = None
    steps: int = Field(5000, ge=1, le=STEPS_MAX)
    lr: float = Field(1e-4, gt=0)
    milestones: list[Step] = Field(default_factory=list, max_length=1000)  # GAN steps where lr *= gamma
    lr_gamma: float = Field(0.5, gt=0, le=1)
    betas: tuple[float, float] = (0.9, 0.99)
    # A stage-1 generator checkpoint to start from (sweeps share one pretraining run).
    pretrained_g: Optional[str] = None
    val_every: int = Field(500, ge=1, le=STEPS_MAX)
    val_images: int = Field(0, ge=0, le=1_000_000)  # 0: every validation image
    val_crop: int = Field(0, ge=0, le=16_384)  # >0: centre HR crop of this side (fast CPU checks)
    log_every: int = Field(10, ge=1, le=STEPS_MAX)
    checkpoint_every: int = Field(500, ge=1, le=STEPS_MAX)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # GPU path (trainables/accel.py, docs/PERFORMANCE.md): off = the fp32 NCHW eager reference.
    amp: Literal["none", "bf16"] = "none"
    channels_last: bool = False
    compile: bool = False


class ExperimentConfig(Strict):
    name: str = Field("srsweep", max_length=120, pattern=r"^[^\x00-\x1f\x7f]+$")  # a folder name part
    seed: int = Field(0, ge=0, le=SEED_MAX)  # numpy seeds every run
    scale: Literal[2, 3, 4] = 4
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    backbones: BackbonesConfig = BackbonesConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _patch_multiple_of_scale(self):
        if self.data.patch_size % self.scale:
            raise ValueError(
                f"data.patch_size: {self.data.patch_size} is not a multiple of scale {self.scale}"
            )
        d, fm = self.model.discriminator, self.loss.fm
        if fm is not None and max(fm.blocks) >= getattr(d, "feature_blocks", math.inf):
            raise ValueError(
                f"loss.fm.blocks: {fm.blocks} names block {max(fm.blocks)}, but the {d.arch} "
                f"discriminator has blocks 0..{d.feature_blocks - 1}"
            )
        return self

    @model_validator(mode="after")
    def _clips_fit_the_generator(self):
        frames, kind = getattr(self.model.generator, "num_frames", None), self.data.kind
        if (kind == "video") != (frames is not None):
            raise ValueError(
                f"data.kind: {kind} does not fit model.generator.arch "
                f"{self.model.generator.arch} (clips need a video generator, images an image one)"
            )
        if kind == "video" and self.data.synth_size % self.scale:
            raise ValueError(
                f"data.synth_size: {self.data.synth_size} is not a multiple of scale {self.scale}"
            )
        if frames is not None and frames != self.data.num_frames:
            raise ValueError(
                f"data.num_frames: {self.data.num_frames} differs from model.generator.num_frames {frames}"
            )
        return self


def validate(data: dict, model: type[BaseModel] = ExperimentConfig, source: str = "config"):
    """dict -> typed config, or ConfigError with one line per problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = [f"{source}: {format_error(model, e)}" for e in exc.errors()]
        raise ConfigError("\n".join(lines)) from None
