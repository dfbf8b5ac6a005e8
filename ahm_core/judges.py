"""The face recognisers that judge an attack: the project's own unmasked ArcFace network trained
on the same data (the paper's feature model, docs/design.md D7), and dlib's pretrained ResNet face
descriptor, which neither the defence nor the attacker trained. A judge maps RGB images in [0, 1]
to embeddings; where dlib is not installed its column is absent, with the reason."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from ahm_core.checkpoints import sections
from ahm_core.config import AHMConfig, apply_overrides, from_dict
from ahm_core.experiment import run_centralized
from ahm_core.io import load_checkpoint
from ahm_core.metrics.dlib_face import DlibDescriptor, dlib_unavailable
from ahm_core.metrics.privacy import FeatureModel
from ahm_core.models import build_backbone

OWN, DLIB = "own", "dlib"  # the judges' names, as reports print them
JUDGES = (OWN, DLIB)  # attack.judges


class Judges(NamedTuple):
    """The judges available (name -> model; the own one first) and why any other is absent."""

    models: dict[str, FeatureModel]
    absent: dict[str, str]


def reference_arcface(cfg: AHMConfig, folder: Path, epochs: int) -> dict:
    """An unmasked ArcFace network trained centrally on cfg's data: the own judge (resumable;
    returns its metrics.json)."""
    overrides = {"masking.method": "arcface", "train.epochs": epochs}
    return run_centralized(apply_overrides(cfg, overrides), folder)


def own_judge(checkpoint: Path, cfg: AHMConfig, device: torch.device) -> FeatureModel:
    """The unmasked ArcFace network of `checkpoint` as f: RGB images in [0, 1] -> embeddings,
    built as the checkpoint's config built it (a judged row may differ, e.g. in `model.norm`)."""
    state = load_checkpoint(checkpoint, required=("backbone", "config"), map_location=device)
    model = from_dict({"model": sections(str(checkpoint), state["config"]).get("model", {})}).model
    net = build_backbone(model, 3, cfg.data.image_size).to(device).eval()
    net.load_state_dict(state["backbone"])

    @torch.no_grad()
    def embed(images: Tensor) -> Tensor:
        return net(images.to(device) * 2.0 - 1.0)

    return embed


def judges(checkpoint: Path, cfg: AHMConfig, device: torch.device) -> Judges:
    """The judges of `cfg.attack.judges`: the own one of `checkpoint`, and dlib's descriptor
    where it is installed."""
    models: dict[str, FeatureModel] = {OWN: own_judge(checkpoint, cfg, device)}
    absent = {}
    if DLIB in cfg.attack.judges:
        reason = dlib_unavailable()
        if reason is None:
            models[DLIB] = DlibDescriptor()
        else:
            absent[DLIB] = reason
    return Judges(models, absent)
