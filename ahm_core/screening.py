"""Bounds on a round's client updates, relative to the model and to the round itself.

An update is d_i = w_i - w_global, in two parts screened apart: the weights (every floating-point
tensor but BatchNorm's running statistics) and the running statistics, which jump to the data's
own statistics in a client's first steps and so dwarf the weights' move (on IR-SE-50, 0.4 x
their norm after 3 steps, while the weights moved 0.007 x theirs). Integer buffers carry no
direction. Checked in order, each with its reason:

- `stale`: d_i = 0, the global model sent back untrained;
- `norm`: the weights' |d_i| above `max_update_ratio` x |w_global| (or above `max_update_norm`
  when set), a bound from the model that holds whatever the round's size;
- `statistics`: a running variance below zero (BatchNorm would take its square root);
- with 3 or more updates left, against the round: `norm_outlier`, the weights' or the
  statistics' |d_i| outside [m / spread, m * spread], m the round's median
  (`update_norm_spread`); `direction`, the statistics' cos(d_i, median of the other updates)
  below `min_update_cosine` (a coordinate-wise median, which a minority cannot move far).

The weights' cosine with the others' median is reported, not bounded: on identity-disjoint
clients honest weight updates are near-orthogonal (pairwise |cos| < 0.015 on the demo), so no
threshold tells a flipped one from an honest one, while the statistics of honest clients agree
(cos 0.31-0.95 with the others' median on the demo, a flipped one near -1). With one or two
updates a round has no majority; only the model bounds apply.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ahm_core.config import FederationConfig

State = dict[str, Tensor]
MAJORITY = 3  # updates a round needs before it can be compared with itself
STATISTICS = ("running_mean", "running_var")  # BatchNorm's, by PyTorch's names


class Screened(NamedTuple):
    """One update's verdict: `reason` is None when it is accepted."""

    reason: str | None
    norm: float  # |d_i| of the weights
    ratio: float  # |d_i| / |w_global| of the weights
    cosine: float | None  # cos(d_i, median of the others) of the weights; None: round too small
    statistics_cosine: float | None  # the same of the running statistics


def floating_keys(state: State) -> list[str]:
    """The keys whose tensors are weights or running statistics (not integer counters)."""
    return [k for k, v in state.items() if v.is_floating_point()]


def norm(state: State, keys: Sequence[str]) -> float:
    """The L2 norm of `state` over `keys`, accumulated in float64."""
    return math.sqrt(sum(float(state[k].double().square().sum()) for k in keys))


class _Round(NamedTuple):
    """One part of a round's updates against the round: norm outliers and cosines."""

    outliers: list[bool]
    cosines: list[float]


def _compare(deltas: list[State], keys: list[str], spread: float) -> _Round:
    """Each delta's norm against the round's median norm, and its cosine with the
    coordinate-wise median of the other deltas."""
    norms = [norm(d, keys) for d in deltas]
    median_norm = float(torch.tensor(norms).median())
    # One sort per tensor gives every leave-one-out median: without update i, the lower median
    # of the n - 1 others is sorted[m + 1] where i ranks at or below m = (n - 2) // 2, else
    # sorted[m] (n medians of n - 1 updates each would cost n times as much).
    m = (len(deltas) - 2) // 2
    sorted_, ranks = {}, {}
    for k in keys:
        sorted_[k], order = torch.stack([d[k] for d in deltas]).sort(dim=0)
        ranks[k] = order.argsort(dim=0)
    cosines = []
    for i, (d, n) in enumerate(zip(deltas, norms, strict=True)):
        median = {k: torch.where(ranks[k][i] <= m, sorted_[k][m + 1], sorted_[k][m]) for k in keys}
        size = norm(median, keys)
        dot = sum(float((d[k] * median[k]).sum()) for k in keys)
        cosines.append(dot / (n * size) if n and size else 0.0)
    outliers = [not median_norm / spread <= n <= median_norm * spread for n in norms]
    return _Round(outliers, cosines)


def screen_round(previous: State, updates: Sequence[State], f: FederationConfig) -> list[Screened]:
    """The verdict on each of a round's updates (same keys, shapes and dtypes as `previous`,
    finite: `server.replies` has checked them)."""
    floats = floating_keys(previous)
    statistics = [k for k in floats if k.endswith(STATISTICS)]
    weights = [k for k in floats if k not in statistics]
    deltas = [{k: u[k].float() - previous[k].float() for k in floats} for u in updates]
    scale = norm(previous, weights)
    norms = [norm(d, weights) for d in deltas]
    bound = f.max_update_ratio * scale
    if f.max_update_norm > 0:
        bound = min(bound, f.max_update_norm)
    reasons: list[str | None] = []
    for u, d, n in zip(updates, deltas, norms, strict=True):
        if n == 0 and norm(d, statistics) == 0:
            reasons.append("stale")
        elif n > bound:
            reasons.append("norm")
        elif any(bool((u[k] < 0).any()) for k in statistics if k.endswith("running_var")):
            reasons.append("statistics")
        else:
            reasons.append(None)
    cosines: list[float | None] = [None] * len(updates)
    statistics_cosines: list[float | None] = [None] * len(updates)
    left = [i for i, r in enumerate(reasons) if r is None]
    if len(left) >= MAJORITY:
        spread = f.update_norm_spread
        w = _compare([deltas[i] for i in left], weights, spread)
        s = _compare([deltas[i] for i in left], statistics, spread) if statistics else None
        for j, i in enumerate(left):
            cosines[i] = w.cosines[j]
            if s is not None:
                statistics_cosines[i] = s.cosines[j]
            if w.outliers[j] or (s is not None and s.outliers[j]):
                reasons[i] = "norm_outlier"
            elif s is not None and s.cosines[j] < f.min_update_cosine:
                reasons[i] = "direction"
    return [
        Screened(r, n, n / scale if scale else math.inf, c, sc)
        for r, n, c, sc in zip(reasons, norms, cosines, statistics_cosines, strict=True)
    ]


def bounded_weights(claimed: Sequence[int], max_ratio: float) -> list[float]:
    """Each client's weight in the average: its claimed example count, at most `max_ratio`
    times the round's median claim (so no client outweighs the others by lying)."""
    cap = max_ratio * float(torch.tensor(claimed, dtype=torch.float64).median())
    return [min(float(c), cap) for c in claimed]
