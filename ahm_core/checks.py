"""Validation of a config against the real registries: the names a config may use are those the
modules above `ahm_core.config` registered (methods and first stages, data sources, backbones,
the policy's nets, rewards and baselines, partitions, faults, gradient-inversion objectives and
judges), so no list of names is kept twice. The federation's strategies are Flower's and are
checked on the server's side (`server.strategy.check_strategy`)."""

from __future__ import annotations

from ahm_core.attacks.gradient_inversion import OBJECTIVES
from ahm_core.config import AHMConfig, ConfigError, check_choice, check_schema
from ahm_core.data.partition import SCHEMES
from ahm_core.data.sources import SOURCES
from ahm_core.faults import MODES
from ahm_core.judges import JUDGES
from ahm_core.masking.first_stage import FIRST_STAGES
from ahm_core.masking.methods import METHODS, mixing_ks
from ahm_core.models.backbones import BACKBONES, check_stages, stage_blocks
from ahm_core.policy import BASELINES, CONTEXTS, NETS, REWARDS


def validate(cfg: AHMConfig) -> AHMConfig:
    """Raise `ConfigError` naming the first bad option; return cfg unchanged when it is sound."""
    check_schema(cfg)
    check_choice("data.source", cfg.data.source, SOURCES)
    check_choice("masking.method", cfg.masking.method, METHODS)
    check_choice("model.backbone", cfg.model.backbone, BACKBONES)
    check_choice("policy.net", cfg.policy.net, NETS)
    check_choice("policy.reward", cfg.policy.reward, REWARDS)
    check_choice("policy.baseline", cfg.policy.baseline, BASELINES)
    check_choice("policy.context", cfg.policy.context, CONTEXTS)
    check_choice("federation.partition", cfg.federation.partition, SCHEMES)
    check_choice("federation.fault_mode", cfg.federation.fault_mode, MODES)
    check_choice("attack.gi_objective", cfg.attack.gi_objective, OBJECTIVES)
    for defence in cfg.attack.defences:
        check_choice("attack.defences", defence, METHODS)
    for judge in cfg.attack.judges:
        check_choice("attack.judges", judge, JUDGES)
    SOURCES[cfg.data.source].check(cfg.data)
    FIRST_STAGES[METHODS[cfg.masking.method].first_stage].check(cfg)
    check_stages(stage_blocks(cfg.model), cfg.data.image_size)
    _check_mixing(cfg)
    return cfg


def _check_mixing(cfg: AHMConfig) -> None:
    """The k a method mixes fit in a batch, and `mixup.max_coef` lets k coefficients stay below."""
    ks = mixing_ks(cfg)
    key = "policy.k_set" if METHODS[cfg.masking.method].batch_mix == "adaptive" else "mixup.k"
    for k in ks:
        if k > cfg.train.batch_size:
            raise ConfigError(f"{key}: k={k} exceeds train.batch_size={cfg.train.batch_size}")
    if ks and not 1.0 / min(ks) < cfg.mixup.max_coef <= 1.0:
        raise ConfigError(
            f"mixup.max_coef: must be in (1/{min(ks)}, 1] so {min(ks)} coefficients summing to "
            f"1 can all stay below it, got {cfg.mixup.max_coef}"
        )
