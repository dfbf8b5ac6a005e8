"""Adversaries of the threat model (DESIGN section 4): black-box CGAN reconstruction."""

from ahm_core.attacks.cgan import (
    AttackSet,
    CGANAttack,
    CGANOptions,
    PatchDiscriminator,
    UnetGenerator,
    attack_data,
    dominant_sources,
    mask_for_attack,
    sample_ks,
    save_reconstruction_grid,
    unet_levels,
)

__all__ = [
    "AttackSet",
    "CGANAttack",
    "CGANOptions",
    "PatchDiscriminator",
    "UnetGenerator",
    "attack_data",
    "dominant_sources",
    "mask_for_attack",
    "sample_ks",
    "save_reconstruction_grid",
    "unet_levels",
]
