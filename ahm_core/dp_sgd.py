"""DP-SGD for the recogniser (`train.dp_sgd`), by Opacus: per-sample gradients, each clipped to
`dp_max_grad_norm` over the backbone and the head together, Gaussian noise of
`dp_noise_multiplier` x that norm added to their sum, divided by the expected batch; batches
drawn by Poisson sampling (each training image in a step with probability batch / images), and
epsilon from Opacus's RDP accountant (`ahm_core.privacy`).

The network must not mix samples: `model.norm=group` puts GroupNorm where BatchNorm was (by
Opacus's rule for feature maps; Opacus checks the result when it wraps the network).

The ArcFace head takes labels and mixing coefficients beside the
embeddings, which Opacus's functorch fallback cannot replay (it passes the first input only), so
the head has its own grad sampler: each sample's loss differentiated alone, with `torch.func`.

The unit of privacy is a training sample as the network sees it. With MixUp at k, one image
enters up to k mixed samples of its batch, so its own gradient bound is k x the clipping norm;
the reports say so beside epsilon.
"""

from __future__ import annotations

import warnings

import torch
from opacus import GradSampleModule
from opacus.grad_sample import register_grad_sampler
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import Tensor, nn

from ahm_core.config import TrainConfig
from ahm_core.models.heads import MixUpArcFace

# Opacus's hooks fire on the first layer, whose input (the images) needs no gradient: expected.
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients")


@register_grad_sampler(MixUpArcFace)
def head_grad_sample(
    layer: MixUpArcFace, activations: list[Tensor], backprops: Tensor
) -> dict[nn.Parameter, Tensor]:
    """Per-sample gradients [N, C, D] of the head's class centres: each sample's loss alone,
    through a twin of the head that carries none of Opacus's hooks (`functional_call` puts the
    real centres in it), times the gradient that reached the sample's loss."""
    twin = MixUpArcFace(1, 1, layer.scale, layer.margin)

    def loss(weight: Tensor, embedding: Tensor, labels: Tensor, coefs: Tensor) -> Tensor:
        inputs = (embedding[None], labels[None], coefs[None])
        return torch.func.functional_call(twin, {"weight": weight}, inputs)[0]

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0, 0))
    grads = per_sample(layer.weight.detach(), *activations)
    return {layer.weight: grads * backprops.reshape(-1, 1, 1).to(grads.dtype)}


class PrivateSGD:
    """The recogniser made private: hooks that record per-sample gradients on the backbone and
    the head, and the optimiser that clips and noises them (Opacus's DPOptimizer around the
    trainer's SGD, whose param groups it shares, so a schedule of the SGD schedules it), its
    noise drawn from `noise`, seeded by `train.seed`. A Poisson draw of fewer than
    `smallest_batch` images (what the method mixes) is skipped."""

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        optimizer: torch.optim.Optimizer,
        t: TrainConfig,
        smallest_batch: int,
    ) -> None:
        self.t, self.smallest_batch = t, smallest_batch
        device = next(backbone.parameters()).device
        self.noise = torch.Generator(device).manual_seed(t.seed * 1_000_003 + 7)
        self.model = GradSampleModule(nn.ModuleDict({"backbone": backbone, "head": head}))
        self.optimizer = DPOptimizer(
            optimizer,
            noise_multiplier=t.dp_noise_multiplier,
            max_grad_norm=t.dp_max_grad_norm,
            expected_batch_size=t.batch_size,
            generator=self.noise,
        )

    def sampler(self, num_items: int, generator: torch.Generator) -> UniformWithReplacementSampler:
        """Poisson sampling over `num_items`: int(images / batch) draws an epoch."""
        rate = min(1.0, self.t.batch_size / num_items)
        return UniformWithReplacementSampler(
            num_samples=num_items, sample_rate=rate, generator=generator
        )
