"""The (epsilon, delta) a DP-FedAvg run has spent, from Opacus's RDP accountant.

Each round that releases an aggregate is one subsampled Gaussian mechanism at the configured
noise multiplier z (Flower's adaptive clipping splits z between the update and the clipped-count
noise so that the pair costs what z alone would) with sampling rate q = sampled / partitions.
Opacus's accountant assumes Poisson sampling at q; Flower samples a fixed-size set, the usual
approximation of DP-FedAvg (McMahan et al. 2018); with full participation (q = 1) it is exact.
"""

from __future__ import annotations

from opacus.accountants import RDPAccountant


def epsilon_spent(
    noise_multiplier: float, sample_rate: float, releases: int, delta: float
) -> float:
    """Epsilon at `delta` after `releases` rounds of DP-FedAvg (0 before the first)."""
    if releases == 0:
        return 0.0
    accountant = RDPAccountant()
    for _ in range(releases):
        accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    return float(accountant.get_epsilon(delta))
