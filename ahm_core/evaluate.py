"""The standard face-verification protocol (LFW, CFP-FP, AgeDB, CALFW), as InsightFace runs it.

Embedding = model(image) + model(flipped image), L2-normalised; distance = squared L2 in [0, 4];
for each of the 10 folds, the threshold (grid 0, 0.01, ..., 3.99; the first best on ties) that
maximises accuracy on the other 9 folds is applied to it; report mean and std over folds. TAR at
FAR = 1e-3 two ways: over all pairs, the largest threshold that accepts at most 0.1% of the
negatives (`tar_at_far_1e-3`); and as InsightFace's `calculate_val` (`tar_at_far_1e-3_folds`):
per fold, the threshold (grid 0, 0.001, ..., 3.999) where the other folds' FAR reaches 1e-3,
interpolated linearly, applied to the fold; mean and std TAR and the mean FAR it reached.

Pairs share images and identities, so the fold interval treats dependent pairs as independent:
`identity_interval` (and `identity_difference` for two methods on the same pairs) bootstraps the
per-pair outcomes a report stored, clustered by the identities of the pairs `cfg.data` makes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import torch
from torch import Tensor, nn

from ahm_core.config import DataConfig
from ahm_core.data.base import FaceSet
from ahm_core.data.pairs import Pairs
from ahm_core.data.sources import run_data
from ahm_core.metrics.uncertainty import (
    cluster_pair_difference,
    cluster_pair_interval,
    fold_interval,
)

THRESHOLDS = torch.arange(0, 400) / 100.0


def fold_accuracy(
    dist: Tensor, same: Tensor, fold: Tensor, thresholds: Tensor = THRESHOLDS
) -> tuple[Tensor, Tensor]:
    """Per-fold accuracy and the threshold each fold was judged with (chosen on the others)."""
    accuracies, chosen = [], []
    for f in fold.unique().tolist():
        train, test = fold != f, fold == f
        predicted = dist[train][None, :] < thresholds[:, None]  # [T, P]
        train_acc = (predicted == same[train][None, :]).float().mean(dim=1)
        best = thresholds[int(torch.argmax(train_acc))]  # argmax returns the first maximum
        accuracies.append(((dist[test] < best) == same[test]).float().mean())
        chosen.append(best)
    return torch.stack(accuracies), torch.stack(chosen)


def tar_at_far(dist: Tensor, same: Tensor, far: float = 1e-3) -> float | None:
    """True accept rate at the threshold accepting at most `far` of negatives; None when there
    are fewer than 1/far negatives to measure that rate on."""
    negatives = dist[~same].sort().values
    if len(negatives) < math.ceil(1 / far):
        return None
    allowed = math.floor(far * len(negatives))  # negatives that may fall under the threshold
    threshold = negatives[allowed]
    return float((dist[same] < threshold).float().mean())


FINE_THRESHOLDS = torch.arange(0, 4000, dtype=torch.float64) / 1000.0


def tar_at_far_folds(
    dist: Tensor,
    same: Tensor,
    fold: Tensor,
    far: float = 1e-3,
    thresholds: Tensor = FINE_THRESHOLDS,
) -> dict[str, float]:
    """InsightFace's TAR@FAR: per fold, the threshold at which the other folds' FAR reaches
    `far` (linear between grid thresholds; 0 when no threshold reaches it), applied to the fold.

    InsightFace interpolates with scipy's interp1d over FAR, which modern scipy refuses when FAR
    repeats (it always does: FAR is a step function); each run of equal FAR is taken at its last
    threshold, the largest accepting that FAR."""
    tars, fars = [], []
    dist = dist.double()
    for f in fold.unique().tolist():
        train, test = fold != f, fold == f
        negatives = dist[train & ~same].sort().values
        far_train = torch.searchsorted(negatives, thresholds).double() / len(negatives)
        threshold = 0.0
        if float(far_train.max()) >= far:
            last = torch.ones_like(far_train, dtype=torch.bool)
            last[:-1] = far_train[1:] != far_train[:-1]
            xs, ys = far_train[last].numpy(), thresholds[last].numpy()
            threshold = float(np.interp(far, xs, ys))
        accepted = dist[test] < threshold
        tars.append(float(accepted[same[test]].double().mean()))
        fars.append(float(accepted[~same[test]].double().mean()))
    return {"mean": float(np.mean(tars)), "std": float(np.std(tars)), "far": float(np.mean(fars))}


def verification_report(embeddings: Tensor, pairs: Pairs) -> dict:
    """Accuracy (mean, std over folds), thresholds and TAR@FAR=1e-3 from per-item embeddings."""
    dist = (embeddings[pairs.left] - embeddings[pairs.right]).pow(2).sum(dim=1)
    acc, thresholds = fold_accuracy(dist, pairs.same, pairs.fold)
    # Each pair judged with its fold's threshold: the outcomes a paired test compares.
    judged = thresholds[torch.searchsorted(pairs.fold.unique(), pairs.fold)]
    correct = (dist < judged) == pairs.same
    return {
        "accuracy": float(acc.mean()),
        "accuracy_std": float(acc.std(unbiased=False)),
        "accuracy_ci95": list(fold_interval(acc)),
        "thresholds": [round(float(t), 2) for t in thresholds],
        "tar_at_far_1e-3": tar_at_far(dist, pairs.same),
        "tar_at_far_1e-3_folds": tar_at_far_folds(dist, pairs.same, pairs.fold),
        "pairs": len(pairs),
        "correct": "".join("1" if c else "0" for c in correct.tolist()),  # per pair, in order
    }


@torch.no_grad()
def embed(
    model: nn.Module,
    dataset: FaceSet,
    items: Tensor,
    encode: Callable[[Tensor], Tensor],
    batch_size: int = 128,
    device: torch.device | str = "cpu",
) -> Tensor:
    """[len(items), D] L2-normalised embeddings of image + horizontal flip, through `encode`
    (the masking pipeline's per-image transform: same PPFR-FD key, no MixUp)."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(items), batch_size):
        images = dataset.images_uint8(items[start : start + batch_size]).float().div_(255.0)
        images = images.to(device)
        both = model(encode(images)) + model(encode(images.flip(-1)))
        out.append(nn.functional.normalize(both.float(), dim=1).cpu())
    model.train(was_training)
    return torch.cat(out)


def evaluate_verification(
    model: nn.Module,
    dataset: FaceSet,
    pairs: Pairs,
    encode: Callable[[Tensor], Tensor],
    batch_size: int = 128,
    device: torch.device | str = "cpu",
) -> dict:
    """The protocol on `pairs` of `dataset`: each image embedded once, then scored."""
    items = torch.cat([pairs.left, pairs.right]).unique()
    position = torch.full((int(items.max()) + 1,), -1, dtype=torch.long)
    position[items] = torch.arange(len(items))
    emb = embed(model, dataset, items, encode, batch_size, device)
    local = Pairs(position[pairs.left], position[pairs.right], pairs.same, pairs.fold)
    return verification_report(emb, local)


def benchmark_line(report: dict) -> str:
    """A benchmark's report as InsightFace prints it (accuracy +- fold std, TAR@FAR), with the
    accuracy's 95% interval."""
    tar, (low, high) = report["tar_at_far_1e-3_folds"], report["accuracy_ci95"]
    return (
        f"accuracy {report['accuracy']:.4f} +- {report['accuracy_std']:.4f} "
        f"(95% [{low:.4f}, {high:.4f}]), "
        f"TAR {tar['mean']:.4f} +- {tar['std']:.4f} at FAR {tar['far']:.5f} "
        f"({report['pairs']} pairs)"
    )


_IDENTITIES: dict[str, tuple[Tensor, Tensor]] = {}  # data config -> its pairs' identity labels


def pair_identities(data: DataConfig) -> tuple[Tensor, Tensor]:
    """The identity labels of the two images of each verification pair `data` makes (memoised)."""
    key = json.dumps(asdict(data), sort_keys=True)
    if key not in _IDENTITIES:
        run = run_data(data)
        _IDENTITIES.clear()  # one data set at a time: a report reads one
        _IDENTITIES[key] = (run.faces.labels[run.pairs.left], run.faces.labels[run.pairs.right])
    return _IDENTITIES[key]


def identity_interval(data: DataConfig, correct: str) -> list[float]:
    """The 95% interval of an accuracy over `data`'s pairs (per-pair `correct`), by identity."""
    return list(cluster_pair_interval(correct, *pair_identities(data)))


def identity_difference(data: DataConfig, a: str, b: str) -> dict:
    """A's accuracy minus B's on `data`'s pairs: difference, identity-clustered ci95 and p."""
    return cluster_pair_difference(a, b, *pair_identities(data))
