"""The trainer's GAN step against losses written out by hand, and SA-share tracking."""

import copy

import pytest
import torch
import torch.nn.functional as F

from trainables.train import Trainer


def _esrgan(tiny_config, **sa):
    loss = {
        "pixel": {"criterion": "l1", "beta1": 0.01},
        "perceptual": {"layer": "conv5_4", "criterion": "l1", "weight": 1.0},
        "adv": {"kind": "ragan", "weight": 0.005},
    }
    if sa:
        loss["pixel"]["sa"] = {"edge": "lv", "calibration_batches": 2, **sa}
        loss["perceptual"]["layer"] = "conv2_2"
        loss["fm"] = {"blocks": [0, 3]}
    return tiny_config(
        {
            "seed": 1,
            "model": {
                "generator": {"arch": "rrdbnet", "num_feat": 8, "num_blocks": 1, "grow_ch": 4},
                "discriminator": {"arch": "vgg", "num_feat": 8},
            },
            "loss": loss,
            "train": {
                "pretrain_steps": 0,
                "steps": 40,
                "val_every": 1000,
                "log_every": 1,
                "checkpoint_every": 1000,
                "val_crop": 64,
                "val_images": 1,
                "device": "cpu",
            },
        }
    )


def test_esrgan_g_and_d_losses_by_hand(tiny_config, tmp_path):
    t = Trainer(_esrgan(tiny_config), tmp_path)
    batch = next(t.batches(0))
    lr, hr = batch["lr"], batch["hr"]
    G, D, vgg = copy.deepcopy(t.G), copy.deepcopy(t.D), t.objective.vgg
    with torch.no_grad():
        sr = G(lr)
        pixel = (sr - hr).abs().mean()
        percep = (vgg(sr)["conv5_4"] - vgg(hr)["conv5_4"]).abs().mean()
        fake, real = D(sr)[0], D(hr)[0]  # separate batches (BatchNorm in train mode)
        # RaGAN: D_Ra(a, b) = sigmoid(C(a) - mean C(b)); -log(sigmoid(x)) = softplus(-x)
        g_adv = 0.5 * (F.softplus(real - fake.mean()).mean() + F.softplus(-(fake - real.mean())).mean())
        d_adv = 0.5 * (F.softplus(-(real - fake.mean())).mean() + F.softplus(fake - real.mean()).mean())
    g_total = 0.01 * pixel + 1.0 * percep + 0.005 * g_adv
    out = t.gan_step(batch)
    assert float(out["loss_pixel"]) == pytest.approx(0.01 * float(pixel), abs=1e-6)
    assert float(out["loss_vgg"]) == pytest.approx(float(percep), abs=1e-6)
    assert float(out["loss_adv"]) == pytest.approx(float(g_adv), abs=1e-6)
    assert float(out["loss_g_total"]) == pytest.approx(float(g_total), abs=1e-6)
    assert float(out["loss_d"]) == pytest.approx(float(d_adv), abs=1e-6)


def _shares(tiny_config, tmp_path, track_every):
    t = Trainer(_esrgan(tiny_config, sa_share_target=0.15, track_every=track_every), tmp_path)
    t.calibrate()
    shares = []
    for step, batch in enumerate(t.batches(0)):
        out = t.gan_step(batch)
        shares.append(float(out["sa_share"]))
        if step + 1 == t.cfg.train.steps:
            return shares, float(out["sa_share_mean"])


def test_tracking_keeps_the_reached_share_near_the_target(tiny_config, tmp_path):
    shares, mean = _shares(tiny_config, tmp_path, track_every=5)
    assert mean == pytest.approx(sum(shares) / len(shares), rel=1e-5)  # the GAN-stage running mean
    assert abs(mean / 0.15 - 1) < 0.2 and abs(sum(shares[-10:]) / 10 / 0.15 - 1) < 0.2
    print(f"tracking every 5: target 0.15, mean reached {mean:.4f}, last {shares[-1]:.4f}")
