"""Eigenface perturbation with the Laplace mechanism, after PEEP (Chamikara et al., 2020).

The DP row of the paper's Table 2: a PCA (eigenface) basis is fitted on the training images; each
image's projections are clipped to the range seen in fitting, perturbed with Laplace noise of
scale sensitivity / epsilon (the sensitivity of one projection is its clipping range), and the
perturbed projections are decoded back to an image the recognition network trains on.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ahm_core.config import AHMConfig
from ahm_core.freq import check_images
from ahm_core.masking.first_stage import FirstStage, register, to_gray

MAX_FIT_IMAGES = 4096


def laplace(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str
) -> Tensor:
    """Unit Laplace noise in float64 by the inverse CDF, drawn from `generator` (on its device)
    and moved to `device`: noise that a seed reproduces wherever it is used."""
    where = generator.device if generator is not None else "cpu"
    u = torch.rand(shape, generator=generator, dtype=torch.float64, device=where)
    u = u.to(device, non_blocking=True) - 0.5
    return -u.sign() * torch.log1p(-2 * u.abs())


@register
class EigenfaceDP(FirstStage):
    """Laplace-perturbed eigenface reconstruction of grayscale images [N, 1, H, W]."""

    name = "dp"
    options = ("dp_components", "dp_epsilon")
    fitted = True

    def __init__(self, components: int = 128, epsilon: float = 3.0) -> None:
        if components < 1 or epsilon <= 0:
            raise ValueError(f"need components >= 1 and epsilon > 0, got {components}, {epsilon}")
        self.components, self.epsilon = components, epsilon
        self.mean: Tensor | None = None

    @classmethod
    def from_config(cls, cfg: AHMConfig) -> EigenfaceDP:
        return cls(cfg.masking.dp_components, cfg.masking.dp_epsilon)

    @property
    def in_channels(self) -> int:
        return 1

    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self(to_gray(images), generator) * 2.0 - 1.0

    def render(self, x: Tensor) -> Tensor:
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)

    def fit(self, images: Tensor, generator: torch.Generator | None = None) -> EigenfaceDP:
        """Fit the basis and the per-component clipping range on training images."""
        check_images(images, "DP fit images", channels=None)
        gray = to_gray(images)
        flat = gray.flatten(1).double()
        if len(flat) > MAX_FIT_IMAGES:
            flat = flat[torch.randperm(len(flat), generator=generator)[:MAX_FIT_IMAGES]]
        self.shape = gray.shape[1:]
        self.mean = flat.mean(dim=0)
        _, _, vh = torch.linalg.svd(flat - self.mean, full_matrices=False)
        self.basis = vh[: self.components]  # [r, D] eigenfaces
        proj = (flat - self.mean) @ self.basis.T
        self.low, self.high = proj.min(dim=0).values, proj.max(dim=0).values
        return self

    def __call__(self, gray: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Perturbed reconstructions in [0, 1], same shape as the input."""
        if self.mean is None:
            raise RuntimeError("EigenfaceDP: call fit(training images) before masking")
        check_images(gray, "DP images")
        if gray.shape[1:] != self.shape:
            raise ValueError(f"DP images: fitted on {tuple(self.shape)}, got {tuple(gray.shape)}")
        if self.basis.device != gray.device:  # once: the fit moves to where the images are
            self.mean, self.basis, self.low, self.high = (
                t.to(gray.device) for t in (self.mean, self.basis, self.low, self.high)
            )
        flat = gray.flatten(1).double()
        proj = ((flat - self.mean) @ self.basis.T).clamp(self.low, self.high)
        scale = (self.high - self.low) / self.epsilon
        noise = scale * laplace(tuple(proj.shape), generator, gray.device)
        images = (self.mean + (proj + noise) @ self.basis).clamp(0.0, 1.0)
        return images.to(gray.dtype).view_as(gray)
