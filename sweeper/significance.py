"""Is the winner really better than the runner-up? A paired test on per-image scores
(the declared objective's metric; LPIPS by default).

Test: the sign-flip permutation test of the mean paired difference d_i = a_i - b_i.
Under H0 (the two trials are exchangeable on every image) each d_i is as likely to be
-d_i, so the 2^n sign patterns are equally likely; p is the share of patterns whose
|mean| is at least the observed one (two-sided). Exact up to ``EXACT_MAX`` images;
beyond, ``n_resamples`` random patterns from a fixed seed with the +1 correction
(observed pattern counted once), so p is never 0.

With n images the smallest two-sided p is 2 / 2^n: 0.0625 for 5 images, 0.031 for 6.
Below ``MIN_IMAGES`` = 6 no difference can reach p < 0.05, so the result says "too few
images" instead of a verdict.

Effect size: the mean paired difference with a t-based 95% confidence interval
(mean +- t_{0.975, n-1} * sd / sqrt(n)); it assumes roughly normal differences, the
p-value does not. Pure numpy (+ scipy's t quantile, which scikit-image depends on).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

EXACT_MAX = 16  # 2^16 = 65536 patterns: exact enumeration stays cheap
MIN_IMAGES = 6  # fewest images for which p < 0.05 is possible (2 / 2^6 = 0.031)
ALPHA = 0.05


@dataclass(frozen=True)
class PairedTest:
    """Winner ``a`` vs runner-up ``b``. For LPIPS (lower is better) a negative
    ``mean_diff`` means ``a`` is better. ``p_value`` is None with too few images."""

    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float | None
    n_images: int
    exact: bool  # all 2^n sign patterns (else Monte-Carlo)
    n_patterns: int  # patterns the p-value is over (2^n, or resamples + 1)
    unit: str = "image"  # what one paired difference is: an image, or a video sequence
    metric: str = "LPIPS"  # the declared objective's metric the differences are of

    @property
    def testable(self) -> bool:
        return self.n_images >= MIN_IMAGES

    @property
    def significant(self) -> bool:
        return self.testable and self.p_value is not None and self.p_value < ALPHA

    def describe(self) -> str:
        n = f"{self.n_images} {self.unit}{'s' * (self.n_images != 1)}"
        if not self.testable:
            return (
                f"mean {self.metric} difference {self.mean_diff:.3g} over {n}: too few {self.unit}s to test "
                f"(a paired test needs at least {MIN_IMAGES}), no claim either way"
            )
        how = (
            f"exact over {self.n_patterns} sign patterns"
            if self.exact
            else f"{self.n_patterns - 1} random sign patterns"
        )
        verdict = "significant" if self.significant else "not significant"
        ci = f"95% t-CI {self.ci_low:.3g} .. {self.ci_high:.3g}"
        return (
            f"mean {self.metric} difference {self.mean_diff:.3g} ({ci}), sign-flip test "
            f"p = {self.p_value:.3g} ({how}, two-sided), {n}: {verdict} at {ALPHA:g}"
        )


def paired_differences(a: Mapping[str, float], b: Mapping[str, float]) -> np.ndarray:
    """a - b on the images both score, in sorted name order (not dict order)."""
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError(f"paired test: no image in common ({len(a)} vs {len(b)} images)")
    d = np.array([float(a[k]) - float(b[k]) for k in common])
    bad = [k for k, v in zip(common, d) if not math.isfinite(v)]
    if bad:
        raise ValueError(f"paired test: non-finite LPIPS for image {bad[0]!r}")
    return d


def sign_flip_p(d: np.ndarray, n_resamples: int = 9999, seed: int = 0) -> tuple[float, bool, int]:
    """(two-sided p, exact?, number of patterns) for H0: mean(d) = 0 by sign flips."""
    d = np.asarray(d, dtype=float)
    n = len(d)
    if n <= EXACT_MAX:
        bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
        signs = 1.0 - 2.0 * bits
    else:
        if int(n_resamples) < 1:
            raise ValueError(f"sign_flip_p: n_resamples must be >= 1, got {n_resamples}")
        signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(int(n_resamples), n))
    sums = np.abs(signs @ d)
    observed = abs(float(d.sum()))
    # Relative tolerance: a pattern equal to the observed one up to rounding counts as >=.
    hits = int(np.count_nonzero(sums >= observed - 1e-9 * max(1.0, np.abs(d).sum())))
    if n <= EXACT_MAX:
        return hits / len(signs), True, len(signs)
    return (hits + 1) / (len(signs) + 1), False, len(signs) + 1


def t_interval(d: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """t-based confidence interval of mean(d); a point for one image (no spread known)."""
    n, m = len(d), float(np.mean(d))
    if n < 2:
        return m, m
    from scipy.stats import t  # lazy: only the significance line needs it

    half = float(t.ppf(0.5 + level / 2, n - 1)) * float(np.std(d, ddof=1)) / math.sqrt(n)
    return m - half, m + half


def per_image_scores(row, column: str = "per_image_lpips_json") -> dict[str, float] | None:
    """{image: score} from a results-table row's JSON column, None when it has none."""
    import json

    raw = row.get(column)
    if isinstance(raw, str) and raw.strip():
        raw = json.loads(raw)
    return {str(k): float(v) for k, v in raw.items()} if isinstance(raw, dict) and raw else None


def independent_units(scores: Mapping[str, float]) -> tuple[dict[str, float], str]:
    """Per-image scores -> the units a paired test may treat as independent. Video frames
    (``<sequence>/<frame>``) of one sequence are not independent draws: they are averaged
    per sequence, and the sequence is the unit."""
    if scores and all("/" in k for k in scores):
        groups: dict[str, list[float]] = {}
        for k, v in scores.items():
            groups.setdefault(k.split("/", 1)[0], []).append(float(v))
        return {k: float(np.mean(v)) for k, v in groups.items()}, "sequence"
    return dict(scores), "image"


def paired_test(
    a: Mapping[str, float],
    b: Mapping[str, float],
    n_resamples: int = 9999,
    seed: int = 0,
    metric: str = "LPIPS",
) -> PairedTest:
    """Sign-flip test + t-interval of a - b over the images (or video sequences) both
    trials scored."""
    (a, unit), (b, _) = independent_units(a), independent_units(b)
    d = paired_differences(a, b)
    lo, hi = t_interval(d)
    if len(d) < MIN_IMAGES:
        return PairedTest(float(d.mean()), lo, hi, None, len(d), True, 2 ** len(d), unit, metric)
    p, exact, patterns = sign_flip_p(d, n_resamples, seed)
    return PairedTest(float(d.mean()), lo, hi, p, len(d), exact, patterns, unit, metric)
