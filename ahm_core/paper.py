"""The paper's comparison on your data: Table 2 (accuracy and privacy of every method), Table 1 (RGB
against frequency domain) and Table 3 (k proportions of AdaMixUp), as report.md, a CSV, a
privacy-accuracy scatter (Fig. 1) and reconstruction grids (Fig. 3).

Each row trains its method (a centralized run, resumable), then measures the masking effect on
victim training images, trains the black-box CGAN on auxiliary pairs from identities the victim
never saw, and measures the attack effect and identity leakage on its reconstructions. The feature
and evaluation model is the unmasked ArcFace row's network. A finished row is cached in
`rows/<name>/row.json`, so a rerun after a crash skips it.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from ahm_core.attacks.cgan import (
    AttackSet,
    CGANAttack,
    CGANOptions,
    attack_data,
    save_reconstruction_grid,
)
from ahm_core.config import METHODS, AHMConfig, apply_overrides
from ahm_core.data.sources import load_faces, verification_split
from ahm_core.experiment import masking_for_run, run_centralized
from ahm_core.io import atomic_write, load_checkpoint
from ahm_core.masking import MaskingPipeline
from ahm_core.metrics import (
    LPIPS,
    attack_effect,
    identity_leakage,
    masking_effect,
    psnr,
    ssim,
    table_scores,
)
from ahm_core.metrics.privacy import FLOORS, INDICES
from ahm_core.metrics.uncertainty import mcnemar
from ahm_core.models import build_backbone
from ahm_core.train import resolve_device


class Row(NamedTuple):
    """One row of a table: its label, method and the overrides that make it."""

    name: str
    method: str
    overrides: dict


TABLE2 = [
    Row("ArcFace", "arcface", {}),
    *[
        Row(
            f"Masking+AdaMixUp (k:2-{k})",
            "masking_adamixup",
            {"policy.k_set": tuple(range(2, k + 1))},
        )
        for k in (6, 5, 4)
    ],
    *[Row(f"Masking+MixUp (k={k})", "masking_mixup", {"mixup.k": k}) for k in range(2, 7)],
    Row("MixUp-FD (k=2)", "mixup_fd", {"mixup.k": 2}),
    Row("PPFR-FD", "ppfr_fd", {}),
    Row("DP", "dp", {}),
    Row("InstaHide-FD (k=2)", "instahide_fd", {"mixup.k": 2}),
]
# The comparisons the paper's claims rest on, each tested over the same verification pairs.
PAIRED = [
    ("MixUp-FD (k=2)", "MixUp RGB (k=2)"),
    ("InstaHide-FD (k=2)", "InstaHide RGB (k=2)"),
    ("Masking+MixUp (k=2)", "Masking+MixUp (k=4)"),
    ("Masking+MixUp (k=2)", "Masking+MixUp (k=6)"),
    ("Masking+AdaMixUp (k:2-6)", "Masking+MixUp (k=2)"),
    ("PPFR-FD", "ArcFace"),
]
TABLE1_RGB = [
    Row("MixUp RGB (k=2)", "mixup_rgb", {"mixup.k": 2}),
    Row("InstaHide RGB (k=2)", "instahide_rgb", {"mixup.k": 2}),
]


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def run_tables(cfg: AHMConfig, out_dir: str | Path, log: Callable[[str], None] = print) -> dict:
    """Run (or reuse) every row, then write the report; returns {row name: row result}."""
    out_dir = Path(out_dir)
    rows = TABLE2 + TABLE1_RGB
    results: dict[str, dict] = {}
    for i, row in enumerate(rows, 1):
        log(f"[{i}/{len(rows)}] {row.name}")
        results[row.name] = _row(cfg, row, out_dir, results)
    write_report(results, out_dir, cfg)
    return results


def _row(cfg: AHMConfig, row: Row, out_dir: Path, done: dict[str, dict]) -> dict:
    cached = out_dir / "rows" / slug(row.name) / "row.json"
    if cached.exists():
        result = json.loads(cached.read_text())
        if "correct" in result:  # rows of an older version lack what the report now prints
            return result
    row_cfg = apply_overrides(cfg, {"masking.method": row.method, **row.overrides})
    metrics = run_centralized(row_cfg, cached.parent / "train")
    result = {
        "method": row.method,
        "accuracy": metrics["verification_accuracy"],
        "accuracy_ci95": metrics["verification"]["accuracy_ci95"],
        "correct": metrics["verification"]["correct"],
        "k_proportions": metrics.get("k_proportions"),
    }
    if row.method != "arcface":
        arcface_ckpt = Path(done["ArcFace"]["checkpoint"])
        result |= privacy_metrics(row_cfg, result["k_proportions"], arcface_ckpt, cached.parent)
    result["checkpoint"] = metrics["checkpoint"]
    text = json.dumps(result, indent=2)
    atomic_write(cached, lambda tmp: tmp.write_text(text))
    return result


def privacy_metrics(
    cfg: AHMConfig, k_proportions: dict | None, arcface: Path, folder: Path
) -> dict:
    """Masking effect, CGAN attack effect and identity leakage of one method."""
    device = resolve_device(cfg.train.device)
    faces = load_faces(cfg.data)
    split = verification_split(faces.labels, cfg.data)
    g = torch.Generator().manual_seed(cfg.train.seed)
    train = split.train[torch.randperm(len(split.train), generator=g)]
    victims, gallery = train[: cfg.attack.victims], train[cfg.attack.victims :]
    held = torch.cat([split.pairs.left, split.pairs.right]).unique()
    aux = held[torch.randperm(len(held), generator=g)][: cfg.attack.aux_images]

    def images(items: Tensor) -> Tensor:
        return faces.images_uint8(items).float() / 255.0

    pipeline = masking_for_run(cfg, faces, split.train)
    proportions = (
        {int(k): v for k, v in k_proportions.items()}
        if METHODS[cfg.masking.method].mixing == "adaptive"
        else None
    )
    aux_set, victim_set = attack_data(
        pipeline, images(aux), images(victims), faces.labels[victims], proportions, g
    )
    originals = victim_set.targets
    renders = pipeline.render(victim_set.masked)
    feature = feature_model(arcface, cfg, device)
    lpips = LPIPS(calibrated=cfg.attack.lpips_calibrated, device=device)
    attack = train_cgan(cfg, pipeline, aux_set, device)
    reconstructions = attack.reconstruct(victim_set.masked)
    # Every index against what the masking saw (grey for the frequency-domain and DP rows).
    seen, recovered = pipeline.seen(originals), pipeline.seen(reconstructions)
    # The floor an attack must beat: the attacker's mean face, whatever the masked input.
    mean_face = aux_set.targets.mean(dim=0, keepdim=True).expand_as(originals)
    floor = attack_effect(seen, pipeline.seen(mean_face), lpips, feature)
    keep = torch.isin(victim_set.labels, faces.labels[gallery])
    leakage = identity_leakage(
        recovered[keep],
        victim_set.labels[keep],
        pipeline.seen(images(gallery)),
        faces.labels[gallery],
        feature,
    )
    shown = slice(0, 8)
    save_reconstruction_grid(
        originals[shown], renders[shown], reconstructions[shown], folder / "reconstructions.png"
    )
    return {
        **masking_effect(seen, renders, lpips, feature),
        **attack_effect(seen, recovered, lpips, feature),
        "psnr": float(psnr(recovered, seen).mean()),
        "ssim": float(ssim(recovered, seen).mean()),
        "leakage_rank1": leakage["rank1"],
        "leakage_rank1_ci95": leakage["rank1_ci95"],
        "leakage_chance": leakage["chance"],
        "mean_face_a_lpips": floor["a_lpips"],
        "mean_face_a_feat": floor["a_feat"],
        "lpips_label": lpips.label,
        "grid": str(folder / "reconstructions.png"),
    }


def train_cgan(
    cfg: AHMConfig, pipeline: MaskingPipeline, aux_set: AttackSet, device: torch.device
) -> CGANAttack:
    """The black-box CGAN of `cfg.attack`, trained on the attacker's auxiliary pairs."""
    attack = CGANAttack(
        pipeline.in_channels,
        cfg.data.image_size,
        options=CGANOptions.from_config(cfg.attack, cfg.train.seed),
        device=device,
    )
    attack.fit(aux_set.masked, aux_set.targets, cfg.attack.cgan_epochs, cfg.attack.cgan_batch_size)
    return attack


