"""Loss terms on hand-checkable tensors: values, gradients, detached weights."""

import math

import pytest
import torch

from trainables.losses import (
    CHARBONNIER_EPS,
    dual_perceptual,
    fm_block_losses,
    fm_scale,
    fm_softmax,
    gan_d,
    gan_g,
    perceptual,
    resnet_loss,
    rho,
    sa_feature,
    sa_pixel,
    weighted_distance,
)

D = torch.tensor([[-2.0, -0.5], [0.0, 1.5]], dtype=torch.float64)  # a 2x2 difference


@pytest.mark.parametrize(
    "criterion, expected",
    [
        ("l1", [2.0, 0.5, 0.0, 1.5]),
        ("l2", [4.0, 0.25, 0.0, 2.25]),
        ("huber", [1.5, 0.125, 0.0, 1.0]),  # 0.5 d^2 inside |d| < 1, |d| - 0.5 outside
        ("charbonnier", [math.sqrt(4 + 1e-6), math.sqrt(0.25 + 1e-6), 1e-3, math.sqrt(2.25 + 1e-6)]),
    ],
)
def test_rho_values(criterion, expected):
    assert rho(D, criterion).flatten().tolist() == pytest.approx(expected, abs=1e-12)


def test_weighted_distance_by_hand():
    u = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    v = -D.view(1, 1, 2, 2)  # u - v = D
    h = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64).view(1, 1, 2, 2)
    # mean(h * |d|) = (1*2 + 2*0.5 + 3*0 + 4*1.5) / 4 = 9 / 4
    assert weighted_distance(u, v, h, "l1").item() == pytest.approx(2.25)
    assert weighted_distance(u, v, None, "l2").item() == pytest.approx((4 + 0.25 + 0 + 2.25) / 4)


def test_plain_l2_equals_mean_square_in_value_and_gradient():
    g = torch.Generator().manual_seed(1)
    u = torch.randn(2, 8, 6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 8, 6, 6, generator=g, dtype=torch.float64)
    loss, by_hand = weighted_distance(u, v, None, "l2"), ((u - v) * (u - v)).sum() / u.numel()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-13)
    (g_loss,), (g_hand,) = torch.autograd.grad(loss, u), torch.autograd.grad(by_hand, u)
    assert torch.allclose(g_loss, 2 * (u - v).detach() / u.numel(), rtol=1e-13, atol=0)
    assert torch.allclose(g_loss, g_hand, rtol=1e-13, atol=0)


def test_uniform_map_equals_plain_loss_and_zero_map_gives_zero():
    g = torch.Generator().manual_seed(0)
    u, v = torch.rand(2, 3, 4, 4, generator=g), torch.rand(2, 3, 4, 4, generator=g)
    for c in ("l1", "charbonnier", "huber", "l2"):
        plain = weighted_distance(u, v, None, c)
        assert weighted_distance(u, v, torch.ones(2, 1, 4, 4), c).item() == pytest.approx(plain.item())
        assert weighted_distance(u, v, 0.3, c).item() == pytest.approx(0.3 * plain.item())
        z = weighted_distance(u, v, torch.zeros(2, 1, 4, 4), c)
        assert z.item() == 0.0 and not torch.isnan(z)


def test_gray_map_broadcasts_over_channels_and_bad_shape_raises():
    u, v = torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)
    h = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    assert weighted_distance(u, v, h, "l1").item() == pytest.approx(3 / 12)
    with pytest.raises(ValueError, match="does not broadcast"):
        weighted_distance(u[:, :, :1], v[:, :, :1], torch.ones(1, 1, 2, 2))


def test_sa_pixel_by_hand():
    hr = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    sr = torch.tensor([[1.0, 1.0], [2.0, 0.0]], dtype=torch.float64).view(1, 1, 2, 2)
    w = torch.tensor([[0.0, 1.0], [0.5, 1.0]], dtype=torch.float64).view(1, 1, 2, 2)
    total, sa, raw = sa_pixel(sr, hr, beta1=0.01, beta2=20.0, edge=w, criterion="l1")
    # plain = (1 + 1 + 2 + 0)/4 = 1; weighted = (0 + 1 + 1 + 0)/4 = 0.5
    assert sa.item() == pytest.approx(20 * 0.5) and raw.item() == pytest.approx(0.5)
    assert total.item() == pytest.approx(0.01 * 1 + 10.0)
    plain_total, zero, zero_raw = sa_pixel(sr, hr, 0.01, 20.0, None, "l1")
    assert plain_total.item() == pytest.approx(0.01) and zero.item() == 0.0 == zero_raw.item()
    # Charbonnier per element sqrt(d^2 + eps^2)
    _, sa_c, _ = sa_pixel(sr, hr, 1.0, 1.0, w, "charbonnier")
    expected = (
        0 + math.sqrt(1 + CHARBONNIER_EPS**2) + 0.5 * math.sqrt(4 + CHARBONNIER_EPS**2) + CHARBONNIER_EPS
    ) / 4
    assert sa_c.item() == pytest.approx(expected)


