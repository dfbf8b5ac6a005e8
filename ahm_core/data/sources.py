"""From the data config to a face set, and to the identity-disjoint train / verification split.

A face source is registered in `SOURCES` by its own module (`register`, imported in
`ahm_core/data/__init__.py`): a new format is one module and one import line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from ahm_core.config import ConfigError, DataConfig
from ahm_core.data.base import FaceSet
from ahm_core.data.pairs import Pairs, holdout_identities, make_pairs

log = logging.getLogger(__name__)


def _no_check(cfg: DataConfig) -> None:
    """A source whose options need no check beyond the schema's bounds."""


class Source(NamedTuple):
    """A face source: its face set from the data config, the options it checks before anything
    loads, and its bad-input errors (an entry point shows them as one line)."""

    load: Callable[[DataConfig], FaceSet]
    check: Callable[[DataConfig], None] = _no_check
    errors: tuple[type[Exception], ...] = ()
    needs_root: bool = True  # data.root names its files


SOURCES: dict[str, Source] = {}


def register(name: str, source: Source) -> Source:
    """Add `source` to `SOURCES` as `data.source=name`."""
    if name in SOURCES:
        raise ValueError(f"data source {name!r} is already registered")
    SOURCES[name] = source
    return source


def load_faces(cfg: DataConfig) -> FaceSet:
    """The face set `cfg.source` names, at `cfg.image_size`, no image over `cfg.max_pixels`."""
    return SOURCES[cfg.source].load(cfg)


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


class RunData(NamedTuple):
    """A run's faces, its training items with labels 0..n-1, and the held-out verification pairs."""

    faces: FaceSet
    train: Tensor
    labels: Tensor
    num_classes: int
    pairs: Pairs


def run_data(cfg: DataConfig) -> RunData:
    """The faces `cfg` names, split for verification: what every run trains on and is attacked
    with (centralized, federated, the paper tables' and reports' cases)."""
    faces = load_faces(cfg)
    split = verification_split(faces.labels, cfg)
    labels, num_classes = relabel(faces.labels[split.train])
    return RunData(faces, split.train, labels, num_classes, split.pairs)
