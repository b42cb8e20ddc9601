"""Typed experiment configuration: YAML in, validated objects out, checked once.

Every later stage (data, models, losses, training, sweeps) reads these objects and
trusts them. Bad input fails here with one line per problem that names the key path
and what is allowed, e.g. ``loss.dp.resnet_stage: 5 is not one of 1, 2, 3, 4``.
"""

from __future__ import annotations

import math
import types
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class SrsweepError(Exception):
    """Base of the errors a user can fix (bad input): the CLI prints them in one line.
    Any other exception is a bug and keeps its traceback."""


class ConfigError(SrsweepError, ValueError):
    """A configuration problem, one line per offending key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ----------------------------------------------------------------------------- data
class Augment(Strict):
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True


class VideoDataConfig(Strict):
    """Video-only data keys (sit beside DataConfig's patch_size / batch_size; read when
    ``data.kind`` is video, refused otherwise). trainables.video_data re-exports it."""

    num_frames: int = Field(5, ge=1, le=15, description="2k+1 frames per clip")
    synth_frames: int = Field(7, ge=1, description="frames per embedded synthetic sequence")
    synth_size: int = Field(192, ge=16, description="HR side of embedded synthetic frames")
    max_speed: float = Field(1.0, ge=0, description="embedded motion: HR px per frame")

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
    val: str = "embedded"
    patch_size: int = Field(128, ge=8, le=1024, description="HR patch side")
    batch_size: int = Field(16, ge=1)
    num_workers: int = Field(2, ge=0)
    augment: Augment = Augment()
    cache: bool = True  # keep decoded HR/LR images in memory (small data sets)

    @model_validator(mode="after")
    def _video_keys(self):
        # Defaults are allowed: a dumped image config (winner.yaml, a checkpoint) lists them.
        stray = sorted(k for k, f in VideoDataConfig.model_fields.items() if getattr(self, k) != f.default)
        if self.kind == "image" and stray:
            raise ValueError(f"{stray[0]}: a video key, but data.kind is image (set kind: video)")
        return self


# ---------------------------------------------------------------------------- models
class _GeneratorBase(Strict):
    num_feat: int = Field(64, ge=1)
    num_blocks: int = Field(23, ge=1)
    bicubic_skip: bool = False  # add bicubic(lr) to the output (global residual; not in papers)


class RRDBNetConfig(_GeneratorBase):
    arch: Literal["rrdbnet"] = "rrdbnet"
    grow_ch: int = Field(32, ge=1)  # dense-block growth channels


class SRResNetConfig(_GeneratorBase):
    arch: Literal["srresnet"] = "srresnet"
    num_blocks: int = Field(16, ge=1)


class VGGDiscConfig(Strict):
    arch: Literal["vgg"] = "vgg"  # ESRGAN's VGG-style D, 10 conv blocks
    num_feat: int = Field(64, ge=1)
    feature_blocks: ClassVar[int] = 10  # what loss.fm.blocks may index (models.py layout)


class SRGANDiscConfig(Strict):
    arch: Literal["srgan"] = "srgan"  # SRGAN / feature-matching paper D, 8 conv blocks
    num_feat: int = Field(64, ge=1)
    feature_blocks: ClassVar[int] = 8


class VSRResFeatGenConfig(Strict):
    """VSRResFeatGAN generator (trainables.vsr_models): clips of num_frames in, centre frame out."""

    arch: Literal["vsrresfeat"] = "vsrresfeat"
    num_frames: int = Field(5, ge=1)
    num_feat: int = Field(64, ge=1)
    num_blocks: int = Field(15, ge=0)
    bicubic_skip: bool = False  # add the bicubic centre frame (global residual; not in the paper)

    @model_validator(mode="after")
    def _odd(self):
        if self.num_frames % 2 == 0:
            raise ValueError(f"num_frames: {self.num_frames} must be odd (the target is the centre frame)")
        return self


class VSRDiscConfig(Strict):
    arch: Literal["vsrresfeat"] = "vsrresfeat"
    num_feat: int = Field(64, ge=1)
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
                for tag in (_tag(c) for c in configs):
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


# ---------------------------------------------------------------------------- losses
Criterion = Literal["l1", "charbonnier", "huber", "l2"]


class LocalVariance(Strict):
    window: int = Field(5, ge=3, le=31)
    delta: float = Field(0.01, gt=0)

    @model_validator(mode="after")
    def _odd(self):
        if self.window % 2 == 0:
            raise ValueError(f"window: {self.window} must be odd")
        return self


class Canny(Strict):
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
    calibration_batches: int = Field(4, ge=1)  # batches that solve beta2 for sa_share_target
    # Tracking: every N GAN steps re-solve beta2 from the means of the last N steps, so the
    # reached share follows the target as the other terms change. 0: solve once, then frozen.
    track_every: int = Field(0, ge=0)

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
    weight: float = Field(1.0, ge=0)


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
        return self


# -------------------------------------------------------------------------- training
class TrainConfig(Strict):
    pretrain_steps: int = Field(1000, ge=0)
    steps: int = Field(5000, ge=1)
    lr: float = Field(1e-4, gt=0)
    milestones: list[int] = Field(default_factory=list)  # GAN-stage steps where lr *= gamma
    lr_gamma: float = Field(0.5, gt=0, le=1)
    betas: tuple[float, float] = (0.9, 0.99)
    # A stage-1 generator checkpoint to start from (sweeps share one pretraining run).
    pretrained_g: Optional[str] = None
    val_every: int = Field(500, ge=1)
    val_images: int = Field(0, ge=0)  # 0: every validation image
    val_crop: int = Field(0, ge=0)  # >0: centre HR crop of this side (fast CPU checks)
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # GPU path (trainables/accel.py, docs/PERFORMANCE.md): off = the fp32 NCHW eager reference.
    amp: Literal["none", "bf16"] = "none"
    channels_last: bool = False
    compile: bool = False


class ExperimentConfig(Strict):
    name: str = "srsweep"
    seed: int = 0
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


# ------------------------------------------------------------------ error reporting
def _members(tp: Any) -> list[type[BaseModel]]:
    """The BaseModel classes of an annotation: X, Optional[X], Annotated[Union[X, Y], ...]."""
    if typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [m for arg in typing.get_args(tp) for m in _members(arg)]
    return []


def unwrap_model(tp: Any) -> Any:
    """Optional[Model] / Union[...] -> the first BaseModel class inside, if any."""
    return next(iter(_members(tp)), None)


def loc_str(loc: tuple) -> str:
    """('space', 2, 'path') -> 'space[2].path' (the key path an error names)."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _tag(model: type[BaseModel]) -> Any:
    field = model.model_fields.get("arch")
    return field.default if field is not None else None


