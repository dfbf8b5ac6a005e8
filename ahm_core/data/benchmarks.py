"""The standard verification benchmarks: InsightFace `.bin` files (lfw, cfp_fp, agedb_30, calfw,
cplfw, ...) scored on their own pairs and in InsightFace's folds, beside a run's own held-out
identities, so a figure here can stand next to a paper's."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from ahm_core.config import DataConfig
from ahm_core.data.base import FaceSet
from ahm_core.data.insightface import load_bin_pairs
from ahm_core.data.pairs import Pairs


class DecodedFaces(FaceSet):
    """Images decoded once and held in memory (a `.bin` has 12,000 at most, about 450 MB at
    112 px); labels are unknown (-1): the pairs say who is who."""

    def __init__(self, images: Tensor) -> None:
        self.images, self.size = images, images.shape[-1]
        self.labels = torch.full((len(images),), -1, dtype=torch.long)

    def images_uint8(self, indices: Sequence[int] | Tensor) -> Tensor:
        return self.images[self._check_indices(indices)]


class Benchmark(NamedTuple):
    """One `.bin`: its name (the file's stem), its images and its pairs."""

    name: str
    faces: FaceSet
    pairs: Pairs


def insightface_folds(count: int, folds: int = 10) -> Tensor:
    """The fold of each of `count` pairs as InsightFace splits them (scikit-learn's KFold
    without shuffling): contiguous runs, the first `count % folds` one pair longer."""
    sizes = [count // folds + (fold < count % folds) for fold in range(folds)]
    return torch.repeat_interleave(torch.arange(folds), torch.tensor(sizes))


def load_benchmark(path: str | Path, size: int, max_pixels: int) -> Benchmark:
    """A `.bin` file as a benchmark: pair k compares images 2k and 2k + 1."""
    images, same = load_bin_pairs(path, size, max_pixels)
    left = torch.arange(0, len(images), 2)
    pairs = Pairs(left, left + 1, same, insightface_folds(len(same)))
    return Benchmark(Path(path).stem, DecodedFaces(images), pairs)


def load_benchmarks(cfg: DataConfig) -> list[Benchmark]:
    """The benchmarks `data.verification` names, at the run's image size."""
    return [load_benchmark(path, cfg.image_size, cfg.max_pixels) for path in cfg.verification]
