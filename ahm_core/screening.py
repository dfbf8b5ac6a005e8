"""Bounds on a round's client updates, relative to the model and to the round itself.

An update is d_i = w_i - w_global over the floating-point tensors (integer buffers such as
BatchNorm's batch counter carry no direction). Checked in order, each with its reason:

- `stale`: d_i = 0, the global model sent back untrained;
- `norm`: |d_i| above `max_update_ratio` x |w_global| (or above `max_update_norm` when set), a
  bound from the model that holds whatever the round's size;
- `norm_outlier`: with 3 or more updates left, |d_i| outside [m / spread, m * spread], m the
  median norm of the round (`update_norm_spread`);
- `direction`: with 3 or more updates left, cos(d_i, median update) below `min_update_cosine`,
  where the median update is the coordinate-wise median of the round's updates, which a
  minority cannot move far.

With one or two updates a round has no majority to compare with; only the model bounds apply.
Every update is also described (norm, cosine), so that rounds.json shows how far the honest
updates were from each bound.
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


class Screened(NamedTuple):
    """One update's verdict: `reason` is None when it is accepted."""

    reason: str | None
    norm: float  # |d_i|
    ratio: float  # |d_i| / |w_global|
    cosine: float | None  # cos(d_i, median update); None where the round was too small


def floating_keys(state: State) -> list[str]:
    """The keys whose tensors are weights or running statistics (not integer counters)."""
    return [k for k, v in state.items() if v.is_floating_point()]


def norm(state: State, keys: Sequence[str]) -> float:
    """The L2 norm of `state` over `keys`, accumulated in float64."""
    return math.sqrt(sum(float(state[k].double().square().sum()) for k in keys))


def screen_round(previous: State, updates: Sequence[State], f: FederationConfig) -> list[Screened]:
    """The verdict on each of a round's updates (same keys, shapes and dtypes as `previous`,
    finite: `server.replies` has checked them)."""
    keys = floating_keys(previous)
    scale = norm(previous, keys)
    deltas = [{k: u[k].float() - previous[k].float() for k in keys} for u in updates]
    norms = [norm(d, keys) for d in deltas]
    bound = f.max_update_ratio * scale
    if f.max_update_norm > 0:
        bound = min(bound, f.max_update_norm)
    reasons: list[str | None] = []
    for n in norms:
        reasons.append("stale" if n == 0 else "norm" if n > bound else None)
    cosines: list[float | None] = [None] * len(updates)
    left = [i for i, r in enumerate(reasons) if r is None]
    if len(left) >= MAJORITY:
        median_norm = float(torch.tensor([norms[i] for i in left]).median())
        median = {k: torch.stack([deltas[i][k] for i in left]).median(dim=0).values for k in keys}
        median_size = norm(median, keys)
        for i in left:
            dot = sum(float((deltas[i][k] * median[k]).sum()) for k in keys)
            cosines[i] = dot / (norms[i] * median_size) if median_size > 0 else 0.0
            spread = f.update_norm_spread
            if not median_norm / spread <= norms[i] <= median_norm * spread:
                reasons[i] = "norm_outlier"
            elif cosines[i] < f.min_update_cosine:
                reasons[i] = "direction"
    return [
        Screened(r, n, n / scale if scale else math.inf, c)
        for r, n, c in zip(reasons, norms, cosines, strict=True)
    ]


def bounded_weights(claimed: Sequence[int], max_ratio: float) -> list[float]:
    """Each client's weight in the average: its claimed example count, at most `max_ratio`
    times the round's median claim (so no client outweighs the others by lying)."""
    cap = max_ratio * float(torch.tensor(claimed, dtype=torch.float64).median())
    return [min(float(c), cap) for c in claimed]
