"""How sure can we be? Intervals and paired tests for accuracies measured on a few hundred items.

    wilson(k, n)                     95% interval of a success rate k / n
    mcnemar(a, b)                    exact McNemar test: do two methods differ on the same items?
    paired_bootstrap(a, b)           interval of the difference in accuracy, resampling items
    seeds_and_items_bootstrap(a, b)  the same, resampling the seeds too (training is random)
    mean_interval(values)            mean and 95% t-interval over seeds

An accuracy of 18 / 40 is "45%", but any rate from about 31% to 60% would produce 18 / 40 often
(Wilson's interval). Two methods scored on the SAME test items are compared pair by pair: only
the items where exactly one of them is right carry information (McNemar 1947), so a paired test
sees differences that two separate intervals hide, and does not see differences that are noise.
"""
from __future__ import annotations

import math
import random
import statistics

Z95 = 1.959963984540054    # the standard normal's 97.5% quantile
ALPHA = 0.05               # "different" when p < ALPHA (or the interval excludes 0)
# Student's t 97.5% quantiles for 1..10 degrees of freedom (n - 1 seeds)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
       10: 2.228}


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of the success rate k / n (Wilson 1927): unlike k/n +- 1.96 s.e.,
    it stays inside [0, 1] and is honest at 0 / n and n / n."""
    if not (isinstance(k, int) and isinstance(n, int)) or n < 1 or not 0 <= k <= n:
        raise ValueError(f"wilson needs whole numbers 0 <= k <= n and n >= 1; got k={k!r}, n={n!r}.")
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _check_pairs(a, b) -> None:
    if len(a) != len(b) or not a:
        raise ValueError(f"a paired test needs two equally long, non-empty lists of results on the "
                         f"same items; got {len(a)} and {len(b)}.")


def mcnemar(a: list[bool], b: list[bool]) -> dict:
    """Exact McNemar test on paired right/wrong results (a[i], b[i] on the same item i).
    b01 = items only b gets right, b10 = only a; under "no difference" each discordant item
    is a fair coin, so p = P(a split at least this uneven) from the binomial(b01 + b10, 1/2).
    -> {"only_a", "only_b", "p", "verdict": "different" | "within noise"}"""
    _check_pairs(a, b)
    only_a = sum(bool(x) and not bool(y) for x, y in zip(a, b))
    only_b = sum(bool(y) and not bool(x) for x, y in zip(a, b))
    n, low = only_a + only_b, min(only_a, only_b)
    p = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(low + 1)) / 2 ** n)
    return {"only_a": only_a, "only_b": only_b, "p": p,
            "verdict": "different" if p < ALPHA else "within noise"}


def paired_bootstrap(a: list[float], b: list[float], n_boot: int = 10_000, seed: int = 0) -> dict:
    """Mean of a - b over items, and its 95% percentile interval from resampling the items
    (with replacement, seeded). a and b may be averages over seeds per item.
    -> {"diff", "low", "high", "verdict"}"""
    _check_pairs(a, b)
    d = [float(x) - float(y) for x, y in zip(a, b)]
    rng, n = random.Random(seed), len(d)
    means = sorted(sum(d[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    low, high = means[int(0.025 * n_boot)], means[int(0.975 * n_boot) - 1]
    return {"diff": sum(d) / n, "low": low, "high": high,
            "verdict": "different" if low > 0 or high < 0 else "within noise"}


def seeds_and_items_bootstrap(a_runs: list[list[bool]], b_runs: list[list[bool]],
                              n_boot: int = 10_000, seed: int = 0) -> dict:
    """Difference in accuracy between two methods, each run with several seeds on the SAME
    test items: a_runs[s][i] is seed s's result on item i. Each replicate resamples the items
    (the same ones for both methods) and, for each method, its seeds, so the interval holds
    the noise of the test set AND of training (data order, initialisation). With few seeds
    it is wide, as it should be. -> {"diff", "low", "high", "verdict"}"""
    if not a_runs or not b_runs or len({len(r) for r in a_runs + b_runs}) != 1 or not a_runs[0]:
        raise ValueError("seeds_and_items_bootstrap needs, for each method, one or more runs scored on "
                         "the same non-empty list of items.")
    rng, n = random.Random(seed), len(a_runs[0])
    mean = lambda runs: sum(map(sum, runs)) / (len(runs) * n)
    diffs = []
    for _ in range(n_boot):
        items = [rng.randrange(n) for _ in range(n)]
        ra = [a_runs[rng.randrange(len(a_runs))] for _ in a_runs]
        rb = [b_runs[rng.randrange(len(b_runs))] for _ in b_runs]
        diffs.append(sum(r[i] for r in ra for i in items) / (len(ra) * n)
                     - sum(r[i] for r in rb for i in items) / (len(rb) * n))
    diffs.sort()
    low, high = diffs[int(0.025 * n_boot)], diffs[int(0.975 * n_boot) - 1]
    return {"diff": mean(a_runs) - mean(b_runs), "low": low, "high": high,
            "verdict": "different" if low > 0 or high < 0 else "within noise"}


def mean_interval(values: list[float]) -> dict:
    """Mean and 95% t-interval over a few values (seeds). -> {"mean", "low", "high", "n"}"""
    if not values:
        raise ValueError("mean_interval needs at least one value.")
    m = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": m, "low": None, "high": None, "n": 1}
    half = T95.get(len(values) - 1, Z95) * statistics.stdev(values) / math.sqrt(len(values))
    return {"mean": m, "low": m - half, "high": m + half, "n": len(values)}
