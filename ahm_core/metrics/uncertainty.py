"""The uncertainty a figure carries: a 95% interval for a mean over folds (Student's t) and for a
rate of successes (Wilson's score interval, which stays inside [0, 1] and is sound near 0 and 1,
where re-identification rates live), a percentile bootstrap for a mean over victims (the attack
indices), McNemar's exact test of two methods judged on the same verification pairs, and the
comparison of two rows over training seeds (the mean per-seed difference with its t interval and
an exact sign-flip test): the within-run tests see one trained model per row, so they cannot see
the run-to-run spread, which on CPU-scale runs is several points.

Verification pairs share images and identities, and several victims share an identity, so those
outcomes are not independent: the folds' t interval, Wilson's and McNemar's treat them as if they
were. The clustered bootstraps resample identities instead (seeded, `RESAMPLES` times): the
resample holds every pair between two drawn identities, once per combination of their copies (a
same-identity pair once per copy of its identity), and every victim of a drawn identity. Taking
a pair once per copy of either identity instead would give each pair the mean of two
identities' draws and halve the interval's identity term; the product keeps it, and is
conservative (about sqrt(3) wider) only when no two pairs share an identity."""

from __future__ import annotations

import math

import torch
from scipy import stats
from torch import Tensor

RESAMPLES = (
    2000  # bootstrap resamples: the interval's ends move by about 0.01 of a std between seeds
)
CHUNK = 250  # resamples whose per-pair weights are held at once (250 x 6,000 pairs: 12 MB)


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


def _outcomes(correct: str, name: str) -> Tensor:
    """A per-pair outcome string ("1" right, "0" wrong) as a float64 tensor."""
    if set(correct) - {"0", "1"}:
        raise ValueError(f"{name}: outcomes must be a string of '1' (right) and '0' (wrong)")
    return torch.tensor([c == "1" for c in correct], dtype=torch.float64)


def _identity_counts(labels: Tensor, seed: int, resamples: int) -> tuple[Tensor, Tensor]:
    """Each label's index among the distinct labels, and [resamples, distinct] counts: how often
    each identity was drawn when drawing as many identities as there are, with replacement."""
    ids, index = torch.unique(labels, return_inverse=True)
    g = torch.Generator().manual_seed(seed)
    drawn = torch.randint(len(ids), (resamples, len(ids)), generator=g)
    counts = torch.zeros(resamples, len(ids), dtype=torch.float64)
    counts.scatter_add_(1, drawn, torch.ones_like(drawn, dtype=torch.float64))
    return index, counts


def _pair_means(left: Tensor, right: Tensor, values: Tensor, seed: int, resamples: int) -> Tensor:
    """Each resample's mean of per-pair `values` under a bootstrap clustered by identity."""
    index, counts = _identity_counts(torch.cat([left, right]), seed, resamples)
    a, b = index[: len(left)], index[len(left) :]
    means = []
    for start in range(0, resamples, CHUNK):  # [CHUNK, pairs] weights at a time
        rows = counts[start : start + CHUNK]
        # Every pair between two drawn identities, once per combination of their copies; a
        # same-identity pair once per copy of its identity.
        weights = torch.where(a == b, rows[:, a], rows[:, a] * rows[:, b])
        total = weights.sum(dim=1)
        kept = total > 0  # a resample that drew no pair at all is left out
        means.append((weights[kept] @ values) / total[kept])
    return torch.cat(means)


def _pair_inputs(name: str, outcomes: list[str], left: Tensor, right: Tensor) -> None:
    """Raise one clear line unless every outcome string and both label lists name the same pairs."""
    lengths = {len(o) for o in outcomes} | {len(left), len(right)}
    if len(lengths) != 1:
        raise ValueError(
            f"{name}: outcomes over {[len(o) for o in outcomes]} pairs and labels of "
            f"{len(left)} and {len(right)} pairs, not the same pairs"
        )
    if not len(left):
        raise ValueError(f"{name}: no pairs")


