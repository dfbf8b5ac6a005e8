"""PPFR-FD frequency-domain masking (docs/design.md D2), a reproduction: the authors' code is
not public.

Recipe per grayscale image: block DCT (upsampled x u) -> keep a subset of AC channels (DC dropped)
-> shuffle P1 -> channel self-normalisation -> channel mixing -> shuffle P2 -> self-normalisation.

Every step is linear in the image except the normalisations, which are per-image affine maps whose
statistics follow from the 9x9 covariance of the image's 3x3 windows (each DCT channel is a 3x3
filter of the image at u=8). So `mask` folds the recipe into one per-image [C, 9] matrix and bias
and writes the C-channel output in a single batched product; `mask_explicit` runs the recipe step
by step and is the test oracle.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ahm_core.config import AHMConfig, check_choice
from ahm_core.freq import (
    BLOCK,
    bdct_explicit,
    check_images,
    check_upsample,
    fused_kernel,
    render_channels,
    window_map,
)
from ahm_core.masking.first_stage import BlockDCTStage, channel_energy, register, to_gray


def zigzag_channels(count: int) -> list[int]:
    """The `count` lowest-frequency AC channels in JPEG zigzag order, returned sorted by index."""
    if not 1 <= count <= BLOCK * BLOCK - 1:
        raise ValueError(f"num_channels must be in [1, {BLOCK * BLOCK - 1}], got {count}")
    cells = [(i, j) for i in range(BLOCK) for j in range(BLOCK)]
    cells.sort(key=lambda c: (c[0] + c[1], c[0] if (c[0] + c[1]) % 2 else c[1]))
    return sorted(i * BLOCK + j for i, j in cells[1 : count + 1])


class Keys(NamedTuple):
    """The data owner's secret: the two channel permutations, one row per image [N, C]."""

    p1: Tensor
    p2: Tensor


def self_normalise(x: Tensor, eps: float) -> Tensor:
    """Per image and channel: zero mean, unit standard deviation over the spatial map."""
    mean = x.mean(dim=(-2, -1), keepdim=True)
    var = x.var(dim=(-2, -1), keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps)


KEY_MODES = ("fixed", "per_image")
CHANNEL_MIXINGS = ("adjacent", "none")  # PPFR-FD's mixing of channels (not MixUp's of images)


