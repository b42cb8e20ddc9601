"""Video SR scores: the image metrics on the centre frame of every clip, per sequence.

Each clip's SR centre frame is scored by :func:`trainables.evaluate.evaluate` (8-bit
rounding, PSNR/SSIM on Y with ``scale`` px shaved, LPIPS on RGB), so video and image
numbers are computed the same way. Per-sequence rows average that sequence's frames; the
overall row averages the sequences (each sequence counts once, as Vid4 tables do).
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import torch

from trainables.evaluate import ImageScore, bicubic, evaluate, format_table, mean_score
from trainables.metrics import LPIPSMetric
from trainables.video_data import VideoClips, VideoSet, folder_video

ClipUpscaler = Callable[[torch.Tensor], torch.Tensor]  # (1, T, 3, h, w) -> (1, 3, H, W)


def bicubic_centre(scale: int) -> ClipUpscaler:
    """The bicubic baseline of a clip: MATLAB bicubic of its centre LR frame."""
    up = bicubic(scale)

    def centre(lr: torch.Tensor) -> torch.Tensor:
        return up(lr[:, lr.shape[1] // 2])

    return centre


def evaluate_video(
    upscale: ClipUpscaler,
    videos: VideoSet,
    num_frames: int = 5,
    lpips: Optional[LPIPSMetric] = None,
    device: str | torch.device = "cpu",
) -> list[ImageScore]:
    """One ImageScore per frame, named ``<seq>/<frame>``, in sequence order."""
    return evaluate(upscale, VideoClips(videos, num_frames), videos.scale, lpips, device)


def sequence_rows(frame_rows: list[ImageScore]) -> list[ImageScore]:
    """Per-sequence means of per-frame scores named ``<seq>/<frame>``, in first-seen order."""
    groups: dict[str, list[ImageScore]] = {}
    for row in frame_rows:
        seq, sep, _ = row.name.rpartition("/")
        if not sep:
            raise ValueError(f"{row.name}: frame score names must be '<sequence>/<frame>'")
        groups.setdefault(seq, []).append(row)
    return [
        ImageScore(seq, *(getattr(mean_score(rows), k) for k in ("psnr", "ssim", "lpips")))
        for seq, rows in groups.items()
    ]


def overall(seq_rows: list[ImageScore]) -> ImageScore:
    """Mean over sequences (not frames)."""
    return mean_score(seq_rows)


def table_dict(seq_rows: list[ImageScore]) -> dict[str, list]:
    """Column dict of the per-sequence table plus its mean row (for MLflow's log_table)."""
    rows = [*seq_rows, overall(seq_rows)]
    out = {
        "sequence": [r.name for r in rows],
        "psnr_y": [r.psnr for r in rows],
        "ssim_y": [r.ssim for r in rows],
    }
    if rows[0].lpips is not None:
        out["lpips"] = [r.lpips for r in rows]
    return out


def sequence_table(per_frame: dict[str, dict]) -> dict[str, list]:
    """``{"<seq>/<frame>": {"psnr", "ssim", "lpips"}}`` (the logged per-image form) -> the
    per-sequence table with its mean row, as :func:`table_dict`."""
    rows = [ImageScore(name, s["psnr"], s["ssim"], s.get("lpips")) for name, s in per_frame.items()]
    return table_dict(sequence_rows(rows))


def format_video_table(seq_rows: list[ImageScore], title: str) -> str:
    """The per-sequence table (last row: mean over sequences), as ``srsweep eval`` prints it."""
    # format_table heads the name column "image" (5 wide); "seq" keeps the column width.
    return format_table(seq_rows, title).replace("image", "seq  ", 1)


def eval_bicubic_folder(
    root: str | os.PathLike, scale: int = 4, num_frames: int = 5, lpips: Optional[LPIPSMetric] = None
) -> tuple[list[ImageScore], list[ImageScore]]:
    """Bicubic baseline on a Vid4-layout folder -> (per-frame rows, per-sequence rows)."""
    videos = folder_video(root, scale, num_frames, cache=False)
    frames = evaluate_video(bicubic_centre(scale), videos, num_frames, lpips)
    return frames, sequence_rows(frames)
