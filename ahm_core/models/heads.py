"""ArcFace and MixUp-ArcFace heads (docs/design.md D4, the paper's Algorithm 1).

For sample i mixing components j with labels y_ij and coefficients l_ij (rows sum to 1, a zero
coefficient marks an absent component), the logits are

    s * (cos_i + sum_j l_ij * (cos(theta_{i,y_ij} + m) - cos(theta_{i,y_ij})) * onehot(y_ij))

and the loss is sum_j l_ij * CE(logits_i, y_ij). Components sharing a label add up. ArcFace is
the one-component case (l = 1). The margin math runs in float32, also under bf16 autocast.

`losses` also gives the margin-free MixUp loss, sum_j l_ij * CE(s * cos_i, y_ij) (m = 0, same
scale and cosines): the adaptive policy's `margin_free` reward, free of the margin term that
Algorithm 1 weights by l_ij twice (once in the logits, once in the loss); and that loss less the
entropy of the mixed label q_i (the `kl` reward, KL(q_i || softmax(s * cos_i)) >= 0): what is left
once the floor that every recogniser pays at that mixing, H(q_i), is taken off.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ahm_core.config import ModelConfig

SIN_EPS = 1e-6  # floor of sin^2(theta): keeps d sin / d cos finite at cos = +-1


class MixUpArcFace(nn.Module):
    """Additive angular margin softmax over `num_classes` for samples mixing several identities."""

    def __init__(
        self, num_classes: int, embedding_size: int, scale: float = 64.0, margin: float = 0.5
    ) -> None:
        super().__init__()
        self.scale, self.margin = scale, margin
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)
        self._cos_m, self._sin_m = math.cos(margin), math.sin(margin)
        # Past theta + m > pi, cos(theta + m) stops decreasing; arcface_torch's linear fallback.
        self._threshold = math.cos(math.pi - margin)
        self._fallback = math.sin(math.pi - margin) * margin

    def extra_repr(self) -> str:
        classes, dim = self.weight.shape
        return (
            f"num_classes={classes}, embedding_size={dim}, scale={self.scale}, margin={self.margin}"
        )

    def cosine(self, embeddings: Tensor) -> Tensor:
        """cos(theta) [N, num_classes] between embeddings [N, D] and class centres, in float32."""
        device = embeddings.device.type
        off = torch.amp.is_autocast_available(device)  # meta, for one, has no autocast
        with torch.autocast(device, enabled=False) if off else contextlib.nullcontext():
            return F.linear(F.normalize(embeddings.float()), F.normalize(self.weight.float()))

    def _margin(self, cos: Tensor) -> Tensor:
        """cos(theta + m) from cos(theta) without arccos, finite in value and gradient."""
        sin = torch.sqrt((1.0 - cos * cos).clamp(min=SIN_EPS))
        phi = cos * self._cos_m - sin * self._sin_m
        return torch.where(cos > self._threshold, phi, cos - self._fallback)

    def logits(self, embeddings: Tensor, labels: Tensor, coefs: Tensor) -> Tensor:
        """Scaled margin logits [N, num_classes] for labels and coefs [N, k] (Algorithm 1)."""
        return self._logits(embeddings, labels, coefs)

    def forward(self, embeddings: Tensor, labels: Tensor, coefs: Tensor) -> Tensor:
        """Per-sample loss [N]: sum_j coefs[:, j] * CE(logits, labels[:, j])."""
        return _soft_cross_entropy(self._logits(embeddings, labels, coefs), labels, coefs)

    def losses(
        self, embeddings: Tensor, labels: Tensor, coefs: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-sample Algorithm 1 loss, margin-free loss (m = 0) and that less the mixed label's
        entropy, each [N], from one cosine (the order of `ahm_core.policy.REWARDS`)."""
        cos, logits = self._cos_logits(embeddings, labels, coefs)
        free = _soft_cross_entropy(cos * self.scale, labels, coefs)
        return _soft_cross_entropy(logits, labels, coefs), free, free - label_entropy(labels, coefs)

    # Subclasses narrow `logits`/`forward`; both call this one implementation.
    def _logits(self, embeddings: Tensor, labels: Tensor, coefs: Tensor) -> Tensor:
        return self._cos_logits(embeddings, labels, coefs)[1]

    def _cos_logits(
        self, embeddings: Tensor, labels: Tensor, coefs: Tensor
    ) -> tuple[Tensor, Tensor]:
        if labels.ndim != 2 or coefs.shape != labels.shape or len(labels) != len(embeddings):
            raise ValueError(
                f"labels and coefs: expected equal shapes [N, k] with N={len(embeddings)}, "
                f"got {tuple(labels.shape)} and {tuple(coefs.shape)}"
            )
        cos = self.cosine(embeddings)
        target = cos.gather(1, labels)
        shift = coefs.float() * (self._margin(target) - target)
        return cos, cos.scatter_add(1, labels, shift) * self.scale


class ArcFace(MixUpArcFace):
    """Plain ArcFace: one label per sample. Same parameters as `MixUpArcFace` (same state_dict)."""

    def logits(self, embeddings: Tensor, labels: Tensor) -> Tensor:  # type: ignore[override]
        """Scaled margin logits [N, num_classes] for labels [N]."""
        return super().logits(embeddings, *_single(labels))

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:  # type: ignore[override]
        """Per-sample ArcFace loss [N] for labels [N]."""
        return super().forward(embeddings, *_single(labels))


def _soft_cross_entropy(logits: Tensor, labels: Tensor, coefs: Tensor) -> Tensor:
    """sum_j coefs[:, j] * CE(logits, labels[:, j]) per sample, [N]."""
    log_probs = F.log_softmax(logits, dim=1)
    return -(coefs.float() * log_probs.gather(1, labels)).sum(dim=1)


def label_entropy(labels: Tensor, coefs: Tensor) -> Tensor:
    """H(q_i) in nats [N] of each sample's mixed label q_i (coefs of components sharing a label
    add up): the least soft-label cross-entropy any recogniser can reach on that sample."""
    same = labels[:, :, None] == labels[:, None, :]  # [N, k, k]: components j, j' share a label
    merged = (same * coefs.float()[:, None, :]).sum(dim=2)  # q at component j's label
    terms = coefs.float() * merged.clamp_min(torch.finfo(torch.float32).tiny).log()
    return -terms.sum(dim=1)


def _single(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Labels [N] as one mixing component of weight 1: labels and coefs [N, 1]."""
    if labels.ndim != 1:
        raise ValueError(f"labels: expected shape [N], got {tuple(labels.shape)}")
    return labels[:, None], torch.ones(len(labels), 1, device=labels.device)


def build_head(cfg: ModelConfig, num_classes: int) -> MixUpArcFace:
    """MixUp-ArcFace over `num_classes` identities with the configured scale and margin.

    It serves unmixed batches too (labels [N, 1], coefs 1); its state_dict loads into `ArcFace`.
    """
    return MixUpArcFace(num_classes, cfg.embedding_size, cfg.scale, cfg.margin)
