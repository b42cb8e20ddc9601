"""Frozen ImageNet backbones (VGG19, ResNet50, LPIPS's AlexNet) that work offline.

Weights are never downloaded implicitly: "pretrained" reads torchvision's checkpoint
files from a directory (configured, $SRSWEEP_WEIGHTS_DIR, or the torch hub cache) and
fails with one actionable line when they are missing; "random" is a seeded init for
plumbing tests whose runs must be tagged `backbones=random-init` (see build_info).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch
import torchvision
from torch import nn

from trainables.errors import WeightsFileError

ENV_VAR = "SRSWEEP_WEIGHTS_DIR"
WEIGHT_MODES = ("pretrained", "random")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class WeightSpec:
    name: str  # human name used in messages, e.g. "VGG19"
    url: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def hash_prefix(self) -> str:
        # torchvision names files <arch>-<sha256 prefix>.pth and checks that prefix.
        return self.filename.rsplit(".pth", 1)[0].rsplit("-", 1)[-1]


_tvm = torchvision.models
# URLs come from torchvision's enums so they always match what torchvision would fetch.
SPECS: dict[str, WeightSpec] = {
    "vgg19": WeightSpec("VGG19", _tvm.VGG19_Weights.IMAGENET1K_V1.url),
    "resnet50": WeightSpec("ResNet50", _tvm.ResNet50_Weights.IMAGENET1K_V1.url),
    "alexnet": WeightSpec("AlexNet", _tvm.AlexNet_Weights.IMAGENET1K_V1.url),
}


class WeightsNotFoundError(FileNotFoundError):
    """A pretrained checkpoint is absent; the message is one line with the fix."""


def default_weights_dir() -> Path:
    # Same place torchvision caches downloads, so an existing cache is picked up.
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_weights_dir(weights_dir: str | Path | None = None) -> Path:
    """The configured dir, else $SRSWEEP_WEIGHTS_DIR, else the torch hub cache."""
    chosen = weights_dir if weights_dir not in (None, "") else os.environ.get(ENV_VAR)
    return Path(chosen).expanduser() if chosen else default_weights_dir()


def _spec(key: str, specs: Mapping[str, WeightSpec] | None = None) -> WeightSpec:
    specs = SPECS if specs is None else specs
    if key not in specs:
        raise ValueError(f"unknown backbone weights {key!r}; valid: {', '.join(specs)}")
    return specs[key]


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"


def weights_path(key: str, weights_dir: str | Path | None = None) -> Path:
    """Path of an existing checkpoint file, else WeightsNotFoundError (one line + fix)."""
    spec, folder = _spec(key), resolve_weights_dir(weights_dir)
    path = folder / spec.filename
    if not path.is_file():
        raise WeightsNotFoundError(
            f"{spec.name} ImageNet weights not found: {path} does not exist (searched {folder}). "
            "On a machine with internet run 'srsweep weights fetch DIR', copy DIR here and set "
            f"backbones.weights_dir (or {ENV_VAR}) to it; check with 'srsweep weights verify "
            "DIR'. For plumbing tests use 'weights: random'."
        )
    return path


def check_available(keys: Iterable[str], weights_dir: str | Path | None = None) -> None:
    """Raise on the first missing file: call before any trial starts."""
    for key in keys:
        weights_path(key, weights_dir)


def load_state_dict(key: str, weights_dir: str | Path | None = None) -> dict:
    spec, path = _spec(key), weights_path(key, weights_dir)
    try:
        # weights_only: checkpoints copied from elsewhere must not run pickled code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt/truncated copy: one line naming the file
        raise WeightsFileError(
            f"{path}: cannot load {spec.name} weights ({_first_line(exc)}); "
            "re-copy it and check with 'srsweep weights verify DIR'"
        ) from None
    if not isinstance(state, Mapping):
        raise WeightsFileError(f"{path}: not a state_dict ({type(state).__name__})")
    return dict(state)


# ---------------------------------------------------------------- fetch / verify
@dataclass(frozen=True)
class VerifyResult:
    key: str
    path: Path
    status: str  # "ok" | "missing" | "hash-mismatch"
    sha256: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:  # streamed: the VGG19 file is ~550 MB
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check(key: str, spec: WeightSpec, folder: Path) -> VerifyResult:
    path = folder / spec.filename
    if not path.is_file():
        return VerifyResult(key, path, "missing")
    digest = _sha256(path)
    status = "ok" if digest.startswith(spec.hash_prefix) else "hash-mismatch"
    return VerifyResult(key, path, status, digest)


def verify(
    weights_dir: str | Path | None = None, specs: Mapping[str, WeightSpec] | None = None
) -> list[VerifyResult]:
    specs = SPECS if specs is None else specs
    folder = resolve_weights_dir(weights_dir)
    return [_check(key, spec, folder) for key, spec in specs.items()]


def fetch(
    dest_dir: str | Path,
    keys: Iterable[str] | None = None,
    specs: Mapping[str, WeightSpec] | None = None,
    progress: bool = True,
) -> list[Path]:
    """Download checkpoints (needs internet); files already present and verified are kept."""
    specs = SPECS if specs is None else specs
    dest = Path(dest_dir).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for key in list(specs) if keys is None else list(keys):
        spec = _spec(key, specs)
        result = _check(key, spec, dest)
        if not result.ok:
            # torch.hub writes to a temp file and checks the hash before moving it in place.
            torch.hub.download_url_to_file(
                spec.url, str(result.path), hash_prefix=spec.hash_prefix, progress=progress
            )
        paths.append(result.path)
    return paths


# ---------------------------------------------------------------- backbones
def _check_mode(weights: str) -> None:
    if weights not in WEIGHT_MODES:
        raise ValueError(f"unknown weights mode {weights!r}; use one of {', '.join(WEIGHT_MODES)}")


def build_info(weights: str) -> dict:
    """Tag for MLflow runs / reports: random-init numbers are not perceptual results."""
    _check_mode(weights)
    return {"backbones": "imagenet" if weights == "pretrained" else "random-init"}


@contextmanager
def _seeded(seed: int):
    # Deterministic init that leaves the caller's RNG as it was (models are built on CPU).
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def _load_strict(module: nn.Module, state: Mapping, prefix: str, key: str, weights_dir) -> None:
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        res = module.load_state_dict(sub, strict=False)
        bad = [f"missing {k}" for k in res.missing_keys] + [f"unexpected {k}" for k in res.unexpected_keys]
    except RuntimeError as exc:  # shape mismatch; torch's first line is only a header
        bad = [line.strip() for line in str(exc).strip().splitlines()[1:2]] or [str(exc)]
    if bad:  # wrong file under the right name: say which file and what is off
        raise WeightsFileError(
            f"{weights_path(key, weights_dir)}: does not match torchvision's "
            f"{SPECS[key].name} ({bad[0].rstrip('.')})"
        )


class _FrozenBackbone(nn.Module):
    """Normalises [0, 1] images with ImageNet stats; parameters frozen, always eval."""

    def __init__(self, weights: str):
        super().__init__()
        self.weights, self.info = weights, build_info(weights)  # build_info validates
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        # A parent's .train() must not put BatchNorm into training mode (running stats).
        return super().train(False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _vgg19_features() -> nn.Sequential:
    # Only the conv trunk: vgg19() would also init a ~120M-parameter classifier we drop.
    return _tvm.vgg.make_layers(_tvm.vgg.cfgs["E"], batch_norm=False)


@lru_cache(maxsize=1)
def vgg19_layer_names() -> tuple[str, ...]:
    """conv1_1, relu1_1, ..., pool5, one per index of torchvision's vgg19().features."""
    with torch.device("meta"):  # names only: no memory, no RNG use
        features = _vgg19_features()
    names, block, conv = [], 1, 0
    for layer in features:
        if isinstance(layer, nn.Conv2d):
            conv += 1
            names.append(f"conv{block}_{conv}")
        elif isinstance(layer, nn.ReLU):
            names.append(f"relu{block}_{conv}")
        elif isinstance(layer, nn.MaxPool2d):
            names.append(f"pool{block}")
            block, conv = block + 1, 0
        else:
            raise TypeError(f"unexpected VGG19 layer {layer!r}")
    return tuple(names)


