"""The paired sign-flip test and t-interval on per-image LPIPS, against hand-computed values."""

import itertools
import math

import numpy as np
import pytest

from sweeper.significance import MIN_IMAGES, paired_differences, paired_test, sign_flip_p, t_interval


def pair(diffs, base=0.3):
    """Two trials' per-image LPIPS whose differences a - b are ``diffs`` (up to rounding)."""
    names = [f"im{i}" for i in range(len(diffs))]
    b = {n: base for n in names}
    return {n: base + d for n, d in zip(names, diffs)}, b


def test_three_images_by_hand_and_too_few_to_test():
    # Sign patterns of (0.1, 0.2, 0.3): sums +-0.6 (2 patterns), +-0.4, +-0.2, 0, 0.
    # |sum| >= 0.6 in 2 of 8 patterns: p = 0.25.
    p, exact, patterns = sign_flip_p(np.array([0.1, 0.2, 0.3]))
    assert (p, exact, patterns) == (0.25, True, 8)
    r = paired_test(*pair([0.1, 0.2, 0.3]))
    assert r.n_images == 3 and r.p_value is None and not r.testable and not r.significant
    assert r.mean_diff == pytest.approx(0.2)
    text = r.describe()
    assert "too few images to test" in text and "significant" not in text


def test_six_images_by_hand():
    # All six differences negative: only the observed pattern and its mirror reach
    # |sum| = 2.1, so p = 2 / 64: the smallest p six images can give.
    r = paired_test(*pair([-0.1, -0.2, -0.3, -0.4, -0.5, -0.6]))
    assert r.p_value == 2 / 64 and r.exact and r.n_patterns == 64 and r.significant
    # One small positive difference: |sum| >= 1.9 needs the minority-sign magnitudes to
    # sum to <= 0.1, i.e. the sets {} and {0.1}, each with either global sign: 4 / 64.
    d = [-0.6, -0.5, -0.4, -0.3, -0.2, 0.1]
    r = paired_test(*pair(d))
    assert r.p_value == 4 / 64 and not r.significant and r.testable
    # t-interval by hand: mean -1.9 / 6, sum of squared deviations 37/120,
    # t_{0.975, 5} = 2.570582 (t table).
    mean, sd = -1.9 / 6, math.sqrt(37 / 120 / 5)
    half = 2.570582 * sd / math.sqrt(6)
    assert r.mean_diff == pytest.approx(mean, abs=1e-12)
    assert (r.ci_low, r.ci_high) == pytest.approx((mean - half, mean + half), abs=1e-6)
    assert "p = 0.0625" in r.describe() and "not significant at 0.05" in r.describe()
    assert "95% t-CI -0.577 .. -0.0561" in r.describe() and "exact over 64 sign patterns" in r.describe()


def test_five_images_can_never_reach_significance():
    assert MIN_IMAGES == 6
    assert sign_flip_p(np.full(5, -0.1))[0] == 2 / 32 > 0.05  # the most extreme case
    r = paired_test(*pair([-0.1, -0.2, -0.3, -0.4, -0.5]))
    assert r.p_value is None and not r.significant and "too few images to test" in r.describe()


def test_identical_trials_give_p_one():
    a, _ = pair([0.0] * 8)
    r = paired_test(a, dict(a))
    assert r.p_value == 1.0 and r.mean_diff == 0 and (r.ci_low, r.ci_high) == (0, 0) and not r.significant


def test_exact_matches_scipy_permutation_test():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(4)
    for n in (6, 9, 12):
        d = rng.normal(-0.01, 0.02, n)
        ref = stats.permutation_test(
            (d,), np.mean, permutation_type="samples", n_resamples=np.inf, alternative="two-sided"
        )
        assert sign_flip_p(d)[0] == pytest.approx(ref.pvalue, rel=1e-12)
        lo, hi = stats.t.interval(0.95, n - 1, loc=d.mean(), scale=stats.sem(d))
        assert t_interval(d) == pytest.approx((lo, hi), rel=1e-12)


def test_monte_carlo_beyond_sixteen_images():
    rng = np.random.default_rng(8)
    d = rng.normal(-0.004, 0.02, 17)
    # Exact p over all 2^17 patterns, enumerated independently of the implementation.
    obs = abs(d.sum())
    count = sum(abs(np.dot(s, d)) >= obs - 1e-12 for s in itertools.product((-1.0, 1.0), repeat=17))
    exact = count / 2**17
    p, is_exact, patterns = sign_flip_p(d, n_resamples=9999, seed=3)
    assert not is_exact and patterns == 10000
    assert round(p * 10000) == p * 10000 and p >= 1 / 10000  # (hits + 1) / (9999 + 1)
    assert abs(p - exact) < 4 * math.sqrt(exact * (1 - exact) / 9999) + 1e-4
    assert sign_flip_p(d, n_resamples=9999, seed=3)[0] == p  # fixed seed: reproducible
    # Nothing random beats an all-negative sample; the +1 correction keeps p above 0.
    assert sign_flip_p(np.full(30, -0.1), n_resamples=999, seed=0)[0] == 1 / 1000


def test_only_common_images_and_clear_errors():
    a, b = pair([-0.1, -0.2, -0.3, -0.4, -0.5, -0.6])
    r = paired_test({**a, "only_a": 9.0}, {**b, "only_b": -9.0})
    assert r == paired_test(a, b) and r.n_images == 6
    assert list(paired_differences({"z": 1.0, "a": 0.5}, {"a": 0.25, "z": 0.0})) == [0.25, 1.0]  # name order
    with pytest.raises(ValueError, match="no image in common"):
        paired_test({"x": 0.1}, {"y": 0.2})
    with pytest.raises(ValueError, match="non-finite LPIPS for image 'im2'"):
        paired_test({**a, "im2": float("nan")}, b)


def test_video_frames_are_averaged_per_sequence_before_the_test():
    """Frames of one sequence are not independent: 14 frames of 2 sequences are 2 units."""
    from sweeper.significance import paired_test

    a = {f"{s}/{t:03d}": 0.10 + 0.001 * t for s in ("chelsea", "coffee") for t in range(7)}
    b = {k: v + 0.01 for k, v in a.items()}  # every frame worse by 0.01: 14 'images' would be p < 0.001
    r = paired_test(a, b)
    assert r.n_images == 2 and r.unit == "sequence" and r.p_value is None and not r.significant
    assert r.mean_diff == pytest.approx(-0.01)
    assert "2 sequences: too few sequences to test" in r.describe()
