"""The uncertainty a figure carries: a 95% interval for a mean over folds (Student's t) and for a
rate of successes (Wilson's score interval, which stays inside [0, 1] and is sound near 0 and 1,
where re-identification rates live), a percentile bootstrap for a mean over victims (the attack
indices), and McNemar's exact test of two methods judged on the same
verification pairs: "A beats B" only when it says the difference is beyond noise."""

from __future__ import annotations

import math

import torch
from scipy import stats
from torch import Tensor

RESAMPLES = (
    2000  # bootstrap resamples: the interval's ends move by about 0.01 of a std between seeds
)


def fold_interval(values: Tensor, level: float = 0.95) -> tuple[float, float]:
    """The t interval of the mean of per-fold figures (n - 1 degrees of freedom); a point when
    there is one fold."""
    n, mean = len(values), float(values.double().mean())
    if n < 2:
        return mean, mean
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * float(values.double().std()) / math.sqrt(n)
    return mean - half, mean + half


def wilson_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval of a binomial rate successes / trials."""
    if trials < 1:
        raise ValueError(f"wilson_interval: need at least one trial, got {trials}")
    z = float(stats.norm.ppf(0.5 + level / 2))
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z / (1 + z * z / trials) * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials**2))
    # At 0 or all successes the bound is exactly 0 or 1 (rounding leaves about 1e-18).
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    return lo, 1.0 if successes == trials else min(1.0, centre + half)


def bootstrap_interval(
    values: Tensor, seed: int = 0, level: float = 0.95, resamples: int = RESAMPLES
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-victim values (seeded, so a rerun prints
    the same interval); a point when there is one value."""
    if not len(values):
        raise ValueError("bootstrap_interval: no values")
    values = values.double().flatten().cpu()
    g = torch.Generator().manual_seed(seed)
    means = values[torch.randint(len(values), (resamples, len(values)), generator=g)].mean(dim=1)
    lo, hi = torch.quantile(
        means, torch.tensor([0.5 - level / 2, 0.5 + level / 2], dtype=means.dtype)
    )
    return float(lo), float(hi)


def mcnemar(a: str, b: str) -> dict[str, float | int]:
    """McNemar's exact test of two per-pair outcome strings ("1" right, "0" wrong) over the
    same pairs: the pairs only A gets right, only B gets right, and the two-sided p-value that
    the two are equally often right."""
    if len(a) != len(b):
        raise ValueError(f"mcnemar: outcomes over {len(a)} and {len(b)} pairs, not the same pairs")
    only_a = sum(x == "1" and y == "0" for x, y in zip(a, b, strict=True))
    only_b = sum(x == "0" and y == "1" for x, y in zip(a, b, strict=True))
    discordant = only_a + only_b
    p = float(stats.binomtest(only_a, discordant, 0.5).pvalue) if discordant else 1.0
    return {"only_a": only_a, "only_b": only_b, "p": p}
