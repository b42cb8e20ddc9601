"""What the trainer and ``srsweep eval`` do differently when samples are clips.

With ``data.kind: video`` a training sample is a :class:`~trainables.video_data.TrainClips`
item (an LR clip ``(T, 3, p/s, p/s)``, the centre HR patch and, for Canny, its edge map
made in the data workers), so the loss terms see only the centre HR frame; G alone reads
the clip. Validation scores the centre frame of every clip (rows named ``<seq>/<frame>``)
and the headline numbers average frames per sequence, then sequences (as Vid4 tables do).
Image configs never reach this module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

import torch

from trainables.config import ExperimentConfig, VideoDataConfig
from trainables.data import IMAGE_EXTENSIONS, DataError
from trainables.edges import CannySpec
from trainables.evaluate import ImageScore, mean_score
from trainables.video_data import HR_DIRS, TrainClips, VideoClips, VideoSet, lr_dirs, open_video
from trainables.video_metrics import evaluate_video, format_video_table, overall, sequence_rows

EMBEDDED_VIDEO = "embedded-video"  # `srsweep eval` name of the synthetic sequences


def is_video(cfg: ExperimentConfig) -> bool:
    return cfg.data.kind == "video"


def open_videos(spec: str, cfg: ExperimentConfig, split: str) -> VideoSet:
    return open_video(spec, cfg.scale, split, cache=cfg.data.cache, opts=cfg.data)


def train_clips(cfg: ExperimentConfig, length: int) -> TrainClips:
    """The training stream: aligned, augmented clip patches (Canny of the centre HR patch)."""
    d, sa = cfg.data, cfg.loss.pixel.sa
    videos = open_videos(d.train, cfg, "train")
    for _, frames in videos.sequences:  # a sequence's frames share one size (checked on open)
        h, w = frames.pair(0)[0].shape[:2]
        if min(h, w) < d.patch_size:
            raise DataError(
                f"{frames.source}: frames are {w}x{h}, smaller than the "
                f"{d.patch_size}x{d.patch_size} HR patch (data.patch_size)"
            )
    canny = (
        CannySpec(sa.canny.low, sa.canny.high, sa.channels) if sa is not None and sa.edge == "canny" else None
    )
    return TrainClips(
        videos,
        d.patch_size,
        length,
        seed=cfg.seed,
        num_frames=d.num_frames,
        hflip=d.augment.hflip,
        vflip=d.augment.vflip,
        rot90=d.augment.rot90,
        edge=canny,
    )


def crop_clip(item: dict, size: int, scale: int) -> dict:
    """Centre HR crop of ``size`` (rounded down to the scale) and the same LR crop of every frame."""
    if not size:
        return item
    lr, hr = item["lr"], item["hr"]
    s = size // scale
    y, x = max(0, (lr.shape[-2] - s) // 2), max(0, (lr.shape[-1] - s) // 2)
    return {
        **item,
        "lr": lr[..., y : y + s, x : x + s],
        "hr": hr[:, y * scale : (y + s) * scale, x * scale : (x + s) * scale],
    }


def val_clips(cfg: ExperimentConfig) -> list[dict]:
    """Every frame of the first ``val_images`` sequences (0: all) as a whole-frame clip,
    centre-cropped to ``val_crop``; decoded once (validation reuses them)."""
    t = cfg.train
    videos = open_videos(cfg.data.val, cfg, "val")
    if t.val_images:
        videos = VideoSet(videos.sequences[: t.val_images], videos.scale, videos.source)
    clips = VideoClips(videos, cfg.data.num_frames)
    return [crop_clip(clips[k], t.val_crop, cfg.scale) for k in range(len(clips))]


def centre(lr: torch.Tensor) -> torch.Tensor:
    """The centre LR frame of a clip ``(T, 3, h, w)`` (an image ``(3, h, w)`` is returned as is)."""
    return lr[lr.shape[0] // 2] if lr.dim() == 4 else lr


def summary(rows: list[ImageScore], cfg: ExperimentConfig) -> ImageScore:
    """Headline validation scores: mean over images, or for clips mean over sequence means."""
    return overall(sequence_rows(rows)) if is_video(cfg) else mean_score(rows)


def clip_bicubic(upscale: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """An image upscaler (bicubic, an image G) applied to the centre frame of a clip batch."""
    return lambda lr: upscale(lr[:, lr.shape[1] // 2] if lr.dim() == 5 else lr)


# ------------------------------------------------------------------------------ srsweep eval
def looks_like_video(spec: str | os.PathLike, scale: int) -> bool:
    """``embedded-video``, or a folder in the Vid4 layout: its HR folder (HR/, GT/ or the
    folder itself) holds sequence folders and no images."""
    if str(spec) == EMBEDDED_VIDEO:
        return True
    root = Path(spec)
    if not root.is_dir():
        return False
    hr = next((root / n for n in HR_DIRS if (root / n).is_dir()), root)
    lr_tops = {n.split("/")[0] for n in lr_dirs(scale)}
    entries = [p for p in hr.iterdir() if not p.name.startswith(".")]
    images = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    seqs = [p for p in entries if p.is_dir() and not (hr == root and p.name in lr_tops)]
    return bool(seqs) and not images


def eval_videos(spec: str, scale: int, num_frames: int = 5) -> VideoSet:
    """The sequences of ``srsweep eval``: ``embedded-video`` (always the default synthesis, so
    bicubic and every checkpoint are scored on the same frames) or a Vid4-layout folder."""
    opts = VideoDataConfig(num_frames=num_frames)
    return open_video("embedded" if spec == EMBEDDED_VIDEO else spec, scale, "val", cache=False, opts=opts)


def eval_video(
    spec: str,
    scale: int,
    upscale: Callable[[torch.Tensor], torch.Tensor],
    what: str,
    cfg: Optional[ExperimentConfig] = None,
    lpips=None,
    device: str | torch.device = "cpu",
) -> str:
    """``srsweep eval`` on clips: ``upscale`` (an image upscaler or a video G, per ``cfg``) on
    every frame's clip; returns the per-sequence table (last row: mean over sequences)."""
    video_g = cfg is not None and is_video(cfg)
    num_frames = cfg.data.num_frames if video_g else VideoDataConfig().num_frames
    videos = eval_videos(EMBEDDED_VIDEO if spec == "embedded" else spec, scale, num_frames)
    frames = evaluate_video(upscale if video_g else clip_bicubic(upscale), videos, num_frames, lpips, device)
    title = (
        f"{spec} x{scale}, {what}; centre frame of {num_frames}-frame clips, Y channel, {scale}px border "
        f"shaved; mean over sequences"
    )
    return format_video_table(sequence_rows(frames), title)
