"""The policy driven by synthetic rewards whose answer is known (a constant, a reward rising with
k, one peaked at a k, one that depends on the face): the check of REINFORCE's machinery shared by
tests/test_policy_known_answers.py and `simulations.policy_noise`."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ahm_core.policy import AdaptivePolicy

# A batch of inputs and a per-image property the reward may use, drawn from a generator.
Inputs = Callable[[int, torch.Generator], tuple[Tensor, Tensor]]
Reward = Callable[[Tensor, Tensor], Tensor]  # (ks as floats, property) -> reward per sample


def drive(
    policy: AdaptivePolicy,
    inputs: Inputs,
    reward: Reward,
    updates: int,
    *,
    batch: int = 32,
    noise: float = 1.0,
    seed: int = 1,
) -> None:
    """`updates` REINFORCE steps on fresh batches: k drawn from the policy, paid `reward` plus
    Gaussian noise of `noise` nats per sample. Deterministic for a seed."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(updates):
        x, prop = inputs(batch, g)
        ks = policy.sample(x, g)
        policy.update(x, ks, reward(ks.float(), prop) + noise * torch.randn(batch, generator=g))


def largest_move(before: Tensor, after: Tensor) -> float:
    """The largest change of any k's share between two PMFs (of one probe batch)."""
    return float((after - before).abs().max())
