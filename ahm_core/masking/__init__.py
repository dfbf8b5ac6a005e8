"""Masking of face batches: a first stage (RGB, block DCT, PPFR-FD, eigenface DP, DCTDP) composed
with a batch mix (MixUp, InstaHide, adaptive MixUp). Each first stage registers itself in
`FIRST_STAGES` when its module is imported here; a new one is one module and one import line."""

from ahm_core.masking.dctdp import DCTDP
from ahm_core.masking.dp import EigenfaceDP
from ahm_core.masking.first_stage import FIRST_STAGES, FirstStage, register, to_gray
from ahm_core.masking.mixup import Mixed, instahide, mixup
from ahm_core.masking.pipeline import MaskingPipeline, build_masking, first_stage_of
from ahm_core.masking.ppfr_fd import PPFRFD, Keys

__all__ = [
    "DCTDP",
    "FIRST_STAGES",
    "PPFRFD",
    "EigenfaceDP",
    "FirstStage",
    "Keys",
    "MaskingPipeline",
    "Mixed",
    "build_masking",
    "first_stage_of",
    "instahide",
    "mixup",
    "register",
    "to_gray",
]
