"""Who holds what in an attack (breaching's "case"): the defence with its keys, the victims'
private training faces, a gallery of other photos of the same people that re-identification
compares with, the attacker's auxiliary faces of people the victims are not, and what the server
saw (the global model a captured client started from) or released (a client's head).

The paper tables and the reports build their cases here, so all split the data the same way: one
seeded shuffle of the training items, the first ones victims and the rest the gallery, and the
auxiliary faces drawn from the held-out verification identities. `mask_for_attack` masks (and
mixes) faces as the defence trains, for every attack and the masking indices alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ahm_core.config import AHMConfig
from ahm_core.data.base import FaceSet
from ahm_core.data.pairs import Pairs
from ahm_core.masking.first_stage import to_gray
from ahm_core.masking.pipeline import MaskingPipeline, masking_for_run
from ahm_core.metrics.privacy import FeatureModel


class CaseItems(NamedTuple):
    """Training items of the victims and of the gallery, the attacker's auxiliary items, and the
    auxiliary items it holds out to tell when its training stops paying (attacks.ladder)."""

    victims: Tensor
    gallery: Tensor
    aux: Tensor
    holdout: Tensor


def attack_split(
    train: Tensor,
    labels: Tensor,
    pairs: Pairs,
    victims: int,
    per_identity: int,
    aux: int,
    seed: int,
    holdout: int = 0,
) -> CaseItems:
    """One seeded shuffle of `train` (items with dataset `labels`): the first `victims` items are
    attacked, and of the rest at most `per_identity` of each identity form the gallery; `aux`
    auxiliary items from the identities held out for verification, and `holdout` more (where
    there are too few for both, at most a quarter of them)."""
    g = torch.Generator().manual_seed(seed)
    shuffled = train[torch.randperm(len(train), generator=g)]
    held = torch.cat([pairs.left, pairs.right]).unique()
    rest = shuffled[victims:]
    # Each item's place among its identity's items in the shuffled order (a stable sort keeps it).
    ids = labels[rest]
    order = torch.argsort(ids, stable=True)
    grouped = ids[order]
    place = torch.empty_like(order)
    place[order] = torch.arange(len(ids)) - torch.searchsorted(grouped, grouped)
    gallery = rest[place < per_identity]
    own = held[torch.randperm(len(held), generator=g)]
    # Too few held-out faces for both: the holdout takes at most a quarter, the rest is aux.
    holdout = min(holdout, len(own) // 4) if len(own) < aux + holdout else holdout
    aux = min(aux, len(own) - holdout)
    return CaseItems(shuffled[:victims], gallery, own[:aux], own[aux : aux + holdout])


class AttackSet(NamedTuple):
    """Masked data and the faces the attacker should recover from them, with the mixing record.

    targets[i] = images[sources[i]], the source of largest total coefficient of masked[i];
    coefs and index [N, k_max] are `Mixed.coefs` / `Mixed.index` (one column when not mixing).
    """

    masked: Tensor
    targets: Tensor
    labels: Tensor
    sources: Tensor
    coefs: Tensor
    index: Tensor


def sample_ks(
    k_proportions: Mapping[int, float], n: int, generator: torch.Generator | None = None
) -> Tensor:
    """n values of k drawn independently, P(k) proportional to k_proportions[k]."""
    ks = sorted(k_proportions)
    shares = [float(k_proportions[k]) for k in ks]
    if not ks or any(k < 1 for k in ks) or min(shares) < 0 or sum(shares) <= 0:
        raise ValueError(
            f"k_proportions: need k >= 1 and shares >= 0 with a positive sum, got "
            f"{dict(k_proportions)}"
        )
    device = generator.device if generator is not None else torch.device("cpu")
    weights = torch.tensor(shares, dtype=torch.float64, device=device)
    draws = torch.multinomial(weights, n, replacement=True, generator=generator).cpu()
    return torch.tensor(ks, dtype=torch.long)[draws]


def dominant_sources(coefs: Tensor, index: Tensor) -> Tensor:
    """[N] source row of largest total coefficient per mixed sample (a row drawn twice adds up)."""
    same = index[:, :, None] == index[:, None, :]
    totals = (same * coefs[:, None, :]).sum(dim=2)
    best = totals.argmax(dim=1, keepdim=True)
    return index.gather(1, best).squeeze(1)


def attack_ks(
    pipeline: MaskingPipeline,
    k_proportions: Mapping[int, float] | None,
    n: int,
    generator: torch.Generator | None,
) -> Tensor | None:
    """Per-sample k for the adaptive method; None (the pipeline's own k) otherwise."""
    if pipeline.batch_mix == "adaptive":
        if k_proportions is None:
            raise ValueError(f"{pipeline.method}: pass k_proportions, the policy's shares of k")
        return sample_ks(k_proportions, n, generator)
    if k_proportions is not None:
        used = {k for k, share in k_proportions.items() if share > 0}
        allowed = {pipeline.k} if pipeline.batch_mix else set()
        if used != allowed:
            raise ValueError(
                f"{pipeline.method}: mixes {f'a fixed k={pipeline.k}' if allowed else 'nothing'}"
                f"; got k_proportions {dict(k_proportions)}"
            )
    return None


def mask_for_attack(
    pipeline: MaskingPipeline,
    images: Tensor,
    labels: Tensor | None = None,
    k_proportions: Mapping[int, float] | None = None,
    generator: torch.Generator | None = None,
) -> AttackSet:
    """Mask (and mix, as the method trains) a set of faces; each target is its dominant source.

    k_proportions: the adaptive method's shares of each k (required there); fixed-k methods mix
    their own k. Labels default to -1 (unknown, as for auxiliary faces).
    """
    n = len(images)
    labels = torch.full((n,), -1, dtype=torch.long) if labels is None else labels
    ks = attack_ks(pipeline, k_proportions, n, generator)
    mixed = pipeline.mix(pipeline.encode(images, generator), labels, ks, generator)
    sources = dominant_sources(mixed.coefs, mixed.index)
    return AttackSet(
        mixed.x,
        images[sources.to(images.device)],
        labels.to(sources.device)[sources],
        sources,
        mixed.coefs,
        mixed.index,
    )


@dataclass(frozen=True)
class Released:
    """A released model: the global backbone's state and one client's head, with that client's
    training items and their labels in the head's classes (0..n-1)."""

    backbone: dict[str, Tensor]
    head: nn.Module
    items: Tensor
    labels: Tensor


@dataclass
class Case:
    """One defence under attack. `start` is the backbone state a captured client started its
    update from (None: the seeded initial model); `judge` the face recogniser that tells an
    attack's training when leakage stops rising (None: PSNR does); `shared` is what every case of
    one report may reuse (keyed by what it depends on); `cache` what the attacks of this case
    share."""

    cfg: AHMConfig
    pipeline: MaskingPipeline
    faces: FaceSet
    split: CaseItems
    device: torch.device
    folder: Path
    proportions: dict[int, float] | None = None
    start: dict[str, Tensor] | None = None
    released: Released | None = None
    judge: FeatureModel | None = None
    shared: dict[Any, Any] = field(default_factory=dict)
    cache: dict[Any, Any] = field(default_factory=dict)

    def images(self, items: Tensor) -> Tensor:
        """Float images in [0, 1] of dataset items."""
        return self.faces.images_uint8(items).float() / 255.0

    def labels(self, items: Tensor) -> Tensor:
        return self.faces.labels[items]

    def victims(self, count: int) -> Tensor:
        """The first `count` victim items (an attack's budget)."""
        return self.split.victims[:count]

    @cached_property
    def aux_images(self) -> Tensor:
        return self.images(self.split.aux)

    @cached_property
    def holdout_images(self) -> Tensor:
        return self.images(self.split.holdout)

    def seen(self, *images: Tensor) -> list[Tensor]:
        """Images as the masking saw them; all grey when one is (an attack that recovers grey
        faces only is compared on luma)."""
        seen = [self.pipeline.seen(x) for x in images]
        if len({x.shape[1] for x in seen}) > 1:
            return [to_gray(x).repeat(1, 3, 1, 1) for x in seen]
        return seen

    @cached_property
    def gallery_images(self) -> Tensor:
        return self.images(self.split.gallery)


def build_case(
    cfg: AHMConfig,
    faces: FaceSet,
    train: Tensor,
    pairs: Pairs,
    folder: Path,
    device: torch.device,
    proportions: dict[int, float] | None = None,
    first_stage: dict[str, Tensor] | None = None,
    **holdings: Any,
) -> Case:
    """The case of `cfg.masking.method` on `faces`: its pipeline fitted on `train` as the run was,
    enough victims for every attack's budget, and the adaptive method's k shares (the policy's
    measured ones, else uniform over `policy.k_set`); a trained first stage takes its trained
    `first_stage` state (else it is attacked untrained). `holdings`: `start`, `released`,
    `judge`, `shared`."""
    a = cfg.attack
    pipeline = masking_for_run(cfg, faces, train, first_stage)
    count = max(a.victims, a.gi_batch, a.demix_images, pipeline.k or 0)
    split = attack_split(
        train,
        faces.labels,
        pairs,
        count,
        a.gallery_per_identity,
        a.aux_images,
        cfg.train.seed,
        a.holdout,
    )
    shares = None
    if pipeline.batch_mix == "adaptive":
        shares = {int(k): float(v) for k, v in (proportions or {}).items()}
        shares = shares or dict.fromkeys(cfg.policy.k_set, 1.0)
    return Case(cfg, pipeline, faces, split, device, folder, shares, **holdings)