class VGGFeatures(_FrozenBackbone):
    """Named VGG19 features; conv* are pre-activation (before ReLU)."""

    def __init__(
        self,
        layers: Sequence[str],
        weights: str = "pretrained",
        weights_dir: str | Path | None = None,
        seed: int = 0,
    ):
        super().__init__(weights)
        names = vgg19_layer_names()
        layers = [layers] if isinstance(layers, str) else list(layers)
        bad = [name for name in layers if name not in names]
        if bad or not layers:
            raise ValueError(f"unknown VGG19 layer(s) {bad}; valid: {', '.join(names)}")
        self.layers = tuple(layers)
        deepest = max(names.index(name) for name in layers)
        with _seeded(seed):
            features = _vgg19_features()
            for m in features:  # same init as torchvision's VGG._initialize_weights
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(m.bias)
        if weights == "pretrained":
            _load_strict(features, load_state_dict("vgg19", weights_dir), "features.", "vgg19", weights_dir)
        kept = []
        for layer in list(features)[: deepest + 1]:  # nothing past the deepest layer runs
            # torchvision's inplace ReLU would overwrite a stored conv (pre-activation) output.
            kept.append(nn.ReLU(inplace=False) if isinstance(layer, nn.ReLU) else layer)
        self.features = nn.Sequential(*kept)
        self.names = names[: deepest + 1]
        self._freeze()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, wanted, out = self.normalize(x), set(self.layers), {}
        for name, layer in zip(self.names, self.features):
            h = layer(h)
            if name in wanted:
                out[name] = h
        return {name: out[name] for name in self.layers}


