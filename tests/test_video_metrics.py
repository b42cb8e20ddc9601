"""Tests for trainables.video_metrics: centre-frame scores, per-sequence and overall means."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from trainables.data import DataError, load_image, make_lr, to_tensor
from trainables.evaluate import ImageScore, bicubic
from trainables.metrics import LPIPSMetric, psnr, quantize, ssim
from trainables.video_data import folder_video
from trainables.video_metrics import (
    bicubic_centre,
    eval_bicubic_folder,
    evaluate_video,
    format_video_table,
    overall,
    sequence_rows,
    table_dict,
)


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))


@pytest.fixture(scope="module")
def vid_folder(shared_data, tmp_path_factory):
    """Vid4 layout, HR + LR_bicubic/X4: 'pan' (5 frames) and 'tilt' (6 frames), 48x48 HR
    windows of a real DIV2K crop moving 3 px per frame."""
    root = tmp_path_factory.mktemp("vid")
    src = load_image(sorted((shared_data / "DIV2K256" / "HR").glob("*.png"))[0])
    for seq, n, (vy, vx) in (("pan", 5, (0, 3)), ("tilt", 6, (3, 0))):
        for t in range(n):
            hr = src[10 + vy * t : 58 + vy * t, 10 + vx * t : 58 + vx * t]
            write_rgb(root / "HR" / seq / f"{t:03d}.png", hr)
            write_rgb(root / "LR_bicubic" / "X4" / seq / f"{t:03d}.png", make_lr(hr, 4))
    return root


def test_sequence_rows_average_frames_then_sequences():
    rows = [
        ImageScore("a/0", 30.0, 0.8, 0.2),
        ImageScore("a/1", 32.0, 0.9, 0.1),
        ImageScore("b/0", 20.0, 0.5, 0.4),
    ]
    seqs = sequence_rows(rows)
    assert [(r.name, r.psnr, r.ssim) for r in seqs] == [("a", 31.0, pytest.approx(0.85)), ("b", 20.0, 0.5)]
    assert seqs[0].lpips == pytest.approx(0.15) and seqs[1].lpips == 0.4
    mean = overall(seqs)
    assert (mean.psnr, mean.ssim, mean.lpips) == (25.5, pytest.approx(0.675), pytest.approx(0.275))
    # not the frame mean (27.33 dB): each sequence counts once
    assert table_dict(seqs) == {
        "sequence": ["a", "b", "mean"],
        "psnr_y": [31.0, 20.0, 25.5],
        "ssim_y": [pytest.approx(0.85), 0.5, pytest.approx(0.675)],
        "lpips": [pytest.approx(0.15), 0.4, pytest.approx(0.275)],
    }
    with pytest.raises(ValueError, match="'<sequence>/<frame>'"):
        sequence_rows([ImageScore("nosep", 1.0, 1.0)])


def test_bicubic_centre_upscales_the_centre_frame():
    lr = torch.rand(1, 5, 3, 6, 6)
    torch.testing.assert_close(bicubic_centre(4)(lr), bicubic(4)(lr[:, 2]), rtol=0, atol=0)


def test_bicubic_folder_scores_each_centre_frame(vid_folder):
    frames, seqs = eval_bicubic_folder(vid_folder, 4)
    names = [f"pan/{t:03d}" for t in range(5)] + [f"tilt/{t:03d}" for t in range(6)]
    assert [r.name for r in frames] == names
    for r in frames:  # each row: the paper metrics of bicubic(LR frame t) against HR frame t
        seq, name = r.name.split("/")
        hr = to_tensor(load_image(vid_folder / "HR" / seq / f"{name}.png"))[None]
        lr = to_tensor(load_image(vid_folder / "LR_bicubic" / "X4" / seq / f"{name}.png"))[None]
        sr = quantize(bicubic(4)(lr))
        assert r.psnr == pytest.approx(float(psnr(sr, hr, 4)[0]), abs=1e-12)
        assert r.ssim == pytest.approx(float(ssim(sr, hr, 4)[0]), abs=1e-12)
    assert [s.name for s in seqs] == ["pan", "tilt"]
    pan, tilt = np.mean([r.psnr for r in frames[:5]]), np.mean([r.psnr for r in frames[5:]])
    assert seqs[0].psnr == pytest.approx(pan) and seqs[1].psnr == pytest.approx(tilt)
    assert overall(seqs).psnr == pytest.approx((pan + tilt) / 2)
    assert 20 < overall(seqs).psnr < 40 and seqs[0].lpips is None
    table = format_video_table(seqs, "bicubic x4")
    assert table.splitlines()[1].startswith("seq  ") and "pan" in table and "mean" in table.splitlines()[-1]


def test_lr_made_on_the_fly_scores_like_shipped_lr(vid_folder, tmp_path):
    import shutil

    shutil.copytree(vid_folder / "HR", tmp_path / "HR")
    made = eval_bicubic_folder(tmp_path, 4)[1]
    shipped = eval_bicubic_folder(vid_folder, 4)[1]
    assert [(r.psnr, r.ssim) for r in made] == [(r.psnr, r.ssim) for r in shipped]


def test_lpips_per_frame_then_per_sequence(vid_folder):
    metric = LPIPSMetric(weights="random", seed=0)
    videos = folder_video(vid_folder, 4)
    frames = evaluate_video(bicubic_centre(4), videos, lpips=metric)
    hr, lr = videos.frame(1, 3)  # tilt, frame 3
    sr = quantize(bicubic(4)(to_tensor(lr)[None]))
    assert frames[5 + 3].lpips == pytest.approx(float(metric(sr, to_tensor(hr)[None])[0]), rel=1e-6)
    seqs = sequence_rows(frames)
    assert seqs[1].lpips == pytest.approx(np.mean([r.lpips for r in frames[5:]]))


def test_bad_video_folder_fails_in_one_line(tmp_path):
    (tmp_path / "HR" / "calendar").mkdir(parents=True)
    with pytest.raises(DataError) as e:
        eval_bicubic_folder(tmp_path, 4)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "HR" / "calendar") in msg
