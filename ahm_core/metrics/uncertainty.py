"""The uncertainty a figure carries: a 95% interval for a mean over folds (Student's t) and for a
rate of successes (Wilson's score interval, which stays inside [0, 1] and is sound near 0 and 1,
where re-identification rates live)."""

from __future__ import annotations

import math

from scipy import stats
from torch import Tensor


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
    return max(0.0, centre - half), min(1.0, centre + half)
