"""Privacy indices, Table-2 scores, PSNR/SSIM, identity leakage and an offline LPIPS (D7, D8)."""

from ahm_core.metrics.lpips import LPIPS, alexnet_checkpoint
from ahm_core.metrics.privacy import (
    accuracy_ratio,
    embed_images,
    feature_distance,
    identity_leakage,
    normalise,
    privacy_index,
    psnr,
    ssim,
    table_scores,
)

__all__ = [
    "LPIPS",
    "accuracy_ratio",
    "alexnet_checkpoint",
    "embed_images",
    "feature_distance",
    "identity_leakage",
    "normalise",
    "privacy_index",
    "psnr",
    "ssim",
    "table_scores",
]
