"""The first stage of a masking method: what turns a face into the tensor the network sees.

A method of the paper's tables is a first stage composed with a batch mix (none, MixUp,
InstaHide, adaptive MixUp; `ahm_core.masking.methods.METHODS`). Each first stage is one `FirstStage`
subclass under `@register`, in its own module imported by `ahm_core/masking/__init__.py`: it
knows its channel count, its encode (with its keys or noise), a differentiable encode for the
attacks, a naive render, whether it is fitted on training images or trained with the network,
and which `masking.*` options are its own. Nothing outside the masking package asks which it is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from torch import Tensor, nn

from ahm_core.config import AHMConfig, ConfigError
from ahm_core.freq import (
    BLOCK,
    UPSAMPLE_FACTORS,
    bdct,
    bdct_explicit,
    ibdct,
    minmax,
)

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, the grayscale of the frequency-domain stages


def to_gray(images: Tensor) -> Tensor:
    """[N, 3, H, W] RGB (or [N, 1, H, W] gray) -> [N, 1, H, W] luma."""
    if images.shape[1] == 1:
        return images
    if images.shape[1] != 3:
        raise ValueError(f"images: expected 1 or 3 channels, got shape {tuple(images.shape)}")
    weights = torch.tensor(LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


class FirstStage(ABC):
    """Maps images in [0, 1] ([N, 1 or 3, H, W]) to [N, in_channels, h, w] training tensors."""

    name: ClassVar[str]  # its registry key, named by `METHODS[...].first_stage`
    options: ClassVar[tuple[str, ...]] = ()  # the `masking.*` options it reads: its section
    colour: ClassVar[bool] = False  # it sees colour; else the grey image is all it sees
    fitted: ClassVar[bool] = False  # `fit` on training images before the first encode
    shows_faces: ClassVar[bool] = False  # its render of an encoded face is that face
    learns: ClassVar[bool] = False  # its `module` trains on the training images with the network
    module: nn.Module | None = None  # parameters trained jointly with the network, if any

    @classmethod
    def check(cls, cfg: AHMConfig) -> None:
        """Raise `ConfigError` naming the first bad option of its section (called by `validate`);
        a stage without options of its own has nothing to check."""
        return None

    @classmethod
    @abstractmethod
    def from_config(cls, cfg: AHMConfig) -> FirstStage:
        """The stage configured by cfg's `masking` section (validated)."""

    @property
    @abstractmethod
    def in_channels(self) -> int:
        """Channel count of its tensors: what the backbone's first layer takes."""

    @abstractmethod
    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Training and test time alike (keys and noise drawn from `generator`)."""

    def differentiable_encode(
        self, images: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """`encode` that autograd goes through to the images, for the attacker's gradients."""
        return self.encode(images, generator)

    @abstractmethod
    def render(self, x: Tensor) -> Tensor:
        """Its tensor -> viewable image in [0, 1] ([N, 3 or 1, H, W]) by naive decoding."""

    def seen(self, images: Tensor) -> Tensor:
        """What it sees of images: grey, repeated to 3 channels, unless it sees colour. Privacy
        indices compare against this, so colour it never saw counts as no privacy."""
        return images if self.colour else to_gray(images).repeat(1, 3, 1, 1)

    def fit(self, images: Tensor, generator: torch.Generator | None = None) -> Self:
        """Fit on training images (the `fitted` stages); the others need nothing."""
        return self

    def optimizer(self) -> torch.optim.Optimizer | None:
        """The optimiser of `module`, stepped with the network's (None: nothing is trained)."""
        return None

    def describe(self, folder: Path) -> dict[str, Any]:
        """What it learnt, for a run's metrics, its figures written under `folder` (empty: it
        learns nothing)."""
        return {}

    def drop_order(self, images: Tensor) -> Tensor | None:
        """Its channels, the most redundant first (the largest noise, or the least signal on
        `images`, the attacker's own faces): what the appendix-A.2 attacker removes. None: it
        has no frequency channels to remove."""
        return None


FIRST_STAGES: dict[str, type[FirstStage]] = {}


def register(cls: type[FirstStage]) -> type[FirstStage]:
    """Class decorator: add a first stage to the registry under its `name`."""
    if cls.name in FIRST_STAGES:
        raise ValueError(f"first stage {cls.name!r} is registered twice")
    FIRST_STAGES[cls.name] = cls
    return cls


class BlockDCTStage(FirstStage):
    """A first stage on the block DCT of the grey image (upsampled x `masking.upsample`)."""

    @classmethod
    def check(cls, cfg: AHMConfig) -> None:
        u, size = cfg.masking.upsample, cfg.data.image_size
        if u not in UPSAMPLE_FACTORS:
            raise ConfigError(f"masking.upsample: expected one of {UPSAMPLE_FACTORS}, got {u}")
        if size % (BLOCK // u) or size < BLOCK // u:
            raise ConfigError(
                f"data.image_size: the block DCT with upsample={u} needs a multiple of "
                f"{BLOCK // u}, got {size}"
            )


def channel_energy(coeffs: Tensor) -> Tensor:
    """[C] mean square of each channel over images and positions: the signal it carries."""
    return coeffs.double().square().mean(dim=(0, 2, 3))


@register
class RGB(FirstStage):
    """The images themselves, in [-1, 1] (the ArcFace and RGB-domain rows)."""

    name = "rgb"
    colour = True
    shows_faces = True

    @classmethod
    def from_config(cls, cfg: AHMConfig) -> RGB:
        return cls()

    @property
    def in_channels(self) -> int:
        return 3

    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return images * 2.0 - 1.0

    def render(self, x: Tensor) -> Tensor:
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


@register
class BlockDCT(BlockDCTStage):
    """All 64 block-DCT channels, DC included (the frequency-domain MixUp and InstaHide rows)."""

    name = "bdct"
    options = ("upsample",)

    def __init__(self, upsample: int = 8) -> None:
        self.upsample = upsample

    @classmethod
    def from_config(cls, cfg: AHMConfig) -> BlockDCT:
        return cls(cfg.masking.upsample)

    @property
    def in_channels(self) -> int:
        return BLOCK * BLOCK

    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return bdct(to_gray(images), self.upsample)

    def differentiable_encode(
        self, images: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        # The fused operator writes into preallocated buffers, which autograd refuses.
        return bdct_explicit(to_gray(images).double(), self.upsample).to(images.dtype)

    def render(self, x: Tensor) -> Tensor:
        return minmax(ibdct(x, self.upsample))

    def drop_order(self, images: Tensor) -> Tensor:
        return channel_energy(self.encode(images)).argsort()