@torch.no_grad()
def _fold_batchnorm(module: nn.Module) -> None:
    """Fold each eval-mode BatchNorm into the conv registered just before it (torchvision's
    ResNet registers every conv-BN pair in data-flow order): ``bn(conv(x)) = conv'(x)`` with
    ``w' = w * g``, ``b' = beta + (b - mean) * g``, ``g = gamma / sqrt(var + eps)``, solved in
    float64. One conv instead of conv + BN, forward and backward (bench/step.py); the
    features change by float rounding only. In place: no RNG draw, no new module."""
    for parent in module.modules():
        kids = list(parent.named_children())
        for (_, conv), (bn_name, bn) in zip(kids, kids[1:]):
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            g = bn.weight.double() / (bn.running_var.double() + bn.eps).sqrt()
            b = conv.bias.double() if conv.bias is not None else torch.zeros_like(g)
            bias = (bn.bias.double() + (b - bn.running_mean.double()) * g).to(conv.weight.dtype)
            conv.weight.copy_(conv.weight.double() * g.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bias, requires_grad=False)
            setattr(parent, bn_name, nn.Identity())


class ResNetFeatures(_FrozenBackbone):
    """ResNet50 features after the last bottleneck of layer{stage}.

    all_stages: return the outputs of layer1..layer{stage} as a list (DP "released" sums the
    L1 over them). normalize: ImageNet mean/std on the [0, 1] input (the DP paper text);
    False feeds the [0, 1] image as it is, as the authors' released ESRGAN-DP code does."""

    def __init__(
        self,
        stage: int = 4,
        weights: str = "pretrained",
        weights_dir: str | Path | None = None,
        seed: int = 0,
        all_stages: bool = False,
        normalize: bool = True,
    ):
        super().__init__(weights)
        if isinstance(stage, bool) or stage not in (1, 2, 3, 4):
            raise ValueError(f"ResNet50 stage must be 1, 2, 3 or 4, got {stage!r}")
        self.stage, self.all_stages, self.normalize_input = stage, all_stages, normalize
        with _seeded(seed):
            net = _tvm.resnet50(weights=None)
        if weights == "pretrained":
            _load_strict(net, load_state_dict("resnet50", weights_dir), "", "resnet50", weights_dir)
        parts = ["conv1", "bn1", "relu", "maxpool"] + [f"layer{i}" for i in range(1, stage + 1)]
        # Later stages, avgpool and fc are dropped: not built into the forward path at all.
        self.body = nn.Sequential(OrderedDict((p, getattr(net, p)) for p in parts))
        self._freeze()
        _fold_batchnorm(self.body)  # frozen, always eval: BN is a fixed affine map

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        h = self.normalize(x) if self.normalize_input else x
        outs = []
        for name, layer in self.body.named_children():
            h = layer(h)
            if name.startswith("layer"):
                outs.append(h)
        return outs if self.all_stages else h


# ---------------------------------------------------------------- LPIPS (AlexNet trunk)
def load_alexnet_into_lpips(
    lpips_model: nn.Module, weights: str = "pretrained", weights_dir: str | Path | None = None, seed: int = 0
) -> nn.Module:
    """Fill an lpips.LPIPS(net='alex') trunk with ImageNet (or seeded random) weights."""
    _check_mode(weights)
    if getattr(lpips_model, "pnet_type", None) != "alex":
        raise ValueError("load_alexnet_into_lpips needs an lpips.LPIPS(net='alex') model")
    trunk = lpips_model.net
    if weights == "pretrained":
        state = load_state_dict("alexnet", weights_dir)
        # lpips keeps torchvision's feature indices: slice2.3.weight <- features.3.weight.
        names = {k: "features." + k.split(".", 1)[1] for k in trunk.state_dict()}
        mapped = {k: state[v] for k, v in names.items() if v in state}
        _load_strict(trunk, mapped, "", "alexnet", weights_dir)  # names a missing key
    else:
        with _seeded(seed):
            for m in trunk.modules():  # torchvision's AlexNet uses the default init too
                if isinstance(m, nn.Conv2d):
                    m.reset_parameters()
    trunk.requires_grad_(False)
    return lpips_model


def build_lpips(
    weights: str = "pretrained", weights_dir: str | Path | None = None, seed: int = 0
) -> nn.Module:
    """lpips.LPIPS(net='alex') with its shipped linear layers and no download attempt."""
    _check_mode(weights)
    import lpips

    with _seeded(seed), warnings.catch_warnings():
        # pnet_rand=True makes lpips call tv.alexnet(pretrained=False): no download.
        warnings.simplefilter("ignore", UserWarning)  # torchvision's 'pretrained' deprecation
        model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    load_alexnet_into_lpips(model, weights, weights_dir, seed)
    model.requires_grad_(False)
    return model.eval()
