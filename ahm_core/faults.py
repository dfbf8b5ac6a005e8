"""Injected client faults: a client that fails, and clients that behave like an adversary
(`federation.fault_mode`, on `federation.fault_fraction` of the partitions). They drive the
fault tests and the Byzantine study (`benchmarks/byzantine.py`); the ClientApp applies them
in a mod (`client.mods.injected_faults`).

`raise` and `hang` fail before any work; every other mode trains honestly first and then
corrupts its reply, so a corrupted update is built from a real one.

The `collude_*` modes are a coalition: every faulty partition sends the same crafted part, each
inside every bound of the screen as it stood before collusion was screened (honest-looking
statistics, a weights norm within `update_norm_spread` of the round's). In `POOLED` modes the
coalition trains one update on its first member's partition and every member sends it;
`collude_drift` and `collude_statistics` add one shared direction, drawn from the coalition's
seed and fixed for the run, to each member's own honest update. `flip_weights` needs no
coalition: each faulty client sends its own update's weights flipped, its statistics honest, so
no two of them agree.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ahm_core.config import AHMConfig
from ahm_core.screening import split_keys

MODES = (  # federation.fault_mode
    "raise",  # the client fails
    "hang",  # the client sleeps `fault_seconds`, beyond the round timeout, then fails
    "nan",  # NaN weights
    "explode",  # weights x 1e6
    "signflip",  # global - fault_scale * honest update
    "scale",  # global + fault_scale * honest update
    "noise",  # global + Gaussian noise of fault_scale x the honest update's norm
    "zeros",  # every weight zero
    "stale",  # the global model sent back untrained
    "huge_examples",  # honest update claiming 1e9 examples
    "zero_examples",  # honest update claiming 0 examples
    "negative_examples",  # honest update claiming -100 examples
    "int_tensors",  # weights as int64 of 1e12
    "missing_metrics",  # a reply with num-examples only
    "false_partition",  # honest update claiming partition-id -1
    "claim_partition",  # honest update claiming the partition of the next partition
    "collude_signflip",  # global - fault_scale * the coalition's update, statistics as trained
    "collude_scale",  # global + fault_scale * the coalition's update, statistics as trained
    "collude_drift",  # own update + a shared direction of fault_scale x its weights' norm
    "collude_statistics",  # own update, running means moved along a shared direction
    "flip_weights",  # global - fault_scale * its own update's weights, statistics as trained
)
POOLED = ("collude_signflip", "collude_scale")  # one update, trained on the first member's data
COALITION_SEED = 7_919  # what the coalition's shared directions are drawn from, beside train.seed
State = dict[str, Tensor]
Metrics = dict[str, Any]
EXPLODE_SCALE = 1e6  # what an `explode` fault multiplies a client's weights by
INT_VALUE = 10**12  # the value of every weight an `int_tensors` fault sends


class InjectedFaultError(RuntimeError):
    """The failure a client configured as faulty raises (federation.fault_*)."""


def faulty_partitions(cfg: AHMConfig, num_partitions: int) -> set[int]:
    """The `federation.fault_fraction` of partitions that fail, drawn from `train.seed`."""
    count = round(cfg.federation.fault_fraction * num_partitions)
    return set(random.Random(cfg.train.seed).sample(range(num_partitions), count))


def fail_before_training(cfg: AHMConfig) -> None:
    """`raise` and `hang` (sleep `fault_seconds`, beyond the round timeout) fail here."""
    mode = cfg.federation.fault_mode
    if mode == "hang":
        time.sleep(cfg.federation.fault_seconds)
    if mode in ("raise", "hang"):
        raise InjectedFaultError(f"injected fault: federation.fault_mode={mode}")


def _floats(state: State, value: Callable[[str, Tensor], Tensor]) -> State:
    return {k: value(k, v) if v.is_floating_point() else v for k, v in state.items()}


def _moved(start: State, shared: State, scale: float) -> State:
    """start + scale * (shared - start) on the floating-point tensors."""
    return _floats(shared, lambda k, v: start[k] + scale * (v - start[k]))


def coalition_partition(cfg: AHMConfig, partition_id: int, num_partitions: int) -> int:
    """The partition a faulty client trains on: the coalition's first member's in a `POOLED`
    mode (so every member computes the same update), its own otherwise."""
    if cfg.federation.fault_mode in POOLED:
        return min(faulty_partitions(cfg, num_partitions))
    return partition_id


def _shared_direction(start: State, keys: list[str], seed: int) -> State:
    """A unit vector over `keys`, the same for every member of the coalition."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + COALITION_SEED)
    direction = {k: torch.randn(start[k].shape, generator=generator) for k in keys}
    size = sum(float(v.double().square().sum()) for v in direction.values()) ** 0.5
    return {k: v / size for k, v in direction.items()}


