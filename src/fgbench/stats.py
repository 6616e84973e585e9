"""Confidence intervals, paired tests, multiple-comparison correction and power for leaderboard metrics.

docs/statistics.md explains the choices; in short:

- A metric is a mean over resampling units (queries, or the image a caption belongs to) of per-unit values,
  measured for S seeds on the same units: a value matrix [S, N].
- CI (`metric_ci`): two independent sources of variation, added as variances. The query part is scipy's
  BCa bootstrap of the seed-averaged per-unit values over units (percentile where BCa is degenerate); the
  seed part (S > 1) is the between-seed variance component of the per-seed metrics (minus the per-unit
  seed noise the bootstrap already counts), t-quantile x sqrt(component / S). The two
  half-widths combine in quadrature on each side. Why not a two-stage (seeds x units) bootstrap: with the
  usual 1 to 5 seeds, resampling seeds understates their spread badly (a 3-seed bootstrap of the seed mean
  has about 2/3 of the true variance and a normal quantile where a t quantile belongs); the t term is exact
  for normal seed effects and the bootstrap handles the skewed, bounded query part.
- Paired test (`paired_test`): per-unit values averaged over each method's seeds, paired on unit ids; the
  p-value is the permutation test with sign flips of the per-unit differences (scipy's
  permutation_test(permutation_type='samples') computes the same; `sign_flip_p` is its fast form), so it
  asks "could these queries have produced this gap by chance?" for the
  models as trained. The difference's CI is built like `metric_ci` (bootstrap of the per-unit differences,
  plus each method's seed term).
- Correction (`holm`): Holm's step-down over all pairs of a table. It controls the family-wise error rate
  (the chance of any false "A beats B" in the table) under any dependence between the tests, and is
  uniformly more powerful than Bonferroni. A leaderboard's claims are about individual pairs ("is the
  leader really ahead of B?"), so the family-wise guarantee, not a false-discovery rate (BH), fits.
- Power (`min_detectable_difference`): normal approximation of the paired test, (z_{1-a/2} + z_{power}) *
  sd(d) / sqrt(N).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

LEVEL = 0.95
ALPHA = 0.05
POWER = 0.80
DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0


def _as_matrix(values: np.ndarray) -> np.ndarray:
    """[N] -> [1, N]; [S, N] stays; anything else is refused."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[None, :]
    if v.ndim != 2 or v.shape[1] < 2:
        raise ValueError(f"expected a [seeds, units] value matrix with >= 2 units, got shape {v.shape}")
    return v


