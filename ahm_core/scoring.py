"""Every attack's reconstructions scored by the same code (breaching's "analysis"): LPIPS, PSNR
and SSIM against the originals they reconstruct, and per judge the feature distance and rank-1
re-identification against the gallery of originals. Every index is against what the masking saw
(`MaskingPipeline.seen`), carries a 95% interval (a bootstrap over victims, Wilson's for rates)
and stands beside its floor: the attacker's mean face for the indices, chance for re-identification,
and the judge's own rank-1 on untouched originals (its ceiling). `measure_privacy` is the privacy
side of one method, measured alike for the paper tables and the federated report."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ahm_core.attacks import ATTACKS, Reconstructions
from ahm_core.cases import Case, build_case, mask_for_attack
from ahm_core.config import AHMConfig
from ahm_core.data.sources import run_data
from ahm_core.judges import OWN, Judges
from ahm_core.masking.first_stage import to_gray
from ahm_core.metrics import LPIPS, feature_distance, identity_leakage, psnr, ssim
from ahm_core.metrics.uncertainty import bootstrap_interval
from ahm_core.plots import save_grid
from ahm_core.train import resolve_device

Log = Callable[[str], None]
# The paper's Table 2 measures its black-box CGAN; its appendix A.2 the same after channel removal.
PAPER_ATTACKS = ("cgan", "channel_drop")


def _seen(case: Case, *images: Tensor) -> list[Tensor]:
    """Images as the masking saw them; all grey when one is (an attack that recovers grey faces
    only is compared on luma)."""
    seen = [case.pipeline.seen(x) for x in images]
    if len({x.shape[1] for x in seen}) > 1:
        return [to_gray(x).repeat(1, 3, 1, 1) for x in seen]
    return seen


def _index(values: Tensor, floor: Tensor, seed: int) -> dict[str, Any]:
    """A per-victim index: its mean, bootstrap interval, the mean face's and the gain over it."""
    return {
        "value": float(values.mean()),
        "ci95": list(bootstrap_interval(values, seed)),
        "floor": float(floor.mean()),
        "gain": float(floor.mean() - values.mean()),
    }


def _indices(
    case: Case, targets: Tensor, images: Tensor, judges: Judges, lpips: LPIPS, prefix: str
) -> dict[str, Any]:
    """`prefix`_lpips and, per judge, `prefix`_feat of images against their targets."""
    seed = case.cfg.train.seed
    mean_face = case.aux_images.mean(dim=0, keepdim=True).expand_as(targets)
    originals, compared, floor = _seen(case, targets, images, mean_face)
    out: dict[str, Any] = {
        f"{prefix}_lpips": _index(lpips(originals, compared), lpips(originals, floor), seed)
    }
    for name, model in judges.models.items():
        out.setdefault("judges", {})[name] = {
            f"{prefix}_feat": _index(
                feature_distance(originals, compared, model),
                feature_distance(originals, floor, model),
                seed,
            )
        }
    return out


def _leakage(case: Case, faces: Tensor, labels: Tensor, judges: Judges) -> dict[str, Any]:
    """Per judge, rank-1 re-identification of faces against the gallery of originals."""
    gallery_labels = case.labels(case.split.gallery)
    keep = torch.isin(labels, gallery_labels)
    if not bool(keep.any()):
        return {
            name: {"skipped": "no claimed identity is in the gallery"} for name in judges.models
        }
    gallery = case.pipeline.seen(case.gallery_images)
    probes = case.pipeline.seen(faces[keep])
    if probes.shape[1] != gallery.shape[1]:
        probes = probes.expand(-1, gallery.shape[1], -1, -1)
    return {
        name: identity_leakage(probes, labels[keep], gallery, gallery_labels, model)
        for name, model in judges.models.items()
    }