def reference_arcface(cfg: AHMConfig, folder: Path, epochs: int) -> dict:
    """An unmasked ArcFace network trained centrally on cfg's data: the feature and evaluation
    model of the privacy indices (resumable; returns its metrics.json)."""
    overrides = {"masking.method": "arcface", "train.epochs": epochs}
    return run_centralized(apply_overrides(cfg, overrides), folder)


def feature_model(
    checkpoint: Path, cfg: AHMConfig, device: torch.device
) -> Callable[[Tensor], Tensor]:
    """The ArcFace row's network as f: RGB images in [0, 1] -> embeddings (DESIGN D7)."""
    state = load_checkpoint(checkpoint, required=("backbone",), map_location=device)
    net = build_backbone(cfg.model, 3, cfg.data.image_size).to(device).eval()
    net.load_state_dict(state["backbone"])

    @torch.no_grad()
    def embed(images: Tensor) -> Tensor:
        return net(images.to(device) * 2.0 - 1.0)

    return embed


def write_report(results: dict[str, dict], out_dir: Path, cfg: AHMConfig) -> Path:
    """report.md, table2.csv and privacy_accuracy.png from the row results."""
    masked = {n: r for n, r in results.items() if n in {row.name for row in TABLE2[1:]}}
    scores = table_scores(
        {n: {k: r[k] for k in ("accuracy", *INDICES, *FLOORS.values())} for n, r in masked.items()}
    )
    label = next((r["lpips_label"] for r in masked.values()), "LPIPS")
    header = [
        "Method",
        "Score",
        "Privacy",
        "Accuracy score",
        "Accuracy",
        f"M_{label}",
        "M_feat",
        f"A_{label} (mean face; gain)",
        "A_feat (mean face; gain)",
        "PSNR",
        "SSIM",
        "Rank-1 leakage [95%] (chance)",
    ]
    lines = []
    for name, r in results.items():
        if name not in {row.name for row in TABLE2}:
            continue
        s = scores.get(name, {})
        lines.append(
            [
                name,
                fmt(s.get("score")),
                fmt(s.get("privacy_score")),
                fmt(s.get("accuracy_score")),
                f"{fmt(r['accuracy'])} {interval(r['accuracy_ci95'])}",
                fmt(r.get("m_lpips")),
                fmt(r.get("m_feat")),
                attack_cell(r, "a_lpips"),
                attack_cell(r, "a_feat"),
                fmt(r.get("psnr"), 2),
                fmt(r.get("ssim")),
                f"{fmt(r['leakage_rank1'])} {interval(r['leakage_rank1_ci95'])} "
                f"({fmt(r['leakage_chance'])})"
                if "leakage_rank1" in r
                else "-",
            ]
        )
    buffer = io.StringIO()
    csv.writer(buffer).writerows([header, *lines])
    atomic_write(out_dir / "table2.csv", lambda tmp: tmp.write_text(buffer.getvalue()))
    _scatter(scores, out_dir / "privacy_accuracy.png")
    acc = {n: r["accuracy"] for n, r in results.items()}
    md = [
        f"# Paper tables on {cfg.data.source} faces ({cfg.data.image_size} px)",
        "",
        f"Privacy indices use {label}; verification accuracy on held-out identities, with its "
        "95% interval over the 10 folds. Masking and attack indices compare with what the "
        "masking saw (the grey original for the frequency-domain and DP rows). Attack indices "
        "compare the CGAN's reconstructions with the originals; in brackets, the same for the "
        "attacker's mean face, an attack that learned nothing, and the gain over it; the "
        "privacy score counts an attack at most at that floor. Higher indices mean more "
        "privacy. Rank-1 leakage carries its Wilson 95% interval over the victims tried.",
        "",
        "## Table 2: accuracy and privacy",
        "",
        md_table(header, lines),
        "",
        "## Table 1: RGB against frequency domain (accuracy, k=2)",
        "",
        md_table(
            ["Method", "RGB domain", "Frequency domain"],
            [
                ["MixUp (k=2)", fmt(acc.get("MixUp RGB (k=2)")), fmt(acc.get("MixUp-FD (k=2)"))],
                [
                    "InstaHide (k=2)",
                    fmt(acc.get("InstaHide RGB (k=2)")),
                    fmt(acc.get("InstaHide-FD (k=2)")),
                ],
            ],
        ),
        "",
        "## Paired tests: is a difference in accuracy beyond noise?",
        "",
        "McNemar's exact test over the same verification pairs, each judged with its fold's "
        "threshold: the pairs only one of the two gets right decide.",
        "",
        md_table(
            ["A", "B", "accuracy A", "accuracy B", "only A right", "only B right", "p", "verdict"],
            [paired_row(a, b, results[a], results[b]) for a, b in PAIRED if {a, b} <= set(results)],
        ),
        "",
        "## Table 3: average proportion of each k (Masking+AdaMixUp)",
        "",
        md_table(
            ["Method", "k proportions"],
            [
                [n, json.dumps(r["k_proportions"])]
                for n, r in results.items()
                if r.get("k_proportions")
            ],
        ),
        "",
        "![privacy against accuracy](privacy_accuracy.png)",
        "",
        "## Reconstructions (original / masked render / CGAN)",
        "",
    ]
    md += [
        f"### {n}\n\n![{n}]({Path(r['grid']).relative_to(out_dir)})\n"
        for n, r in results.items()
        if "grid" in r
    ]
    return atomic_write(out_dir / "report.md", lambda tmp: tmp.write_text("\n".join(md)))


