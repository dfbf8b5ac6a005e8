"""From the data config to a face set, and to the identity-disjoint train / verification split."""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch
from torch import Tensor

from ahm_core.config import ConfigError, DataConfig
from ahm_core.data.base import FaceSet
from ahm_core.data.pairs import Pairs, holdout_identities, make_pairs

log = logging.getLogger(__name__)


def load_faces(cfg: DataConfig) -> FaceSet:
    """The face set `cfg.source` names, at `cfg.image_size`, no image over `cfg.max_pixels`;
    prints its one summary line."""
    if cfg.source == "synthetic":
        from ahm_core.data.synthetic import SynthFaces

        faces = SynthFaces(cfg.num_identities, cfg.images_per_identity, cfg.image_size, cfg.seed)
        log.info("synthetic faces: %d identities, %d images", faces.num_identities, len(faces))
        return faces
    if cfg.source == "folder":
        from ahm_core.data.folders import FolderFaces

        return FolderFaces(cfg.root, cfg.image_size, cfg.min_images, cfg.max_pixels)
    from ahm_core.data.insightface import RecordIOFaces

    return RecordIOFaces(cfg.root, cfg.image_size, cfg.max_pixels)


class Split(NamedTuple):
    """Items to train on, and verification pairs over the other identities."""

    train: Tensor
    pairs: Pairs


def verification_split(labels: Tensor, cfg: DataConfig) -> Split:
    """Hold out `cfg.test_fraction` of the identities (at least 2) for verification pairs."""
    ids = len(labels.unique())
    if ids < 3:
        raise ConfigError(
            f"data: {ids} identities; verification needs >= 3 (2 held out, the rest to train)"
        )
    held = min(ids - 1, max(2, round(cfg.test_fraction * ids)))
    train, test = holdout_identities(labels, held, cfg.seed)
    try:
        pairs = make_pairs(labels, test, cfg.num_pairs, seed=cfg.seed)
    except ValueError as err:
        raise ConfigError(
            f"data: no verification pairs of the {held} held-out identities ({err})"
        ) from None
    # Training labels must be 0..n-1 for the classification head: callers remap with `relabel`.
    return Split(train, pairs)


def relabel(labels: Tensor) -> tuple[Tensor, int]:
    """Map labels to 0..n-1 in sorted order; returns the new labels and n."""
    unique, inverse = torch.unique(labels, return_inverse=True)
    return inverse, len(unique)
