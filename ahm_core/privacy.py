"""The (epsilon, delta) a Gaussian mechanism has spent, from Opacus's RDP accountant: one
accountant for the three places AHM adds noise.

- DP-FedAvg: each round that releases an aggregate is one subsampled Gaussian mechanism at the
  configured noise multiplier z (Flower's adaptive clipping splits z between the update and the
  clipped-count noise so that the pair costs what z alone would) with sampling rate q = sampled
  / partitions. Opacus's accountant assumes Poisson sampling at q; Flower samples a fixed-size
  set, the usual approximation of DP-FedAvg (McMahan et al. 2018); with full participation
  (q = 1) it is exact.
- Local DP: each round a client sends its update clipped to C with Gaussian noise of std sigma
  (Flower's LocalDpMod, `local_dp_std`): q = 1 and z = sigma / sensitivity per release.
- DP-SGD: each step is the subsampled Gaussian mechanism at q = batch / images (Poisson
  sampling) and z = the noise multiplier.
"""

from __future__ import annotations

import math
from typing import Any

from ahm_core.config import TrainConfig


def epsilon_spent(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon at `delta` after `steps` releases of the subsampled Gaussian mechanism (0 before
    the first; infinite without noise)."""
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    from opacus.accountants import RDPAccountant  # its import configures the root logger

    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return float(accountant.get_epsilon(delta))


def local_dp_std(sensitivity: float, epsilon: float, delta: float) -> float:
    """The noise std Flower's LocalDpMod adds for (epsilon, delta) per release: the classic
    Gaussian mechanism's calibration (Dwork and Roth 2014, Theorem A.1), a guarantee only for
    epsilon < 1; `epsilon_spent` at z = std / sensitivity holds at any epsilon."""
    return sensitivity * math.sqrt(2 * math.log(1.25 / delta)) / epsilon


def dp_sgd_spent(t: TrainConfig, num_items: int, epochs: int) -> dict[str, Any]:
    """What DP-SGD on `num_items` images has spent after `epochs` epochs of Poisson draws."""
    rate = min(1.0, t.batch_size / num_items)
    steps = epochs * int(1 / rate)  # the sampler's draws an epoch
    return {
        "epsilon": epsilon_spent(t.dp_noise_multiplier, rate, steps, t.dp_delta),
        "delta": t.dp_delta,
        "noise_multiplier": t.dp_noise_multiplier,
        "max_grad_norm": t.dp_max_grad_norm,
        "sample_rate": rate,
        "steps": steps,
    }
