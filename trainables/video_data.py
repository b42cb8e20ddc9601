"""Video clips for VSR: a sample is 2k+1 consecutive LR frames and the centre HR frame.

Sources of sequences (a :class:`VideoSet`):
- a folder in the Vid4 layout, one folder of sorted frames per sequence::

      ROOT/HR/<seq>/*.png                      (or ROOT/GT/<seq>/, or ROOT/<seq>/ directly)
      ROOT/LR_bicubic/X{scale}/<seq>/*.png     (optional; or ROOT/BIx{scale}/<seq>/)

  Without an LR folder, LR frames are made with the MATLAB-compatible
  :func:`trainables.data.make_lr`; with one, every HR frame needs an LR frame of the
  same name (BasicSR's ``x{scale}`` suffix allowed) and the size HR / scale.
- ``embedded``: short sequences synthesised from scikit-image's photos (the same
  split as :func:`trainables.data.embedded`) with smooth random sub-pixel camera motion.

Each sequence is an :class:`~trainables.data.ImageSet` (or an in-memory equivalent), so
loading, mod-cropping, LR making, header checks and caching are data.py's. Windows at
the ends of a sequence replicate the first / last frame.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from trainables.config import VideoDataConfig  # noqa: F401  (defined with the other configs)
from trainables.data import (
    DataError,
    ImageSet,
    TrainPatches,
    _header_size,
    embedded,
    list_images,
    make_lr,
    to_tensor,
)
from trainables.edges import CannySpec

HR_DIRS = ("HR", "GT")


def lr_dirs(scale: int) -> tuple[str, ...]:
    return (f"LR_bicubic/X{scale}", f"BIx{scale}")


def window_indices(t: int, n: int, num_frames: int = 5) -> list[int]:
    """Frame indices of the clip centred on ``t`` in a sequence of ``n``; borders replicated."""
    if num_frames < 1 or num_frames % 2 == 0:
        raise ValueError(f"num_frames must be odd and >= 1, got {num_frames}")
    if not 0 <= t < n:
        raise IndexError(f"frame {t} outside a sequence of {n}")
    k = num_frames // 2
    return [min(max(t + d, 0), n - 1) for d in range(-k, k + 1)]


# ----------------------------------------------------------------------------- frame stores
class ArrayFrames:
    """In-memory frames with the part of ImageSet's interface a VideoSet uses."""

    def __init__(self, hr: np.ndarray, lr: np.ndarray, scale: int, source: str):
        self.hr, self.lr, self.scale, self.source = hr, lr, scale, source
        self.items = [(f"{t:03d}", None, None) for t in range(len(hr))]

    def __len__(self) -> int:
        return len(self.hr)

    def pair(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        return self.hr[t], self.lr[t]


class VideoSet:
    """Named sequences at one scale; ``frame(i, t)`` -> (HR, LR) uint8 HxWx3 arrays."""

    def __init__(self, sequences: list[tuple[str, ImageSet | ArrayFrames]], scale: int, source: str):
        if not sequences:
            raise DataError(f"{source}: no sequences found")
        self.sequences, self.scale, self.source = sequences, int(scale), source

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.sequences]

    def lengths(self) -> list[int]:
        return [len(s) for _, s in self.sequences]

    def frame_name(self, i: int, t: int) -> str:
        return self.sequences[i][1].items[t][0]

    def frame(self, i: int, t: int) -> tuple[np.ndarray, np.ndarray]:
        return self.sequences[i][1].pair(t)

    def clip(self, i: int, t: int, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
        """(LR window (T, h, w, 3), centre HR (H, W, 3)) uint8 around frame ``t``."""
        seq = self.sequences[i][1]
        lr = np.stack([seq.pair(j)[1] for j in window_indices(t, len(seq), num_frames)])
        return lr, seq.pair(t)[0]


# ----------------------------------------------------------------------------- folders
def _first_dir(root: Path, names: Sequence[str]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def _sequence_dirs(folder: Path) -> list[Path]:
    dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise DataError(f"{folder}: no sequence folders (expected one folder of frames per sequence)")
    return dirs


def _check_sequence(seq_dir: Path, frames: list[Path], num_frames: int) -> None:
    if len(frames) < num_frames:
        raise DataError(f"{seq_dir}: {len(frames)} frames, fewer than the {num_frames}-frame window")
    sizes = [_header_size(p) for p in frames]
    for p, wh in zip(frames, sizes):
        if wh != sizes[0]:
            raise DataError(
                f"{seq_dir}: frames differ in size ({frames[0].name} is "
                f"{sizes[0][0]}x{sizes[0][1]}, {p.name} is {wh[0]}x{wh[1]})"
            )


def _pair_lr(hr_frames: list[Path], lr_dir: Path, scale: int) -> list[Path]:
    lr_by_stem = {p.stem: p for p in list_images(lr_dir)}
    out = []
    for hr in hr_frames:
        lr = lr_by_stem.pop(hr.stem, None) or lr_by_stem.pop(f"{hr.stem}x{scale}", None)
        if lr is None:
            raise DataError(f"{lr_dir}: no LR frame named like {hr.name}")
        out.append(lr)
    if lr_by_stem:
        extra = sorted(lr_by_stem.values())[0]
        raise DataError(f"{lr_dir}: LR frame {extra.name} has no HR frame of the same name")
    return out


def folder_video(root: str | os.PathLike, scale: int, num_frames: int = 5, cache: bool = True) -> VideoSet:
    """A Vid4-layout folder (see the module docstring), every header checked now."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    hr_root = _first_dir(root, HR_DIRS) or root
    lr_root = _first_dir(root, lr_dirs(scale))
    sequences = []
    for seq_dir in _sequence_dirs(hr_root):
        if seq_dir.parent == root and seq_dir.name in ("LR_bicubic", f"BIx{scale}"):
            continue
        hr_frames = list_images(seq_dir)  # empty folder: one DataError naming it
        _check_sequence(seq_dir, hr_frames, num_frames)
        lr_frames: list = [None] * len(hr_frames)
        if lr_root is not None:
            lr_seq = lr_root / seq_dir.name
            if not lr_seq.is_dir():
                raise DataError(f"{lr_seq}: no such folder (the LR frames of sequence {seq_dir.name})")
            lr_frames = _pair_lr(hr_frames, lr_seq, scale)
        frames = ImageSet(
            [(h.stem, h, lr) for h, lr in zip(hr_frames, lr_frames)], scale, str(seq_dir), cache
        )
        frames.validate()  # readable, >= scale, LR sizes match
        sequences.append((seq_dir.name, frames))
    return VideoSet(sequences, scale, str(root))


# ----------------------------------------------------------------------------- synthetic motion
def smooth_trajectory(n: int, rng: np.random.Generator, max_speed: float = 1.0) -> np.ndarray:
    """(n, 2) content displacements (dy, dx) in px, starting at 0: constant velocity up to
    ``max_speed`` px/frame per axis plus a small acceleration, so the motion is smooth and
    its values are sub-pixel (random floats)."""
    v = rng.uniform(-max_speed, max_speed, 2)
    a = rng.uniform(-0.1, 0.1, 2) * max_speed
    t = np.arange(n, dtype=np.float64)[:, None]
    return v * t + 0.5 * a * t * t


def fourier_shift(img: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """Move the content of an (H, W, C) image by (dy, dx) px: out(y, x) = img(y - dy, x - dx).

    The image is mirrored to (2H, 2W) first, which makes it periodic without a jump at
    the wrap-around, so the band-limited shift rings far less at the borders."""
    h, w = img.shape[:2]
    x = img.astype(np.float64)
    x = np.concatenate([x, x[::-1]], axis=0)
    x = np.concatenate([x, x[:, ::-1]], axis=1)
    fy = np.fft.fftfreq(2 * h)[:, None, None]
    fx = np.fft.fftfreq(2 * w)[None, :, None]
    phase = np.exp(-2j * np.pi * (fy * dy + fx * dx))
    out = np.fft.ifft2(np.fft.fft2(x, axes=(0, 1)) * phase, axes=(0, 1)).real
    return out[:h, :w]


def synthesize_sequence(
    still: np.ndarray,
    n_frames: int,
    size: int,
    rng: np.random.Generator,
    max_speed: float = 1.0,
    source: str = "still",
) -> tuple[np.ndarray, np.ndarray]:
    """HR frames (n, size, size, 3) uint8 of a camera moving smoothly over ``still``, and the
    content displacement of each frame (n, 2). Each frame is the shifted central region
    of the still, cropped with a margin wider than the motion (so no border content)."""
    traj = smooth_trajectory(n_frames, rng, max_speed)
    margin = int(math.ceil(np.abs(traj).max())) + 16
    side = size + 2 * margin
    h, w = still.shape[:2]
    if h < side or w < side:
        raise DataError(
            f"{source}: image is {w}x{h}, too small for {size}px synthetic frames "
            f"(needs {side}x{side} with the motion margin)"
        )
    y0, x0 = (h - side) // 2, (w - side) // 2
    region = still[y0 : y0 + side, x0 : x0 + side]
    frames = [
        fourier_shift(region, dy, dx)[margin : margin + size, margin : margin + size] for dy, dx in traj
    ]
    return np.clip(np.rint(np.stack(frames)), 0, 255).astype(np.uint8), traj


def embedded_video(
    split: str, scale: int = 4, n_frames: int = 7, size: int = 192, max_speed: float = 1.0, seed: int = 0
) -> VideoSet:
    """One synthetic sequence per embedded still of ``split``; LR frames by make_lr of the
    moved HR frames (the motion happens before the resize, as a real camera's would)."""
    if size % scale:
        raise ValueError(f"synthetic frame size {size} must be a multiple of the scale {scale}")
    stills = embedded(split, scale, cache=False)
    sequences = []
    for j, (name, path, _) in enumerate(stills.items):
        rng = np.random.default_rng([seed, j])
        hr, _ = synthesize_sequence(stills.hr_image(j), n_frames, size, rng, max_speed, str(path))
        lr = np.stack([make_lr(f, scale) for f in hr])
        sequences.append((name, ArrayFrames(hr, lr, scale, f"embedded:{split}/{name}")))
    return VideoSet(sequences, scale, f"embedded-video:{split}")


def open_video(
    spec: str | os.PathLike,
    scale: int,
    split: str = "train",
    num_frames: int = 5,
    cache: bool = True,
    opts: VideoDataConfig | None = None,
) -> VideoSet:
    """``"embedded"`` -> :func:`embedded_video`; anything else a Vid4-layout folder.
    With ``opts``, its ``num_frames`` wins over the argument."""
    opts = opts or VideoDataConfig(num_frames=num_frames)
    num_frames = opts.num_frames
    if str(spec) == "embedded":
        if opts.synth_frames < num_frames:
            raise DataError(
                f"embedded-video:{split}: {opts.synth_frames} frames, fewer than the "
                f"{num_frames}-frame window"
            )
        return embedded_video(split, scale, opts.synth_frames, opts.synth_size, opts.max_speed)
    return folder_video(spec, scale, num_frames, cache)


# ----------------------------------------------------------------------------- torch datasets
def clip_tensor(lr: np.ndarray) -> torch.Tensor:
    """uint8 (T, h, w, 3) -> float (T, 3, h, w) in [0, 1]."""
    return torch.stack([to_tensor(f) for f in lr])


class VideoClips(Dataset):
    """Every frame of every sequence as a whole-frame clip, for validation/evaluation:
    dict(name "<seq>/<frame>", seq, lr (T, 3, h, w), hr (3, H, W)), floats in [0, 1]."""

    def __init__(self, videos: VideoSet, num_frames: int = 5):
        self.videos, self.num_frames = videos, num_frames
        self.index = [(i, t) for i, n in enumerate(videos.lengths()) for t in range(n)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> dict:
        i, t = self.index[k]
        lr, hr = self.videos.clip(i, t, self.num_frames)
        seq = self.videos.names[i]
        return {
            "name": f"{seq}/{self.videos.frame_name(i, t)}",
            "seq": seq,
            "lr": clip_tensor(lr),
            "hr": to_tensor(hr),
        }


class TrainClips(Dataset):
    """Deterministic stream of aligned, augmented clip patches (the video TrainPatches).

    Item ``k`` depends only on (seed, k). The centre frame is drawn uniformly over all
    frames of all sequences; one crop and one (hflip, vflip, rot90) draw apply to every
    frame of the clip and to the HR target. Items: lr (T, 3, p/s, p/s), hr (3, p, p) and,
    with ``edge``, the Canny map of the augmented centre HR patch (1|3, p, p), made here
    in the data workers.
    """

    def __init__(
        self,
        videos: VideoSet,
        patch: int,
        length: int,
        seed: int = 0,
        num_frames: int = 5,
        hflip: bool = True,
        vflip: bool = True,
        rot90: bool = True,
        edge: CannySpec | None = None,
    ):
        s = videos.scale
        if patch <= 0 or patch % s:
            raise ValueError(f"HR patch {patch} must be a positive multiple of the scale {s}")
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if edge is not None and not isinstance(edge, CannySpec):
            raise TypeError(f"edge must be a CannySpec or None, got {type(edge).__name__}")
        window_indices(0, 1, num_frames)  # odd check
        self.videos, self.patch, self.length, self.seed = videos, int(patch), int(length), int(seed)
        self.num_frames, self.aug, self.edge = num_frames, (hflip, vflip, rot90), edge
        self.index = [(i, t) for i, n in enumerate(videos.lengths()) for t in range(n)]

    def __len__(self) -> int:
        return self.length

    def crop_params(self, k: int) -> tuple[int, int, int, int, tuple[bool, bool, bool]]:
        """(sequence, centre frame, LR y, LR x, (hflip, vflip, rot90)) of item ``k``."""
        rng = np.random.default_rng([self.seed, int(k)])
        i, t = self.index[int(rng.integers(len(self.index)))]
        hr, lr = self.videos.frame(i, t)
        lp = self.patch // self.videos.scale
        h, w = lr.shape[:2]
        if h < lp or w < lp:
            raise DataError(
                f"{self.videos.sequences[i][1].source}: frames are {hr.shape[1]}x{hr.shape[0]}, "
                f"smaller than the {self.patch}x{self.patch} HR patch"
            )
        y, x = int(rng.integers(h - lp + 1)), int(rng.integers(w - lp + 1))
        flips = rng.random(3) < 0.5  # drawn even when disabled: switches don't move crops
        return i, t, y, x, tuple(bool(f and e) for f, e in zip(flips, self.aug))

    def __getitem__(self, k: int) -> dict:
        i, t, y, x, aug = self.crop_params(k)
        s, lp = self.videos.scale, self.patch // self.videos.scale
        lr, hr = self.videos.clip(i, t, self.num_frames)
        lr_p = np.stack([TrainPatches.augment(f[y : y + lp, x : x + lp], *aug) for f in lr])
        hr_p = TrainPatches.augment(hr[y * s : (y + lp) * s, x * s : (x + lp) * s], *aug)
        item = {"lr": clip_tensor(lr_p), "hr": to_tensor(hr_p)}
        if self.edge is not None:
            item["edge"] = torch.from_numpy(self.edge(hr_p)).permute(2, 0, 1).contiguous()
        return item