def _walk(root: type[BaseModel], loc: tuple) -> tuple[type[BaseModel] | None, tuple]:
    """The model at ``loc`` (fields by name or alias, through Optional, unions, lists and
    dicts) and ``loc`` without discriminated-union tags (pydantic puts the chosen ``arch``
    into error locations: model.generator.rrdbnet.x -> model.generator.x)."""
    tp: Any = root
    out = []
    for part in loc:
        members = _members(tp)
        tagged = [m for m in members if _tag(m) == part]
        if len(members) > 1 and tagged:
            tp = tagged[0]
            continue
        out.append(part)
        if members:
            fields = {f.alias or n: f for n, f in members[0].model_fields.items()}
            tp = fields[part].annotation if part in fields else None
        elif typing.get_origin(tp) in (list, tuple, dict):
            tp = typing.get_args(tp)[-1]
        else:
            tp = None
    return unwrap_model(tp), tuple(out)


def format_error(root: type[BaseModel], err: dict) -> str:
    _, loc = _walk(root, tuple(err["loc"]))
    path = loc_str(loc) or "<top level>"
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind == "extra_forbidden":
        parent, _ = _walk(root, tuple(err["loc"])[:-1])
        allowed = ", ".join(f.alias or n for n, f in parent.model_fields.items()) if parent else "?"
        return f"{path}: unknown key (allowed: {allowed})"
    if kind == "union_tag_invalid":
        return (
            f"{path}.{ctx.get('discriminator', '').strip(chr(39))}: {ctx.get('tag')!r} is not one of "
            f"{ctx.get('expected_tags')}"
        )
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace(" or ", ", ")
        return f"{path}: {value!r} is not one of {expected}"
    if kind == "missing":
        return f"{path}: required key is missing"
    if kind == "value_error":  # our validators; "field: ..." names a key inside loc
        msg = str(ctx.get("error", err["msg"]))
        head, sep, rest = msg.partition(": ")
        if sep and " " not in head:
            return f"{loc_str((*loc, head))}: {rest}"
        return f"{path}: {msg}"
    return f"{path}: {err['msg'][0].lower() + err['msg'][1:]} (got {value!r})"


