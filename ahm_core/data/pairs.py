"""Verification pairs from any identity-labelled set, laid out like LFW's View 2.

Identities are dealt to 10 folds, so no person appears in two folds (when there are at least
two people per fold); each fold holds as many same-identity pairs as different-identity pairs.
The default 6,000 pairs (600 per fold) shrink only when the set has too few pairs to fill a fold.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor


class Pairs(NamedTuple):
    """Pair p compares items left[p] and right[p]; same[p] says whether they share an identity;
    fold[p] is its cross-validation fold."""

    left: Tensor
    right: Tensor
    same: Tensor
    fold: Tensor

    def __len__(self) -> int:
        return len(self.same)


def holdout_identities(labels: Tensor, count: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Split items by identity: (indices of the other identities, indices of `count` held out)."""
    ids = labels.unique()
    if not 0 < count < len(ids):
        raise ValueError(f"cannot hold out {count} of {len(ids)} identities: need 0 < count < it")
    g = torch.Generator().manual_seed(seed)
    held = ids[torch.randperm(len(ids), generator=g)[:count]]
    test = torch.isin(labels, held)
    return torch.nonzero(~test).flatten(), torch.nonzero(test).flatten()


def make_pairs(
    labels: Tensor,
    items: Tensor | None = None,
    num_pairs: int = 6000,
    folds: int = 10,
    seed: int = 0,
) -> Pairs:
    """Balanced pairs over `items` (default: all) of a labelled set, in `folds` folds.

    With at least two identities per fold, folds are identity-disjoint (LFW View 2). A smaller
    set (say 10 people) draws its pairs from everyone and deals them to folds instead.
    """
    items = torch.arange(len(labels)) if items is None else items
    rng = np.random.default_rng(seed)
    by_id: dict[int, list[int]] = {}
    for item, label in zip(items.tolist(), labels[items].tolist(), strict=True):
        by_id.setdefault(label, []).append(item)
    ids = np.array(sorted(by_id))
    if len(ids) < 2:
        raise ValueError(f"pairs: need >= 2 identities, got {len(ids)}")
    rng.shuffle(ids)
    disjoint = len(ids) >= 2 * folds
    groups = [ids[f::folds] for f in range(folds)] if disjoint else [ids]
    per_group = num_pairs // (2 * len(groups))
    left, right, same, fold = [], [], [], []
    for g, members in enumerate(groups):
        group = {int(i): np.array(by_id[int(i)]) for i in members}
        sizes = np.array([len(v) for v in group.values()])
        # Balanced: as many pairs of each kind as the scarcer kind allows.
        possible_same = (sizes * (sizes - 1)).sum() // 2
        possible_other = (sizes.sum() ** 2 - (sizes**2).sum()) // 2
        count = int(min(per_group, possible_same, possible_other))
        for pairs, flag in (
            (_positives(group, count, rng), True),
            (_negatives(group, count, rng), False),
        ):
            order = rng.permutation(len(pairs))
            left += [pairs[k][0] for k in order]
            right += [pairs[k][1] for k in order]
            same += [flag] * len(pairs)
            fold += [g] * len(pairs) if disjoint else (np.arange(len(pairs)) % folds).tolist()
    if not any(same):
        raise ValueError("pairs: no identity has two images, so there is no same-identity pair")
    return Pairs(torch.tensor(left), torch.tensor(right), torch.tensor(same), torch.tensor(fold))


def _positives(group: dict[int, np.ndarray], count: int, rng: np.random.Generator) -> list:
    """`count` distinct same-identity pairs, identities weighted by their pair counts."""
    ids = [i for i, imgs in group.items() if len(imgs) >= 2]
    if not ids:
        return []
    sizes = np.array([len(group[i]) for i in ids])
    weights = sizes * (sizes - 1) / 2
    chosen: set[tuple[int, int]] = set()
    while len(chosen) < count:
        person = ids[rng.choice(len(ids), p=weights / weights.sum())]
        a, b = rng.choice(group[person], size=2, replace=False)
        chosen.add((min(a, b), max(a, b)))
    return sorted(chosen)


def _negatives(group: dict[int, np.ndarray], count: int, rng: np.random.Generator) -> list:
    """`count` distinct pairs of images of two different identities of the fold."""
    ids = list(group)
    chosen: set[tuple[int, int]] = set()
    while len(chosen) < count:
        p, q = rng.choice(len(ids), size=2, replace=False)
        a, b = rng.choice(group[ids[p]]), rng.choice(group[ids[q]])
        chosen.add((min(a, b), max(a, b)))
    return sorted(chosen)
