"""The methods of the paper's tables: each a registered first stage composed with a batch mix."""

from __future__ import annotations

from typing import NamedTuple

from ahm_core.config import AHMConfig


class MethodSpec(NamedTuple):
    """A method of the paper's tables: a first stage composed with a mix of images in a batch."""

    first_stage: str  # a key of ahm_core.masking.FIRST_STAGES
    batch_mix: str | None  # None | "mixup" | "instahide" | "adaptive" (k per sample, the policy)


METHODS: dict[str, MethodSpec] = {
    "arcface": MethodSpec("rgb", None),
    "ppfr_fd": MethodSpec("ppfr_fd", None),
    "mixup_fd": MethodSpec("bdct", "mixup"),
    "instahide_fd": MethodSpec("bdct", "instahide"),
    "dp": MethodSpec("dp", None),
    "masking_mixup": MethodSpec("ppfr_fd", "mixup"),
    "masking_adamixup": MethodSpec("ppfr_fd", "adaptive"),
    "mixup_rgb": MethodSpec("rgb", "mixup"),
    "instahide_rgb": MethodSpec("rgb", "instahide"),
    "dctdp": MethodSpec("dctdp", None),
    "dctdp_adamixup": MethodSpec("dctdp", "adaptive"),
}


def mixing_ks(cfg: AHMConfig) -> tuple[int, ...]:
    """The k values the configured method can mix with (empty when it does not mix)."""
    batch_mix = METHODS[cfg.masking.method].batch_mix
    if batch_mix is None:
        return ()
    return tuple(cfg.policy.k_set) if batch_mix == "adaptive" else (cfg.mixup.k,)