def validate(data: dict, model: type[BaseModel] = ExperimentConfig, source: str = "config"):
    """dict -> typed config, or ConfigError with one line per problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = [f"{source}: {format_error(model, e)}" for e in exc.errors()]
        raise ConfigError("\n".join(lines)) from None


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} invalid YAML ({getattr(exc, 'problem', exc)})") from None
    return {} if data is None else data


PRESETS_DIR = Path(__file__).resolve().parents[1] / "search_spaces" / "presets"
TINY_VIDEO = "tiny_cpu_video"  # what `--tiny` (the tiny_cpu overlay) means for a video config


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` wins; nested mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in over.items():
        out[key] = (
            deep_merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def resolve_bases(data: dict, origin: Path, _seen: tuple = ()) -> dict:
    """Expand ``base: name | [names]``: presets by name (search_spaces/presets/NAME.yaml) or
    YAML paths relative to the including file, merged in order, then this file's keys."""
    bases = data.pop("base", None) if isinstance(data, dict) else None
    if bases is None:
        return data
    merged: dict = {}
    for name in [bases] if isinstance(bases, str) else list(bases):
        cand = [origin / name, PRESETS_DIR / f"{name}.yaml"]
        path = next((p for p in cand if p.is_file()), None)
        if path is None:
            known = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
            raise ConfigError(f"base: {name!r} is neither a file next to the config nor a preset ({known})")
        if path.resolve() in _seen:
            raise ConfigError(f"base: {path} includes itself")
        sub = resolve_bases(read_yaml(path), path.parent, _seen + (path.resolve(),))
        merged = deep_merge(merged, sub)
    return deep_merge(merged, data)


def nested(assignments: dict[str, Any], source: str = "params") -> dict:
    """``{"loss.dp.mu": 0.5}`` -> ``{"loss": {"dp": {"mu": 0.5}}}`` (deep-merge it on a config)."""
    out: dict = {}
    for path, value in assignments.items():
        node, (*parents, leaf) = out, path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: {path} is inside {part}, which is assigned a value")
        node[leaf] = value
    return out


def parse_overrides(items: list[str]) -> dict:
    """``["train.steps=100", "loss.dp.mu=.inf"]`` -> nested dict (values parsed as YAML)."""
    flat: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE")
        try:
            flat[key] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", exc)
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({problem})") from None
    return nested(flat, "--set")


def config_path(name_or_path: str | Path) -> Path:
    """A YAML path, or the name of a preset in search_spaces/presets."""
    path = Path(name_or_path)
    preset = PRESETS_DIR / f"{name_or_path}.yaml"
    return preset if not path.exists() and preset.is_file() else path


def load_config(
    path: str | Path, overrides: list[str] | None = None, overlays: list[str] | None = None
) -> ExperimentConfig:
    """YAML file (or preset name) -> validated config; ``overlays`` are presets merged on
    top (e.g. ``tiny_cpu``), then ``overrides`` (``KEY.PATH=VALUE``)."""
    path = config_path(path)
    data = resolve_bases(read_yaml(path), path.parent, (path.resolve(),))
    if overlays and isinstance(data.get("data"), dict) and data["data"].get("kind") == "video":
        # --tiny names the CPU-size overlay of the config's family: video presets get their own.
        overlays = [TINY_VIDEO if o == "tiny_cpu" else o for o in overlays]
    if overlays:
        data = deep_merge(data, resolve_bases({"base": list(overlays)}, path.parent))
    if overrides:
        try:  # the file alone is valid: a failure after the overrides is the --set's fault
            validate(data, ExperimentConfig, source=str(path))
        except ConfigError:
            pass
        else:
            return validate(
                deep_merge(data, parse_overrides(overrides)),
                ExperimentConfig,
                source=f"--set {' '.join(overrides)}",
            )
        data = deep_merge(data, parse_overrides(overrides))
    return validate(data, ExperimentConfig, source=str(path))


def to_dict(cfg: BaseModel) -> dict:
    """Plain dict (YAML-safe: inf stays a float) for logging and rewriting config files."""
    return cfg.model_dump(mode="python")
