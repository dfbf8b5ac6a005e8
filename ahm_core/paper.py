"""The paper's comparison on your data: Table 2 (accuracy and privacy of every method), Table 1 (RGB
against frequency domain) and Table 3 (k proportions of AdaMixUp), as report.md with report.json,
table2.csv, a privacy-accuracy scatter (Fig. 1) and reconstruction grids (Fig. 3).

The rows, their tables and the paired tests are the table of `ahm_core.masking.methods` (`ROWS`,
`TABLE1`, `PAIRED`), so a method registered there appears here. Each row trains its method (a
centralized run, resumable), then measures the masking effect on victim training images and runs
the paper's attacks (`scoring.PAPER_ATTACKS`: the black-box CGAN, trained on auxiliary pairs from
identities the victim never saw, and the same after channel removal) through the common case and
scoring (`ahm_core.cases`, `ahm_core.scoring`). The judges are the unmasked ArcFace row's network
and dlib's pretrained descriptor. A finished row is cached in `rows/<name>/row.json`, so a rerun
after a crash skips it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from pathlib import Path

from ahm_core.config import AHMConfig, ConfigError, apply_overrides
from ahm_core.experiment import run_centralized
from ahm_core.io import atomic_write, load_checkpoint
from ahm_core.judges import OWN, Judges, judges
from ahm_core.masking.methods import PAIRED, ROWS, TABLE1, Row, table_rows
from ahm_core.metrics import table_scores
from ahm_core.metrics.uncertainty import mcnemar
from ahm_core.scoring import PAPER_ATTACKS, measure_privacy, table_row
from ahm_core.tables import Table, fmt, index_cell, interval, rate_cell, write_report
from ahm_core.train import resolve_device

ROW_VERSION = 4  # a cached row of another version lacks what the report now prints
# What an adaptive row keeps of its run's metrics (None for the other rows): Table 3 and dynamics.
POLICY_KEYS = ("k_proportions", "k_proportions_final_epoch", "policy_updates", "k_dynamics")


def slug(name: str) -> str:
    """A row's folder name: its name in lower case, every other character an underscore."""
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def run_tables(
    cfg: AHMConfig,
    out_dir: str | Path,
    log: Callable[[str], None] = print,
    only: Collection[str] | None = None,
) -> dict:
    """Run (or reuse) every row of `ROWS`, or the rows whose folder names (`slug`) are `only` and
    ArcFace (whose network judges), then write the report; returns {row name: row result}."""
    out_dir = Path(out_dir)
    rows = list(ROWS)
    if only is not None:
        unknown = sorted(set(only) - {slug(row.name) for row in rows})
        if unknown:
            names = ", ".join(slug(row.name) for row in rows)
            raise ConfigError(f"rows: unknown row {unknown[0]!r}; expected some of {names}")
        rows = [row for row in rows if row.method == "arcface" or slug(row.name) in only]
    results: dict[str, dict] = {}
    judged: Judges | None = None
    for i, row in enumerate(rows, 1):
        log(f"[{i}/{len(rows)}] {row.name}")
        if judged is None and row.method != "arcface":
            arcface = Path(results["ArcFace"]["checkpoint"])
            judged = judges(arcface, cfg, resolve_device(cfg.train.device))
        results[row.name] = _row(cfg, row, out_dir, judged, log)
    write_tables(results, out_dir, cfg, judged.absent if judged else {})
    return results


def _row(cfg: AHMConfig, row: Row, out_dir: Path, judged: Judges | None, log: Callable) -> dict:
    cached = out_dir / "rows" / slug(row.name) / "row.json"
    if cached.exists():
        result = json.loads(cached.read_text())
        if result.get("version") == ROW_VERSION:
            return result
    row_cfg = apply_overrides(cfg, {"masking.method": row.method, **row.overrides})
    metrics = run_centralized(row_cfg, cached.parent / "train")
    result = {
        "version": ROW_VERSION,
        "method": row.method,
        "accuracy": metrics["verification_accuracy"],
        "accuracy_ci95": metrics["verification"]["accuracy_ci95"],
        "correct": metrics["verification"]["correct"],
        **{key: metrics.get(key) for key in POLICY_KEYS},
        "first_stage": metrics.get("first_stage"),  # what a trained first stage learnt
    }
    if judged is not None:
        stage = None
        if metrics.get("first_stage"):  # a trained first stage is attacked as it was trained
            saved = load_checkpoint(metrics["checkpoint"], ("first_stage",))
            stage = saved["first_stage"]["module"]
        result |= measure_privacy(
            row_cfg, result["k_proportions"], judged, cached.parent, PAPER_ATTACKS, log, stage
        )
    result["checkpoint"] = metrics["checkpoint"]
    text = json.dumps(result, indent=2)
    atomic_write(cached, lambda tmp: tmp.write_text(text))
    return result


