"""One masking pipeline for every row of the paper's Tables 1-2: images in, training tensors out.

`build_masking(cfg)` composes the first stage of `cfg.masking.method` (see
`ahm_core.masking.methods.METHODS` and `ahm_core.masking.first_stage.FIRST_STAGES`) with its batch
mix: none, MixUp, InstaHide, or MixUp with a per-sample k chosen by the policy; `masking_for_run`
builds it as a run does (fitted on its training images, with a trained stage's state).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ahm_core.config import AHMConfig, check_choice
from ahm_core.data.base import FaceSet
from ahm_core.freq import check_images
from ahm_core.masking.first_stage import FIRST_STAGES, FirstStage
from ahm_core.masking.methods import METHODS
from ahm_core.masking.mixup import Mixed, instahide, mixup

FIT_IMAGES = 2048  # the most training images a fitted first stage fits on


@dataclass
class MaskingPipeline:
    """Maps a batch of images in [0, 1] to the tensors the recognition network trains on."""

    method: str
    first_stage: FirstStage
    batch_mix: str | None = None  # None | "mixup" | "instahide" | "adaptive"
    k: int | None = None  # fixed k of the MixUp/InstaHide rows
    max_coef: float = 0.55

    @property
    def in_channels(self) -> int:
        """Channel count of the training tensors: what the backbone's first layer takes."""
        return self.first_stage.in_channels

    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Per-image transform without mixing: what test images go through (same keys)."""
        check_images(images, "images", channels=None)
        return self.first_stage.encode(images, generator)

    def differentiable_encode(
        self, images: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """`encode` that autograd can go through to the images, for the attacker's gradients."""
        check_images(images, "images", channels=None)
        return self.first_stage.differentiable_encode(images, generator)

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
        if self.batch_mix is None:
            n = len(x)
            ones = torch.ones(n, 1, device=x.device)
            index = torch.arange(n, device=x.device)[:, None]
            return Mixed(x, labels.to(x.device, non_blocking=True)[:, None], ones, index)
        if self.batch_mix == "adaptive":
            if k is None:
                raise ValueError(f"{self.method}: needs the per-sample k chosen by the policy")
        elif k is not None:
            raise ValueError(f"{self.method}: mixes a fixed k={self.k}; do not pass k")
        mix = instahide if self.batch_mix == "instahide" else mixup
        return mix(x, labels, self.k if k is None else k, self.max_coef, generator)

    def seen(self, images: Tensor) -> Tensor:
        """What the first stage sees of images in [0, 1] (see `FirstStage.seen`)."""
        return self.first_stage.seen(images)

    def render(self, x: Tensor) -> Tensor:
        """Training tensor -> viewable image in [0, 1] ([N, 3 or 1, H, W]) by naive decoding."""
        return self.first_stage.render(x)


def first_stage_of(cfg: AHMConfig) -> type[FirstStage]:
    """The first-stage class of `cfg.masking.method`."""
    return FIRST_STAGES[METHODS[cfg.masking.method].first_stage]


def build_masking(cfg: AHMConfig, fit_images: Tensor | None = None) -> MaskingPipeline:
    """The pipeline of `cfg.masking.method`; a fitted first stage (DP) fits on `fit_images`.
    It checks the method and its stage's options (a notebook may skip `checks.validate`)."""
    check_choice("masking.method", cfg.masking.method, METHODS)
    spec, stage_class = METHODS[cfg.masking.method], first_stage_of(cfg)
    stage_class.check(cfg)
    stage = stage_class.from_config(cfg)
    if stage_class.fitted:
        if fit_images is None:
            raise ValueError(
                f"masking.method={cfg.masking.method}: pass fit_images, the training images its "
                f"first stage ({stage_class.name}) is fitted on"
            )
        stage.fit(fit_images, torch.Generator().manual_seed(cfg.train.seed))
    k = cfg.mixup.k if spec.batch_mix in ("mixup", "instahide") else None
    return MaskingPipeline(cfg.masking.method, stage, spec.batch_mix, k, cfg.mixup.max_coef)


def masking_for_run(
    cfg: AHMConfig, faces: FaceSet, train: Tensor, trained: dict[str, Tensor] | None = None
) -> MaskingPipeline:
    """The run's masking pipeline. A fitted first stage (DP) fits on up to FIT_IMAGES training
    images drawn at random (seeded by `data.seed`), so they span the identities, not the first
    ones; a trained one (DCTDP) takes the `trained` state of its module, else starts untrained."""
    fit = None
    if first_stage_of(cfg).fitted:
        fit = faces.images_uint8(fit_items(train, cfg.data.seed)).float() / 255.0
    masking = build_masking(cfg, fit_images=fit)
    if trained is not None and masking.first_stage.module is not None:
        masking.first_stage.module.load_state_dict(trained)
    return masking


def fit_items(train: Tensor, seed: int) -> Tensor:
    """Up to FIT_IMAGES of the training items, drawn at random (in their order)."""
    g = torch.Generator().manual_seed(seed)
    return train[torch.randperm(len(train), generator=g)[:FIT_IMAGES].sort().values]