def _percentiles(means: Tensor, level: float) -> tuple[float, float]:
    """The percentile interval of bootstrap means at `level`."""
    if not len(means):
        raise ValueError("bootstrap: no resample drew a pair; too few identities to resample")
    lo, hi = torch.quantile(
        means, torch.tensor([0.5 - level / 2, 0.5 + level / 2], dtype=means.dtype)
    )
    return float(lo), float(hi)


def cluster_pair_interval(
    correct: str,
    left: Tensor,
    right: Tensor,
    seed: int = 0,
    level: float = 0.95,
    resamples: int = RESAMPLES,
) -> tuple[float, float]:
    """Bootstrap interval of the accuracy over pairs, clustered by the pairs' identities."""
    left, right = torch.as_tensor(left).flatten(), torch.as_tensor(right).flatten()
    _pair_inputs("cluster_pair_interval", [correct], left, right)
    outcomes = _outcomes(correct, "cluster_pair_interval")
    return _percentiles(_pair_means(left, right, outcomes, seed, resamples), level)


def cluster_pair_difference(
    a: str,
    b: str,
    left: Tensor,
    right: Tensor,
    seed: int = 0,
    level: float = 0.95,
    resamples: int = RESAMPLES,
) -> dict[str, float | list[float]]:
    """Accuracy of A minus B on the same pairs, its identity-clustered interval and bootstrap p."""
    left, right = torch.as_tensor(left).flatten(), torch.as_tensor(right).flatten()
    _pair_inputs("cluster_pair_difference", [a, b], left, right)
    name = "cluster_pair_difference"
    differences = _outcomes(a, name) - _outcomes(b, name)
    means = _pair_means(left, right, differences, seed, resamples)
    # Two-sided: twice the share of resamples on the far side of 0, at most 1 (1 when all are 0;
    # 0 when none is, that is below 1 / resamples).
    below, above = float((means <= 0).double().mean()), float((means >= 0).double().mean())
    return {
        "difference": float(differences.mean()),
        "ci95": list(_percentiles(means, level)),
        "p": min(1.0, 2 * min(below, above)),
    }


def cluster_rate_interval(
    hits: Tensor,
    clusters: Tensor,
    seed: int = 0,
    level: float = 0.95,
    resamples: int = RESAMPLES,
) -> tuple[float, float]:
    """Bootstrap interval of a rate over trials (victims), clustered by `clusters` (identities)."""
    hits, clusters = torch.as_tensor(hits).flatten(), torch.as_tensor(clusters).flatten()
    if len(hits) != len(clusters):
        raise ValueError(
            f"cluster_rate_interval: {len(hits)} outcomes and {len(clusters)} cluster labels, "
            "not one label per outcome"
        )
    if not len(hits):
        raise ValueError("cluster_rate_interval: no outcomes")
    index, counts = _identity_counts(clusters, seed, resamples)
    per_identity = torch.zeros(counts.shape[1], dtype=torch.float64)
    per_identity.index_add_(0, index, hits.double())
    trials = torch.bincount(index, minlength=counts.shape[1]).double()
    return _percentiles((counts @ per_identity) / (counts @ trials), level)


def over_seeds(values: list[float]) -> dict[str, float | int | None]:
    """A figure over training runs of different seeds: mean, run-to-run std (n - 1) and n; the
    std is None for one run."""
    n = len(values)
    if not n:
        raise ValueError("over_seeds: no runs")
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n}


def paired_seeds(a: list[float], b: list[float], level: float = 0.95) -> dict:
    """Two rows compared over the seeds they share (a[i] and b[i] trained with seed i): the mean
    difference A - B with its t interval over seeds, and the exact sign-flip permutation p (every
    assignment of signs to the per-seed differences; its smallest value is 2 / 2**n)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_seeds: need as many runs of A as of B, got {len(a)} and {len(b)}")
    d = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)
    n, mean = len(d), float(d.mean())
    signs = torch.tensor([[1 - 2 * ((i >> j) & 1) for j in range(n)] for i in range(2**n)])
    flipped = (signs * d.abs()).mean(dim=1).abs()
    p = float((flipped >= abs(mean) - 1e-12).double().mean())
    return {"difference": mean, "ci95": list(fold_interval(d, level)), "p": p, "n": n}