def write_tables(
    results: dict[str, dict], out_dir: Path, cfg: AHMConfig, absent: dict[str, str]
) -> Path:
    """report.md (with report.json), table2.csv and privacy_accuracy.png from the row results."""
    table2 = {row.name for row in table_rows(2)}
    masked = {n: r for n, r in results.items() if n in table2 and "attacks" in r}
    scores = table_scores(
        {
            n: {"accuracy": r["accuracy"], **table_row(r["masking"], r["attacks"]["cgan"])}
            for n, r in masked.items()
        }
    )
    label = next((r["lpips_label"] for r in masked.values()), "LPIPS")
    _scatter(scores, out_dir / "privacy_accuracy.png")
    acc = {n: r["accuracy"] for n, r in results.items()}
    adaptive = {n: r for n, r in results.items() if r.get("k_proportions")}
    judged = next((list(r["ceilings"]) for r in masked.values()), [OWN])  # own first
    md: list[str | Table] = [
        f"# Paper tables on {cfg.data.source} faces ({cfg.data.image_size} px)",
        "",
        f"Privacy indices use {label}; verification accuracy on held-out identities, with its "
        "95% interval over the 10 folds. Masking and attack indices compare with what the "
        "masking saw (the grey original for the frequency-domain and DP rows). Attack indices "
        "compare the CGAN's reconstructions with the originals, with a bootstrap 95% interval "
        "over the victims; in brackets the same index of the attacker's mean face (an attack "
        "that learned nothing) and the gain over it. The privacy score counts an attack at most "
        "at that floor. Higher indices mean more privacy. Rank-1 leakage: the share of "
        "reconstructions whose most similar gallery original is the victim's identity, with "
        "Wilson's 95% interval and, in brackets, chance; the ceiling is the same judge's rank-1 "
        "on the untouched victims. Judges: `own`, the unmasked ArcFace row's network (the "
        "paper's feature model; the scores use it), and `dlib`, dlib's pretrained ResNet face "
        "descriptor, which neither side trained.",
        *[f"\nThe `{name}` columns are absent: {why}" for name, why in absent.items()],
        "",
        "## Table 2: accuracy and privacy",
        "",
        Table(
            [
                "Method",
                "Score",
                "Privacy",
                "Accuracy score",
                "Accuracy [95%]",
                f"M_{label}",
                "M_feat",
                f"A_{label} [95%] (mean face; gain)",
                "A_feat [95%] (mean face; gain)",
                "PSNR",
                "SSIM",
                "Rank-1 [95%] (chance)",
                "Rank-1 ceiling",
            ],
            [_table2_line(n, r, scores.get(n, {})) for n, r in results.items() if n in table2],
            csv="table2.csv",
        ),
        "",
    ]
    for judge in judged[1:]:
        md += [
            f"## Table 2 judged by {judge}",
            "",
            Table(
                [
                    "Method",
                    "M_feat",
                    "A_feat [95%] (mean face; gain)",
                    "Rank-1 [95%] (chance)",
                    "Rank-1 ceiling",
                ],
                [_judge_line(n, r, judge) for n, r in masked.items()],
            ),
            "",
        ]
    md += [
        "## Table 1: RGB against frequency domain (accuracy, k=2)",
        "",
        Table(
            ["Method", "RGB domain", "Frequency domain"],
            [[label, fmt(acc.get(rgb)), fmt(acc.get(fd))] for label, rgb, fd in TABLE1],
        ),
        "",
        "## Paired tests: is a difference in accuracy beyond noise?",
        "",
        "McNemar's exact test over the same verification pairs, each judged with its fold's "
        "threshold: the pairs only one of the two gets right decide.",
        "",
        Table(
            ["A", "B", "accuracy A", "accuracy B", "only A right", "only B right", "p", "verdict"],
            [paired_row(a, b, results[a], results[b]) for a, b in PAIRED if {a, b} <= set(results)],
        ),
        "",
        f"## Table 3: average proportion of each k (Masking+AdaMixUp, reward {cfg.policy.reward})",
        "",
        "The shares of the k the policy drew, over the whole run and in its final epoch, and "
        "below each row the PMF each policy update drew its k from (the first is the untrained "
        "policy's; each next one follows an update).",
        "",
        Table(
            ["Method", "whole run", "final epoch", "policy updates"],
            [
                [
                    n,
                    json.dumps(r["k_proportions"]),
                    json.dumps(r.get("k_proportions_final_epoch")),
                    str(r.get("policy_updates", "-")),
                ]
                for n, r in adaptive.items()
            ],
        ),
        "",
        *[
            f"![{n}: PMF over training]({Path(r['k_dynamics']).relative_to(out_dir)})\n"
            for n, r in adaptive.items()
            if r.get("k_dynamics")
        ],
        "![privacy against accuracy](privacy_accuracy.png)",
        "",
        "## Reconstructions (original / masked render / CGAN)",
        "",
    ]
    md += [
        f"### {n}\n\n![{n}]({Path(r['attacks']['cgan']['grid']).relative_to(out_dir)})\n"
        for n, r in masked.items()
    ]
    md += _appendix_a2(masked, cfg, out_dir)
    data = {"rows": results, "scores": scores, "absent_judges": absent}
    return write_report(out_dir / "report.md", md, data)


