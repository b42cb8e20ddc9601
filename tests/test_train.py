"""The training loop on real images: resume equals uninterrupted, divergence, presets."""

from pathlib import Path

import numpy as np
import pytest
import torch

from trainables.config_files import PRESETS_DIR, load_config
from trainables.train import Trainer, TrainingDiverged


class ListReporter:
    def __init__(self):
        self.rows, self.vals, self.images, self.checkpoints = [], [], [], []

    def metrics(self, step, values):
        self.rows.append((step, dict(values)))

    def validation(self, step, metrics, images, scores):
        self.vals.append((step, dict(metrics)))
        self.images += [(step, name, image) for name, image in images.items()]
        self.scores_at = (step, scores)

    def checkpoint(self, step, path):
        self.checkpoints.append((step, Path(path).name))


def _cfg(tiny_config, **train):
    return tiny_config(
        {
            "seed": 3,
            "loss": {
                "pixel": {
                    "criterion": "charbonnier",
                    "beta1": 0.01,
                    "sa": {"edge": "lv", "sa_share_target": 0.15, "calibration_batches": 2},
                },
                "perceptual": {"layer": "conv2_2", "weight": 1.0},
                "dp": {"mu": 0.5, "resnet_stage": 1},
                "fm": {"blocks": [0, 3], "weight": 1.0},
                "adv": {"kind": "ragan", "weight": 0.005},
            },
            "train": {
                "pretrain_steps": 3,
                "steps": 5,
                "milestones": [2],
                "val_every": 4,
                "log_every": 1,
                "checkpoint_every": 100,
                "val_crop": 64,
                "device": "cpu",
                **train,
            },
        }
    )


def _losses(rep):
    keys = ("loss_pretrain_pixel", "loss_g_total", "loss_d", "beta2", "sa_share", "sa_share_mean", "lr")
    return {step: {k: v[k] for k in keys if k in v} for step, v in rep.rows}


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tiny_config, tmp_path):
    cfg = _cfg(tiny_config)
    full = ListReporter()
    Trainer(cfg, tmp_path / "a", full).run()
    assert [s for s, _ in full.rows] == list(range(1, 9))

    first = ListReporter()
    t1 = Trainer(cfg, tmp_path / "b", first)
    t1.run(until=5)  # past the stage boundary and the SA / FM calibration
    assert (tmp_path / "b" / "last.pt").is_file() and (tmp_path / "b" / "pretrain_g.pt").is_file()
    second = ListReporter()
    t2 = Trainer(cfg, tmp_path / "b", second)
    t2.resume(tmp_path / "b" / "last.pt")
    assert t2.step == 5 and float(t2.objective.beta2) == float(t1.objective.beta2)
    t2.run()
    resumed = {**_losses(first), **_losses(second)}
    uninterrupted = _losses(full)
    assert resumed.keys() == uninterrupted.keys()
    for step, values in uninterrupted.items():
        for k, v in values.items():
            assert resumed[step][k] == pytest.approx(v, abs=1e-6), (step, k)
    # The lr milestone at GAN step 2 was honoured across the resume.
    assert uninterrupted[8]["lr"] == pytest.approx(0.5e-4)
    # Calibrated beta2 is positive and reported; the realised share is reported each step.
    assert uninterrupted[4]["beta2"] > 0 and all("sa_share" in v for s, v in full.rows if s > 3)


def test_validation_reports_metrics_and_a_sample_grid(tiny_config, tmp_path):
    rep = ListReporter()
    Trainer(_cfg(tiny_config, steps=1, val_every=3), tmp_path, rep).run()
    vals = dict(rep.vals)
    assert set(vals) == {3, 4} and {3, 4} <= {s for s, _ in rep.rows}  # a validation step is a log step
    assert all(v["val_psnr"] > 5 and 0 < v["val_ssim"] <= 1 and v["val_lpips"] >= 0 for v in vals.values())
    step, name, grid = rep.images[0]
    # 64 px crops enlarged 4x (nearest) to 256 px panels, 2 a row, each under a 32 px caption
    assert (
        name == "val_sample_0_img_002"
        and grid.dtype == np.uint8
        and grid.shape == (2 * (32 + 256), 2 * 256, 3)
    )
    assert [n for s, n, _ in rep.images if s == step] == ["val_sample_0_img_002", "val_sample_1_img_003"]
    assert "pretrain_g.pt" in {n for _, n in rep.checkpoints}
    step, rows = rep.scores_at  # per-image scores of the last validation (for the paired test)
    assert step == 4 and [r.name for r in rows] == ["img_002", "img_003"]
    assert np.mean([r.lpips for r in rows]) == pytest.approx(vals[4]["val_lpips"])


