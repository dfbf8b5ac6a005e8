"""One masking pipeline for every row of the paper's Tables 1-2: images in, training tensors out.

`build_masking(cfg)` reads `cfg.masking.method` (see `ahm_core.config.METHODS`): the domain the
network sees (RGB, all 64 block-DCT channels, PPFR-FD channels, DP eigenface reconstructions) and
the mixing (none, MixUp, InstaHide, or MixUp with a per-sample k chosen by the policy).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ahm_core.config import METHODS, AHMConfig, validate
from ahm_core.freq import BLOCK, bdct, check_images, ibdct
from ahm_core.masking.dp import EigenfaceDP
from ahm_core.masking.mixup import Mixed, instahide, mixup
from ahm_core.masking.ppfr_fd import PPFRFD, minmax

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, the grayscale of PPFR-FD's first step


def to_gray(images: Tensor) -> Tensor:
    """[N, 3, H, W] RGB (or [N, 1, H, W] gray) -> [N, 1, H, W] luma."""
    if images.shape[1] == 1:
        return images
    if images.shape[1] != 3:
        raise ValueError(f"images: expected 1 or 3 channels, got shape {tuple(images.shape)}")
    weights = torch.tensor(LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


@dataclass
class MaskingPipeline:
    """Maps a batch of images in [0, 1] to the tensors the recognition network trains on."""

    method: str
    k: int | None = None  # fixed k of the MixUp/InstaHide rows
    max_coef: float = 0.55
    upsample: int = 8
    ppfr: PPFRFD | None = None
    dp: EigenfaceDP | None = None

    @property
    def domain(self) -> str:
        return METHODS[self.method].domain

    @property
    def mixing(self) -> str | None:
        return METHODS[self.method].mixing

    @property
    def in_channels(self) -> int:
        """Channel count of the training tensors: what the backbone's first layer takes."""
        if self.domain == "ppfr":
            return self.ppfr.num_channels
        return {"rgb": 3, "bdct": BLOCK * BLOCK, "dp": 1}[self.domain]

    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Per-image transform without mixing: what test images go through (same PPFR-FD key)."""
        check_images(images, "images", channels=None)
        if self.domain == "rgb":
            return images * 2.0 - 1.0
        gray = to_gray(images)
        if self.domain == "bdct":
            return bdct(gray, self.upsample)
        if self.domain == "ppfr":
            return self.ppfr.mask(gray, generator=generator)
        return self.dp(gray, generator) * 2.0 - 1.0

    def __call__(
        self,
        images: Tensor,
        labels: Tensor,
        k: int | Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Mixed:
        """Training batch for this method; `k` is the policy's per-sample choice (adaptive only)."""
        return self.mix(self.encode(images, generator), labels, k, generator)

    def mix(
        self,
        x: Tensor,
        labels: Tensor,
        k: int | Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Mixed:
        """The mixing half of `__call__`, on encoded tensors (the policy looks at them first)."""
        if self.mixing is None:
            n = len(x)
            ones = torch.ones(n, 1, device=x.device)
            index = torch.arange(n, device=x.device)[:, None]
            return Mixed(x, labels.to(x.device, non_blocking=True)[:, None], ones, index)
        if self.mixing == "adaptive":
            if k is None:
                raise ValueError(f"{self.method}: needs the per-sample k chosen by the policy")
        elif k is not None:
            raise ValueError(f"{self.method}: mixes a fixed k={self.k}; do not pass k")
        mix = instahide if self.mixing == "instahide" else mixup
        return mix(x, labels, self.k if k is None else k, self.max_coef, generator)

    def seen(self, images: Tensor) -> Tensor:
        """What the first stage sees of images in [0, 1]: grey (repeated to 3 channels) for the
        frequency-domain and DP methods, which never see colour; the images for RGB ones. Privacy
        indices compare against this, so colour the masking never saw counts as no privacy."""
        if self.domain == "rgb":
            return images
        return to_gray(images).repeat(1, 3, 1, 1)

    def render(self, x: Tensor) -> Tensor:
        """Training tensor -> viewable image in [0, 1] ([N, 3 or 1, H, W]) by naive decoding."""
        if self.domain in ("rgb", "dp"):
            return ((x + 1.0) / 2.0).clamp(0.0, 1.0)
        if self.domain == "bdct":
            return minmax(ibdct(x, self.upsample))
        return self.ppfr.render(x)


def build_masking(cfg: AHMConfig, fit_images: Tensor | None = None) -> MaskingPipeline:
    """The pipeline of `cfg.masking.method`; the DP row fits its eigenfaces on `fit_images`."""
    validate(cfg)
    m = cfg.masking
    spec = METHODS[m.method]
    ppfr = None
    if spec.domain == "ppfr":
        ppfr = PPFRFD(m.num_channels, m.upsample, m.keys, m.key_seed, m.mixing, m.eps)
    dp = None
    if spec.domain == "dp":
        if fit_images is None:
            raise ValueError("masking.method=dp: pass fit_images, the images to fit eigenfaces on")
        generator = torch.Generator().manual_seed(cfg.train.seed)
        dp = EigenfaceDP(m.dp_components, m.dp_epsilon).fit(to_gray(fit_images), generator)
    k = cfg.mixup.k if spec.mixing in ("mixup", "instahide") else None
    return MaskingPipeline(m.method, k, cfg.mixup.max_coef, m.upsample, ppfr, dp)