def test_sa_feature_by_hand_and_targets_are_detached():
    f_sr = torch.tensor([1.0, -1.0], requires_grad=True)
    f_hr = torch.tensor([0.0, 0.0], requires_grad=True)
    f_w = torch.tensor([2.0, -6.0], requires_grad=True)
    loss = sa_feature(f_sr, f_hr, f_w, alpha3=1.0, beta3=0.5, criterion="l1")
    # weights alpha3 + beta3*relu(VGG(W)) = [2, 1] (the -6 pre-activation is cut to 0, where
    # it would have given the weight -2); mean([2*1, 1*1]) = 1.5
    assert loss.item() == pytest.approx(1.5)
    loss.backward()
    assert f_sr.grad.tolist() == pytest.approx([1.0, -0.5])
    assert f_hr.grad is None and f_w.grad is None


def test_huber_delta_is_a_threshold_in_image_units():
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64)
    sr = (hr + 0.1 * torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)).clamp(0, 1)
    half_l2 = 0.5 * ((sr - hr) ** 2).mean().item()
    # delta 1 on [0, 1] images: every residual is in the quadratic zone, exactly 0.5 * L2.
    assert weighted_distance(sr, hr, None, "huber", 1.0).item() == pytest.approx(half_l2, rel=1e-12)
    # delta 0.05 (fm_pcsva): residuals above 0.05 are penalised linearly, by hand per element.
    d = (sr - hr).abs()
    by_hand = torch.where(d < 0.05, 0.5 * d * d, 0.05 * (d - 0.025)).mean().item()
    huber = weighted_distance(sr, hr, None, "huber", 0.05).item()
    assert huber == pytest.approx(by_hand, rel=1e-12) and huber < 0.8 * half_l2
    assert rho(torch.tensor([0.02, 0.3]), "huber", 0.05).tolist() == pytest.approx([0.0002, 0.05 * 0.275])


def test_resnet_variants_by_hand():
    s1, s2 = torch.tensor([1.0, 2.0]), torch.tensor([[0.0, 4.0]])
    h1, h2 = torch.tensor([0.0, 0.0]), torch.tensor([[1.0, 1.0]])
    # paper: stage m alone = mean(|0-1|, |4-1|) = 2; released: + stage 1's mean(1, 2) = 1.5
    assert resnet_loss([s1, s2], [h1, h2], "paper").item() == pytest.approx(2.0)
    assert resnet_loss([s1, s2], [h1, h2], "released").item() == pytest.approx(3.5)
    with pytest.raises(ValueError, match="ResNet variant"):
        resnet_loss([s1], [h1], "other")


def test_resnet_paper_on_one_stage_tensor_counts_every_image():
    # Issue 20 point 3: ResNetFeatures(all_stages=False) returns one (B, C, H, W) tensor; the
    # paper variant took feats[-1], the last *image*. Value: mean L1 over all 4 images (eq. 5).
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(4, 2, 3, 3, generator=g, dtype=torch.float64)
    sr = (hr + torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64)).requires_grad_(True)
    loss = resnet_loss(sr, hr, "paper")
    assert loss.item() == pytest.approx((sr - hr).abs().mean().item(), rel=1e-12)
    loss.backward()
    assert (sr.grad.flatten(1).abs().sum(1) > 0).all()  # the gradient reaches every image
    assert sr.grad.flatten().abs().tolist() == pytest.approx([1 / sr.numel()] * sr.numel())
    with pytest.raises(TypeError, match="stages 1..m"):
        resnet_loss(sr, hr, "released")  # a tensor holds stage m alone: cannot sum 1..m


def test_perceptual_is_mean_l1_of_features():
    a = torch.tensor([[1.0, 2.0, 3.0]])
    b = torch.tensor([[1.5, 2.0, 1.0]])
    assert perceptual(a, b).item() == pytest.approx((0.5 + 0 + 2) / 3)
    assert perceptual(a, b, "l2").item() == pytest.approx((0.25 + 0 + 4) / 3)


def test_dp_value_and_gradient_uses_detached_zeta():
    x = torch.tensor(2.0, requires_grad=True)
    l_vgg = x**2  # 4, d/dx = 2x = 4
    l_res = 3 * x  # 6, d/dx = 3
    loss, zeta = dual_perceptual(l_vgg, l_res, mu=0.5)
    z = (4 + 1e-8) / (6 + 1e-8)
    assert zeta.item() == pytest.approx(z) and not zeta.requires_grad
    assert loss.item() == pytest.approx(4 + z * 6 / 0.5)  # = l_vgg * (1 + 1/mu) up to c
    loss.backward()
    # grad l_vgg + (zeta/mu) grad l_res, NOT the gradient of the un-detached ratio
    assert x.grad.item() == pytest.approx(4 + z / 0.5 * 3)


