"""Face-recognition network (FRNet): IR-SE backbones and the (MixUp-)ArcFace heads."""

import torch

from ahm_core.models.backbones import BACKBONES, IRSE, build_backbone, ir_se_50, ir_se_small
from ahm_core.models.heads import ArcFace, MixUpArcFace, build_head

__all__ = [
    "BACKBONES",
    "IRSE",
    "ArcFace",
    "MixUpArcFace",
    "build_backbone",
    "build_head",
    "ir_se_50",
    "ir_se_small",
    "load_travelled",
]


def load_travelled(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a federated state into `module`: every key but its integer buffers, which travel
    nowhere (`ahm_core.federated`) and which the module keeps."""
    missing, unexpected = module.load_state_dict(state, strict=False)
    kept = module.state_dict()
    left = [k for k in missing if kept[k].is_floating_point()]
    if left or unexpected:
        raise KeyError(f"state does not fit the module: missing {left[:3]}, extra {unexpected[:3]}")
