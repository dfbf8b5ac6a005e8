"""The (epsilon, delta) a Gaussian mechanism has spent, from Opacus's RDP accountant: one
accountant for the three places AHM adds noise, and the lines every report prints of it.

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
from ahm_core.tables import fmt

# A run's record of each DP mechanism (rounds.json, metrics.json), and its name
PRIVACY_RECORDS = {"dp": "DP-FedAvg", "local_dp": "local DP", "dp_sgd": "DP-SGD"}


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


def spent_notes(rows: dict[str, dict]) -> list[str]:
    """One line per row trained with a DP mechanism: what it is and the budget it spent."""
    notes = []
    for name, row in rows.items():
        for key, mechanism in PRIVACY_RECORDS.items():
            if key in row:
                spent = row[key]
                notes.append(
                    f"`{name}`: {row.get('method', name)} trained with {mechanism}: "
                    f"({fmt(spent['epsilon'], 2)}, {spent['delta']:g})-DP by Opacus's RDP "
                    f"accountant; {_mechanism_note(key, spent)}"
                )
    return ["", *notes] if notes else []


def _mechanism_note(key: str, spent: dict) -> str:
    """What a mechanism's figures mean, and what it leaves a curious server."""
    if key == "dp":
        return (
            f"noise multiplier {spent['noise_multiplier']}, clipping norm "
            f"{fmt(spent['clipping_norm'])}. The noise is added to the aggregate, so a curious "
            "server still sees each client's clipped update."
        )
    if key == "local_dp":
        return (
            f"each update clipped to {spent['clipping_norm']} with noise of std "
            f"{fmt(spent['noise_std'])} per value ({spent['epsilon_round']} per round by "
            "Flower's calibration); the server sees only noised updates."
        )
    return (
        f"noise multiplier {spent['noise_multiplier']}, per-sample clipping norm "
        f"{spent['max_grad_norm']}, Poisson sampling at {fmt(spent['sample_rate'])}, GroupNorm "
        "in place of BatchNorm; the unit is a training sample, and an update leaves the "
        "trainer clipped and noised, as gradient inversion inverts it."
    )


def epsilons(row: dict) -> str:
    """Each DP mechanism's epsilon for a row, named; "-" without one."""
    spent = [f"{fmt(row[k]['epsilon'], 2)} ({m})" for k, m in PRIVACY_RECORDS.items() if k in row]
    return "; ".join(spent) or "-"
