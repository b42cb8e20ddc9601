"""The composed generator objective: weights, shares, calibration, one pass per network, D batches."""

import math

import pytest
import torch

from trainables import losses as L
from trainables.config import validate
from trainables.edges import local_variance
from trainables.models import build_discriminator
from trainables.objective import GeneratorObjective, d_loss
from trainables.terms import TERM_BUILDERS, Term, TermOut

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
    "sa_feature": {"alpha3": 1.0, "beta3": 0.5, "weight": 0.3, "mode": "add"},
    "fm": {"blocks": [0, 2, 5], "weight": 0.9},
    "adv": {"kind": "ragan", "weight": 0.005},
}


def _batch(seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(n, 3, 32, 32, generator=g)
    sr = (hr + 0.1 * torch.randn(n, 3, 32, 32, generator=g)).clamp(0, 1).requires_grad_(True)
    return sr, hr


def _run(obj, disc, sr, hr):
    return obj(sr, hr, None, disc=disc)


def _parts(t):
    return {k: float(v) for k, v in t.scalars().items()}


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
    p = _parts(t)
    # Recompute each term from its definition.
    w = local_variance(hr, 5, 0.01, "gray")
    assert p["loss_pixel"] == pytest.approx(
        0.01 * float(L.weighted_distance(sr, hr)) + 20 * float(L.weighted_distance(sr, hr, w)), rel=1e-5
    )
    assert p["loss_sa_pixel"] == pytest.approx(20 * float(L.weighted_distance(sr, hr, w)), rel=1e-5)
    # DP, released variant: sum of the stage-1 L1 (the only stage at resnet_stage 1), raw input.
    with torch.no_grad():
        res = float(L.perceptual(obj.resnet(sr)[0], obj.resnet(hr)[0]))
    assert p["loss_resnet"] == pytest.approx(res, rel=1e-5)
    zeta = (p["loss_vgg"] + L.DP_C) / (p["loss_resnet"] + L.DP_C)
    assert p["loss_dp_zeta"] == pytest.approx(zeta, rel=1e-5)
    assert p["loss_dp"] == pytest.approx(p["loss_vgg"] + zeta * p["loss_resnet"] / 0.5, rel=1e-5)
    expected = (
        p["loss_pixel"]
        + 0.7 * p["loss_dp"]
        + 0.3 * p["loss_sa_feature"]
        + 0.9 * p["loss_fm"]
        + 0.005 * p["loss_adv"]
    )
    assert p["loss_g_total"] == pytest.approx(expected, rel=1e-5)
    assert p["sa_share"] == pytest.approx(p["loss_sa_pixel"] / p["loss_g_total"], rel=1e-6)
    assert sum(p[f"fm_w{b}"] for b in (0, 2, 5)) == pytest.approx(1.0)
    # FM with the frozen scale 2: softmax over 2 * L_i of the raw block losses.
    raw = t.extra("fm_blocks")
    loss, _ = L.fm_softmax(raw, torch.full_like(raw, 2.0))
    assert p["loss_fm"] == pytest.approx(float(loss), rel=1e-6)


def test_each_image_goes_through_each_network_once(disc):
    obj = GeneratorObjective(cfg_with(FULL))
    obj.fm_scale.fill_(1.0)
    seen = {"vgg": [], "resnet": [], "D": []}  # batch sizes per call, one step

    def count(key):
        return lambda module, inputs, output: seen[key].append(inputs[0].shape[0])

    nets = (("vgg", obj.vgg), ("resnet", obj.resnet), ("D", disc))
    hooks = [m.register_forward_hook(count(k)) for k, m in nets]
    sr, hr = _batch()
    _run(obj, disc, sr, hr).total.backward()
    for h in hooks:
        h.remove()
    # VGG: sr, then [hr; W(hr)] in one no_grad call; ResNet: sr, hr; D: sr and hr, separately.
    assert seen == {"vgg": [2, 4], "resnet": [2, 2], "D": [2, 2]}
    assert sr.grad is not None and torch.isfinite(sr.grad).all()


def test_discriminator_sees_real_and_fake_as_separate_batches():
    # BatchNorm in train mode: D's logits on hr must not depend on the fake batch, in the
    # G step (objective) and in the D step (d_loss).
    sr, hr = _batch()
    others = [sr.detach(), torch.rand_like(sr), torch.zeros_like(sr)]
    torch.manual_seed(0)
    d = build_discriminator(cfg_with({}).model.discriminator, 32).train()
    obj = GeneratorObjective(cfg_with({"perceptual": None, "fm": {"blocks": [0, 1]}}))
    calls = []
    hook = d.register_forward_hook(lambda m, i, o: calls.append((i[0].detach(), o[0].detach())))
    real_logits = []
    for fake in others:
        calls.clear()
        obj(fake, hr, None, disc=d)
        d_loss(d, fake, hr, "ragan")
        real_logits += [o for x, o in calls if torch.equal(x, hr)]
    hook.remove()
    assert len(real_logits) == 6  # one real pass per G step and per D step
    for r in real_logits[1:]:
        torch.testing.assert_close(r, real_logits[0], rtol=0, atol=0)
    # The RaGAN G loss is the formula on D(sr) alone and D(hr) alone.
    with torch.no_grad():
        fake_logits, real = d(sr)[0], d(hr)[0]
        t = obj(sr, hr, None, disc=d)
    expected = float(L.gan_g(fake_logits, real, "ragan"))
    assert float(t.scalars()["loss_adv"]) == pytest.approx(expected, rel=1e-6)
    # The joint [sr; hr] batch srsweep used before gives other logits for hr.
    with torch.no_grad():
        joint = d(torch.cat([others[1], hr]))[0][2:]
    assert (joint - real).abs().max() > 1e-3


def test_a_toy_term_needs_one_class_and_no_edit_to_the_objective(disc, monkeypatch):
    class MeanTerm(Term):
        """mean(VGG(sr) - VGG(hr)) at the perceptual layer, weight 2: reads the shared cache."""

        name = "toy"

        def __init__(self, cfg):
            super().__init__()
            self.layer, self.needs = cfg.loss.perceptual.layer, {"vgg": ("hr",)}

        def forward(self, f):
            v = (f.of_sr("vgg")[self.layer] - f.of("vgg", "hr")[self.layer]).mean()
            return TermOut(2.0 * v, {"loss_toy": v})

    cfg = cfg_with({**FULL, "fm": None})
    sr, hr = _batch()
    base = float(GeneratorObjective(cfg)(sr, hr, None, disc=disc).total)
    monkeypatch.setattr("trainables.terms.TERM_BUILDERS", [*TERM_BUILDERS, MeanTerm])
    monkeypatch.setattr("trainables.objective.TERM_BUILDERS", [*TERM_BUILDERS, MeanTerm])
    obj = GeneratorObjective(cfg)
    calls = []
    hook = obj.vgg.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    t = obj(sr, hr, None, disc=disc)
    hook.remove()
    assert calls == [2, 4]  # the toy term shares VGG's sr and target passes
    with torch.no_grad():
        k = cfg.loss.perceptual.layer
        toy = float((obj.vgg(sr)[k] - obj.vgg(hr)[k]).mean())
    assert float(t.scalars()["loss_toy"]) == pytest.approx(toy, rel=1e-5)
    assert float(t.total) == pytest.approx(base + 2 * toy, rel=1e-5)


def test_mu_inf_builds_no_resnet_and_is_vgg_only(disc):
    obj = GeneratorObjective(
        cfg_with({**FULL, "dp": {"mu": math.inf, "resnet_stage": 4}, "sa_feature": None})
    )
    assert obj.resnet is None
    obj.fm_scale.fill_(1.0)
    t = _run(obj, disc, *_batch())
    p = _parts(t)
    assert p["loss_dp"] == pytest.approx(p["loss_vgg"]) and "loss_resnet" not in p


@pytest.mark.parametrize("variant", ["paper", "released"])
def test_dp_resnet_term_counts_every_image_of_the_batch(variant, disc):
    # Issue 20 point 3: with the real ResNetFeatures, making image 0 perfect moves the term
    # and the gradient reaches image 0 of sr (the paper variant used to score image 3 only).
    dp = {"mu": 0.5, "resnet_stage": 2, "resnet_variant": variant}
    obj = GeneratorObjective(cfg_with({"dp": dp, "perceptual": {"layer": "conv2_1"}}))
    sr, hr = _batch(n=4)
    r_sr, r_hr = obj.resnet(sr), obj.resnet(hr)
    before = L.resnet_loss(r_sr, r_hr, variant)
    (grad,) = torch.autograd.grad(before, sr)
    assert grad[0].abs().sum() > 0 and grad[3].abs().sum() > 0
    perfect = torch.cat([hr[:1], sr[1:].detach()])
    after = L.resnet_loss(obj.resnet(perfect), r_hr, variant).item()
    assert after < 0.9 * before.item()
    p = _parts(obj(sr, hr, None, disc=disc))
    assert p["loss_resnet"] == pytest.approx(before.item(), rel=1e-5)


def test_sa_share_calibration_hits_the_target(disc):
    sa = {"edge": "lv", "sa_share_target": 0.15}
    loss = {**FULL, "pixel": {"criterion": "l1", "beta1": 0.01, "sa": sa}}
    obj = GeneratorObjective(cfg_with(loss))
    assert obj.needs_calibration and math.isnan(float(obj.beta2))
    batches = [_batch(s) for s in range(3)]
    runs = []

    @torch.no_grad()
    def run():
        runs.append(1)
        return [_run(obj, disc, *b) for b in batches]

    obj.calibrate(run)
    assert len(runs) == 2  # FM rescale first, then beta2 with the rescale frozen
    assert not obj.needs_calibration and float(obj.beta2) > 0
    with torch.no_grad():
        terms = [_run(obj, disc, *b) for b in batches]
    sa = sum(float(t.scalars()["loss_sa_pixel"]) for t in terms) / 3
    total = sum(float(t.total) for t in terms) / 3
    assert sa / total == pytest.approx(0.15, rel=1e-4)  # share of the calibration batches' means


def test_fm_rescale_is_one_over_mean_block_loss(disc):
    obj = GeneratorObjective(cfg_with({"fm": {"blocks": [1, 3]}, "perceptual": None}))
    batches = [_batch(s) for s in range(2)]
    with torch.no_grad():
        terms = [_run(obj, disc, *b) for b in batches]
    obj.term("fm").calibrate(terms)
    mean = torch.stack([t.extra("fm_blocks") for t in terms]).mean(0)
    torch.testing.assert_close(obj.fm_scale, 1 / mean)
    # Persisted for resume.
    assert torch.equal(obj.state_dict()["terms.1.fm_scale"], obj.fm_scale)


def test_canny_needs_maps_from_the_batch(disc):
    obj = GeneratorObjective(cfg_with({"pixel": {"sa": {"edge": "canny", "beta2": 1.5}}, "perceptual": None}))
    sr, hr = _batch()
    with pytest.raises(ValueError, match="Canny edge maps must come with the batch"):
        _run(obj, disc, sr, hr)
    edge = (torch.rand(2, 1, 32, 32) > 0.8).float()
    t = obj(sr, hr, edge, disc=disc)
    expected = 1.5 * float(L.weighted_distance(sr, hr, edge))
    assert float(t.scalars()["loss_sa_pixel"]) == pytest.approx(expected, rel=1e-6)


def test_discriminator_loss_sees_detached_sr(disc):
    sr, hr = _batch()
    loss = d_loss(disc, sr, hr, "vanilla")
    loss.backward()
    assert sr.grad is None
    assert any(p.grad is not None for p in disc.parameters())


@pytest.mark.parametrize("layer", ["conv1_2", "conv2_2", "conv3_4", "conv4_4", "conv5_4", "relu3_4", "pool2"])
def test_sa_feature_loss_is_nonnegative_and_minimal_at_hr(layer, disc):
    # beta3 large so the old pre-activation weight alpha3 + beta3 * conv(W) went negative.
    loss = {
        "pixel": {"sa": {"edge": "lv", "beta2": 1.0}},
        "perceptual": {"layer": layer, "weight": 0.0},
        "sa_feature": {"alpha3": 1.0, "beta3": 10.0, "weight": 1.0},
        "adv": {"weight": 0.0},
    }
    obj = GeneratorObjective(cfg_with(loss))
    g = torch.Generator().manual_seed(3)
    hr = torch.rand(2, 3, 32, 32, generator=g)
    w = local_variance(hr, 5, 0.01, "gray").expand(-1, 3, -1, -1)
    with torch.no_grad():
        f_hr, f_w = obj.vgg(hr)[layer], obj.vgg(w)[layer]
        at_hr = float(obj(hr, hr, None, disc=disc).scalars()["loss_sa_feature"])
        assert at_hr >= 0
        for a in (0.05, 0.3, 1.0):
            sr = hr + a * torch.randn(2, 3, 32, 32, generator=g)
            assert float(obj(sr, hr, None, disc=disc).scalars()["loss_sa_feature"]) >= at_hr
            # and in feature space, pushed where the pre-activation weight is negative
            f_sr = f_hr + a * (1 + 10 * f_w < 0).float()
            assert float(L.sa_feature(f_sr, f_hr, f_w, 1.0, 10.0)) >= at_hr


EQ13 = {
    "pixel": {"criterion": "charbonnier", "beta1": 0.001, "sa": {"edge": "lv", "beta2": 5.0}},
    "perceptual": {"layer": "conv2_2", "criterion": "charbonnier", "weight": 0.998},
    "sa_feature": {"alpha3": 0.7, "beta3": 2.0},
    "adv": {"kind": "vanilla", "weight": 0.001},
}


def _eq13_by_hand(obj, disc, sr, hr, alpha3, beta3):
    """VSR poster eq. 13 on the batch: a1 adv + rho_w(x, G, a2 + b2 W) + rho_w(VGG x, VGG G, a3 + b3 VGG W)."""
    ch = lambda d: torch.sqrt(d * d + L.CHARBONNIER_EPS**2)  # noqa: E731
    w = local_variance(hr, 5, 0.01, "gray")
    pixel = ((0.001 + 5.0 * w) * ch(sr - hr)).mean()
    f_sr, f_hr = obj.vgg(sr)["conv2_2"], obj.vgg(hr)["conv2_2"]
    f_w = obj.vgg(w.expand(-1, 3, -1, -1))["conv2_2"].clamp_min(0)  # post-activation (relu2_2)
    feature = ((alpha3 + beta3 * f_w) * ch(f_sr - f_hr)).mean()
    adv = -torch.nn.functional.logsigmoid(disc(sr)[0]).mean()
    return pixel + feature + 0.001 * adv, feature


def test_sa_feature_replace_is_eq13_and_drops_the_plain_vgg_term(disc):
    obj = GeneratorObjective(cfg_with(EQ13))  # mode: replace is the default
    assert [t.name for t in obj.terms] == ["pixel", "sa_feature", "adv"]
    sr, hr = _batch(seed=5, n=3)
    out = obj(sr, hr, None, disc=disc)
    with torch.no_grad():
        total, feature = _eq13_by_hand(obj, disc, sr, hr, 0.7, 2.0)
    assert "loss_vgg" not in _parts(out)
    assert float(out.total) == pytest.approx(float(total), rel=1e-5)
    assert _parts(out)["loss_sa_feature"] == pytest.approx(float(feature), rel=1e-5)
    # alpha3 = 0.998, beta3 = 0 is the baseline's plain VGG term at weight 0.998, exactly
    base = GeneratorObjective(cfg_with({**EQ13, "sa_feature": None}))
    flat = GeneratorObjective(cfg_with({**EQ13, "sa_feature": {"alpha3": 0.998, "beta3": 0.0}}))
    assert float(flat(sr, hr, None, disc=disc).total) == pytest.approx(
        float(base(sr, hr, None, disc=disc).total)
    )


def test_sa_feature_add_keeps_the_plain_vgg_term(disc):
    sf = {"alpha3": 0.7, "beta3": 2.0, "weight": 0.5, "mode": "add"}
    obj = GeneratorObjective(cfg_with({**EQ13, "sa_feature": sf}))
    assert [t.name for t in obj.terms] == ["pixel", "vgg", "sa_feature", "adv"]
    sr, hr = _batch(seed=5, n=3)
    out = obj(sr, hr, None, disc=disc)
    p = _parts(out)
    with torch.no_grad():
        total, feature = _eq13_by_hand(obj, disc, sr, hr, 0.7, 2.0)
    plain = L.perceptual(obj.vgg(sr)["conv2_2"], obj.vgg(hr)["conv2_2"], "charbonnier")
    assert p["loss_vgg"] == pytest.approx(float(plain), rel=1e-5)
    expected = float(total) - float(feature) + 0.5 * float(feature) + 0.998 * float(plain)
    assert float(out.total) == pytest.approx(expected, rel=1e-5)


def test_sa_feature_replace_with_dp_is_refused():
    with pytest.raises(Exception, match="sa_feature.mode: replace drops the plain VGG term"):
        cfg_with({**FULL, "sa_feature": {"alpha3": 1.0, "beta3": 0.5}})