def _mean_stat(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def bootstrap_half_widths(
    x: np.ndarray, resamples: int, seed: int | np.random.Generator | None, level: float = LEVEL
) -> tuple[float, float]:
    """(mean - low, high - mean) of scipy's BCa bootstrap CI of mean(x); 0 for constant x."""
    x = np.asarray(x, dtype=np.float64)
    mean = float(x.mean())
    if np.ptp(x) == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa's degenerate-data warning: handled by the fallback below
        res = sps.bootstrap(
            (x,), _mean_stat, n_resamples=resamples, confidence_level=level, method="BCa",
            vectorized=True, random_state=rng,
        )  # fmt: skip
        low, high = res.confidence_interval
        if not (np.isfinite(low) and np.isfinite(high)):
            res = sps.bootstrap(
                (x,), _mean_stat, n_resamples=resamples, confidence_level=level, method="percentile",
                vectorized=True, random_state=rng,
            )  # fmt: skip
            low, high = res.confidence_interval
    return max(mean - float(low), 0.0), max(float(high) - mean, 0.0)


def seed_half_width(v: np.ndarray, level: float = LEVEL) -> float:
    """The seed term of a [S, N] matrix: t_{S-1} quantile x sqrt(seed variance component / S); 0 for S=1.

    The variance of the per-seed metrics also holds the per-unit seed-to-seed noise (each seed's mean has
    mean_u var_s(v[:, u]) / N of it), which the unit bootstrap of the seed-averaged values already counts;
    it is subtracted (one-way random-effects ANOVA estimate, floored at 0) so it is not counted twice.
    """
    s, n = v.shape
    if s < 2:
        return 0.0
    between = float(np.var(v.mean(axis=1), ddof=1))
    within = float(np.mean(np.var(v, axis=0, ddof=1))) / n
    t = sps.t.ppf(0.5 + level / 2, df=s - 1)
    return float(t * math.sqrt(max(between - within, 0.0) / s))


@dataclass(frozen=True)
class Interval:
    """A point estimate and its CI, with how it was computed (recorded beside the numbers)."""

    estimate: float
    low: float
    high: float
    n_units: int
    n_seeds: int
    resamples: int
    seed: int | None


def metric_ci(
    values: np.ndarray,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int | None = DEFAULT_SEED,
    level: float = LEVEL,
) -> Interval:
    """CI of the metric mean(values) from a [seeds, units] (or [units]) matrix: queries and seeds."""
    v = _as_matrix(values)
    mean = float(v.mean())
    q_low, q_high = bootstrap_half_widths(v.mean(axis=0), resamples, seed, level)
    s_hw = seed_half_width(v, level)
    low = mean - math.hypot(q_low, s_hw)
    high = mean + math.hypot(q_high, s_hw)
    return Interval(mean, low, high, v.shape[1], v.shape[0], resamples, seed)


@dataclass(frozen=True)
class PairedResult:
    """A - B on shared units: difference, its CI, the permutation p-value and the sd of per-unit diffs."""

    difference: float
    low: float
    high: float
    p: float
    sd_diff: float
    n_units: int
    resamples: int
    seed: int | None


def paired_test(
    a: np.ndarray,
    b: np.ndarray,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int | None = DEFAULT_SEED,
    level: float = LEVEL,
    ci: bool = True,
) -> PairedResult:
    """Compare two methods on the same units (columns aligned): [S_a, N] and [S_b, N] value matrices.

    `ci=False` skips the difference's CI (NaN bounds), for simulations that only need the p-value.
    """
    a, b = _as_matrix(a), _as_matrix(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired test needs the same units: {a.shape[1]} vs {b.shape[1]}")
    d = a.mean(axis=0) - b.mean(axis=0)
    diff = float(d.mean())
    rng = np.random.default_rng(seed)
    p = 1.0 if np.all(d == 0) else sign_flip_p(d, resamples, rng)
    if not ci:
        return PairedResult(diff, math.nan, math.nan, p, float(np.std(d, ddof=1)), len(d), resamples, seed)
    q_low, q_high = bootstrap_half_widths(d, resamples, rng, level)
    s_hw = math.hypot(seed_half_width(a, level), seed_half_width(b, level))
    return PairedResult(
        diff,
        diff - math.hypot(q_low, s_hw),
        diff + math.hypot(q_high, s_hw),
        p,
        float(np.std(d, ddof=1)),
        len(d),
        resamples,
        seed,
    )


def sign_flip_p(d: np.ndarray, resamples: int, rng: np.random.Generator, batch: int = 1024) -> float:
    """Two-sided Monte Carlo p-value of the paired sign-flip permutation test of mean(d) = 0.

    The same test as scipy.stats.permutation_test((d,), mean, permutation_type="samples") (tests compare
    the two), computed as one matrix product per batch of random sign vectors: scipy's generic pairing code
    takes about 0.6 s per pair at 2,048 queries and 9,000 permutations, which a 10-row table (45 pairs)
    cannot afford. p = (1 + #{|mean(s * d)| >= |mean(d)|}) / (B + 1), never 0.
    """
    d = np.asarray(d, dtype=np.float64)
    observed = abs(d.sum())
    tol = 1e-9 * max(np.abs(d).sum(), 1.0)  # count ties with the observed statistic as extreme
    total, extreme = 0, 0
    while total < resamples:
        b = min(batch, resamples - total)
        flips = (rng.random((b, len(d))) < 0.5).astype(np.float64)  # 1 = this unit's sign is flipped
        null = d.sum() - 2.0 * (flips @ d)
        extreme += int(np.sum(np.abs(null) >= observed - tol))
        total += b
    return (1 + extreme) / (resamples + 1)


def holm(pvalues: np.ndarray | list[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (monotone, capped at 1), in the input order."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def rank_intervals(means: np.ndarray, better: np.ndarray) -> list[tuple[int, int]]:
    """(best, worst) rank of each method: `better[i, j]` says i is significantly ahead of j.

    Best rank = 1 + the methods significantly ahead of it; worst = M - the methods it is significantly
    ahead of. Methods not significantly behind the leader share rank 1 as their best rank.
    """
    m = len(means)
    better = np.asarray(better, dtype=bool)
    return [(1 + int(better[:, i].sum()), m - int(better[i, :].sum())) for i in range(m)]


def power_of(delta: float, sd_diff: float, n_units: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired test (normal approximation) for a true difference `delta`."""
    if sd_diff <= 0:
        return 1.0 if delta else alpha
    z = sps.norm.ppf(1 - alpha / 2)
    shift = abs(delta) * math.sqrt(n_units) / sd_diff
    return float(sps.norm.cdf(shift - z) + sps.norm.cdf(-shift - z))


def min_detectable_difference(
    sd_diff: float, n_units: int, alpha: float = ALPHA, power: float = POWER
) -> float:
    """Smallest true difference (metric units) the two-sided paired test finds with `power` at `alpha`."""
    return float((sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)) * sd_diff / math.sqrt(n_units))


def binomial_sd_diff(percent: float) -> float:
    """Conservative sd (points) of the per-query difference of two independent 0/100 outcomes at `percent`.

    Real methods agree on most queries (positively correlated), so the observed sd is usually smaller.
    """
    p = min(max(percent / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(2 * p * (1 - p))


def chance_recall(n_pos: np.ndarray, n_cand: np.ndarray, k: int) -> float:
    """Expected R@K (percent) under a random ranking: mean over queries of 1 - C(c - p, K) / C(c, K)."""
    n_pos = np.asarray(n_pos, dtype=np.float64)
    n_cand = np.asarray(n_cand, dtype=np.float64)
    # C(c-p, K)/C(c, K) = prod_{i<K} (c-p-i)/(c-i), computed as a product to stay finite for large c
    i = np.arange(k, dtype=np.float64)[None, :]
    ratio = np.clip((n_cand[:, None] - n_pos[:, None] - i) / np.maximum(n_cand[:, None] - i, 1.0), 0.0, 1.0)
    miss = np.prod(ratio, axis=1)
    return float(100.0 * np.mean(1.0 - miss))
