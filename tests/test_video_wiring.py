"""The video building blocks wired in: config keys and cross-checks, the model registry,
`--tiny` for video presets, clips in the trainer (centre-frame validation, per-sequence
means), the eval folder detection and one model family per sweep."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from trainables.config import ConfigError, validate
from trainables.config_files import load_config, to_dict
from trainables.evaluate import ImageScore, evaluate
from trainables.imresize import imresize
from trainables.models import BicubicSkip, build_discriminator, build_generator
from trainables.train import Trainer
from trainables.video_train import centre, crop_clip, looks_like_video, summary
from trainables.vsr_models import VSRDiscriminator, VSRResFeatGenerator

VIDEO_PRESETS = ["vsrresfeatgan", "sa_vsr_lv", "sa_vsr_canny"]


class ListReporter:
    def __init__(self):
        self.rows, self.vals, self.scores = [], [], []

    def metrics(self, step, values):
        self.rows.append((step, dict(values)))

    def validation(self, step, metrics, images, scores):
        self.vals.append((step, dict(metrics), images))
        self.scores.append(scores)

    def checkpoint(self, step, path):
        pass


def one_line_error(fn) -> str:
    with pytest.raises(ConfigError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("preset", VIDEO_PRESETS)
def test_video_presets_validate_and_tiny_picks_the_video_overlay(preset):
    full = load_config(preset)
    assert (full.data.kind, full.data.num_frames, full.model.generator.arch) == ("video", 5, "vsrresfeat")
    assert (full.model.generator.num_blocks, full.model.discriminator.num_blocks, full.train.steps) == (
        15,
        3,
        20000,
    )
    tiny = load_config(preset, overlays=["tiny_cpu"])  # what `srsweep train PRESET --tiny` asks for
    assert tiny == load_config(preset, overlays=["tiny_cpu_video"])
    assert (tiny.data.synth_size, tiny.model.generator.num_feat, tiny.backbones.weights) == (64, 16, "random")
    # image presets keep the image overlay
    assert load_config("esrgan", overlays=["tiny_cpu"]).model.generator.grow_ch == 8


def test_video_keys_cross_checked_in_one_line():
    assert one_line_error(lambda: load_config("sa_vsr_lv", ["data.num_frames=3"])).endswith(
        # the preset alone is valid, so the line blames the --set that broke it
        "--set data.num_frames=3: data.num_frames: 3 differs from model.generator.num_frames 5"
    )
    assert one_line_error(lambda: load_config("esrgan", ["data.kind=video"])).endswith(
        "--set data.kind=video: data.kind: video does not fit model.generator.arch rrdbnet (clips need a video "
        "generator, images an image one)"
    )
    assert one_line_error(lambda: load_config("esrgan", ["data.synth_size=64"])).endswith(
        "--set data.synth_size=64: data.synth_size: a video key, but data.kind is image (set kind: video)"
    )
    assert one_line_error(lambda: load_config("sa_vsr_lv", ["data.synth_size=66"])).endswith(
        "data.synth_size: 66 is not a multiple of scale 4"
    )
    # A dumped image config (winner.yaml, checkpoints) lists the video defaults: still valid.
    cfg = load_config("esrgan", overlays=["tiny_cpu"])
    assert validate(to_dict(cfg)) == cfg


def test_registry_builds_the_video_models_and_keeps_their_own_skip():
    cfg = load_config("sa_vsr_lv", overlays=["tiny_cpu"])
    g = build_generator(cfg.model.generator, 4)
    assert isinstance(g, VSRResFeatGenerator) and not isinstance(g, BicubicSkip) and g.bicubic_skip
    d = build_discriminator(cfg.model.discriminator, 32)
    assert isinstance(d, VSRDiscriminator) and len(d.blocks) == 3
    # with a zero last conv the output is exactly the bicubic centre frame (skip added once)
    with torch.no_grad():
        g.conv_last.weight.zero_()
        g.conv_last.bias.zero_()
        clip = torch.rand(2, 5, 3, 8, 8)
        torch.testing.assert_close(g(clip), imresize(clip[:, 2], 4))


# ------------------------------------------------------------------------ validation
def test_summary_averages_frames_per_sequence_then_sequences():
    cfg = load_config("sa_vsr_lv", overlays=["tiny_cpu"])
    rows = [
        ImageScore("a/0", 10.0, 0.1, 0.5),
        ImageScore("a/1", 20.0, 0.3, 0.1),
        ImageScore("b/0", 40.0, 0.8, 0.3),
    ]
    m = summary(rows, cfg)
    assert (m.psnr, m.ssim, m.lpips) == pytest.approx(
        (27.5, 0.5, 0.3)
    )  # (15 + 40)/2, (0.2 + 0.8)/2, (0.3 + 0.3)/2
    img = summary(rows, load_config("esrgan", overlays=["tiny_cpu"]))  # images: plain mean
    assert (img.psnr, img.ssim) == pytest.approx((70 / 3, 1.2 / 3))


def test_crop_clip_crops_every_frame_and_the_hr_alike():
    lr = torch.arange(5 * 3 * 6 * 8, dtype=torch.float32).reshape(5, 3, 6, 8)
    hr = torch.arange(3 * 24 * 32, dtype=torch.float32).reshape(3, 24, 32)
    out = crop_clip({"name": "s/0", "lr": lr, "hr": hr}, 16, 4)
    torch.testing.assert_close(out["lr"], lr[:, :, 1:5, 2:6])  # LR side 4, centred: y (6-4)//2, x (8-4)//2
    torch.testing.assert_close(out["hr"], hr[:, 4:20, 8:24])
    assert crop_clip({"lr": lr, "hr": hr}, 0, 4)["lr"] is lr
    torch.testing.assert_close(centre(lr), lr[2])
    assert centre(hr) is hr


@pytest.mark.parametrize("preset", ["sa_vsr_lv", "sa_vsr_canny"])
def test_trainer_trains_on_clips_and_validates_centre_frames(preset, tmp_path):
    cfg = load_config(
        preset,
        [
            "train.pretrain_steps=2",
            "train.steps=2",
            "train.val_every=2",
            "train.log_every=1",
            "train.val_images=2",
            "data.synth_frames=5",
            "data.batch_size=2",
            "train.device=cpu",
        ],
        ["tiny_cpu"],
    )
    rep = ListReporter()
    t = Trainer(cfg, tmp_path, rep)
    batch = next(t.batches(0))
    assert batch["lr"].shape == (2, 5, 3, 8, 8) and batch["hr"].shape == (2, 3, 32, 32)
    assert ("edge" in batch) == (preset == "sa_vsr_canny")  # Canny from the data workers, lv on device
    last = t.run()
    assert np.isfinite(last["loss_g_total"]) and last["loss_sa_pixel"] > 0
    step, metrics, images = rep.vals[-1]
    rows = rep.scores[-1]
    # every frame of the 2 validation sequences, named <seq>/<frame>, scored on the centre frame
    assert [r.name for r in rows] == [f"{s}/{t:03d}" for s in ("chelsea", "coffee") for t in range(5)]
    g = t.G.eval()
    again = evaluate(lambda lr: g(lr).clamp(0, 1), t.val_items, 4)
    assert [r.psnr for r in again] == pytest.approx([r.psnr for r in rows])
    a, b = np.mean([r.psnr for r in rows[:5]]), np.mean([r.psnr for r in rows[5:]])
    assert metrics["val_psnr"] == pytest.approx((a + b) / 2)
    from trainables.panels import HEADER

    # LR | bicubic over SR | HR of the centre 64 px frame, enlarged 4x (nearest) to 256 px
    # panels, each captioned above
    first = images[sorted(images)[0]]
    assert sorted(images)[0].startswith("val_sample_0_chelsea")
    assert first.shape == (2 * (2 * HEADER + 256), 2 * 256, 3)


# ------------------------------------------------------------------------------ eval
def _write(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))


def test_video_folders_are_told_from_image_folders(tmp_path):
    frame = np.zeros((8, 8, 3), np.uint8)
    _write(tmp_path / "vid" / "HR" / "calendar" / "000.png", frame)
    _write(tmp_path / "vid" / "LR_bicubic" / "X4" / "calendar" / "000.png", frame[:2, :2])
    _write(tmp_path / "flat" / "walk" / "000.png", frame)  # sequences directly in the folder
    _write(tmp_path / "img" / "HR" / "a.png", frame)
    _write(tmp_path / "img" / "LR_bicubic" / "X4" / "a.png", frame[:2, :2])
    _write(tmp_path / "hr_only" / "a.png", frame)
    assert looks_like_video("embedded-video", 4) and looks_like_video(tmp_path / "vid", 4)
    assert looks_like_video(tmp_path / "flat", 4)
    for spec in ("embedded", tmp_path / "img", tmp_path / "hr_only", tmp_path / "missing"):
        assert not looks_like_video(spec, 4), spec


# ----------------------------------------------------------------------------- sweeps
def _sweep(tmp_path: Path, base, space) -> Path:
    path = tmp_path / "s.yaml"
    fixed = {"loss": {"pixel": {"sa": {"sa_share_target": None, "beta2": 5.0}}}}  # beta2 is searched
    doc = {"name": "fam", "base": base, "set": fixed, "space": space, "scheduler": {"type": "none"}}
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_sweep_is_one_model_family(tmp_path):
    from sweeper.sweep_config import load_sweep

    beta2 = {"path": "loss.pixel.sa.beta2", "float": [1.0, 10.0]}
    assert load_sweep(_sweep(tmp_path, ["sa_vsr_lv", "tiny_cpu_video"], [beta2])).name == "fam"
    msg = one_line_error(
        lambda: load_sweep(
            _sweep(
                tmp_path,
                ["sa_vsr_lv", "tiny_cpu_video"],
                [beta2, {"path": "model.generator.num_blocks", "int": [1, 3]}],
            )
        )
    )
    assert msg.endswith(
        "s.yaml: space[1].path: model.generator.num_blocks cannot be searched (the shared "
        "pretraining fixes model and data)"
    )
    msg = one_line_error(
        lambda: load_sweep(_sweep(tmp_path, ["sa_esrgan_lv", "sa_vsr_lv", "tiny_cpu"], [beta2]))
    )
    assert msg.endswith(
        "s.yaml: base: mixes image presets (sa_esrgan_lv) and video presets (sa_vsr_lv); shared "
        "pretraining is per model family: one family per sweep"
    )
    branch = {
        "path": "loss.pixel.sa.edge",
        "choices": ["lv", "canny"],
        "when": {"lv": [{"path": "data.kind", "choices": ["image", "video"]}]},
    }
    assert "space[0].when.lv[0].path: data.kind cannot be searched" in one_line_error(
        lambda: load_sweep(_sweep(tmp_path, ["sa_vsr_lv", "tiny_cpu_video"], [branch]))
    )
