"""kit.scratch.stats against known values."""
import math
import statistics

import pytest

from kit.scratch import stats


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


def test_t_quantiles_are_exact_for_any_degrees_of_freedom():
    assert stats.t_quantile(11) == pytest.approx(2.201, abs=5e-4)     # 12 seeds: not z = 1.96
    assert stats.t_quantile(1) == pytest.approx(12.706, abs=5e-3)
    assert stats.t_quantile(4) == pytest.approx(2.776, abs=5e-4)
    assert stats.t_quantile(1000) == pytest.approx(stats.Z95, abs=5e-3)
    r = stats.mean_interval([1.0] * 6 + [2.0] * 6)                    # 12 values, 11 df
    sd = statistics.stdev([1.0] * 6 + [2.0] * 6)
    assert r["high"] - r["mean"] == pytest.approx(2.201 * sd / math.sqrt(12), rel=1e-3)
    with pytest.raises(ValueError, match="df"):
        stats.t_quantile(0)


def test_bootstrap_intervals_stay_inside_what_is_possible():
    # a share over 3 seeds near 1, and a KL near 0: a t-interval leaves [0, 1] and goes below 0
    shares, kls = [1.0, 1.0, 0.6], [0.15, 0.64, 0.21]
    assert stats.mean_interval(shares)["high"] > 1 and stats.mean_interval(kls)["low"] < 0
    for values, low, high in ((shares, 0.0, 1.0), (kls, 0.0, math.inf)):
        r = stats.bootstrap_mean(values)
        assert low <= min(values) <= r["low"] <= r["mean"] <= r["high"] <= max(values) <= high
    assert stats.bootstrap_mean([0.3])["low"] is None


def test_the_detectable_difference_shrinks_with_more_items_and_seeds():
    import random as _random
    rng = _random.Random(1)
    runs = lambda seeds, items, p: [[rng.random() < p for _ in range(items)] for _ in range(seeds)]
    small = stats.seeds_and_items_bootstrap(runs(3, 100, 0.5), runs(3, 100, 0.5), n_boot=2000)
    large = stats.seeds_and_items_bootstrap(runs(5, 800, 0.5), runs(5, 800, 0.5), n_boot=2000)
    assert small["detectable"] == pytest.approx(stats.DETECTABLE_SE * small["se"])
    assert large["detectable"] < small["detectable"] / 2                # about sqrt(800 * 5 / 300)
    # a continuous per-item metric (an answer's NLL) works the same way
    nll = stats.seeds_and_items_bootstrap([[1.0, 2.0, 3.0]] * 2, [[0.5, 1.5, 2.5]] * 2, n_boot=500)
    assert nll["diff"] == pytest.approx(0.5) and nll["low"] == pytest.approx(0.5) and nll["verdict"] == "different"


def test_the_mean_over_seeds_and_items_stays_inside_what_is_possible():
    import random
    rng = random.Random(0)
    items = [rng.random() < 0.7 for _ in range(200)]
    same = [[float(x) for x in items]] * 4                       # four seeds that agree
    spread = [[float(x and rng.random() < 0.9) for x in items] for _ in range(4)]   # seeds that differ
    a, b = stats.seeds_and_items_mean(same), stats.seeds_and_items_mean(spread)
    assert a["mean"] == pytest.approx(sum(items) / 200)
    for d in (a, b):
        assert 0 <= d["low"] <= d["mean"] <= d["high"] <= 1
    kl = stats.seeds_and_items_mean([[0.0] * 50 + [0.2] * 3, [0.0] * 53])    # mostly zero: never below
    assert kl["low"] >= 0
    assert b["n_seeds"] == 4 and b["n_items"] == 200
    with pytest.raises(ValueError, match="same non-empty"):
        stats.seeds_and_items_mean([[1.0], [1.0, 2.0]])