def _appendix_a2(masked: dict[str, dict], cfg: AHMConfig, out_dir: Path) -> list[str | Table]:
    """The channel-removal attack against the CGAN on all channels, and DCTDP's allocations."""
    dropped = {n: r for n, r in masked.items() if "channel_drop" in r["attacks"]}
    lines: list[str | Table] = [
        "## Appendix A.2: the CGAN after removing the most redundant channels",
        "",
        f"The attacker keeps {cfg.attack.kept_channels} channels: for DCTDP those of the "
        "smallest learnt noise, for PPFR-FD and the block DCT those whose frequencies carry the "
        "most signal on the attacker's own faces; then trains the same CGAN on them. A lower "
        "A_feat or a higher rank-1 than the CGAN on every channel is what the removal recovers.",
        "",
        Table(
            ["Method", "A_feat, all channels", "A_feat, kept", "Rank-1, all", "Rank-1, kept"],
            [_a2_line(n, r) for n, r in dropped.items()],
        ),
        "",
    ]
    for n, r in masked.items():
        stage = r.get("first_stage") or {}
        if "allocation_plot" in stage:
            plot = Path(stage["allocation_plot"]).relative_to(out_dir)
            lines += [
                f"{n}: the learnt budget per frequency (sum {fmt(stage['allocation_sum'], 2)} "
                f"of epsilon {fmt(stage['epsilon'], 2)})",
                "",
                f"![{n}: budget allocation]({plot})",
                "",
            ]
    return lines


def _a2_line(name: str, r: dict) -> list[str]:
    cells = []
    for attack in ("cgan", "channel_drop"):
        own = r["attacks"][attack].get("judges", {}).get(OWN, {})
        cells.append((index_cell(own.get("a_feat")), rate_cell(own.get("rank1"))))
    skipped = r["attacks"]["channel_drop"].get("skipped")
    kept = f"skipped: {skipped}" if skipped else cells[1][0]
    return [name, cells[0][0], kept, cells[0][1], "-" if skipped else cells[1][1]]


def _table2_line(name: str, r: dict, s: dict) -> list[str]:
    """A row of Table 2: scores, accuracy, and the indices by the own judge."""
    cgan = r.get("attacks", {}).get("cgan", {})
    own = cgan.get("judges", {}).get(OWN, {})
    return [
        name,
        fmt(s.get("score")),
        fmt(s.get("privacy_score")),
        fmt(s.get("accuracy_score")),
        f"{fmt(r['accuracy'])} {interval(r['accuracy_ci95'])}",
        fmt(r["masking"]["m_lpips"]["value"]) if "masking" in r else "-",
        fmt(r["masking"]["judges"][OWN]["m_feat"]["value"]) if "masking" in r else "-",
        index_cell(cgan.get("a_lpips")),
        index_cell(own.get("a_feat")),
        fmt(cgan.get("psnr"), 2),
        fmt(cgan.get("ssim")),
        rate_cell(own.get("rank1")),
        fmt(r["ceilings"][OWN].get("rank1")) if "ceilings" in r else "-",
    ]


def _judge_line(name: str, r: dict, judge: str) -> list[str]:
    """A row of the indices `judge` gives one method."""
    scored = r["attacks"]["cgan"]["judges"][judge]
    return [
        name,
        fmt(r["masking"]["judges"][judge]["m_feat"]["value"]),
        index_cell(scored.get("a_feat")),
        rate_cell(scored.get("rank1")),
        fmt(r["ceilings"][judge].get("rank1")),
    ]


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
