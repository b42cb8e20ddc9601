"""The confirmation's claim (sweeper/claim.py): by hand, and its false-positive rate under
a simulated null where two identical configurations differ only by seed noise."""

import math

import numpy as np
import pytest

from sweeper.claim import ALPHA, METHOD, PAIRED, claim, paired_two_way_t, two_way_t

N_SIM = 2000
# Scales from issue 20's measurements on the demo: per-image LPIPS spread across images
# ~0.05, a seed moves a config's mean by ~1e-4, per-run per-image noise ~5e-5.
IMAGE_SD, SEED_SD, NOISE_SD = 0.05, 1e-4, 5e-5


def simulate(rng, n_sim, seeds, images, delta=0.0):
    """y[sim, c, s, i] = mu + a_i + b_cs + e_csi (+ delta for config 0): no interaction."""
    a = rng.normal(0, IMAGE_SD, (n_sim, 1, 1, images))
    b = rng.normal(0, SEED_SD, (n_sim, 2, seeds, 1))
    e = rng.normal(0, NOISE_SD, (n_sim, 2, seeds, images))
    y = 0.2 + a + b + e
    y[:, 0] += delta
    return y


def sign_flip_rate(y):
    """Today's test: one run per config (seed 0), exact sign-flip over per-image differences."""
    d = y[:, 0, 0] - y[:, 1, 0]  # (sim, images)
    n = d.shape[1]
    signs = 1.0 - 2.0 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
    sums = np.abs(signs @ d.T)  # (patterns, sim)
    obs = np.abs(d.sum(axis=1))
    p = (sums >= obs - 1e-12).mean(axis=0)
    return float((p < ALPHA).mean())


BOUND = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / N_SIM)  # level + 3 Monte-Carlo SE


@pytest.mark.parametrize("test", [two_way_t, paired_two_way_t])
@pytest.mark.parametrize("seeds, images", [(3, 8), (3, 14), (5, 14)])
def test_false_positive_rate_under_seed_noise(test, seeds, images):
    y = simulate(np.random.default_rng(seeds * 100 + images), N_SIM, seeds, images)
    _, _, _, p = test(y[:, 0], y[:, 1])
    assert (p < ALPHA).mean() <= BOUND, (p < ALPHA).mean()
    # The single-seed per-image test reads the seed effect as a real difference.
    assert sign_flip_rate(y) > 0.5


@pytest.mark.parametrize("test", [two_way_t, paired_two_way_t])
def test_power_for_a_real_difference(test):
    # A difference of 5 seed sds (5e-4 LPIPS) with 5 seeds x 14 images is found most times.
    y = simulate(np.random.default_rng(7), 1000, 5, 14, delta=5 * SEED_SD)
    _, _, _, p = test(y[:, 0], y[:, 1])
    assert (p < ALPHA).mean() > 0.8


def test_pairing_by_seed_cancels_what_a_seed_does_to_both_runs():
    """The confirmation gives both finalists the same seeds; a seed effect they share
    (data order, init, a seeded metric) is no false positive and costs the paired test
    no power."""
    rng = np.random.default_rng(9)
    shared = rng.normal(0, 10 * SEED_SD, (N_SIM, 1, 3, 1))  # same seed, same push, both configs
    null = simulate(rng, N_SIM, 3, 8) + shared
    assert (paired_two_way_t(null[:, 0], null[:, 1])[3] < ALPHA).mean() <= BOUND
    real = simulate(rng, N_SIM, 3, 8, delta=2 * SEED_SD) + shared
    paired = (paired_two_way_t(real[:, 0], real[:, 1])[3] < ALPHA).mean()
    assert paired > 0.2 and paired > 10 * (two_way_t(real[:, 0], real[:, 1])[3] < ALPHA).mean()


def test_interaction_counts_as_uncertainty():
    """A config x image interaction with no mean difference is not a claim either."""
    rng = np.random.default_rng(3)
    y = simulate(rng, N_SIM, 3, 8)
    inter = rng.normal(0, 5e-4, (N_SIM, 2, 1, 8))
    for test in (two_way_t, paired_two_way_t):
        _, _, _, p = test((y + inter)[:, 0], (y + inter)[:, 1])
        assert (p < ALPHA).mean() <= BOUND


def test_claim_by_hand_and_no_claim_with_one_seed():
    a = {0: {"x": 1.0, "y": 2.0, "z": 3.0}, 1: {"x": 1.2, "y": 2.2, "z": 3.2}}
    b = {5: {"x": 2.0, "y": 3.0, "z": 4.0}, 6: {"x": 2.4, "y": 3.4, "z": 4.4}}
    c = claim(a, b, "test_lpips", "min")
    # seed means 2.0, 2.2 vs 3.0, 3.4: effect -1.1, Welch var 0.02/2 + 0.08/2 = 0.05;
    # per-image differences are all -1.1: no image term.
    assert c.effect == pytest.approx(-1.1)
    se = math.sqrt(0.05)
    from scipy.stats import t

    df = 0.05**2 / (0.01**2 + 0.04**2)
    assert c.p_value == pytest.approx(2 * t.sf(1.1 / se, df))
    assert c.ci_low == pytest.approx(-1.1 - t.ppf(0.975, df) * se)
    assert METHOD in c.describe()
    one = claim({0: a[0]}, b, "test_lpips", "min")
    assert one.p_value is None and "no claim" in one.describe()
    few = claim({0: {"x": 1.0}, 1: {"x": 2.0}}, {0: {"x": 1.0}, 1: {"x": 2.0}}, "test_lpips", "min")
    assert few.p_value is None and few.n_images == 1


def test_same_seeds_are_paired_by_hand():
    a = {0: {"x": 1.0, "y": 2.0, "z": 3.0}, 1: {"x": 1.2, "y": 2.2, "z": 3.2}}
    b = {0: {"x": 2.0, "y": 3.0, "z": 4.0}, 1: {"x": 2.4, "y": 3.4, "z": 4.4}}
    c = claim(a, b, "test_lpips", "min")
    # per-seed differences -1.0, -1.2: var 0.02 / 2 seeds; per-image differences all -1.1
    from scipy.stats import t

    assert c.method == PAIRED and c.effect == pytest.approx(-1.1)
    assert c.p_value == pytest.approx(2 * t.sf(1.1 / math.sqrt(0.01), 1))
