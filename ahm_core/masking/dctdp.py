"""DCTDP (Ji et al., ECCV 2022): learnable privacy budgets in the frequency domain, a reproduction
from the paper and Tencent TFace's `recognition/tasks/dctdp` (read at 171ec14).

Per grey image: block DCT (upsampled x u), DC removed, all 63 AC channels kept (unlike PPFR-FD, the
redundant high frequencies stay), then Laplace noise of scale sensitivity / epsilon_i per channel.
The allocation epsilon_i = epsilon * softmax(logits)_i always sums to the total budget epsilon;
the logits (and a learnt noise mean, as TFace's `locs`) are trained jointly with the recognition
network through the reparameterised noise, by the recognition loss alone (TFace defines a privacy
regulariser but never calls it). Noise is drawn at training and test time alike: it is what the
client sends. Where this differs from TFace: grey (TFace: YCbCr, 189 channels), and one budget per
channel (TFace: per channel and block position), as the paper describes its allocation; the
sensitivity is in grey levels of 0..255 as TFace's coefficients are (TFace: 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ahm_core.config import AHMConfig
from ahm_core.freq import BLOCK, bdct, bdct_explicit, check_images, render_channels
from ahm_core.masking.dp import laplace
from ahm_core.masking.first_stage import BlockDCTStage, register, to_gray
from ahm_core.plots import save_frequency_grid

GREY_LEVELS = 255.0  # the sensitivity's unit: coefficients here are of images in [0, 1]


class Budget(nn.Module):
    """The learnable part: allocation logits and the noise mean, one of each per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(channels))
        self.shift = nn.Parameter(torch.zeros(channels))


@register
class DCTDP(BlockDCTStage):
    """Noisy AC block-DCT channels of grey images [N, 1, H, W] -> [N, 63, H*u/8, W*u/8]."""

    name = "dctdp"
    options = ("upsample", "dctdp_epsilon", "dctdp_sensitivity", "dctdp_lr")
    learns = True

    def __init__(
        self, epsilon: float, sensitivity: float = 1.0, upsample: int = 8, lr: float = 0.1
    ) -> None:
        if epsilon <= 0 or sensitivity <= 0 or lr <= 0:
            raise ValueError(
                f"need epsilon, sensitivity, lr > 0, got {epsilon}, {sensitivity}, {lr}"
            )
        self.epsilon, self.sensitivity, self.upsample, self.lr = epsilon, sensitivity, upsample, lr
        self.channels = torch.arange(1, BLOCK * BLOCK)  # every AC channel
        self.module = Budget(len(self.channels)).eval()  # the trainer switches it to train

    @classmethod
    def from_config(cls, cfg: AHMConfig) -> DCTDP:
        m = cfg.masking
        return cls(m.dctdp_epsilon, m.dctdp_sensitivity, m.upsample, m.dctdp_lr)

    @property
    def in_channels(self) -> int:
        return len(self.channels)

    def allocation(self) -> Tensor:
        """[63] per-channel budgets epsilon_i, summing to epsilon (differentiable)."""
        return self.epsilon * torch.softmax(self.module.logits, dim=0)

    def scales(self) -> Tensor:
        """[63] Laplace scales b_i = sensitivity / epsilon_i, in the coefficients' unit."""
        return self.sensitivity / GREY_LEVELS / self.allocation()

    def noise(self, shape: torch.Size, generator: torch.Generator | None, like: Tensor) -> Tensor:
        """The learnt mean plus b_i times unit Laplace noise, per channel, shaped like `like`;
        differentiable in the budget only while its module trains (the trainer's), so what an
        attacker masks carries no graph."""
        z = laplace(tuple(shape), generator, like.device).to(like.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.module.training):
            shift = self.module.shift.to(like.device, like.dtype)[:, None, None]
            return shift + self.scales().to(like.device, like.dtype)[:, None, None] * z

    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        coeffs = bdct(to_gray(images), self.upsample)[:, 1:]
        return coeffs + self.noise(coeffs.shape, generator, coeffs)

    def differentiable_encode(
        self, images: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        coeffs = bdct_explicit(to_gray(images).double(), self.upsample)[:, 1:].to(images.dtype)
        return coeffs + self.noise(coeffs.shape, generator, coeffs)

    def render(self, x: Tensor) -> Tensor:
        check_images(x, "masked tensor", channels=self.in_channels)
        return render_channels(x, self.channels, self.upsample)

    def describe(self, folder: Path) -> dict[str, Any]:
        """The learnt allocation over the 63 AC channels, and its plot over the 8x8 grid."""
        allocation = self.allocation().detach().double().cpu()
        grid = torch.cat([torch.tensor([float("nan")]), allocation])
        title = f"DCTDP budget per frequency (epsilon {self.epsilon:g})"
        plot = save_frequency_grid(folder / "dctdp_allocation.png", grid, title)
        return {
            "epsilon": self.epsilon,
            "allocation": [round(v, 6) for v in allocation.tolist()],
            "allocation_sum": float(allocation.sum()),
            "allocation_plot": str(plot),
        }

    def optimizer(self) -> torch.optim.Optimizer:
        """Adam on the budget, as TFace trains it (the trainer anneals it with the network)."""
        return torch.optim.Adam(self.module.parameters(), lr=self.lr)

    def drop_order(self, images: Tensor) -> Tensor:
        """The channels by their learnt noise, largest first."""
        return self.scales().detach().cpu().argsort(descending=True)
