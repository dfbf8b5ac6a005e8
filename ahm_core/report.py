"""The privacy/accuracy report of a finished federated run (`report.md` in its folder).

Accuracy: the global model's verification accuracy on held-out identities after every round.
Privacy: the paper's masking and attack effects of the run's method, measured as in the paper
tables (`ahm_core.scoring.measure_privacy`): every attack of the registry that applies (the
black-box CGAN trained on auxiliary faces up its budget ladder, the A.2 channel removal, demixing,
gradient inversion of an update at the seeded initial model) attacks victims' masked training
tensors, mixed with the k proportions the clients' policies chose, and the worst case over them
scores the run. The judges are an unmasked ArcFace reference network trained centrally
on the same data for as many epochs as a client trained (`evaluator/`) and dlib's pretrained face
descriptor.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ahm_core.config import AHMConfig
from ahm_core.evaluate import identity_interval
from ahm_core.federated import trained_first_stage
from ahm_core.io import load_checkpoint
from ahm_core.judges import judges, reference_arcface
from ahm_core.plots import save_k_shares
from ahm_core.runs import REFERENCE, client_epochs, k_proportions, shares
from ahm_core.scoring import aggregated_section, budget_rows, measure_privacy
from ahm_core.tables import (
    Table,
    accuracy_cell,
    fmt,
    index_cell,
    named_cell,
    rate_cell,
    write_report,
)
from ahm_core.train import resolve_device


def save_round_shares(path: Path, summary: dict) -> Path:
    """The clients' k shares in every round (what their policies drew), as stacked areas."""
    rounds = [r for r in summary["rounds"] if r.get("k_histogram")]
    ks = sorted({k for r in rounds for k in r["k_histogram"]}, key=int)
    rows = [[shares(r["k_histogram"]).get(k, 0.0) for k in ks] for r in rounds]
    first = rounds[0]["round"] if rounds else 1
    title = "k drawn by the clients"
    return save_k_shares(path, [int(k) for k in ks], rows, "round", title, first=first)


def federated_report(
    cfg: AHMConfig, summary: dict, out_dir: str | Path, log: Callable[[str], None] = print
) -> Path:
    """Train the reference network, attack the run's masking, write report.md and report.json."""
    out_dir = Path(out_dir)
    log("privacy report: training the unmasked ArcFace feature model (evaluator/)")
    reference = reference_arcface(cfg, out_dir / REFERENCE, client_epochs(cfg))
    log("privacy report: masking effect, CGAN attack and identity leakage")
    judged = judges(Path(reference["checkpoint"]), cfg, resolve_device(cfg.train.device))
    proportions = k_proportions(summary)
    saved = load_checkpoint(out_dir / "checkpoint.pt", required=("state",))
    stage = trained_first_stage(saved["state"])  # the global model's, as clients mask with it
    last = summary["rounds"][-1].get("verification", {})
    final_ks = summary["rounds"][-1].get("k_histogram")
    if proportions:
        save_round_shares(out_dir / "k_dynamics.png", summary)
    result = {
        "method": cfg.masking.method,
        "final_accuracy": summary["final_accuracy"],
        "final_accuracy_ci95": last.get("accuracy_ci95"),
        # over the server's pairs, from the per-pair outcomes rounds.json keeps (when it does)
        "final_accuracy_cluster_ci95": (
            identity_interval(cfg.data, last["correct"]) if last.get("correct") else None
        ),
        "untrained_accuracy": summary["rounds"][0]["accuracy"],
        "evaluator_accuracy": reference["verification_accuracy"],
        "k_proportions": proportions,
        "k_proportions_final_round": shares(final_ks) if final_ks else None,
        "privacy": measure_privacy(cfg, proportions, judged, out_dir, log, stage),
        "absent_judges": judged.absent,
    }
    return write_report(out_dir / "report.md", _markdown(cfg, summary, result), result)


def _accuracy_note(result: dict) -> str:
    """What the final accuracy's intervals are: folds in brackets, identities in braces."""
    notes = []
    if result["final_accuracy_ci95"]:
        notes.append("in brackets its 95% interval over the 10 folds")
    if result.get("final_accuracy_cluster_ci95"):
        notes.append(
            "in braces its bootstrap 95% interval clustered by identity (held-out identities "
            "redrawn with every pair between them: the pairs share images and identities, "
            "which the folds treat as independent)"
        )
    text = "; ".join(notes)
    return f" {text[0].upper()}{text[1:]}." if notes else ""


