"""Tests for trainables.video_data: windows, Vid4 folders, clip patches, synthetic motion,
bad inputs, and the SA Charbonnier loss (SA eq. 23) on a clip."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage.registration import phase_cross_correlation

from trainables.data import EMBEDDED_VAL, DataError, TrainPatches, embedded_folder, load_image, make_lr
from trainables.edges import CannySpec, local_variance
from trainables.losses import sa_pixel
from trainables.video_data import (
    TrainClips,
    VideoClips,
    embedded_video,
    folder_video,
    fourier_shift,
    open_video,
    smooth_trajectory,
    synthesize_sequence,
    window_indices,
)


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))
    return path


def write_seq(folder: Path, frames) -> None:
    for t, f in enumerate(frames):
        write_rgb(folder / f"{t:04d}.png", f)


def flat_frames(n: int, size: int = 16) -> list[np.ndarray]:
    """Frame t is the constant 10 * (t + 1): its LR (MATLAB resize of a constant) is too."""
    return [np.full((size, size, 3), 10 * (t + 1), np.uint8) for t in range(n)]


def assert_one_line(exc_info, must_contain) -> None:
    msg = str(exc_info.value)
    assert "\n" not in msg and str(must_contain) in msg, msg


# ----------------------------------------------------------------------------- windows
def test_window_indices_replicate_borders_and_centre():
    assert window_indices(0, 6) == [0, 0, 0, 1, 2]
    assert window_indices(1, 6) == [0, 0, 1, 2, 3]
    assert window_indices(3, 6) == [1, 2, 3, 4, 5]
    assert window_indices(5, 6) == [3, 4, 5, 5, 5]
    assert window_indices(0, 1, 3) == [0, 0, 0]
    assert window_indices(4, 9, 7) == [1, 2, 3, 4, 5, 6, 7]
    with pytest.raises(ValueError):
        window_indices(0, 6, 4)


@pytest.mark.parametrize("with_lr", [False, True])
def test_clips_of_distinct_frames(tmp_path, with_lr):
    write_seq(tmp_path / "HR" / "seqA", flat_frames(6))
    write_seq(tmp_path / "HR" / "seqB", flat_frames(5))
    if with_lr:  # shipped LR frames: value 10(t+1) + 1, to tell them from made ones
        for seq, n in (("seqA", 6), ("seqB", 5)):
            write_seq(tmp_path / "LR_bicubic" / "X4" / seq, [f[:4, :4] + 1 for f in flat_frames(n)])
    videos = folder_video(tmp_path, 4)
    assert videos.names == ["seqA", "seqB"] and videos.lengths() == [6, 5]
    clips = VideoClips(videos)
    assert len(clips) == 11
    off = 1 if with_lr else 0
    expect = {0: [0, 0, 0, 1, 2], 2: [0, 1, 2, 3, 4], 5: [3, 4, 5, 5, 5], 10: [2, 3, 4, 4, 4]}
    for k, window in expect.items():
        item = clips[k]
        assert item["lr"].shape == (5, 3, 4, 4) and item["hr"].shape == (3, 16, 16)
        lr_vals = (item["lr"] * 255).round().amax(dim=(1, 2, 3)).tolist()
        assert lr_vals == [10 * (j + 1) + off for j in window] and torch.equal(
            (item["lr"] * 255).round().amin(dim=(1, 2, 3)), (item["lr"] * 255).round().amax(dim=(1, 2, 3))
        )
        centre = window[2]
        assert torch.all((item["hr"] * 255).round() == 10 * (centre + 1))
    assert clips[10]["name"] == "seqB/0004" and clips[10]["seq"] == "seqB"


def test_train_clips_window_follows_the_centre(tmp_path):
    write_seq(tmp_path / "s", flat_frames(6, 32))  # HR-only layout: ROOT/<seq>/
    ds = TrainClips(folder_video(tmp_path, 4), patch=16, length=20, seed=3)
    for k in range(20):
        _, t, _, _, _ = ds.crop_params(k)
        item = ds[k]
        vals = (item["lr"] * 255).round().amax(dim=(1, 2, 3)).tolist()
        assert vals == [10 * (j + 1) for j in window_indices(t, 6)]
        assert torch.all((item["hr"] * 255).round() == 10 * (t + 1))


def random_frames(n: int, size: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_train_clips_crops_and_augments_every_frame_alike(tmp_path):
    frames = random_frames(5, 40, 0)
    write_seq(tmp_path / "HR" / "s", frames)
    spec = CannySpec(50, 100)
    ds = TrainClips(folder_video(tmp_path, 4), patch=16, length=30, seed=7, edge=spec)
    augs = set()
    for k in range(30):
        i, t, y, x, aug = ds.crop_params(k)
        augs.add(aug)
        item = ds[k]
        for j, src in enumerate(window_indices(t, 5)):
            want = TrainPatches.augment(make_lr(frames[src], 4)[y : y + 4, x : x + 4], *aug)
            got = (item["lr"][j] * 255).round().byte()
            assert torch.equal(got, torch.from_numpy(want.copy()).permute(2, 0, 1))
        hr_p = TrainPatches.augment(frames[t][4 * y : 4 * y + 16, 4 * x : 4 * x + 16], *aug)
        assert torch.equal((item["hr"] * 255).round().byte(), torch.from_numpy(hr_p.copy()).permute(2, 0, 1))
        assert torch.equal(item["edge"], torch.from_numpy(spec(hr_p)).permute(2, 0, 1))
    assert len(augs) > 4  # the flips really vary
    again = TrainClips(folder_video(tmp_path, 4), patch=16, length=30, seed=7, edge=spec)
    assert all(torch.equal(ds[k]["lr"], again[k]["lr"]) for k in (0, 13, 29))
    other = TrainClips(folder_video(tmp_path, 4), patch=16, length=30, seed=8)
    assert not all(torch.equal(ds[k]["lr"], other[k]["lr"]) for k in range(5))


def test_static_scene_gives_identical_frames_in_a_clip(tmp_path):
    frame = random_frames(1, 32, 1)[0]
    write_seq(tmp_path / "s", [frame] * 5)
    ds = TrainClips(folder_video(tmp_path, 4), patch=16, length=10, seed=0)
    for k in range(10):
        lr = ds[k]["lr"]
        assert all(torch.equal(lr[0], lr[j]) for j in range(5))


def test_batches_have_the_documented_keys_and_shapes(tmp_path):
    write_seq(tmp_path / "s", random_frames(5, 32, 2))
    ds = TrainClips(folder_video(tmp_path, 4), patch=16, length=8, edge=CannySpec())
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["lr"].shape == (4, 5, 3, 4, 4) and batch["hr"].shape == (4, 3, 16, 16)
    assert batch["edge"].shape == (4, 1, 16, 16)


# ----------------------------------------------------------------------------- synthetic motion
def gray(f: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.clip(np.rint(f), 0, 255).astype(np.uint8), cv2.COLOR_RGB2GRAY).astype(np.float64)


def content_shift(ref: np.ndarray, moved: np.ndarray) -> np.ndarray:
    """(dy, dx) the content moved by, from phase correlation (1/100 px grid)."""
    shift, _, _ = phase_cross_correlation(gray(ref), gray(moved), upsample_factor=100)
    return -shift  # skimage returns the shift that registers moved onto ref


@pytest.fixture(scope="module")
def astronaut():
    return load_image(embedded_folder() / "astronaut.png")


@pytest.mark.parametrize("dy,dx", [(0.3, -1.7), (2.25, 0.6), (-0.45, 0.15)])
def test_fourier_shift_recovered_by_phase_correlation(astronaut, dy, dx):
    region = astronaut[100:292, 150:342]
    moved = fourier_shift(region, dy, dx)
    assert np.abs(content_shift(region[24:-24, 24:-24], moved[24:-24, 24:-24]) - (dy, dx)).max() < 0.1


def test_fourier_shift_by_whole_pixels_is_a_translation(astronaut):
    region = astronaut[:64, :64].astype(np.float64)
    moved = fourier_shift(region, 2, -3)
    np.testing.assert_allclose(moved[2:, :-3], region[:-2, 3:], atol=1e-6)


def test_trajectory_is_smooth_and_sub_pixel():
    traj = smooth_trajectory(7, np.random.default_rng(0), max_speed=1.0)
    assert traj.shape == (7, 2) and np.all(traj[0] == 0)
    acc = np.diff(traj, n=2, axis=0)
    np.testing.assert_allclose(acc, np.broadcast_to(acc[0], acc.shape), atol=1e-12)  # constant acceleration
    assert np.all(np.abs(np.diff(traj, axis=0)) <= 1.0 + 6 * 0.1)  # speed stays near max_speed
    assert np.any(np.abs(traj[1:] - np.round(traj[1:])) > 0.05)  # not whole pixels


def test_synthetic_sequence_motion_recovered_to_a_tenth_of_a_pixel(astronaut):
    hr, traj = synthesize_sequence(astronaut, 7, 128, np.random.default_rng(5), max_speed=1.5)
    assert hr.shape == (7, 128, 128, 3) and hr.dtype == np.uint8
    assert np.abs(traj).max() > 2  # a real motion, several pixels by the end
    for t in range(1, 7):
        assert np.abs(content_shift(hr[0], hr[t]) - traj[t]).max() < 0.1, t


def test_embedded_video_lr_is_make_lr_of_the_moved_hr():
    videos = embedded_video("val", 4, n_frames=5, size=64)
    assert videos.names == list(EMBEDDED_VAL) and videos.lengths() == [5] * len(EMBEDDED_VAL)
    for i in range(2):
        for t in range(5):
            hr, lr = videos.frame(i, t)
            assert hr.shape == (64, 64, 3) and np.array_equal(lr, make_lr(hr, 4))
    hr0, hr1 = videos.frame(0, 0)[0], videos.frame(0, 1)[0]
    assert not np.array_equal(hr0, hr1)
    again = embedded_video("val", 4, n_frames=5, size=64)  # fixed seed: same sequences
    assert np.array_equal(again.frame(1, 4)[0], videos.frame(1, 4)[0])


# ----------------------------------------------------------------------------- bad inputs
def test_short_sequence_fails_in_one_line(tmp_path):
    write_seq(tmp_path / "HR" / "short", flat_frames(3))
    with pytest.raises(DataError) as e:
        folder_video(tmp_path, 4, num_frames=5)
    assert_one_line(e, tmp_path / "HR" / "short")
    assert "3 frames, fewer than the 5-frame window" in str(e.value)


def test_frames_of_different_sizes_fail_in_one_line(tmp_path):
    frames = flat_frames(5)
    frames[3] = np.zeros((20, 16, 3), np.uint8)
    write_seq(tmp_path / "HR" / "mixed", frames)
    with pytest.raises(DataError) as e:
        folder_video(tmp_path, 4)
    assert_one_line(e, tmp_path / "HR" / "mixed")
    assert "0003.png is 16x20" in str(e.value)


def test_empty_sequence_folder_fails_in_one_line(tmp_path):
    write_seq(tmp_path / "HR" / "ok", flat_frames(5))
    (tmp_path / "HR" / "empty").mkdir()
    with pytest.raises(DataError) as e:
        open_video(tmp_path, 4)
    assert_one_line(e, tmp_path / "HR" / "empty")


def test_missing_folders_fail_in_one_line(tmp_path):
    with pytest.raises(DataError) as e:
        open_video(tmp_path / "nope", 4)
    assert_one_line(e, tmp_path / "nope")
    write_seq(tmp_path / "HR" / "a", flat_frames(5))
    write_seq(tmp_path / "HR" / "b", flat_frames(5))
    write_seq(tmp_path / "LR_bicubic" / "X4" / "a", [f[:4, :4] for f in flat_frames(5)])
    with pytest.raises(DataError) as e:  # an LR folder exists but lacks sequence b
        folder_video(tmp_path, 4)
    assert_one_line(e, tmp_path / "LR_bicubic" / "X4" / "b")


def test_lr_frames_of_the_wrong_size_or_name_fail_in_one_line(tmp_path):
    write_seq(tmp_path / "HR" / "a", flat_frames(5))
    write_seq(tmp_path / "LR_bicubic" / "X4" / "a", [f[:5, :4] for f in flat_frames(5)])
    with pytest.raises(DataError) as e:
        folder_video(tmp_path, 4)
    assert_one_line(e, tmp_path / "LR_bicubic" / "X4" / "a")
    (tmp_path / "LR_bicubic" / "X4" / "a" / "0002.png").rename(tmp_path / "LR_bicubic" / "X4" / "a" / "x.png")
    with pytest.raises(DataError) as e:
        folder_video(tmp_path, 4)
    assert_one_line(e, "0002.png")


def test_patch_larger_than_frames_fails_in_one_line(tmp_path):
    write_seq(tmp_path / "s", flat_frames(5, 16))
    with pytest.raises(DataError) as e:
        TrainClips(folder_video(tmp_path, 4), patch=32, length=2)[0]
    assert_one_line(e, tmp_path / "s")


# ----------------------------------------------------------------------------- SA loss on a clip
def lv_reference(rgb: np.ndarray, window: int = 5, delta: float = 0.01) -> np.ndarray:
    """SA eq. 1-3 by loops: biased variance of the BT.601 gray over a reflect-padded window."""
    g = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    p = window // 2
    pad = np.pad(g, p, mode="reflect")
    out = np.zeros_like(g)
    for i in range(g.shape[0]):
        for j in range(g.shape[1]):
            mu = pad[i : i + window, j : j + window].var()
            out[i, j] = mu / (mu + delta)
    return out


def test_sa_charbonnier_lv_on_a_clip_uses_the_centre_hr_frame(tmp_path):
    frames = random_frames(5, 32, 4)
    frames[2][:, :16] = 40  # the centre frame: flat left half, noisy right half
    write_seq(tmp_path / "s", frames)
    item = VideoClips(folder_video(tmp_path, 4))[2]  # frame 2: centre of its window
    hr = item["hr"][None].double()
    assert torch.equal((hr[0] * 255).round().byte(), torch.from_numpy(frames[2]).permute(2, 0, 1))
    d = torch.from_numpy(np.random.default_rng(0).uniform(-0.2, 0.2, hr.shape))
    sr = hr + d
    loss, sa, _ = sa_pixel(sr, hr, 0.001, 5.0, local_variance(hr), "charbonnier")
    w = lv_reference(frames[2].astype(np.float64) / 255)
    c = np.sqrt(d[0].numpy() ** 2 + 1e-6)  # (3, H, W), eps = 1e-3
    want_sa = 5.0 * (w[None] * c).mean()
    want = 0.001 * c.mean() + want_sa
    # float32 HR from the loader vs float64 here: agreement to ~1e-8 relative
    assert w[:, :12].max() < 1e-9 and w[:, 18:].min() > 0.5  # W: 0 on the flat half, high on the rest
    assert float(loss) == pytest.approx(want, rel=1e-7) and float(sa) == pytest.approx(want_sa, rel=1e-7)


def test_sa_charbonnier_canny_on_a_clip_by_hand(tmp_path):
    frames = [np.zeros((32, 32, 3), np.uint8) for _ in range(5)]
    frames[2][:, 16:] = 200  # one vertical edge in the centre frame only
    write_seq(tmp_path / "s", frames)
    ds = TrainClips(
        folder_video(tmp_path, 4),
        patch=32,
        length=40,
        seed=0,
        hflip=False,
        vflip=False,
        rot90=False,
        edge=CannySpec(),
    )
    k = next(k for k in range(40) if ds.crop_params(k)[1] == 2)
    item = ds[k]
    edge = item["edge"][None]
    n_edge = int(edge.sum())
    assert n_edge == 32 and edge[0, 0, :, 15].sum() == n_edge  # non-maximum suppression: one column
    hr = item["hr"][None]
    sr = hr + 0.05
    loss, sa, _ = sa_pixel(sr, hr, 0.001, 1.5, edge, "charbonnier")
    c = np.sqrt(0.05**2 + 1e-6)
    assert float(sa) == pytest.approx(c * 1.5 * n_edge / (32 * 32), rel=1e-5)
    assert float(loss) == pytest.approx(c * (0.001 + 1.5 * 32 / 1024), rel=1e-5)
