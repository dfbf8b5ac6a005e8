"""Every attack's reconstructions scored by the same code (breaching's "analysis"): LPIPS, PSNR
and SSIM against the originals they reconstruct, and per judge the feature distance and rank-1
re-identification against the gallery of originals. Every index is against what the masking saw
(`MaskingPipeline.seen`), carries a 95% interval (a bootstrap over victims, Wilson's for rates)
and stands beside its floor: the attacker's mean face for the indices, chance for re-identification,
and the judge's own rank-1 on untouched originals (its ceiling). `measure_privacy` is the privacy
side of one method, measured alike for the paper tables and the federated report."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ahm_core.attacks import ATTACKS, Reconstructions
from ahm_core.attacks.gradient_inversion import GradientInversion
from ahm_core.cases import Case, build_case, mask_for_attack
from ahm_core.config import AHMConfig, apply_overrides
from ahm_core.data.sources import run_data
from ahm_core.judges import OWN, Judges
from ahm_core.metrics import LPIPS, feature_distance, identity_leakage, psnr, ssim
from ahm_core.metrics.uncertainty import bootstrap_interval
from ahm_core.plots import save_grid, save_ladders
from ahm_core.tables import Table, fmt, rate_cell
from ahm_core.train import resolve_device

Log = Callable[[str], None]


def _index(values: Tensor, floor: Tensor, seed: int) -> dict[str, Any]:
    """A per-victim index: its mean, bootstrap interval, the mean face's and the gain over it,
    and the per-victim values (the comprehensive score's bootstrap resamples them)."""
    return {
        "value": float(values.mean()),
        "ci95": list(bootstrap_interval(values, seed)),
        "floor": float(floor.mean()),
        "gain": float(floor.mean() - values.mean()),
        "values": [round(float(v), 5) for v in values],
    }


def _indices(
    case: Case, targets: Tensor, images: Tensor, judges: Judges, lpips: LPIPS, prefix: str
) -> dict[str, Any]:
    """`prefix`_lpips and, per judge, `prefix`_feat of images against their targets."""
    seed = case.cfg.train.seed
    mean_face = case.aux_images.mean(dim=0, keepdim=True).expand_as(targets)
    originals, compared, floor = case.seen(targets, images, mean_face)
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
        originals, compared = case.seen(rec.targets, rec.faces)
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
    does not apply says why. Each attack's picture goes to `case.folder/<name>.png`, the budget
    ladders of those that climbed one to `case.folder/ladder.png`."""
    results: dict[str, dict] = {}
    for name in names:
        attack = ATTACKS[name]
        reason = attack.skip(case)
        if reason is not None:
            results[name] = {"skipped": reason}
            continue
        log(f"{case.pipeline.method}: {name}")
        start = time.perf_counter()
        rec = attack.run(case)
        results[name] = score(rec, case, judges, lpips)
        results[name]["seconds"] = round(time.perf_counter() - start, 1)
        path = case.folder / f"{name}.png"
        save_grid(list(rec.panels.values()), path, list(rec.panels))
        results[name]["grid"] = str(path)
    climbs = {name: r for name, r in results.items() if "ladder" in r}
    if climbs:
        save_ladders(climbs, case.folder / "ladder.png", case.pipeline.method)
    return results


def worst_case(attacks: dict[str, dict], judges: Sequence[str]) -> dict[str, Any]:
    """Each index at the attack that leaks most on it, named (`attack`): the lowest A_lpips and,
    per judge, A_feat (each counted at most at its floor, the mean face) and the highest rank-1,
    over the attacks that ran; what the privacy score and the reports take for a defence."""
    ran = {name: r for name, r in attacks.items() if "skipped" not in r}

    def leakiest(entries: dict[str, dict], key: Callable[[dict], float]) -> dict | None:
        if not entries:
            return None
        name = min(entries, key=lambda n: key(entries[n]))
        return {**entries[name], "attack": name}

    floored = lambda e: min(e["value"], e["floor"])  # noqa: E731
    out: dict[str, Any] = {
        "a_lpips": leakiest({n: r["a_lpips"] for n, r in ran.items() if "a_lpips" in r}, floored),
        "judges": {},
    }
    for judge in judges:
        scored = {n: r["judges"][judge] for n, r in ran.items() if judge in r.get("judges", {})}
        feats = {n: j["a_feat"] for n, j in scored.items() if "a_feat" in j}
        rates = {n: j["rank1"] for n, j in scored.items() if "rank1" in j.get("rank1", {})}
        out["judges"][judge] = {
            "a_feat": leakiest(feats, floored),
            "rank1": leakiest(rates, lambda e: -e["rank1"]),
        }
    return out


def measure_privacy(
    cfg: AHMConfig,
    k_proportions: dict | None,
    judged: Judges,
    folder: Path,
    log: Log = print,
    first_stage: dict[str, Tensor] | None = None,
) -> dict[str, Any]:
    """The masking indices, every registered attack scored (those that apply), the worst case
    over them and each judge's ceiling, for one method trained on cfg's data (the adaptive
    method's attack mixes with its policy's k shares; a trained first stage is attacked with
    its `first_stage` state)."""
    data = run_data(cfg.data)
    device = resolve_device(cfg.train.device)
    case = build_case(
        cfg,
        data.faces,
        data.train,
        data.pairs,
        folder,
        device,
        k_proportions,
        first_stage,
        judge=judged.models[OWN],
    )
    lpips = LPIPS(calibrated=cfg.attack.lpips_calibrated, device=device)
    attacks = attack_case(case, list(ATTACKS), judged, lpips, log)
    measured = {
        "masking": masking_indices(case, judged, lpips),
        "attacks": attacks,
        "worst": worst_case(attacks, list(judged.models)),
        "ceilings": ceilings(case, judged),
        "lpips_label": lpips.label,
    }
    if cfg.federation.secagg:
        counts = cfg.attack.gi_aggregated
        measured["aggregated"] = aggregated_inversion(case, counts, judged, lpips, log)
    return measured


def aggregated_inversion(
    case: Case, counts: Sequence[int], judges: Judges, lpips: LPIPS, log: Log = print
) -> dict[str, dict]:
    """Gradient inversion of the mean update of N clients for each N of `counts`, scored: what a
    curious server can still draw from what secure aggregation shows it (N = 1 is one client's
    own update, what it sees without); the CGAN that turns inputs into faces is shared."""
    results = {}
    for n in counts:
        cfg = apply_overrides(case.cfg, {"attack.gi_clients": n})
        sub = dataclasses.replace(case, cfg=cfg, folder=case.folder / f"aggregated_{n}")
        results[str(n)] = attack_case(sub, [GradientInversion.name], judges, lpips, log)[
            GradientInversion.name
        ]
    return results


def aggregated_section(heading: str, results: dict[str, dict], judges: Sequence[str]) -> list:
    """A report's leakage-against-N section (federated and threat reports alike): per N, the
    recovered inputs and each judge's rank-1, at the model the inversions started from."""
    rows, models = [], set()
    for n, r in results.items():
        if "skipped" in r:
            rows.append([n, f"skipped: {r['skipped']}", *["-"] * len(judges)])
            continue
        models.add(r["model"].split(",")[0])
        inputs = f"cosine {fmt(r['input_cosine'])}, {fmt(r['input_psnr'], 1)} dB"
        rows.append([n, inputs, *(rate_cell(r["judges"][j]["rank1"]) for j in judges)])
    return [
        heading,
        "",
        "Under SecAgg+ the curious server captures the mean update of a round's clients, no "
        "client's own. Gradient inversion of the mean of N clients' updates at the "
        f"{' or '.join(sorted(models)) or 'model'} (N = 1: one client's own update, what the "
        "server captures without secure aggregation): the recovered inputs against the true "
        "ones, and each judge's rank-1 on the faces made of them [95%].",
        "",
        Table(["N clients", "recovered inputs", *judges], rows),
        "",
    ]


def budget_rows(attacks: dict[str, dict]) -> list[list[str]]:
    """Per attack that ran: the budget it was scored at, whether its ladder converged (or hit its
    cap), its leakage on the attacker's held-out faces at each rung, and the seconds it took with
    its scoring (a CGAN trained for an earlier attack of the case is shared, not counted again);
    attacks of a fixed budget say so."""
    rows = []
    for name, r in attacks.items():
        if "skipped" in r:
            continue
        seconds = fmt(r.get("seconds"), 1)
        if "ladder" not in r:
            rows.append([name, "fixed budget (no ladder)", "-", "-", seconds])
            continue
        budget = ", ".join(f"{k} {v}" for k, v in r["budget"].items())
        if "kept" in r:
            budget = f"{r['kept']} channels, {budget}"
        rungs = "; ".join(
            f"{'/'.join(str(v) for v in rung['budget'].values())}: {fmt(rung['leakage'])}"
            for rung in r["ladder"]
        )
        flag = "converged" if r["converged"] else "capped"
        rows.append([name, budget, flag, f"{rungs} ({r['leakage_measure']})", seconds])
    return rows