def test_dp_mu_inf_is_vgg_only():
    l_vgg, l_res = torch.tensor(1.25), torch.tensor(9.0)
    loss, zeta = dual_perceptual(l_vgg, l_res, mu=math.inf)
    assert loss.item() == 1.25 and zeta.item() == 0.0


def test_fm_softmax_values_and_detached_weights():
    p = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    feats_sr = [p[0:1] * 1.0, p[1:2] * 1.0, p[2:3] * 1.0]
    feats_hr = [torch.zeros(1), torch.ones(1), torch.zeros(1)]
    L = fm_block_losses(feats_sr, feats_hr, blocks=[0, 1, 2])
    assert L.tolist() == pytest.approx([1.0, 1.0, 9.0])
    scale = fm_scale(torch.tensor([2.0, 1.0, 3.0]))
    assert scale.tolist() == pytest.approx([0.5, 1.0, 1 / 3])
    loss, w = fm_softmax(L, scale)
    scaled = [0.5, 1.0, 3.0]
    e = [math.exp(s) for s in scaled]
    expected_w = [x / sum(e) for x in e]
    assert w.tolist() == pytest.approx(expected_w)
    assert loss.item() == pytest.approx(sum(a * b for a, b in zip(expected_w, scaled)))
    loss.backward()
    # d/dp_i = w_i * scale_i * dL_i/dp_i: the softmax carries no gradient
    dL = [2 * 1.0, 2 * (2.0 - 1.0), 2 * 3.0]
    assert p.grad.tolist() == pytest.approx([expected_w[i] * scale[i].item() * dL[i] for i in range(3)])


def test_fm_block_subset_and_zero_guard():
    f = [torch.ones(2), 2 * torch.ones(2), 3 * torch.ones(2)]
    z = [torch.zeros(2)] * 3
    assert fm_block_losses(f, z, [2, 0]).tolist() == [9.0, 1.0]
    assert torch.isfinite(fm_scale(torch.zeros(2))).all()


def _sig(x):
    return 1 / (1 + math.exp(-x))


def test_ragan_matches_formula():
    real = torch.tensor([1.0, 3.0])
    fake = torch.tensor([0.0, -2.0])
    mr, mf = 2.0, -1.0
    d_rf = [_sig(r - mf) for r in (1.0, 3.0)]  # D_Ra(x_r, x_f)
    d_fr = [_sig(f - mr) for f in (0.0, -2.0)]  # D_Ra(x_f, x_r)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    g = 0.5 * (mean([-math.log(1 - d) for d in d_rf]) + mean([-math.log(d) for d in d_fr]))
    d = 0.5 * (mean([-math.log(x) for x in d_rf]) + mean([-math.log(1 - x) for x in d_fr]))
    assert gan_g(fake, real, "ragan").item() == pytest.approx(g, rel=1e-6)
    assert gan_d(real, fake, "ragan").item() == pytest.approx(d, rel=1e-6)


def test_vanilla_gan_matches_formula():
    real, fake = torch.tensor([2.0]), torch.tensor([-1.0])
    assert gan_g(fake, None, "vanilla").item() == pytest.approx(-math.log(_sig(-1.0)))
    assert gan_d(real, fake, "vanilla").item() == pytest.approx(
        -math.log(_sig(2.0)) - math.log(1 - _sig(-1.0))
    )


def test_ragan_discriminator_gradient_as_basicsr():
    # BasicSR backpropagates each half with the other batch's mean detached.
    real = torch.tensor([1.0, 3.0], requires_grad=True)
    fake = torch.tensor([0.0, -2.0], requires_grad=True)
    gan_d(real, fake, "ragan").backward()
    mf, mr = -1.0, 2.0
    # d/dr_i of 0.5 * mean(-log sig(r_i - mf)) = -0.5 * (1 - sig(r_i - mf)) / 2
    assert real.grad.tolist() == pytest.approx([-0.25 * (1 - _sig(r - mf)) for r in (1.0, 3.0)], rel=1e-5)
    assert fake.grad.tolist() == pytest.approx([0.25 * _sig(f - mr) for f in (0.0, -2.0)], rel=1e-5)


def test_ragan_generator_gradient_does_not_reach_real_logits():
    real = torch.tensor([1.0, 3.0], requires_grad=True)
    fake = torch.tensor([0.0, -2.0], requires_grad=True)
    gan_g(fake, real, "ragan").backward()
    assert real.grad is None and fake.grad is not None


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="criterion"):
        rho(D, "l3")
    with pytest.raises(ValueError, match="GAN kind"):
        gan_g(D, D, "wgan")
