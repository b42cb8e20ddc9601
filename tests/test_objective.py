"""The composed generator objective: weights, shares, calibration, one pass per network."""
import math

import pytest
import torch

from trainables import losses as L
from trainables.config import validate
from trainables.edges import local_variance
from trainables.models import build_discriminator
from trainables.objective import GeneratorObjective, d_forward, d_loss

BASE = {
    "data": {"patch_size": 32},
    "model": {"discriminator": {"arch": "srgan", "num_feat": 8}},
    "backbones": {"weights": "random"},
}


def cfg_with(loss: dict):
    return validate({**BASE, "loss": loss})


FULL = {
    "pixel": {"criterion": "l1", "beta1": 0.01, "sa": {"edge": "lv", "beta2": 20.0}},
    "perceptual": {"layer": "conv3_1", "criterion": "l1", "weight": 0.7},
    "dp": {"mu": 0.5, "resnet_stage": 1},
    "sa_feature": {"alpha3": 1.0, "beta3": 0.5, "weight": 0.3},
    "fm": {"blocks": [0, 2, 5], "weight": 0.9},
    "adv": {"kind": "ragan", "weight": 0.005},
}


def _batch(seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(n, 3, 32, 32, generator=g)
    sr = (hr + 0.1 * torch.randn(n, 3, 32, 32, generator=g)).clamp(0, 1).requires_grad_(True)
    return sr, hr


def _run(obj, disc, sr, hr):
    logits, feats = d_forward(disc, sr, hr)
    return obj(sr, hr, logits, feats, None)


@pytest.fixture(scope="module")
def disc():
    torch.manual_seed(0)
    return build_discriminator(cfg_with({}).model.discriminator, 32)


def test_total_is_the_weighted_sum_of_the_paper_terms(disc):
    cfg = cfg_with(FULL)
    obj = GeneratorObjective(cfg)
    obj.fm_scale.fill_(2.0)
    sr, hr = _batch()
    t = _run(obj, disc, sr, hr)
    p = {k: v.item() for k, v in t.parts.items()}
    # Recompute each term from its definition.
    w = local_variance(hr, 5, 0.01, "gray")
    assert p["pixel"] == pytest.approx(0.01 * float(L.weighted_distance(sr, hr)) +
                                       20 * float(L.weighted_distance(sr, hr, w)), rel=1e-5)
    assert p["sa_pixel"] == pytest.approx(20 * float(L.weighted_distance(sr, hr, w)), rel=1e-5)
    zeta = (p["vgg"] + L.DP_C) / (p["resnet"] + L.DP_C)
    assert p["dp_zeta"] == pytest.approx(zeta, rel=1e-5)
    assert p["dp"] == pytest.approx(p["vgg"] + zeta * p["resnet"] / 0.5, rel=1e-5)
    expected = p["pixel"] + 0.7 * p["dp"] + 0.3 * p["sa_feature"] + 0.9 * p["fm"] + 0.005 * p["adv"]
    assert float(t.total) == pytest.approx(expected, rel=1e-5)
    s = t.scalars()
    assert float(s["sa_share"]) == pytest.approx(p["sa_pixel"] / float(t.total), rel=1e-6)
    assert sum(p[f"fm_w{b}"] for b in (0, 2, 5)) == pytest.approx(1.0)
    # FM with the frozen scale 2: softmax over 2 * L_i of the raw block losses.
    raw = t.fm_blocks
    loss, _ = L.fm_softmax(raw, torch.full_like(raw, 2.0))
    assert p["fm"] == pytest.approx(float(loss), rel=1e-6)


@pytest.mark.parametrize("concat", [False, True])
def test_each_image_goes_through_each_network_once(disc, concat):
    obj = GeneratorObjective(cfg_with(FULL))
    obj.fm_scale.fill_(1.0)
    obj.concat_backbones = concat
    seen = {"vgg": 0, "resnet": 0, "D": 0}  # images per network in one step

    def count(key):
        return lambda module, inputs, output: seen.__setitem__(key, seen[key] + inputs[0].shape[0])

    hooks = [m.register_forward_hook(count(k)) for k, m in (("vgg", obj.vgg), ("resnet", obj.resnet), ("D", disc))]
    sr, hr = _batch()
    _run(obj, disc, sr, hr).total.backward()
    for h in hooks:
        h.remove()
    assert seen == {"vgg": 2 * 3, "resnet": 2 * 2, "D": 2 * 2}  # sr, hr, W(hr) | sr, hr | sr, hr
    assert sr.grad is not None and torch.isfinite(sr.grad).all()


def test_both_backbone_strategies_give_the_same_loss_and_gradient(disc):
    results = []
    for concat in (False, True):
        obj = GeneratorObjective(cfg_with(FULL))
        obj.fm_scale.fill_(1.0)
        obj.concat_backbones = concat
        sr, hr = _batch()
        t = _run(obj, disc, sr, hr)
        t.total.backward()
        results.append((t.total.item(), sr.grad.clone()))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-7)


