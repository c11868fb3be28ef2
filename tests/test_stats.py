"""kit.stats against known values."""
import math

import pytest

from kit import stats


def test_wilson_interval_known_values():
    lo, hi = stats.wilson(18, 40)                       # the example: about 31-60%
    assert lo == pytest.approx(0.3071, abs=1e-4) and hi == pytest.approx(0.6017, abs=1e-4)
    lo, hi = stats.wilson(0, 10)                        # never [0, 0]: 0/10 allows up to 28%
    assert lo == 0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = stats.wilson(10, 10)
    assert hi == pytest.approx(1) and lo == pytest.approx(0.7225, abs=1e-4)
    assert stats.wilson(100, 200)[1] - stats.wilson(100, 200)[0] < stats.wilson(5, 10)[1] - stats.wilson(5, 10)[0]
    with pytest.raises(ValueError, match="0 <= k <= n"):
        stats.wilson(11, 10)


def test_exact_mcnemar_known_values():
    # 10 items only a gets right, 2 only b: p = 2 * (C(12,0) + C(12,1) + C(12,2)) / 2**12
    a = [True] * 10 + [False] * 2 + [True] * 50 + [False] * 38
    b = [False] * 10 + [True] * 2 + [True] * 50 + [False] * 38
    r = stats.mcnemar(a, b)
    assert (r["only_a"], r["only_b"]) == (10, 2)
    assert r["p"] == pytest.approx(2 * (1 + 12 + 66) / 4096) and r["verdict"] == "different"
    even = stats.mcnemar([True, False] * 5, [False, True] * 5)       # 5 vs 5: no evidence
    assert even["p"] == 1.0 and even["verdict"] == "within noise"
    assert stats.mcnemar([True] * 4, [True] * 4)["p"] == 1.0        # no discordant pair
    with pytest.raises(ValueError, match="same items"):
        stats.mcnemar([True], [True, False])


def test_paired_bootstrap_sees_a_real_difference_and_not_noise():
    a = [1.0] * 60 + [0.0] * 140
    b = [1.0] * 20 + [0.0] * 180                        # b a subset of a: 40 items only a gets
    r = stats.paired_bootstrap(a, b)
    assert r["diff"] == pytest.approx(0.2) and r["low"] > 0.1 and r["verdict"] == "different"
    same = stats.paired_bootstrap([1.0, 0.0] * 50, [0.0, 1.0] * 50)
    assert same["low"] < 0 < same["high"] and same["verdict"] == "within noise"
    assert stats.paired_bootstrap(a, b, seed=3) == stats.paired_bootstrap(a, b, seed=3)


def test_mean_interval_over_seeds():
    r = stats.mean_interval([0.30, 0.34, 0.32])
    assert r["mean"] == pytest.approx(0.32) and r["n"] == 3
    assert r["high"] - r["mean"] == pytest.approx(4.303 * 0.02 / math.sqrt(3), rel=1e-3)
    assert stats.mean_interval([0.5])["low"] is None


def test_seeds_and_items_bootstrap_holds_the_noise_of_training():
    import random as _random
    items = 200
    # two methods, three seeds each; the same true accuracy, but seeds that vary a lot
    rng = _random.Random(0)
    noisy = lambda p: [rng.random() < p for _ in range(items)]
    a = [noisy(0.40), noisy(0.50), noisy(0.45)]
    b = [noisy(0.44), noisy(0.46), noisy(0.47)]
    r = stats.seeds_and_items_bootstrap(a, b, n_boot=2000)
    assert r["low"] < 0 < r["high"] and r["verdict"] == "within noise"
    items_only = stats.paired_bootstrap([sum(c) / 3 for c in zip(*a)], [sum(c) / 3 for c in zip(*b)])
    assert r["high"] - r["low"] > items_only["high"] - items_only["low"]   # wider: training's noise too
    better = [[True] * 120 + [False] * 80] * 3                                # a clear gap, seed after seed
    worse = [[True] * 60 + [False] * 140] * 3
    assert stats.seeds_and_items_bootstrap(better, worse, n_boot=2000)["verdict"] == "different"
    with pytest.raises(ValueError, match="same non-empty list of items"):
        stats.seeds_and_items_bootstrap([[True]], [[True, False]])
