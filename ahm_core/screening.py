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
- `duplicate`: the weights' cos(d_i, d_j) above `max_pair_cosine` for some other update j, both
  rejected. Honest clients train on their own data and their weight updates are near-orthogonal
  (pairwise cos -0.02..0.04 on the demo, identity, iid and Dirichlet partitions alike), so two
  that agree are a coalition sending one crafted update; checked before the round's medians
  are taken, so a coalition cannot move them;
- with 3 or more updates left, against the round: `norm_outlier`, the weights' or the
  statistics' |d_i| outside [m / spread, m * spread], m the round's median
  (`update_norm_spread`); `direction`, the statistics' cos(d_i, the round's coordinate-wise
  median) below `min_update_cosine` (a median the majority sets, which a minority cannot move
  past the honest values).

The weights' cosine with the round's median is reported, not bounded: on identity-disjoint
clients honest weight updates are near-orthogonal, so no threshold tells a flipped one from an
honest one, while the statistics of honest clients agree and a flipped one's point the other
way (`benchmarks/byzantine.py` prints the ranges it measured). With one or two
updates a round has no majority; only the model bounds and `duplicate` apply.

What passes is bounded in what it can move (`bounded`): with a majority, each accepted update's
weights are clipped to `clip_ratio` x the accepted updates' median norm (honest norms sit within
3% of it on the demo, so clipping costs them little, while a member of a coalition that scales
its update up to the spread bound moves the model as far as one honest client), and
`median_statistics` gives every accepted update the coordinate-wise median of their running
statistics, which a minority cannot move outside the honest ones' range.
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
    clip: float  # the factor its weights' update is scaled by when aggregated (at most 1)
    ratio: float  # |d_i| / |w_global| of the weights
    cosine: float | None  # cos(d_i, the round's median) of the weights; None: round too small
    statistics_cosine: float | None  # the same of the running statistics
    pair_cosine: float | None  # the weights' largest cos(d_i, d_j) with another update j


def floating_keys(state: State) -> list[str]:
    """The keys whose tensors are weights or running statistics (not integer counters)."""
    return [k for k, v in state.items() if v.is_floating_point()]


def split_keys(state: State) -> tuple[list[str], list[str]]:
    """The floating-point keys of `state` as (weights, running statistics)."""
    floats = floating_keys(state)
    statistics = [k for k in floats if k.endswith(STATISTICS)]
    return [k for k in floats if k not in statistics], statistics


def norm(state: State, keys: Sequence[str]) -> float:
    """The L2 norm of `state` over `keys`, accumulated in float64."""
    return math.sqrt(sum(float(state[k].double().square().sum()) for k in keys))


class _Round(NamedTuple):
    """One part of a round's updates against the round: norm outliers and cosines."""

    outliers: list[bool]
    cosines: list[float]


def _compare(deltas: list[State], keys: list[str], spread: float) -> _Round:
    """Each delta's norm against the round's median norm, and its cosine with the round's
    coordinate-wise median (a majority sets it: a minority, a colluding pair included, cannot
    move it past the honest updates' own values, where the median of the others can be the
    mean of an honest update and a hostile one in a round of three)."""
    norms = [norm(d, keys) for d in deltas]
    median_norm = float(torch.tensor(norms).median())
    median = {k: torch.stack([d[k] for d in deltas]).median(dim=0).values for k in keys}
    size = norm(median, keys)
    cosines = [
        sum(float((d[k] * median[k]).sum()) for k in keys) / (n * size) if n and size else 0.0
        for d, n in zip(deltas, norms, strict=True)
    ]
    outliers = [not median_norm / spread <= n <= median_norm * spread for n in norms]
    return _Round(outliers, cosines)


def _pair_cosines(deltas: list[State], keys: list[str]) -> list[float]:
    """Each delta's largest cosine with another one (the Gram matrix accumulated tensor by
    tensor, so no copy of the whole round is made)."""
    gram = torch.zeros(len(deltas), len(deltas), dtype=torch.float64)
    for k in keys:
        flat = torch.stack([d[k].flatten().double() for d in deltas])
        gram += flat @ flat.T
    size = gram.diagonal().sqrt().clamp_min(1e-300)
    cosine = gram / (size[:, None] * size[None, :])
    cosine.fill_diagonal_(-math.inf)
    return cosine.max(dim=1).values.tolist()


def screen_round(previous: State, updates: Sequence[State], f: FederationConfig) -> list[Screened]:
    """The verdict on each of a round's updates (same keys, shapes and dtypes as `previous`,
    finite: `server.replies` has checked them)."""
    weights, statistics = split_keys(previous)
    floats = weights + statistics
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
    pair_cosines: list[float | None] = [None] * len(updates)
    left = [i for i, r in enumerate(reasons) if r is None]
    if len(left) >= 2:
        for i, c in zip(left, _pair_cosines([deltas[i] for i in left], weights), strict=True):
            pair_cosines[i] = c
            if f.max_pair_cosine < 1 and c > f.max_pair_cosine:  # 1: off (round-off is > 1)
                reasons[i] = "duplicate"
        left = [i for i in left if reasons[i] is None]
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
    clips = [1.0] * len(updates)
    accepted = [i for i, r in enumerate(reasons) if r is None]
    if len(accepted) >= MAJORITY and f.clip_ratio > 0:
        cap = f.clip_ratio * float(torch.tensor([norms[i] for i in accepted]).median())
        clips = [min(1.0, cap / norms[i]) if i in accepted else 1.0 for i in range(len(norms))]
    return [
        Screened(r, n, clip, n / scale if scale else math.inf, c, sc, pc)
        for r, n, clip, c, sc, pc in zip(
            reasons, norms, clips, cosines, statistics_cosines, pair_cosines, strict=True
        )
    ]


def bounded(
    previous: State, updates: Sequence[State], verdicts: Sequence[Screened], f: FederationConfig
) -> list[State]:
    """The accepted updates as they are aggregated: each one's weights' update scaled by its
    `clip`, and, with a majority and `median_statistics`, every running statistic the
    coordinate-wise median of the accepted updates' (module docstring). Under DP-FedAvg they
    are left as sent: its wrapper's clipping is what bounds a client, and a bound that mixes
    clients before it would break the noise's calibration."""
    weights, statistics = split_keys(previous)
    kept = [(u, v.clip) for u, v in zip(updates, verdicts, strict=True) if v.reason is None]
    if f.dp != "none":
        return [u for u, _ in kept]
    out = []
    for u, clip in kept:
        moved = dict(u)
        if clip < 1:
            moved |= {k: previous[k] + clip * (u[k] - previous[k]) for k in weights}
        out.append(moved)
    if f.median_statistics and len(out) >= MAJORITY:
        for k in statistics:
            stacked = torch.stack([u[k] for u in out]).sort(dim=0).values
            n = len(out)
            median = (stacked[(n - 1) // 2] + stacked[n // 2]) / 2
            for u in out:
                u[k] = median
    return out


def bounded_weights(claimed: Sequence[int], max_ratio: float) -> list[float]:
    """Each client's weight in the average: its claimed example count, at most `max_ratio`
    times the round's median claim (so no client outweighs the others by lying)."""
    cap = max_ratio * float(torch.tensor(claimed, dtype=torch.float64).median())
    return [min(float(c), cap) for c in claimed]
