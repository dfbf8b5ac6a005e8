"""Validation of a config against the real registries: the names a config may use are those the
modules above `ahm_core.config` registered (methods and first stages, data sources, backbones,
the policy's nets, rewards and baselines, partitions, faults, gradient-inversion objectives and
judges), so no list of names is kept twice. The federation's strategies are Flower's and are
checked on the server's side (`server.strategy.check_strategy`)."""

from __future__ import annotations

import os
from collections.abc import Collection
from functools import partial

from ahm_core.attacks.gradient_inversion import OBJECTIVES
from ahm_core.config import AHMConfig, ConfigError, check_choice, check_schema, collect
from ahm_core.data.partition import SCHEMES
from ahm_core.data.sources import SOURCES
from ahm_core.faults import MODES
from ahm_core.judges import JUDGES
from ahm_core.masking.first_stage import FIRST_STAGES
from ahm_core.masking.methods import METHODS, mixing_ks
from ahm_core.models.backbones import BACKBONES, NORMS, check_stages, stage_blocks
from ahm_core.policy import BASELINES, CONTEXTS, NETS, REWARDS

# Option -> the registry whose names it accepts (each name of a list option).
REGISTRIES: dict[str, Collection[str]] = {
    "data.source": SOURCES,
    "masking.method": METHODS,
    "model.backbone": BACKBONES,
    "model.norm": NORMS,
    "policy.net": NETS,
    "policy.reward": REWARDS,
    "policy.baseline": BASELINES,
    "policy.context": CONTEXTS,
    "federation.partition": SCHEMES,
    "federation.fault_mode": MODES,
    "attack.gi_objective": OBJECTIVES,
    "attack.defences": METHODS,
    "attack.judges": JUDGES,
}


def _values(value: object) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def validate(cfg: AHMConfig) -> AHMConfig:
    """Raise one `ConfigError` naming every bad option; return cfg unchanged when it is sound.
    The checks that look a name up in its registry run only when that name is known."""
    choices = [
        (name, value, registry)
        for name, registry in REGISTRIES.items()
        for value in _values(getattr(getattr(cfg, name.split(".")[0]), name.split(".")[1]))
    ]
    try:
        check_schema(cfg)
        schema: tuple[str, ...] = ()
    except ConfigError as err:
        schema = err.problems
    # the checks that combine options run on those in bounds, so one bad value is one line
    bad = {problem.split(":", 1)[0] for problem in schema}
    sized = "data.image_size" not in bad
    known = cfg.data.source in SOURCES and sized, cfg.masking.method in METHODS and sized
    collect(
        [
            *(partial(check_choice, name, value, allowed) for name, value, allowed in choices),
            lambda: known[0] and SOURCES[cfg.data.source].check(cfg.data),
            lambda: known[1] and FIRST_STAGES[METHODS[cfg.masking.method].first_stage].check(cfg),
            lambda: (
                sized
                and cfg.model.backbone in BACKBONES
                and check_stages(stage_blocks(cfg.model), cfg.data.image_size)
            ),
            lambda: (
                known[1]
                and not bad & {"train.batch_size", "mixup.k", "policy.k_set"}
                and _check_mixing(cfg)
            ),
            lambda: not bad and cfg.model.backbone in BACKBONES and _check_memory(cfg),
            lambda: known[1] and cfg.train.dp_sgd and _check_dp_sgd(cfg),
        ],
        schema,
    )
    return cfg


def _check_mixing(cfg: AHMConfig) -> None:
    """The k a method mixes fit in a batch, and `mixup.max_coef` lets k coefficients stay below."""
    ks = mixing_ks(cfg)
    key = "policy.k_set" if METHODS[cfg.masking.method].batch_mix == "adaptive" else "mixup.k"
    problems = [
        f"{key}: k={k} exceeds train.batch_size={cfg.train.batch_size}"
        for k in ks
        if k > cfg.train.batch_size
    ]
    if ks and not 1.0 / min(ks) < cfg.mixup.max_coef <= 1.0:
        problems.append(
            f"mixup.max_coef: must be in (1/{min(ks)}, 1] so {min(ks)} coefficients summing to "
            f"1 can all stay below it, got {cfg.mixup.max_coef}"
        )
    collect((), problems)


def _check_dp_sgd(cfg: AHMConfig) -> None:
    """DP-SGD's noise covers the recogniser's gradients only: refuse a method with another part
    that learns from the same images (the policy's k, a fitted or trained first stage)."""
    method = METHODS[cfg.masking.method]
    stage = FIRST_STAGES[method.first_stage]
    learner = (
        "its policy draws each k from the images"
        if method.batch_mix == "adaptive"
        else f"its first stage {stage.name} learns from the images"
        if stage.fitted or stage.learns
        else None
    )
    if learner:
        raise ConfigError(
            f"train.dp_sgd: its noise covers the recogniser's gradients only, and "
            f"masking.method={cfg.masking.method}: {learner} without noise; expected a method "
            f"without a policy or a learning first stage"
        )
    if cfg.federation.strategy == "fedprox":
        raise ConfigError(
            "train.dp_sgd: FedProx's proximal term has no per-sample gradient to clip; expected "
            "federation.strategy other than fedprox"
        )


def footprint(cfg: AHMConfig) -> dict[str, int]:
    """Lower bounds, in bytes, of the largest allocations a run of `cfg` makes, by the settings
    that size them: the synthetic faces' image cache (uint8), and the embedding layer and the
    ArcFace head's class centres with their gradients and momentum (float32, three copies)."""
    m = cfg.model
    stages = len(stage_blocks(m))
    channels = 512 if m.backbone == "ir_se_50" else m.width * 2 ** (stages - 1)
    flat = channels * max(1, cfg.data.image_size // 2**stages) ** 2
    sizes = {"model.embedding_size": 12 * m.embedding_size * flat}
    if cfg.data.source == "synthetic":
        d = cfg.data
        sizes["data.num_identities"] = (
            d.num_identities * d.images_per_identity * 3 * d.image_size**2
        )
        sizes["model.embedding_size"] += 12 * m.embedding_size * d.num_identities
    return sizes


def _check_memory(cfg: AHMConfig) -> None:
    """Refuse before anything starts a config whose allocations exceed this machine's memory
    (which would end in a MemoryError, or in the machine swapping, minutes in)."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    sizes = footprint(cfg)
    if sum(sizes.values()) > memory:
        setting = max(sizes, key=sizes.__getitem__)
        raise ConfigError(
            f"{setting}: a run of this config needs at least {sum(sizes.values()) / 2**30:,.0f} "
            f"GiB, this machine has {memory / 2**30:,.0f} GiB; expected a smaller "
            f"{' or '.join(sorted(sizes))}"
        )
