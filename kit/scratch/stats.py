"""How sure can we be? Intervals and paired tests for what a few seeds and a few hundred items measure.

    wilson(k, n)                      95% interval of a success rate k / n (stays in [0, 1])
    mcnemar(a, b)                     exact McNemar test: do two methods differ on the same items?
    paired_bootstrap(a, b)            interval of a mean difference on the same items
    seeds_and_items_bootstrap(a, b)   the same, resampling the seeds too (training is random),
                                      with the smallest difference the design could detect
    mean_interval(values)             mean and 95% t-interval (exact t quantiles, scipy.stats)
    bootstrap_mean(values)            mean and 95% percentile interval: never outside the values'
                                      own range, so a KL stays >= 0 and a share inside [0, 1]

An accuracy of 18 / 40 is "45%", but any rate from about 31% to 60% would produce 18 / 40 often
(Wilson's interval). Two methods scored on the SAME test items are compared item by item: only
the items where they differ carry information (McNemar 1947), so a paired test sees differences
that two separate intervals hide, and does not see differences that are noise. A t-interval
(mean +- t s / sqrt(n)) suits an unbounded quantity; on a bounded one (a KL, a share) over 3 to 5
seeds it can reach below 0 or above 1, so those get bootstrap percentile intervals instead.
"""
from __future__ import annotations

import math
import random
import statistics

import torch
from scipy import stats as scipy_stats

LEVEL = 0.95               # every interval here is a 95% interval
ALPHA = 1 - LEVEL          # "different" when p < ALPHA (or the interval excludes 0)
Z95 = float(scipy_stats.norm.ppf(1 - ALPHA / 2))   # 1.95996...
# A difference of (z_{1-alpha/2} + z_{power}) standard errors is found with 80% probability
DETECTABLE_SE = Z95 + float(scipy_stats.norm.ppf(0.80))   # 2.80 standard errors


def t_quantile(df: int) -> float:
    """Student's t 97.5% quantile for `df` degrees of freedom (12.71 at 1, 2.20 at 11)."""
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"df (degrees of freedom) must be a whole number >= 1; got {df!r}.")
    return float(scipy_stats.t.ppf(1 - ALPHA / 2, df))


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


def _percentiles(values: list[float]) -> tuple[float, float]:
    values = sorted(values)
    n = len(values)
    return values[int(ALPHA / 2 * n)], values[int((1 - ALPHA / 2) * n) - 1]


def _verdict(low: float, high: float) -> str:
    return "different" if low > 0 or high < 0 else "within noise"