@register
class PPFRFD(BlockDCTStage):
    """PPFR-FD masking of grayscale images [N, 1, H, W] into [N, C, H*u/8, W*u/8]."""

    name = "ppfr_fd"
    options = ("upsample", "num_channels", "keys", "key_seed", "channel_mixing", "eps")

    def __init__(
        self,
        num_channels: int = 63,
        upsample: int = 8,
        keys: str = "fixed",
        key_seed: int = 0,
        channel_mixing: str = "adjacent",
        eps: float = 1e-8,
    ) -> None:
        check_upsample(upsample)
        if keys not in KEY_MODES:
            raise ValueError(f"keys must be 'fixed' or 'per_image', got {keys!r}")
        if channel_mixing not in CHANNEL_MIXINGS:
            raise ValueError(f"channel_mixing must be 'adjacent' or 'none', got {channel_mixing!r}")
        self.channels = torch.tensor(zigzag_channels(num_channels))
        self.upsample, self.key_mode, self.eps = upsample, keys, eps
        c = len(self.channels)
        eye = torch.eye(c, dtype=torch.float64)
        # y_i = x_i + x_{i+1 mod C}: rolled identity added to the identity.
        adjacent = channel_mixing == "adjacent" and c > 1
        self.mix_matrix = eye + eye.roll(1, dims=1) if adjacent else eye
        g = torch.Generator().manual_seed(key_seed)
        self._fixed = Keys(torch.randperm(c, generator=g), torch.randperm(c, generator=g))
        self._on_device: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    @classmethod
    def check(cls, cfg: AHMConfig) -> None:
        super().check(cfg)
        check_choice("masking.keys", cfg.masking.keys, KEY_MODES)
        check_choice("masking.channel_mixing", cfg.masking.channel_mixing, CHANNEL_MIXINGS)

    @classmethod
    def from_config(cls, cfg: AHMConfig) -> PPFRFD:
        m = cfg.masking
        return cls(m.num_channels, m.upsample, m.keys, m.key_seed, m.channel_mixing, m.eps)

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    @property
    def in_channels(self) -> int:
        return self.num_channels

    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.mask(to_gray(images), generator=generator)

    def differentiable_encode(
        self, images: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        # In float64, where the explicit recipe matches the fused map (the self-normalisation of
        # near-constant channels needs the precision).
        keys = self.keys(len(images), generator)
        return self.mask_explicit(to_gray(images).double(), keys).to(images.dtype)

    def drop_order(self, images: Tensor) -> Tensor | None:
        """The masked channels by the signal of their sources, least first: each is a normalised
        mix of kept channels (through the keys), and a mix of near-empty high frequencies carries
        no signal however the normalisation scales it. None with per-image keys, unknown."""
        if self.key_mode != "fixed":
            return None
        energy = channel_energy(bdct_explicit(to_gray(images).double(), self.upsample))
        sources = energy[self.channels][self._fixed.p1]  # after the first shuffle
        mixed = (self.mix_matrix > 0).double() * sources  # each output row's sources
        return mixed.max(dim=1).values[self._fixed.p2].argsort()

    def keys(self, n: int, generator: torch.Generator | None = None) -> Keys:
        """Keys for a batch of n images: the fixed pair repeated, or fresh ones per image."""
        if self.key_mode == "fixed":
            return Keys(self._fixed.p1.expand(n, -1), self._fixed.p2.expand(n, -1))
        device = generator.device if generator is not None else "cpu"
        noise = torch.rand(2, n, self.num_channels, generator=generator, device=device)
        p1, p2 = noise.argsort(dim=-1).cpu()
        return Keys(p1, p2)

    def mask(
        self, gray: Tensor, keys: Keys | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Masked channels of `gray` through the fused per-image linear map."""
        check_images(gray, "gray images")
        keys = keys if keys is not None else self.keys(gray.shape[0], generator)

        def affine(windows: Tensor, means: Tensor, part: slice) -> Tensor:
            # Every channel is AC, blind to the removed mean; the stats follow from the windows.
            weight, bias = self._affine(windows, Keys(keys.p1[part], keys.p2[part]))
            return torch.cat([weight, bias], dim=2)

        return window_map(gray, self.upsample, self.num_channels, affine)

    def _affine(self, patches: Tensor, keys: Keys) -> tuple[Tensor, Tensor]:
        """Per-image weight [N, C, T] and bias [N, C, 1] with masked = weight @ patches + bias."""
        device = patches.device
        mean = patches.mean(dim=-1)  # [N, T]
        cov = patches @ patches.transpose(1, 2) / patches.shape[-1]
        cov -= mean[:, :, None] * mean[:, None, :]
        kernel, mix_matrix = self._constants(device, patches.dtype)
        # [N, C, T]: the channels after the first shuffle
        k1 = kernel[keys.p1.to(device, non_blocking=True)]
        a1 = k1 / torch.sqrt(_quad(k1, cov) + self.eps)[..., None]
        a2 = mix_matrix @ a1
        a = torch.gather(a2, 1, keys.p2.to(device, non_blocking=True)[..., None].expand_as(a2))
        weight = a / torch.sqrt(_quad(a, cov) + self.eps)[..., None]
        return weight, -(weight @ mean[..., None])

    def _constants(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The kept channels' filters [C, T] and the mixing matrix [C, C], moved once per device
        (not per batch)."""
        key = (device, dtype)
        if key not in self._on_device:
            kernel = fused_kernel(self.upsample, device, dtype).flatten(1)
            self._on_device[key] = (
                kernel[self.channels.to(device)],
                self.mix_matrix.to(device, dtype),
            )
        return self._on_device[key]

    def mask_explicit(self, gray: Tensor, keys: Keys) -> Tensor:
        """The recipe step by step on the explicit block DCT: the oracle for `mask`."""
        check_images(gray, "gray images")
        x = bdct_explicit(gray, self.upsample)[:, self.channels.to(gray.device)]
        x = _shuffle(x, keys.p1)
        x = self_normalise(x, self.eps)
        x = torch.einsum("ij,njhw->nihw", self.mix_matrix.to(x), x)
        x = _shuffle(x, keys.p2)
        return self_normalise(x, self.eps)

    def render(self, masked: Tensor) -> Tensor:
        """Naive decoding for the metrics: channels into their slots in order, DC = 0, inverse
        block DCT, each image min-max scaled to [0, 1] (the masked scale carries no meaning)."""
        check_images(masked, "masked tensor", channels=self.num_channels)
        return render_channels(masked, self.channels, self.upsample)


def _quad(rows: Tensor, cov: Tensor) -> Tensor:
    """Variance of each filter row under the window covariance: diag(rows @ cov @ rows^T)."""
    return ((rows @ cov) * rows).sum(dim=-1)


def _shuffle(x: Tensor, perm: Tensor) -> Tensor:
    index = perm.to(x.device)[:, :, None, None].expand_as(x)
    return torch.gather(x, 1, index)
