"""Privacy indices and the scores of the paper's Table 2 (section 4.2, docs/design.md D7), with
PSNR, SSIM and identity leakage beyond the paper.

Masking effect: M_lpips = mean LPIPS(original, render(masked)), M_feat = 1 - mean cos(f(original),
f(render(masked))) with f an FR model trained on original images; attack effect (A_lpips, A_feat):
the same on an attack's reconstructions. Scores over the methods of one table: accuracy score =
norm(accuracy), privacy score = norm(0.4 * mean(M_lpips, M_feat) + 0.6 * mean(A_lpips, A_feat)),
score = (privacy score + accuracy score) / 2, with norm(v) = 0.5 + 0.5 (v - min) / (max - min).
Beyond the paper, each A index counts at most at its floor, the same index of the attacker's mean
face: an attack that did worse than guessing the mean face earns the defence nothing.
The paper's text says "product" for the last step, but its Table 2 holds the mean (tests check it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ahm_core.masking.first_stage import to_gray
from ahm_core.metrics.lpips import as_rgb, check_pair, check_unit_images
from ahm_core.metrics.uncertainty import cluster_rate_interval, wilson_interval

FeatureModel = Callable[[Tensor], Tensor]  # images [N, 3, H, W] in [0, 1] -> embeddings [N, D]
INDICES = ("m_lpips", "m_feat", "a_lpips", "a_feat")
FLOORS = {"a_lpips": "mean_face_a_lpips", "a_feat": "mean_face_a_feat"}  # index -> its floor
VISUAL_WEIGHT, ATTACK_WEIGHT = 0.4, 0.6  # eq. 9's weights in the paper's experiments
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2  # (K * data range)^2 with data range 1


@torch.no_grad()
def embed_images(model: FeatureModel, images: Tensor, batch_size: int = 64) -> Tensor:
    """[N, D] L2-normalised embeddings of images in [0, 1], gray repeated to RGB, in batches."""
    out = [
        F.normalize(model(as_rgb(images[start : start + batch_size])).float(), dim=1).cpu()
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(out)


def feature_distance(
    originals: Tensor, images: Tensor, feature_model: FeatureModel, batch_size: int = 64
) -> Tensor:
    """[N] 1 - cos(f(original_i), f(image_i)): the feature term of M_feat (images: renders of the
    masked originals) and A_feat (an attack's reconstructions); larger means more privacy."""
    check_pair(originals, images, ("originals", "images"))
    if not len(originals):
        raise ValueError("originals: no images to measure")
    cos = (
        embed_images(feature_model, originals, batch_size)
        * embed_images(feature_model, images, batch_size)
    ).sum(dim=1)
    return 1.0 - cos


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """[N] peak signal-to-noise ratio in dB of images in [0, 1], on luma like `ssim` (inf when
    identical): the frequency-domain renders carry no colour to compare."""
    check_pair(a, b, ("a", "b"))
    mse = (to_gray(a).double() - to_gray(b).double()).pow(2).flatten(1).mean(dim=1)
    return (-10.0 * torch.log10(mse)).to(a.dtype)


def _gaussian_blur(x: Tensor) -> Tensor:
    """'Valid' 11x11 Gaussian (sigma 1.5) filtering of [N, 1, H, W], as separable convolutions."""
    offsets = torch.arange(SSIM_WINDOW, dtype=x.dtype, device=x.device) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    return F.conv2d(F.conv2d(x, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """[N] SSIM of Wang et al. (2004) on luma, data range 1: Gaussian 11x11 window, sigma 1.5,
    K = (0.01, 0.03), mean of the map over the positions where the window fits (no padding)."""
    check_pair(a, b, ("a", "b"))
    if min(a.shape[2:]) < SSIM_WINDOW:
        raise ValueError(f"ssim: images must be at least {SSIM_WINDOW} pixels a side")
    x, y = to_gray(a).double(), to_gray(b).double()
    mx, my = _gaussian_blur(x), _gaussian_blur(y)
    vx = _gaussian_blur(x * x) - mx * mx
    vy = _gaussian_blur(y * y) - my * my
    cxy = _gaussian_blur(x * y) - mx * my
    ssim_map = ((2 * mx * my + SSIM_C1) * (2 * cxy + SSIM_C2)) / (
        (mx * mx + my * my + SSIM_C1) * (vx + vy + SSIM_C2)
    )
    return ssim_map.flatten(1).mean(dim=1).to(a.dtype)


def accuracy_ratio(acc_masked: float, acc_original: float) -> float:
    """Acc_masked / Acc_original (section 4.2.3): the share of accuracy the masking keeps."""
    if acc_original <= 0:
        raise ValueError(f"acc_original must be positive, got {acc_original}")
    return acc_masked / acc_original


def identity_leakage(
    reconstructions: Tensor,
    rec_labels: Tensor,
    gallery: Tensor,
    gallery_labels: Tensor,
    eval_model: FeatureModel,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Rank-1 re-identification rate of reconstructions: the identity of the most cosine-similar
    gallery original, embedded by `eval_model` (not the attacked model), its Wilson 95% interval
    over the reconstructions tried (as if independent), its bootstrap 95% interval clustered by
    victim identity (several victims share one), and its chance level."""
    check_unit_images(reconstructions, "reconstructions")
    check_unit_images(gallery, "gallery")
    if len(reconstructions) != len(rec_labels) or len(gallery) != len(gallery_labels):
        raise ValueError("identity_leakage: need one label per reconstruction and gallery image")
    if not len(reconstructions) or not len(gallery):
        raise ValueError("identity_leakage: no reconstructions or an empty gallery")
    identities = gallery_labels.unique()
    if not bool(torch.isin(rec_labels, identities).all()):
        raise ValueError("identity_leakage: some reconstructed identities are not in the gallery")
    similarity = embed_images(eval_model, reconstructions, batch_size) @ (
        embed_images(eval_model, gallery, batch_size).T
    )
    predicted = gallery_labels.cpu()[similarity.argmax(dim=1)]
    hit = predicted == rec_labels.cpu()
    hits = int(hit.sum())
    return {
        "rank1": hits / len(rec_labels),
        "rank1_ci95": list(wilson_interval(hits, len(rec_labels))),
        "rank1_cluster_ci95": list(cluster_rate_interval(hit, rec_labels.cpu())),
        "trials": len(rec_labels),
        "chance": 1.0 / len(identities),
    }


def normalise(values: Mapping[str, float]) -> dict[str, float]:
    """D7's norm over the methods of one table: 0.5 + 0.5 (v - min) / (max - min), in [0.5, 1].

    A constant column (one method, or all equal) maps to 1.0: no method is worse than the best."""
    if not values:
        return {}
    lo, hi = min(values.values()), max(values.values())
    if hi == lo:
        return dict.fromkeys(values, 1.0)
    return {name: 0.5 + 0.5 * (v - lo) / (hi - lo) for name, v in values.items()}


def floored(row: Mapping[str, float], key: str) -> float:
    """An attack index counted at most at its floor (the attacker's mean face, an attack that
    learned nothing): no defence gains privacy from an attack that did worse than that."""
    return min(row[key], row[FLOORS[key]])


def privacy_index(row: Mapping[str, float]) -> float:
    """Eq. 9 before normalisation, floor-aware: 0.4 * mean(M_lpips, M_feat) + 0.6 *
    mean(A_lpips, A_feat), each A index at most its mean-face floor."""
    masking = (row["m_lpips"] + row["m_feat"]) / 2
    attack = (floored(row, "a_lpips") + floored(row, "a_feat")) / 2
    return VISUAL_WEIGHT * masking + ATTACK_WEIGHT * attack


def table_scores(rows: Mapping[str, Mapping]) -> dict[str, dict]:
    """Each method's row plus `accuracy_score`, and `privacy_score` and `score` when all four
    indices and the attack's floors are known (not None); the norms run over the methods of
    `rows` only.

    A method without indices (an unmasked baseline) gets no privacy or comprehensive score: the
    accuracy score alone would rank an unprotected model above every masked one. It still counts
    in the accuracy range; leave it out of `rows` to match the paper, which scores masked rows only.
    """
    missing = [name for name, row in rows.items() if row.get("accuracy") is None]
    if missing:
        raise ValueError(f"table_scores: no accuracy for {missing}")
    accuracy = normalise({name: float(row["accuracy"]) for name, row in rows.items()})
    privacy = normalise(
        {
            name: privacy_index(row)
            for name, row in rows.items()
            if all(row.get(key) is not None for key in (*INDICES, *FLOORS.values()))
        }
    )
    out = {}
    for name, row in rows.items():
        scored = {**row, "accuracy_score": accuracy[name]}
        if name in privacy:
            scored["privacy_score"] = privacy[name]
            scored["score"] = (privacy[name] + accuracy[name]) / 2
        out[name] = scored
    return out


def score_intervals(
    rows: Mapping[str, Mapping[str, Any]], seed: int = 0, resamples: int = 200, level: float = 0.95
) -> dict[str, dict[str, list[float]]]:
    """Percentile bootstrap intervals of each method's `privacy_score` and `score` (the
    `table_scores` of one table): every resample redraws the victims of each index and the
    verification pairs (one draw per length shared by all methods, which share their victims and
    pairs), the floors held fixed. rows: name -> per-victim tensors of the four `INDICES`, a
    per-pair 0/1 tensor `accuracy`, and the floors of `FLOORS`."""
    g = torch.Generator().manual_seed(seed)
    draws: dict[tuple[int, int], Tensor] = {}

    def mean(values: Tensor, b: int) -> float:
        n = len(values)
        if (n, b) not in draws:
            draws[(n, b)] = torch.randint(n, (n,), generator=g)
        return float(values.double()[draws[(n, b)]].mean())

    kept: dict[str, dict[str, list[float]]] = {n: {"privacy_score": [], "score": []} for n in rows}
    for b in range(resamples):
        resampled = {
            name: {
                **{key: mean(row[key], b) for key in ("accuracy", *INDICES)},
                **{floor: row[floor] for floor in FLOORS.values()},
            }
            for name, row in rows.items()
        }
        for name, scored in table_scores(resampled).items():
            for key in ("privacy_score", "score"):
                kept[name][key].append(scored[key])
    q = torch.tensor([0.5 - level / 2, 0.5 + level / 2], dtype=torch.float64)
    return {
        name: {
            key: torch.quantile(torch.tensor(v, dtype=torch.float64), q).tolist()
            for key, v in keys.items()
        }
        for name, keys in kept.items()
    }
