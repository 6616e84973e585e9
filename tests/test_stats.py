"""fgbench.stats calibration on simulated per-query outcomes with known truth (seeded, so deterministic):
CI coverage, the paired test's rejection rate under the null, its power against the predicted power, Holm,
rank intervals and the chance level.
"""

from __future__ import annotations

import math
from math import comb

import numpy as np
import pytest

from fgbench import stats as st

DRAWS = 400  # simulated draws per test-calibration check (each a 999-resample permutation test)
COVERAGE_DRAWS = 2000  # per CI-coverage check: sd of an observed 95% coverage 0.49 points, so 93-97% is ±4 sd
BINOMIAL_SD = math.sqrt(0.05 * 0.95 / DRAWS)  # sd of an observed 5% rejection rate over DRAWS: 1.09 points


def _coverage(draw, truth: float) -> float:
    hits = 0
    for i in range(COVERAGE_DRAWS):
        iv = st.metric_ci(draw(), resamples=499, seed=i)
        hits += iv.low <= truth <= iv.high
    return hits / COVERAGE_DRAWS


def test_ci_covers_the_true_mean_95_percent_of_the_time_one_seed() -> None:
    rng = np.random.default_rng(11)
    cov = _coverage(lambda: 100.0 * (rng.random(300) < 0.6), 60.0)  # R@K-like 0/100 outcomes, true 60
    assert 0.93 <= cov <= 0.97, cov


def test_ci_covers_the_true_mean_with_seed_variation() -> None:
    """3 seeds on the same queries: per-query difficulty shared, each seed shifted by a random effect.

    With 2,000 draws the coverage was 0.949-0.962 over generator seeds 11-15 (0.91-0.97 with 400 draws).
    """
    rng = np.random.default_rng(14)

    def draw() -> np.ndarray:
        difficulty = 0.9 * rng.beta(3, 2, 300) + 0.05  # true mean 0.9 * 0.6 + 0.05 = 0.59
        effect = rng.normal(0.0, 0.01, (3, 1))
        return 100.0 * (rng.random((3, 300)) < difficulty + effect)

    cov = _coverage(draw, 59.0)
    assert 0.93 <= cov <= 0.97, cov


def _paired_draw(rng: np.random.Generator, n: int, gap: float) -> tuple[np.ndarray, np.ndarray]:
    """Two methods on the same n queries: shared U-shaped difficulty (most queries easy or hard for both),
    method A's success probability `gap` (fraction) higher."""
    p = 0.9 * rng.beta(0.2, 0.2, n) + 0.05
    return 100.0 * (rng.random(n) < p + gap), 100.0 * (rng.random(n) < p)


def _rejections(gap: float, seed: int, n: int = 1000) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    rejected, sds = 0, []
    for i in range(DRAWS):
        a, b = _paired_draw(rng, n, gap)
        res = st.paired_test(a, b, resamples=999, seed=i, ci=False)
        rejected += res.p < 0.05
        sds.append(res.sd_diff)
    return rejected / DRAWS, float(np.mean(sds))


def test_paired_test_rejects_identical_runs_at_the_nominal_rate() -> None:
    rate, _ = _rejections(0.0, seed=21)
    assert abs(rate - 0.05) <= 3 * BINOMIAL_SD, rate  # 5% ± 3.3 points


def test_paired_test_detects_a_3_point_gap_at_the_predicted_power() -> None:
    rate, sd = _rejections(0.03, seed=22)
    predicted = st.power_of(3.0, sd, 1000)
    assert 0.3 < predicted < 0.9  # the check is informative: neither certain nor hopeless
    assert abs(rate - predicted) <= 0.10, (rate, predicted)
    # and the minimal detectable difference at 80% power sits above 3 points exactly when power < 80%
    assert (st.min_detectable_difference(sd, 1000) > 3.0) == (predicted < 0.8)


def test_paired_ci_contains_the_difference_and_requires_the_same_units() -> None:
    rng = np.random.default_rng(3)
    a, b = _paired_draw(rng, 500, 0.05)
    res = st.paired_test(a, b, resamples=499, seed=0)
    assert res.low < res.difference < res.high
    assert res.difference == pytest.approx(a.mean() - b.mean())
    with pytest.raises(ValueError, match="same units"):
        st.paired_test(a, b[:-1])


def test_sign_flip_p_agrees_with_scipys_permutation_test() -> None:
    from scipy.stats import permutation_test

    rng = np.random.default_rng(8)
    for gap in (0.0, 0.04, 0.08):
        a, b = _paired_draw(rng, 600, gap)
        d = a - b
        ours = st.sign_flip_p(d, 4000, np.random.default_rng(0))
        ref = permutation_test(
            (d,), np.mean, permutation_type="samples", n_resamples=4000, random_state=np.random.default_rng(1)
        ).pvalue
        assert abs(ours - ref) <= 0.03, (gap, ours, ref)  # Monte Carlo sd at p = 0.5, B = 4000: 0.008


def test_seeds_widen_the_ci() -> None:
    rng = np.random.default_rng(4)
    base = 100.0 * (rng.random(400) < 0.5)
    same = np.stack([base, base, base])  # seeds that agree on every query: nothing to add
    shifted = np.stack([base, base, np.where(rng.random(400) < 0.3, 100.0, base)])  # one seed far better
    one = st.metric_ci(base, resamples=499)
    got = st.metric_ci(same, resamples=499)
    assert (got.low, got.high) == pytest.approx((one.low, one.high))
    wide = st.metric_ci(shifted, resamples=499)
    assert wide.high - wide.low > 2 * (one.high - one.low)


def test_constant_values_give_a_point_interval() -> None:
    iv = st.metric_ci(np.full(50, 100.0))
    assert (iv.low, iv.estimate, iv.high) == (100.0, 100.0, 100.0)


def test_holm_matches_the_step_down_definition() -> None:
    adj = st.holm([0.01, 0.04, 0.03, 0.5])
    # sorted 0.01, 0.03, 0.04, 0.5 -> 4*0.01, max(.04, 3*0.03), max(.09, 2*0.04), max(.09, 0.5)
    assert adj.tolist() == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert st.holm([0.9, 0.6]).tolist() == [1.0, 1.0]


def test_rank_intervals() -> None:
    # A ahead of C; B tied with both
    better = np.array([[0, 0, 1], [0, 0, 0], [0, 0, 0]], dtype=bool)
    assert st.rank_intervals(np.array([60.0, 58.0, 50.0]), better) == [(1, 2), (1, 3), (2, 3)]


def test_chance_recall_matches_the_combinatorial_formula() -> None:
    n_pos, n_cand = np.array([1, 3, 2]), np.array([10, 20, 6])
    want = np.mean([1 - comb(c - p, 5) / comb(c, 5) for p, c in zip(n_pos, n_cand, strict=True)])
    assert st.chance_recall(n_pos, n_cand, 5) == pytest.approx(100 * want)
    assert st.chance_recall(np.array([1]), np.array([100]), 1) == pytest.approx(1.0)