def paired_bootstrap(a: list[float], b: list[float], n_boot: int = 10_000, seed: int = 0) -> dict:
    """Mean of a - b over items, and its 95% percentile interval from resampling the items
    (with replacement, seeded). a and b may be averages over seeds per item.
    -> {"diff", "low", "high", "verdict"}"""
    _check_pairs(a, b)
    d = [float(x) - float(y) for x, y in zip(a, b)]
    rng, n = random.Random(seed), len(d)
    low, high = _percentiles([sum(d[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot)])
    return {"diff": sum(d) / n, "low": low, "high": high, "verdict": _verdict(low, high)}


def _replicate_means(runs: list[list[float]], items: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """(n_boot,) means of bootstrap replicates: each draws the runs' seeds with replacement, then
    averages the items drawn in `items` (n_boot, n) over the seeds drawn."""
    values = torch.tensor(runs, dtype=torch.float64)            # (seeds, n)
    n_boot = items.shape[0]
    picks = torch.randint(len(runs), (n_boot, len(runs)), generator=g)
    counts = torch.zeros(n_boot, len(runs), dtype=torch.float64).scatter_add_(
        1, picks, torch.ones_like(picks, dtype=torch.float64))
    per_item = counts @ values / len(runs)                      # (n_boot, n): mean over the seeds drawn
    return per_item.gather(1, items).mean(1)


def seeds_and_items_bootstrap(a_runs: list[list[float]], b_runs: list[list[float]],
                              n_boot: int = 4_000, seed: int = 0) -> dict:
    """Difference in a per-item metric (right/wrong, or an answer's NLL) between two methods,
    each run with several seeds on the SAME test items: a_runs[s][i] is seed s's value on item i.
    Each replicate resamples the items (the same ones for both methods) and, for each method, its
    seeds, so the interval holds the noise of the test set AND of training. "detectable" is the
    smallest true difference this design (these seeds, these items) finds 4 times in 5 at the 5%
    level: 2.8 standard errors of the difference.
    -> {"diff", "low", "high", "se", "detectable", "verdict"}"""
    if not a_runs or not b_runs or len({len(r) for r in a_runs + b_runs}) != 1 or not a_runs[0]:
        raise ValueError("seeds_and_items_bootstrap needs, for each method, one or more runs scored on "
                         "the same non-empty list of items.")
    n = len(a_runs[0])
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(n, (n_boot, n), generator=g)          # the same items for both methods
    diffs = (_replicate_means(a_runs, items, g) - _replicate_means(b_runs, items, g)).tolist()
    low, high = _percentiles(diffs)
    mean = lambda runs: sum(float(x) for r in runs for x in r) / (len(runs) * n)
    se = statistics.stdev(diffs)
    return {"diff": mean(a_runs) - mean(b_runs), "low": low, "high": high, "se": se,
            "detectable": DETECTABLE_SE * se, "verdict": _verdict(low, high)}


def mean_interval(values: list[float]) -> dict:
    """Mean and 95% t-interval over a few values (seeds), with the exact t quantile for n - 1
    degrees of freedom. For unbounded quantities (a loss, a difference); bounded ones take
    bootstrap_mean. -> {"mean", "low", "high", "n"}"""
    if not values:
        raise ValueError("mean_interval needs at least one value.")
    m = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": m, "low": None, "high": None, "n": 1}
    half = t_quantile(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return {"mean": m, "low": m - half, "high": m + half, "n": len(values)}


def bootstrap_mean(values: list[float], n_boot: int = 4_000, seed: int = 0) -> dict:
    """Mean and 95% percentile interval of the mean from resampling the values (seeds, items):
    the interval lies inside the range of the values, so it respects a quantity's bounds (a KL
    >= 0, a share in [0, 1]). With 3-5 seeds it is rough; it says so by being wide.
    -> {"mean", "low", "high", "n"}"""
    if not values:
        raise ValueError("bootstrap_mean needs at least one value.")
    values = [float(v) for v in values]
    n, m = len(values), statistics.fmean(values)
    if n < 2:
        return {"mean": m, "low": None, "high": None, "n": 1}
    rng = random.Random(seed)
    low, high = _percentiles([sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot)])
    return {"mean": m, "low": low, "high": high, "n": n}


def seeds_and_items_mean(runs: list[list[float]], n_boot: int = 4_000, seed: int = 0) -> dict:
    """Mean of a per-item metric over several runs (seeds) on the same items, and its 95%
    percentile interval from resampling the items and the seeds (as seeds_and_items_bootstrap
    does for a difference): inside the values' range, so a KL stays >= 0, a share in [0, 1].
    -> {"mean", "low", "high", "se", "n_seeds", "n_items"}"""
    if not runs or len({len(r) for r in runs}) != 1 or not runs[0]:
        raise ValueError("seeds_and_items_mean needs one or more runs scored on the same non-empty "
                         "list of items.")
    n = len(runs[0])
    g = torch.Generator().manual_seed(seed)
    means = _replicate_means(runs, torch.randint(n, (n_boot, n), generator=g), g).tolist()
    low, high = _percentiles(means)
    return {"mean": sum(float(x) for r in runs for x in r) / (len(runs) * n), "low": low, "high": high,
            "se": statistics.stdev(means), "n_seeds": len(runs), "n_items": n}
