"""The privacy/accuracy report of a finished federated run (`report.md` in its folder).

Accuracy: the global model's verification accuracy on held-out identities after every round.
Privacy: the paper's masking and attack effects of the run's method, measured as in the paper
tables (`ahm_core.paper.privacy_metrics`): a black-box CGAN trained on auxiliary faces attacks
victims' masked training tensors, mixed with the k proportions the clients' policies chose. The
feature model those indices need is an unmasked ArcFace network trained centrally on the same
data for as many epochs as a client trained (`evaluator/`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from ahm_core.config import METHODS, AHMConfig
from ahm_core.io import atomic_write
from ahm_core.paper import attack_cell, fmt, md_table, privacy_metrics, reference_arcface

EVALUATOR = "evaluator"  # the run folder's unmasked ArcFace feature model


def client_epochs(cfg: AHMConfig) -> int:
    """Epochs a client trains over the whole run: the reference network trains as many."""
    return cfg.federation.rounds * cfg.federation.local_epochs


def k_proportions(summary: dict) -> dict[str, float] | None:
    """Share of samples mixed with each k over all rounds (None when the method is not adaptive)."""
    counts: Counter = Counter()
    for record in summary["rounds"]:
        counts.update(record.get("k_histogram", {}))
    total = sum(counts.values())
    if not total:
        return None
    return {k: round(counts[k] / total, 4) for k in sorted(counts, key=int)}


def federated_report(
    cfg: AHMConfig, summary: dict, out_dir: str | Path, log: Callable[[str], None] = print
) -> Path:
    """Train the evaluator, attack the run's masking, write report.md and report.json."""
    out_dir = Path(out_dir)
    log("privacy report: training the unmasked ArcFace feature model (evaluator/)")
    evaluator = reference_arcface(cfg, out_dir / EVALUATOR, client_epochs(cfg))
    log("privacy report: masking effect, CGAN attack and identity leakage")
    proportions = k_proportions(summary)
    adaptive = METHODS[cfg.masking.method].mixing == "adaptive"
    privacy = privacy_metrics(
        cfg, proportions if adaptive else None, Path(evaluator["checkpoint"]), out_dir
    )
    result = {
        "method": cfg.masking.method,
        "final_accuracy": summary["final_accuracy"],
        "untrained_accuracy": summary["rounds"][0]["accuracy"],
        "evaluator_accuracy": evaluator["verification_accuracy"],
        "k_proportions": proportions,
        "privacy": privacy,
    }
    text = json.dumps(result, indent=2)
    atomic_write(out_dir / "report.json", lambda tmp: tmp.write_text(text))
    return atomic_write(
        out_dir / "report.md", lambda tmp: tmp.write_text(_markdown(cfg, summary, result))
    )


def _markdown(cfg: AHMConfig, summary: dict, result: dict) -> str:
    p, label = result["privacy"], result["privacy"]["lpips_label"]
    rounds = [
        [
            str(r["round"]),
            fmt(r["accuracy"]),
            fmt(r.get("train", {}).get("loss")),
            f"{r.get('succeeded', '-')}/{r.get('sampled', '-')}",
            str(sum(r.get("rejected", {}).values())) if r["round"] else "-",
            fmt(r.get("seconds"), 1),
        ]
        for r in summary["rounds"]
    ]
    privacy = [
        [f"M_{label}", fmt(p["m_lpips"])],
        ["M_feat", fmt(p["m_feat"])],
        [f"A_{label} (mean face)", attack_cell(p, "a_lpips")],
        ["A_feat (mean face)", attack_cell(p, "a_feat")],
        ["PSNR / SSIM of reconstructions", f"{fmt(p['psnr'], 2)} / {fmt(p['ssim'])}"],
        [
            "Rank-1 identity leakage (chance)",
            f"{fmt(p['leakage_rank1'])} ({fmt(p['leakage_chance'])})",
        ],
    ]
    lines = [
        f"# Federated run: {cfg.masking.method} on {cfg.data.source} faces "
        f"({cfg.data.image_size} px)",
        "",
        f"Final verification accuracy {fmt(result['final_accuracy'])} (untrained "
        f"{fmt(result['untrained_accuracy'])}; the unmasked ArcFace evaluator trained centrally: "
        f"{fmt(result['evaluator_accuracy'])}).",
        "",
        "## Rounds",
        "",
        md_table(
            ["Round", "Accuracy", "Train loss", "Clients ok/sampled", "Rejected", "Seconds"], rounds
        ),
        "",
        "## Privacy",
        "",
        "Masking (M) and attack (A) indices: higher means more privacy; in brackets the attacker's "
        "mean face, an attack that learned nothing.",
        "",
        md_table(["Index", "Value"], privacy),
        "",
    ]
    if result["k_proportions"]:
        lines += [
            f"k proportions chosen by the clients' policies: {json.dumps(result['k_proportions'])}",
            "",
        ]
    lines += ["![original / masked render / CGAN reconstruction](reconstructions.png)", ""]
    return "\n".join(lines)