def score(rec: Reconstructions, case: Case, judges: Judges, lpips: LPIPS) -> dict[str, Any]:
    """One attack's result: its own figures, then the common indices (A_lpips, PSNR and SSIM
    where it reconstructs given originals) and, per judge, A_feat and rank-1 leakage."""
    out: dict[str, Any] = {"count": len(rec.faces), **rec.figures, "summary": rec.summary}
    judged: dict[str, dict] = {}
    if rec.targets is not None:
        indices = _indices(case, rec.targets, rec.faces, judges, lpips, "a")
        judged = indices.pop("judges")
        originals, compared = _seen(case, rec.targets, rec.faces)
        out |= indices
        out["psnr"] = float(psnr(compared, originals).clamp(max=100.0).mean())
        if min(originals.shape[2:]) >= 11:
            out["ssim"] = float(ssim(compared, originals).mean())
    for name, leak in _leakage(case, rec.faces, rec.labels, judges).items():
        judged.setdefault(name, {})["rank1"] = leak
    out["judges"] = judged
    return out


def masking_indices(case: Case, judges: Judges, lpips: LPIPS) -> dict[str, Any]:
    """M_lpips and, per judge, M_feat: naive renders of the victims' masked (and mixed) training
    tensors against the faces they hide (each a mix's dominant source)."""
    g = torch.Generator().manual_seed(case.cfg.train.seed)
    items = case.victims(case.cfg.attack.victims)
    masked = mask_for_attack(
        case.pipeline, case.images(items), case.labels(items), case.proportions, g
    )
    return _indices(case, masked.targets, case.pipeline.render(masked.masked), judges, lpips, "m")


def ceilings(case: Case, judges: Judges) -> dict[str, dict]:
    """Each judge's rank-1 on the untouched victims against the gallery: the most any attack's
    re-identification can show with it (a judge near chance here cannot tell these faces apart)."""
    items = case.victims(case.cfg.attack.victims)
    return _leakage(case, case.images(items), case.labels(items), judges)


def table_row(masking: dict[str, Any], attack: dict[str, Any], judge: str = OWN) -> dict:
    """The indices of Table 2 as the paper's scores take them (`metrics.privacy.table_scores`):
    the masking's and one attack's values, with the attack's floors, by `judge`'s features."""
    m_feat = masking["judges"][judge]["m_feat"]
    a_lpips, a_feat = attack["a_lpips"], attack["judges"][judge]["a_feat"]
    return {
        "m_lpips": masking["m_lpips"]["value"],
        "m_feat": m_feat["value"],
        "a_lpips": a_lpips["value"],
        "a_feat": a_feat["value"],
        "mean_face_a_lpips": a_lpips["floor"],
        "mean_face_a_feat": a_feat["floor"],
    }


def attack_case(
    case: Case, names: Sequence[str], judges: Judges, lpips: LPIPS, log: Log = print
) -> dict[str, dict]:
    """Run the registered attacks `names` on `case` and score each with `score`; an attack that
    does not apply says why. Each attack's picture goes to `case.folder/<name>.png`."""
    results: dict[str, dict] = {}
    for name in names:
        attack = ATTACKS[name]
        reason = attack.skip(case)
        if reason is not None:
            results[name] = {"skipped": reason}
            continue
        log(f"{case.pipeline.method}: {name}")
        rec = attack.run(case)
        results[name] = score(rec, case, judges, lpips)
        path = case.folder / f"{name}.png"
        save_grid(list(rec.panels.values()), path, list(rec.panels))
        results[name]["grid"] = str(path)
    return results


def measure_privacy(
    cfg: AHMConfig,
    k_proportions: dict | None,
    judged: Judges,
    folder: Path,
    attacks: Sequence[str],
    log: Log = print,
    first_stage: dict[str, Tensor] | None = None,
) -> dict[str, Any]:
    """The masking indices, the registered `attacks` scored, and each judge's ceiling, for one
    method trained on cfg's data (the adaptive method's attack mixes with its policy's k shares;
    a trained first stage is attacked with its `first_stage` state)."""
    data = run_data(cfg.data)
    device = resolve_device(cfg.train.device)
    case = build_case(
        cfg, data.faces, data.train, data.pairs, folder, device, k_proportions, first_stage
    )
    lpips = LPIPS(calibrated=cfg.attack.lpips_calibrated, device=device)
    return {
        "masking": masking_indices(case, judged, lpips),
        "attacks": attack_case(case, attacks, judged, lpips, log),
        "ceilings": ceilings(case, judged),
        "lpips_label": lpips.label,
    }