def _markdown(cfg: AHMConfig, summary: dict, result: dict) -> list[str | Table]:
    p, label = result["privacy"], result["privacy"]["lpips_label"]
    absent = result["absent_judges"]
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
    privacy = [[f"M_{label}", fmt(p["masking"]["m_lpips"]["value"]), "-"]]
    privacy += [
        [f"M_feat ({judge})", fmt(p["masking"]["judges"][judge]["m_feat"]["value"]), "-"]
        for judge in p["masking"]["judges"]
    ]
    privacy += [[f"judge {judge}", f"absent: {why}", "-"] for judge, why in absent.items()]
    privacy += _worst_rows(p["worst"], p["ceilings"], label)
    for name, scored in p["attacks"].items():
        privacy += _attack_rows(f"{name}: ", scored, p["ceilings"], label)
    clustered = result.get("final_accuracy_cluster_ci95")
    final = accuracy_cell(result["final_accuracy"], result["final_accuracy_ci95"], clustered)
    lines: list[str | Table] = [
        f"# Federated run: {cfg.masking.method} on {cfg.data.source} faces "
        f"({cfg.data.image_size} px)",
        "",
        f"Final verification accuracy {final} (untrained "
        f"{fmt(result['untrained_accuracy'])}; the unmasked ArcFace evaluator trained centrally: "
        f"{fmt(result['evaluator_accuracy'])}).{_accuracy_note(result)}",
        "",
        "## Rounds",
        "",
        Table(
            ["Round", "Accuracy", "Train loss", "Clients ok/sampled", "Rejected", "Seconds"], rounds
        ),
        "",
        "## Privacy",
        "",
        "Masking (M) and attack (A) indices against what the masking saw, the attack's with a "
        "bootstrap 95% interval over the victims: higher means more privacy; in brackets the "
        "attacker's mean face (an attack that learned nothing) and the gain over it. Judges: "
        "`own`, the unmasked ArcFace evaluator; `dlib`, dlib's pretrained face descriptor, which "
        "neither side trained. The ceiling is the judge's rank-1 on the untouched victims.",
        "",
        Table(["Index", "Value", "Ceiling"], privacy, csv="report.csv"),
        "",
    ]
    if result["k_proportions"]:
        lines += [
            "k proportions drawn by the clients' policies (Table 3): over the whole run "
            f"{json.dumps(result['k_proportions'])}; in the last round "
            f"{json.dumps(result['k_proportions_final_round'])}. Each client's PMF at every "
            "policy update is in rounds.json (`k_pmf`).",
            "",
            "![k drawn by the clients in every round](k_dynamics.png)",
            "",
        ]
    if "aggregated" in p:
        heading = "## Gradient inversion of the securely aggregated update"
        lines += aggregated_section(heading, p["aggregated"], list(p["ceilings"]))
    lines += [
        "## Attack budgets",
        "",
        "Each learned attack climbs a budget ladder (epochs/auxiliary pairs) until its leakage on "
        "the attacker's own held-out faces stops rising beyond noise (converged) or its last "
        "rung (capped), and is scored at its most leaking rung.",
        "",
        Table(
            ["Attack", "Scored at", "Ladder", "Held-out leakage per rung", "Seconds"],
            budget_rows(p["attacks"]),
        ),
        "",
        "![leakage against budget](ladder.png)",
        "",
        "![original / masked render / CGAN reconstruction](cgan.png)",
        "",
    ]
    return lines


def _worst_rows(worst: dict, ceilings: dict, label: str) -> list[list[str]]:
    """The privacy table's rows of the worst case: each index at the attack that set it."""
    rows = [
        [
            f"worst case: A_{label} [95%] (mean face; gain)",
            named_cell(worst["a_lpips"], index_cell),
            "-",
        ]
    ]
    for judge, judged in worst["judges"].items():
        rows += [
            [f"worst case: A_feat ({judge})", named_cell(judged["a_feat"], index_cell), "-"],
            [
                f"worst case: Rank-1 ({judge}) [95%] (chance)",
                named_cell(judged["rank1"], rate_cell),
                rate_cell(ceilings[judge]),
            ],
        ]
    return rows


def _attack_rows(prefix: str, scored: dict, ceilings: dict, label: str) -> list[list[str]]:
    """The privacy table's rows of one attack: its indices, PSNR/SSIM and each judge's rank-1."""
    if "skipped" in scored:
        return [[f"{prefix}attack", f"skipped: {scored['skipped']}", "-"]]
    rows = [
        [f"{prefix}A_{label} [95%] (mean face; gain)", index_cell(scored["a_lpips"]), "-"],
        [
            f"{prefix}PSNR / SSIM of reconstructions",
            f"{fmt(scored['psnr'], 2)} / {fmt(scored.get('ssim'))}",
            "-",
        ],
    ]
    for judge, judged in scored["judges"].items():
        rows += [
            [
                f"{prefix}A_feat ({judge}) [95%] (mean face; gain)",
                index_cell(judged["a_feat"]),
                "-",
            ],
            [
                f"{prefix}Rank-1 identity leakage ({judge}) [95%] (chance)",
                rate_cell(judged["rank1"]),
                rate_cell(ceilings[judge]),
            ],
        ]
    return rows
