"""Masking of face batches: PPFR-FD, MixUp/InstaHide, eigenface DP, and the pipeline over them."""

from ahm_core.masking.dp import EigenfaceDP
from ahm_core.masking.mixup import Mixed, instahide, mixup
from ahm_core.masking.pipeline import MaskingPipeline, build_masking, to_gray
from ahm_core.masking.ppfr_fd import PPFRFD, Keys

__all__ = [
    "PPFRFD",
    "EigenfaceDP",
    "Keys",
    "MaskingPipeline",
    "Mixed",
    "build_masking",
    "instahide",
    "mixup",
    "to_gray",
]