def _scatter(scores: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, s in scores.items():
        if "privacy_score" in s:
            ax.scatter(s["privacy_score"], s["accuracy_score"])
            ax.annotate(name, (s["privacy_score"], s["accuracy_score"]), fontsize=7)
    ax.set_xlabel("privacy score")
    ax.set_ylabel("accuracy score")
    ax.set_title("Privacy against accuracy (paper's Fig. 1)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def attack_cell(row: dict, key: str) -> str:
    """An attack index with its mean-face floor and its gain over the floor (how much closer to
    the originals than the mean face it got; <= 0: it learned nothing the score can credit)."""
    if key not in row:
        return "-"
    floor = row[FLOORS[key]]
    return f"{fmt(row[key])} ({fmt(floor)}; {floor - row[key]:+.3f})"


def paired_row(a: str, b: str, row_a: dict, row_b: dict) -> list[str]:
    """One line of the paired tests: accuracies, discordant pairs, p and what it allows."""
    test = mcnemar(row_a["correct"], row_b["correct"])
    higher = a if row_a["accuracy"] > row_b["accuracy"] else b
    verdict = f"{higher} higher" if test["p"] < 0.05 else "within noise"
    return [
        a,
        b,
        fmt(row_a["accuracy"]),
        fmt(row_b["accuracy"]),
        str(test["only_a"]),
        str(test["only_b"]),
        f"{test['p']:.3g}",
        verdict,
    ]


def interval(bounds: list[float]) -> str:
    return f"[{bounds[0]:.3f}, {bounds[1]:.3f}]"


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