def test_nan_loss_stops_with_a_clear_reason(tiny_config, tmp_path):
    t = Trainer(_cfg(tiny_config), tmp_path, ListReporter())
    batch = next(t.batches(0))
    batch["hr"][0, 0, 0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"step 0: loss is nan \(non-finite terms: pretrain_pixel\)"):
        t.pretrain_step(batch)


def test_resume_refuses_a_checkpoint_of_another_config(tiny_config, tmp_path):
    t = Trainer(_cfg(tiny_config), tmp_path, ListReporter())
    t.run(until=1)
    other = Trainer(_cfg(tiny_config, lr=3e-4), tmp_path / "o", ListReporter())
    with pytest.raises(ValueError, match="different config"):
        other.resume(tmp_path / "last.pt")


def _same_params(a, b) -> bool:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def test_training_seed_leaves_the_metric_and_the_loss_backbones_alone(tiny_config, tmp_path):
    # Issue 20 point 1: `seed` is the training seed; random-init backbones and the LPIPS trunk
    # come from backbones.seed, so runs with different training seeds are scored by one metric.
    runs = {}
    for seed in (0, 1):
        cfg = _cfg(tiny_config, pretrain_steps=1, steps=2, val_every=2).model_copy(update={"seed": seed})
        runs[seed] = Trainer(cfg, tmp_path / str(seed), ListReporter())
        runs[seed].run()
    a, b = runs[0], runs[1]
    assert _same_params(a.lpips, b.lpips)
    assert set(a.objective.backbones) == {"vgg", "resnet"}
    assert all(_same_params(a.objective.backbones[k], b.objective.backbones[k]) for k in ("vgg", "resnet"))
    assert not _same_params(a.G, b.G)
    other = _cfg(tiny_config).model_copy(update={"backbones": a.cfg.backbones.model_copy(update={"seed": 7})})
    assert not _same_params(Trainer(other, tmp_path / "7", ListReporter()).lpips, a.lpips)


def test_pretraining_has_its_own_lr_schedule_and_criterion(tiny_config, tmp_path):
    # ESRGAN's PSNR stage: 2e-4 halved every 200k; Lucas et al. pretrain with MSE (issue 20, 7).
    cfg = _cfg(tiny_config, pretrain_lr=3e-4, pretrain_milestones=[2], pretrain_criterion="l2")
    t = Trainer(cfg, tmp_path, ListReporter())
    batch = next(t.batches(0))
    with torch.no_grad():
        mse = ((t.G(batch["lr"]) - batch["hr"]) ** 2).mean().item()
    assert float(t.pretrain_step(batch)["loss_pretrain_pixel"]) == pytest.approx(mse, rel=1e-5)
    assert t.opt_pre.param_groups[0]["lr"] == pytest.approx(3e-4)
    t.pretrain_step(batch)
    assert t.opt_pre.param_groups[0]["lr"] == pytest.approx(1.5e-4)  # lr_gamma 0.5 at step 2
    assert t.opt_g.param_groups[0]["lr"] == pytest.approx(1e-4)  # the GAN stage keeps train.lr


PRESETS = ["esrgan", "sa_esrgan_lv", "sa_esrgan_canny", "srgan_dp", "esrgan_dp", "fm_pcsva"]


def test_every_paper_preset_is_shipped():
    assert set(PRESETS) <= {p.stem for p in PRESETS_DIR.glob("*.yaml")}


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_train_at_tiny_size(preset, tiny_data, tmp_path):
    cfg = load_config(
        preset,
        [
            f"data.train={tiny_data / 'train'}",
            f"data.val={tiny_data / 'val'}",
            "train.pretrain_steps=2",
            "train.steps=2",
            "train.val_every=2",
            "data.patch_size=32",
        ],
        ["tiny_cpu"],
    )
    rep = ListReporter()
    last = Trainer(cfg, tmp_path, rep).run()
    assert np.isfinite(last["loss_g_total"]) and "val_psnr" in last
    full = load_config(preset)  # the paper-size preset itself validates
    assert full.model.generator.num_feat == 64 and full.backbones.weights == "pretrained"
