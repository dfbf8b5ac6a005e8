"""Face-recognition network (FRNet): IR-SE backbones and the (MixUp-)ArcFace heads."""

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
]
