"""Adversaries of the threat model (docs/design.md section 4): black-box CGAN reconstruction, the
same after the appendix-A.2 channel removal, gradient inversion of shared updates, white-box
demixing with PPFR-FD inversion, GMI model inversion. Each module registers its `Attack` in
`ATTACKS` (in the order imported here, the reports' order); a new attack is one module with a
registered subclass, imported below."""

from ahm_core.attacks.base import ATTACKS, Attack, Reconstructions, register
from ahm_core.attacks.cgan import (
    CGANAttack,
    CGANOptions,
    PatchDiscriminator,
    UnetGenerator,
    attack_data,
    unet_levels,
)
from ahm_core.attacks.channel_drop import ChannelDrop
from ahm_core.attacks.demix import (
    DemixOptions,
    DemixResult,
    cluster_components,
    demix,
    invert_ppfr,
    ppfr_forward,
    recover_components,
    recovery_report,
    remove_plane,
    similarity_graph,
)
from ahm_core.attacks.gradient_inversion import (
    InversionOptions,
    InversionResult,
    TrainingLoss,
    invert_gradients,
    match_and_score,
    recover_labels,
    simulate_update,
)
from ahm_core.attacks.model_inversion import (
    Discriminator,
    Evaluator,
    GANPrior,
    Generator,
    GMIOptions,
    attack_report,
    invert_identities,
    train_evaluator,
    train_prior,
    white_box_logits,
)

__all__ = [
    "ATTACKS",
    "Attack",
    "CGANAttack",
    "CGANOptions",
    "ChannelDrop",
    "DemixOptions",
    "DemixResult",
    "Discriminator",
    "Evaluator",
    "GANPrior",
    "GMIOptions",
    "Generator",
    "InversionOptions",
    "InversionResult",
    "PatchDiscriminator",
    "Reconstructions",
    "TrainingLoss",
    "UnetGenerator",
    "attack_data",
    "attack_report",
    "cluster_components",
    "demix",
    "invert_gradients",
    "invert_identities",
    "invert_ppfr",
    "match_and_score",
    "ppfr_forward",
    "recover_components",
    "recover_labels",
    "recovery_report",
    "register",
    "remove_plane",
    "similarity_graph",
    "simulate_update",
    "train_evaluator",
    "train_prior",
    "unet_levels",
    "white_box_logits",
]