def test_mu_inf_builds_no_resnet_and_is_vgg_only(disc):
    obj = GeneratorObjective(cfg_with({**FULL, "dp": {"mu": math.inf, "resnet_stage": 4}, "sa_feature": None}))
    assert obj.resnet is None
    obj.fm_scale.fill_(1.0)
    t = _run(obj, disc, *_batch())
    assert float(t.parts["dp"]) == pytest.approx(float(t.parts["vgg"]))


def test_sa_share_calibration_hits_the_target(disc):
    loss = {**FULL, "pixel": {"criterion": "l1", "beta1": 0.01, "sa": {"edge": "lv", "sa_share": 0.15}}}
    obj = GeneratorObjective(cfg_with(loss))
    assert obj.needs_calibration and math.isnan(float(obj.beta2))
    batches = [_batch(s) for s in range(3)]
    with torch.no_grad():
        obj.calibrate_fm([_run(obj, disc, *b) for b in batches])
        obj.calibrate_beta2([_run(obj, disc, *b) for b in batches])
    assert not obj.needs_calibration and float(obj.beta2) > 0
    with torch.no_grad():
        terms = [_run(obj, disc, *b) for b in batches]
    sa = sum(float(t.sa_part) for t in terms) / 3
    total = sum(float(t.total) for t in terms) / 3
    assert sa / total == pytest.approx(0.15, rel=1e-4)  # share of the calibration batches' means


def test_fm_rescale_is_one_over_mean_block_loss(disc):
    obj = GeneratorObjective(cfg_with({"fm": {"blocks": [1, 3]}, "perceptual": None}))
    batches = [_batch(s) for s in range(2)]
    with torch.no_grad():
        terms = [_run(obj, disc, *b) for b in batches]
    obj.calibrate_fm(terms)
    mean = torch.stack([t.fm_blocks for t in terms]).mean(0)
    torch.testing.assert_close(obj.fm_scale, 1 / mean)
    # Persisted for resume.
    assert torch.equal(obj.state_dict()["fm_scale"], obj.fm_scale)


def test_canny_needs_maps_from_the_batch(disc):
    obj = GeneratorObjective(cfg_with({"pixel": {"sa": {"edge": "canny", "beta2": 1.5}}, "perceptual": None}))
    sr, hr = _batch()
    with pytest.raises(ValueError, match="Canny edge maps must come with the batch"):
        _run(obj, disc, sr, hr)
    edge = (torch.rand(2, 1, 32, 32) > 0.8).float()
    logits, feats = d_forward(disc, sr, hr)
    t = obj(sr, hr, logits, feats, edge)
    assert float(t.sa_part) == pytest.approx(1.5 * float(L.weighted_distance(sr, hr, edge)), rel=1e-6)


def test_discriminator_loss_sees_detached_sr(disc):
    sr, hr = _batch()
    loss = d_loss(disc, sr, hr, "vanilla")
    loss.backward()
    assert sr.grad is None
    assert any(p.grad is not None for p in disc.parameters())
