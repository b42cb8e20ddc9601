"""Is the confirmation winner really better than the runner-up, across seeds AND images?

Data: ``y[c][s, i]``, the test score of finalist ``c`` trained with seed ``s`` on image
``i`` (every run scores the same images). Model: ``y = mu_c + a_i + (ac)_ci + b_cs + e_csi``
(image effects, image-by-config interaction, seed effects, noise).

Method, "two-way seed x image t-test": the effect is ``D = mean(y_1) - mean(y_2)``.
Its variance has a seed part, estimated by Welch's formula on the per-seed means
``m_cs = mean_i y_csi`` (``s_1^2/S_1 + s_2^2/S_2``: the image effects ``a_i`` cancel
inside each seed mean, seed noise and the image-averaged noise do not), and an image
part: the image-by-config interaction, estimated by the variance over images of the
per-image differences of the config means, over ``n_images``. That second part also
holds the noise once more, so the variance is slightly over-estimated: a conservative
choice (false positives stay at or below the level; tests/test_claim.py simulates it).
Degrees of freedom: Welch-Satterthwaite over the three parts. p: two-sided t.

Why not the per-image sign-flip test of a single run per config (sweeper/significance.py):
it sees one seed per config, so the seed effect ``b_1 - b_2`` is shared by every image
and looks like a real difference (README "Choosing the winner" gives both rates).

When both finalists ran the same seeds (the confirmation's design: common random
numbers), the seed part is paired instead: the variance of the per-seed differences of
the two configs' means, over S, with min(S, n_images) - 1 df (``paired_two_way_t``). Whatever a seed does to
both runs alike cancels; with independent seed effects it is as valid, with fewer df.

Pure numpy + scipy (no torch, no Ray). Everything works on stacked simulations too:
arrays ``(..., seeds, images)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

METHOD = "two-way seed x image t-test (Welch on seed means + image-by-config term, Satterthwaite df)"
PAIRED = "two-way seed x image t-test, paired by seed (seed-mean differences + image-by-config term)"
MIN_SEEDS = 2  # per finalist: a seed variance needs two runs
MIN_IMAGES = 3  # an interaction variance needs a few images
ALPHA = 0.05


def two_way_t(y1: np.ndarray, y2: np.ndarray) -> tuple[np.ndarray, ...]:
    """(effect, standard error, df, two-sided p) of mean(y1) - mean(y2); y: (..., S_c, I)."""
    from scipy.stats import t as student

    y1, y2 = np.asarray(y1, dtype=float), np.asarray(y2, dtype=float)
    s1, s2, n_img = y1.shape[-2], y2.shape[-2], y1.shape[-1]
    m1, m2 = y1.mean(axis=-1), y2.mean(axis=-1)  # seed means (..., S)
    effect = m1.mean(axis=-1) - m2.mean(axis=-1)
    v1 = m1.var(axis=-1, ddof=1) / s1
    v2 = m2.var(axis=-1, ddof=1) / s2
    d_img = y1.mean(axis=-2) - y2.mean(axis=-2)  # per-image difference of config means (..., I)
    v3 = d_img.var(axis=-1, ddof=1) / n_img
    var = v1 + v2 + v3
    with np.errstate(divide="ignore", invalid="ignore"):
        df = var**2 / (v1**2 / (s1 - 1) + v2**2 / (s2 - 1) + v3**2 / (n_img - 1))
        se = np.sqrt(var)
        tstat = np.where(se > 0, np.abs(effect) / se, 0.0)
    df = np.where(np.isfinite(df), df, float(min(s1, s2) - 1))
    p = np.where(se > 0, 2 * student.sf(tstat, df), 1.0)
    return effect, se, df, p


def paired_two_way_t(y1: np.ndarray, y2: np.ndarray) -> tuple[np.ndarray, ...]:
    """As ``two_way_t`` when both configs ran the same seeds (row s of y1 and y2: seed s):
    the seed part is the variance of the per-seed differences over S, so whatever a seed
    does to both runs alike (data order, init, a seeded metric) cancels."""
    from scipy.stats import t as student

    y1, y2 = np.asarray(y1, dtype=float), np.asarray(y2, dtype=float)
    n_seed, n_img = y1.shape[-2], y1.shape[-1]
    d_seed = y1.mean(axis=-1) - y2.mean(axis=-1)  # (..., S)
    effect = d_seed.mean(axis=-1)
    v1 = d_seed.var(axis=-1, ddof=1) / n_seed
    v3 = (y1 - y2).mean(axis=-2).var(axis=-1, ddof=1) / n_img
    se = np.sqrt(v1 + v3)
    # df: the smaller part's (Satterthwaite's estimate is liberal when a part has 2 df:
    # 0.07 false positives at 3 seeds in tests/test_claim.py's simulation)
    df = np.full_like(se, float(min(n_seed, n_img) - 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        tstat = np.where(se > 0, np.abs(effect) / se, 0.0)
    p = np.where(se > 0, 2 * student.sf(tstat, df), 1.0)
    return effect, se, df, p


@dataclass(frozen=True)
class Claim:
    """Winner ``a`` vs runner-up ``b`` on ``metric`` (a - b); ``p_value`` None: no claim."""

    metric: str
    mode: str
    effect: float
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    n_seeds: tuple[int, int]
    n_images: int
    note: str = ""
    method: str = METHOD

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < ALPHA

    def describe(self) -> str:
        seeds = f"{self.n_seeds[0]} + {self.n_seeds[1]} seeds x {self.n_images} images"
        if self.p_value is None:
            return f"{self.metric} difference {self.effect:.3g} ({seeds}): no claim ({self.note})"
        verdict = "significant" if self.significant else "not significant"
        return (
            f"{self.metric} difference {self.effect:.3g} (95% CI {self.ci_low:.3g} .. {self.ci_high:.3g}), "
            f"p = {self.p_value:.3g}, {seeds}, {self.method}: {verdict} at {ALPHA:g}"
        )


def claim(a: dict[int, dict[str, float]], b: dict[int, dict[str, float]], metric: str, mode: str) -> Claim:
    """``a``, ``b``: {seed: {image: score}} of the winner and the runner-up. Only the
    images every run scored count."""
    from scipy.stats import t as student

    images = sorted(set.intersection(*(set(s) for s in [*a.values(), *b.values()]))) if a and b else []
    seeds = (len(a), len(b))
    ya = np.array([[a[s][i] for i in images] for s in sorted(a)], dtype=float).reshape(len(a), len(images))
    yb = np.array([[b[s][i] for i in images] for s in sorted(b)], dtype=float).reshape(len(b), len(images))
    effect = float(ya.mean() - yb.mean()) if images else math.nan
    if min(seeds) < MIN_SEEDS or len(images) < MIN_IMAGES:
        why = f"needs at least {MIN_SEEDS} seeds per finalist and {MIN_IMAGES} common images"
        return Claim(metric, mode, effect, None, None, None, seeds, len(images), why)
    if not (np.isfinite(ya).all() and np.isfinite(yb).all()):
        return Claim(metric, mode, effect, None, None, None, seeds, len(images), "a non-finite score")
    paired = sorted(a) == sorted(b)  # the confirmation gives every finalist the same seeds
    _, se, df, p = (float(x) for x in (paired_two_way_t if paired else two_way_t)(ya, yb))
    half = float(student.ppf(1 - ALPHA / 2, df)) * se
    method = PAIRED if paired else METHOD
    return Claim(metric, mode, effect, effect - half, effect + half, p, seeds, len(images), method=method)