def _colluded(cfg: AHMConfig, start: State, shared: State) -> State:
    """A coalition member's reply arrays (module docstring): the crafted part on the weights or
    on the running means, the rest as trained."""
    mode, scale = cfg.federation.fault_mode, cfg.federation.fault_scale
    weights, statistics = split_keys(shared)
    moved = dict(shared)
    if mode in POOLED:
        factor = -scale if mode == "collude_signflip" else scale
        moved |= {k: start[k] + factor * (shared[k] - start[k]) for k in weights}
        return moved
    keys = weights if mode == "collude_drift" else [k for k in statistics if "mean" in k]
    along = keys if mode == "collude_drift" else statistics
    size = sum(float((shared[k] - start[k]).double().square().sum()) for k in along) ** 0.5
    direction = _shared_direction(start, keys, cfg.train.seed)
    moved |= {k: shared[k] + scale * size * direction[k] for k in keys}
    return moved


def _noise(start: State, shared: State, scale: float, seed: int) -> State:
    """start + Gaussian noise whose norm is `scale` times the honest update's."""
    generator = torch.Generator().manual_seed(seed)
    noise = _floats(shared, lambda k, v: torch.randn(v.shape, generator=generator))
    floats = [k for k, v in shared.items() if v.is_floating_point()]
    honest = sum(float((shared[k] - start[k]).double().square().sum()) for k in floats)
    size = sum(float(noise[k].double().square().sum()) for k in floats)
    factor = scale * (honest / size) ** 0.5
    return _floats(shared, lambda k, v: start[k] + factor * noise[k])


def corrupt(
    cfg: AHMConfig, start: State, shared: State, metrics: Metrics, seed: int
) -> tuple[State, Metrics]:
    """The reply a faulty client sends instead of its honest (shared, metrics), per mode."""
    mode, scale = cfg.federation.fault_mode, cfg.federation.fault_scale
    if mode == "nan":
        return _floats(shared, lambda k, v: torch.full_like(v, float("nan"))), metrics
    if mode == "explode":
        return _floats(shared, lambda k, v: v * EXPLODE_SCALE), metrics
    if mode == "signflip":
        return _moved(start, shared, -scale), metrics
    if mode == "scale":
        return _moved(start, shared, scale), metrics
    if mode == "noise":
        return _noise(start, shared, scale, seed), metrics
    if mode == "zeros":
        return _floats(shared, lambda k, v: torch.zeros_like(v)), metrics
    if mode == "stale":
        return dict(start), metrics
    if mode == "int_tensors":
        return {k: torch.full(v.shape, INT_VALUE, dtype=torch.int64) for k, v in shared.items()}, (
            metrics
        )
    claims = {"huge_examples": 10**9, "zero_examples": 0, "negative_examples": -100}
    if mode in claims:
        return shared, {**metrics, "num-examples": claims[mode]}
    if mode == "missing_metrics":
        return shared, {"num-examples": metrics["num-examples"]}
    if mode == "false_partition":
        return shared, {**metrics, "partition-id": -1}
    if mode == "claim_partition":
        claimed = (metrics["partition-id"] + 1) % int(metrics["num-partitions"])
        return shared, {**metrics, "partition-id": claimed}
    if mode.startswith("collude_"):
        return _colluded(cfg, start, shared), metrics
    if mode == "flip_weights":  # no coordination: each faulty client flips its own update
        weights, _ = split_keys(shared)
        return {**shared, **{k: start[k] - scale * (shared[k] - start[k]) for k in weights}}, (
            metrics
        )
    raise ValueError(f"federation.fault_mode={mode}: not a corrupting mode")
