"""Identity sampling of the pair stream (``clerf_ray.data.sampling``) on tiny identity ranges,
where an off-by-one at either end of ``[low, high)`` shows: both identities of a pair always
inside the range, never equal, every ordered pair drawn, and all of them about equally often.

Expected frequencies are counted by hand (each of the k (k - 1) ordered pairs of distinct
identities has probability 1 / (k (k - 1))); the draws are seeded, so the test is deterministic.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from clerf_ray.config import PairDataConfig
from clerf_ray.data.sampling import sample_synthetic, two_distinct
from clerf_ray.render import make_renderer

# Far from 0, so that a draw that ignores the low end (integers(hi - lo)) lands outside.
LOW = 2_000_000


def check_pairs(a: np.ndarray, b: np.ndarray, lo: int, hi: int) -> None:
    """Both in [lo, hi), never equal, every ordered pair of distinct values drawn, counts
    consistent with the uniform distribution over those pairs (chi-square, p > 1e-4)."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    assert a.min() >= lo and b.min() >= lo, (a.min(), b.min())
    assert a.max() < hi and b.max() < hi, (a.max(), b.max())
    assert not np.any(a == b), "a pair drew one identity twice"
    pairs = list(itertools.permutations(range(lo, hi), 2))
    counts = np.array([np.sum((a == x) & (b == y)) for x, y in pairs])
    assert counts.sum() == len(a)  # nothing outside the k (k - 1) pairs
    assert counts.min() > 0, dict(zip(pairs, counts, strict=True))
    expected = len(a) / len(pairs)
    # Each count is binomial; 5 sigma of it is far beyond chance yet well below what a skewed
    # draw gives (an identity drawn half as often moves its pairs by > 30 sigma at these sizes).
    sigma = np.sqrt(expected * (1 - 1 / len(pairs)))
    assert np.abs(counts - expected).max() < 5 * sigma, (counts, expected)
    assert stats.chisquare(counts).pvalue > 1e-4, counts


@pytest.mark.parametrize("k", [2, 3])
def test_two_distinct_on_a_tiny_range(k):
    rng = np.random.default_rng(11)
    draws = np.array([two_distinct(rng, LOW, LOW + k) for _ in range(6000)])
    check_pairs(draws[:, 0], draws[:, 1], LOW, LOW + k)
    # Each identity, first or second, about equally often (1 / k each).
    for col in (0, 1):
        share = np.bincount(draws[:, col] - LOW, minlength=k) / len(draws)
        np.testing.assert_allclose(share, 1 / k, atol=0.03)


@pytest.mark.parametrize("k", [2, 3])
def test_sample_synthetic_draws_distinct_identities_from_the_configured_range(k):
    cfg = PairDataConfig.from_defaults(
        identities=(LOW, LOW + k), renderer_options={"image_size": 8}, seed=5
    )
    pose_range = make_renderer("procedural", image_size=8).pose_range
    n = 3000
    out = sample_synthetic({"id": np.arange(n)}, cfg, 0, pose_range, None)
    np.testing.assert_array_equal(out["pair_id"], np.arange(n))
    assert out["identity_a"].dtype == np.int64 and out["identity_b"].dtype == np.int64
    check_pairs(out["identity_a"], out["identity_b"], LOW, LOW + k)
    # The identity draw is keyed by row, not by batch: the rows of a second, shifted batch agree.
    part = sample_synthetic({"id": np.arange(n - 7, n + 5)}, cfg, 0, pose_range, None)
    np.testing.assert_array_equal(part["identity_a"][:7], out["identity_a"][-7:])
    np.testing.assert_array_equal(part["identity_b"][:7], out["identity_b"][-7:])


def test_identity_ranges_below_two_seeds_are_refused():
    # [lo, lo + 2) is the smallest range that holds a pair of distinct identities.
    PairDataConfig.from_defaults(identities=(LOW, LOW + 2))
    for bad in [(LOW, LOW + 1), (LOW, LOW), (-1, 5)]:
        with pytest.raises(ValueError, match="data.identities"):
            PairDataConfig.from_defaults(identities=bad)
