"""IR-SE face-recognition backbones (docs/design.md D5) in the face.evoLVe / InsightFace layout.

The first convolution takes any channel count: 63 PPFR-FD channels, 64 block-DCT channels,
3 for the RGB ArcFace baseline (the "RGB twin"), 1 for eigenface DP. Module names follow
face.evoLVe's `model_irse.py` (`input_layer`, `body`, `output_layer`), so its RGB IR-SE-50
checkpoints load into `ir_se_50(cfg, in_channels=3)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import Tensor, nn

from ahm_core.config import ConfigError, ModelConfig

SE_REDUCTION = 16
IR_SE_50_BLOCKS = (3, 4, 14, 3)
IR_SE_50_WIDTHS = (64, 128, 256, 512)


class SEModule(nn.Module):
    """Squeeze-and-excitation: rescale each channel by a gate computed from its global mean."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)  # narrow CPU variants would otherwise get 0
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.relu = nn.ReLU()  # not in place: Opacus's per-sample hooks forbid it
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        """x [N, C, H, W] scaled per channel by its gate in (0, 1)."""
        gate = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * gate


class BottleneckIRSE(nn.Module):
    """`bottleneck_IR_SE`: BN-Conv3x3-PReLU-Conv3x3(stride)-BN-SE plus a (strided) shortcut."""

    def __init__(self, in_channels: int, depth: int, stride: int) -> None:
        super().__init__()
        if in_channels == depth:
            # MaxPool(1, s) only subsamples; with stride 1 it is the identity.
            self.shortcut_layer: nn.Module = (
                nn.MaxPool2d(1, stride) if stride > 1 else nn.Identity()
            )
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, 1, stride, bias=False), nn.BatchNorm2d(depth)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SEModule(depth),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Residual unit; halves H and W when built with stride 2."""
        return self.res_layer(x) + self.shortcut_layer(x)


def check_stages(blocks: Sequence[int], image_size: int) -> None:
    """Raise ConfigError unless `blocks` are one or more stages of >= 1 block each whose
    stride-2 openings halve `image_size` exactly."""
    if not blocks or min(blocks) < 1:
        raise ConfigError(
            f"model.blocks: expected one or more stages of >= 1 block each, got {tuple(blocks)}"
        )
    reduction = 2 ** len(blocks)
    if image_size < reduction or image_size % reduction:
        raise ConfigError(
            f"data.image_size: {len(blocks)} stages of model.blocks={tuple(blocks)} halve the "
            f"size {len(blocks)} times, so it must be a multiple of {reduction}, got {image_size}"
        )


def stage_blocks(cfg: ModelConfig) -> tuple[int, ...]:
    """The blocks per stage of the configured backbone."""
    return IR_SE_50_BLOCKS if cfg.backbone == "ir_se_50" else tuple(cfg.blocks)


class IRSE(nn.Module):
    """IR-SE network: stem, stages of `BottleneckIRSE` (each opening with stride 2), and the
    BN-Dropout-Flatten-FC-BN1d embedding head. Maps [N, in_channels, S, S] to [N, embedding_size].
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        blocks: Sequence[int],
        widths: Sequence[int],
        embedding_size: int = 512,
        dropout: float = 0.4,
    ) -> None:
        super().__init__()
        check_stages(blocks, image_size)
        reduction = 2 ** len(blocks)
        self.input_layer = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.PReLU(widths[0]),
        )
        units: list[nn.Module] = []
        in_width = widths[0]
        for count, width in zip(blocks, widths, strict=True):
            units += [BottleneckIRSE(in_width, width, 2)]
            units += [BottleneckIRSE(width, width, 1) for _ in range(count - 1)]
            in_width = width
        self.body = nn.Sequential(*units)
        side = image_size // reduction
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(in_width),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(in_width * side * side, embedding_size),
            nn.BatchNorm1d(embedding_size),
        )
        self._initialize()

    def _initialize(self) -> None:
        # InsightFace init; the FC keeps PyTorch's default, as in arcface_torch.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x [N, in_channels, S, S] -> embeddings [N, embedding_size] (not L2-normalised)."""
        return self.output_layer(self.body(self.input_layer(x)))


def ir_se_50(cfg: ModelConfig, in_channels: int, image_size: int = 112) -> IRSE:
    """IR-SE-50 of the paper: blocks (3, 4, 14, 3), widths 64..512; `cfg.blocks/width` unused."""
    return IRSE(
        in_channels, image_size, IR_SE_50_BLOCKS, IR_SE_50_WIDTHS, cfg.embedding_size, cfg.dropout
    )


def ir_se_small(cfg: ModelConfig, in_channels: int, image_size: int) -> IRSE:
    """CPU-sized IR-SE: `cfg.blocks` units per stage, stage i has `cfg.width * 2**i` channels."""
    widths = [cfg.width * 2**i for i in range(len(cfg.blocks))]
    return IRSE(in_channels, image_size, cfg.blocks, widths, cfg.embedding_size, cfg.dropout)


BACKBONES: dict[str, Callable[[ModelConfig, int, int], IRSE]] = {
    "ir_se_50": ir_se_50,
    "ir_se_small": ir_se_small,
}


def _group_norm(net: nn.Module) -> nn.Module:
    """`net` with GroupNorm in place of every BatchNorm, so that no sample's output depends on
    another's: over feature maps Opacus's rule (`ModuleValidator.fix`: gcd(32, C) groups); over
    the embedding one group of all C features, where that rule makes 32 groups of a single value
    each, which normalise every feature to zero."""
    for name, child in net.named_children():
        if isinstance(child, nn.BatchNorm2d):
            groups = math.gcd(32, child.num_features)
            setattr(net, name, nn.GroupNorm(groups, child.num_features, child.eps, child.affine))
        elif isinstance(child, nn.BatchNorm1d):
            setattr(net, name, nn.GroupNorm(1, child.num_features, child.eps, child.affine))
        else:
            _group_norm(child)
    return net


NORMS: dict[str, Callable[[nn.Module], nn.Module]] = {  # model.norm
    "batch": lambda net: net,
    "group": _group_norm,
}


def build_backbone(cfg: ModelConfig, in_channels: int, image_size: int) -> nn.Module:
    """The backbone named by `cfg.backbone` for [N, in_channels, image_size, image_size] input,
    with the normalisation `cfg.norm` names."""
    if cfg.backbone not in BACKBONES:
        raise ConfigError(
            f"model.backbone: unknown value {cfg.backbone!r}; expected one of "
            f"{', '.join(BACKBONES)}"
        )
    return NORMS[cfg.norm](BACKBONES[cfg.backbone](cfg, in_channels, image_size))
