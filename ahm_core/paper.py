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
from typing import Any

import torch

from ahm_core.config import AHMConfig, ConfigError, DataConfig, apply_overrides
from ahm_core.evaluate import identity_difference, identity_interval
from ahm_core.experiment import run_centralized
from ahm_core.io import atomic_write, load_checkpoint
from ahm_core.judges import OWN, Judges, judges
from ahm_core.masking.methods import PAIRED, ROWS, TABLE1, Row, table_rows
from ahm_core.metrics import table_scores
from ahm_core.metrics.privacy import score_intervals
from ahm_core.metrics.uncertainty import mcnemar
from ahm_core.scoring import budget_rows, measure_privacy, table_row
from ahm_core.tables import (
    Table,
    accuracy_cell,
    cluster_interval,
    fmt,
    index_cell,
    interval,
    named_cell,
    rate_cell,
    write_report,
)
from ahm_core.train import resolve_device

ROW_VERSION = 5  # a cached row of another version lacks what the report now prints
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
    correct = metrics["verification"]["correct"]  # per pair: what the clustered intervals redraw
    result = {
        "version": ROW_VERSION,
        "method": row.method,
        "accuracy": metrics["verification_accuracy"],
        "accuracy_ci95": metrics["verification"]["accuracy_ci95"],
        "accuracy_cluster_ci95": identity_interval(row_cfg.data, correct),
        "correct": correct,
        **{key: metrics.get(key) for key in POLICY_KEYS},
        "first_stage": metrics.get("first_stage"),  # what a trained first stage learnt
    }
    if judged is not None:
        stage = None
        if metrics.get("first_stage"):  # a trained first stage is attacked as it was trained
            saved = load_checkpoint(metrics["checkpoint"], ("first_stage",))
            stage = saved["first_stage"]["module"]
        result |= measure_privacy(
            row_cfg, result["k_proportions"], judged, cached.parent, log, stage
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
            n: {"accuracy": r["accuracy"], **table_row(r["masking"], r["worst"])}
            for n, r in masked.items()
        }
    )
    for name, bounds in score_intervals(
        {n: _resampled(r) for n, r in masked.items()}, cfg.train.seed
    ).items():
        scores[name] |= {f"{key}_ci95": b for key, b in bounds.items()}
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
        "masking saw (the grey original for the frequency-domain and DP rows). Every attack of "
        "the registry that applies attacks every row (the black-box CGAN, the A.2 channel "
        "removal, demixing with and without the key, gradient inversion of an update at the "
        "seeded initial model); each learned attack is trained up its budget ladder until its "
        "leakage on the attacker's held-out faces stops rising (see Attack budgets). Attack "
        "indices are the worst case over those attacks, each index named by the attack that "
        "set it, with a bootstrap 95% interval over the victims; in brackets the same index of "
        "the attacker's mean face (an attack that learned nothing) and the gain over it. The "
        "privacy score counts an attack at most at that floor; the scores carry a bootstrap "
        "95% interval (victims and pairs redrawn, the whole table rescored). Higher indices "
        "mean more privacy. Rank-1 leakage: the share of "
        "reconstructions whose most similar gallery original is the victim's identity, with "
        "Wilson's 95% interval and, in brackets, chance; the ceiling is the same judge's rank-1 "
        "on the untouched victims. Judges: `own`, the unmasked ArcFace row's network (the "
        "paper's feature model; the scores use it), and `dlib`, dlib's pretrained ResNet face "
        "descriptor, which neither side trained. Intervals in square brackets treat pairs and "
        "victims as independent (the folds' t interval, Wilson's); those in braces are "
        "bootstrap 95% intervals clustered by identity, which pairs and victims share: "
        "identities redrawn with every pair between them, or with all their victims.",
        *[f"\nThe `{name}` columns are absent: {why}" for name, why in absent.items()],
        "",
        "## Table 2: accuracy and privacy",
        "",
        Table(
            [
                "Method",
                "Score [95%]",
                "Privacy [95%]",
                "Accuracy score",
                "Accuracy [95%]",
                f"M_{label}",
                "M_feat",
                f"A_{label} [95%] (mean face; gain) attack",
                "A_feat [95%] (mean face; gain) attack",
                "PSNR",
                "SSIM",
                "Rank-1 [95%] (chance) attack",
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
                    "A_feat [95%] (mean face; gain) attack",
                    "Rank-1 [95%] (chance) attack",
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
        "Both rows are judged on the same verification pairs, each with its fold's threshold. "
        "The verdict rests on the difference A - B with its bootstrap 95% interval clustered "
        "by identity (held-out identities redrawn, each with every pair between them): beyond "
        "noise only when that interval excludes 0. The pairs share images and identities, so "
        "McNemar's exact test (its p beside the pairs only one of the two gets right) treats "
        "dependent pairs as independent and overstates the evidence.",
        "",
        Table(
            [
                "A",
                "B",
                "accuracy A",
                "accuracy B",
                "A - B {95%, by identity}",
                "only A right",
                "only B right",
                "McNemar p",
                "verdict",
            ],
            [
                paired_row(a, b, results[a], results[b], cfg.data)
                for a, b in PAIRED
                if {a, b} <= set(results)
            ],
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
    md += _budgets({n: r for n, r in results.items() if "attacks" in r}, out_dir)
    md += _appendix_a2(masked, cfg, out_dir)
    data = {"rows": results, "scores": scores, "absent_judges": absent}
    return write_report(out_dir / "report.md", md, data)


def _budgets(attacked: dict[str, dict], out_dir: Path) -> list[str | Table]:
    """Each attacked row's attacks (Table 1's too): the budget scored, converged or capped, the
    ladder, and its plot."""
    lines: list[str | Table] = [
        "## Attack budgets: leakage against budget",
        "",
        "Each learned attack trains once per rung of its budget ladder (CGAN epochs / auxiliary "
        "pairs, doubling), each rung from scratch, and its leakage is measured on auxiliary faces "
        "it held out; the climb stops at the first rung that does not leak more than the best "
        "before it beyond noise (paired bootstrap, 95%: converged) or after the last rung "
        "(capped). An attack is scored at its most leaking rung. Attacks of a fixed budget say so.",
        "",
        Table(
            ["Method", "Attack", "Scored at", "Ladder", "Held-out leakage per rung", "Seconds"],
            [[n, *line] for n, r in attacked.items() for line in budget_rows(r["attacks"])],
        ),
        "",
    ]
    for n in attacked:
        plot = out_dir / "rows" / slug(n) / "ladder.png"
        if plot.exists():
            lines += [f"![{n}: leakage against budget]({plot.relative_to(out_dir)})", ""]
    return lines


def _appendix_a2(masked: dict[str, dict], cfg: AHMConfig, out_dir: Path) -> list[str | Table]:
    """The channel-removal attack against the CGAN on all channels, and DCTDP's allocations."""
    dropped = {n: r for n, r in masked.items() if "channel_drop" in r["attacks"]}
    lines: list[str | Table] = [
        "## Appendix A.2: the CGAN after removing the most redundant channels",
        "",
        "The attacker ranks the channels by the signal-to-noise ratio it measures on its own "
        "auxiliary faces through the defence (two encodings, independent noise), never keeps a "
        "channel of no signal, breaks ties among noiseless channels by the first stage's own "
        "order (PPFR-FD: source energy through its key), tries keeping each of "
        f"{list(cfg.attack.kept_channels)} channels (up its budget ladder each) and is scored "
        "at the count that leaks most on its held-out faces. A lower A_feat or a higher rank-1 "
        "than the CGAN on every channel is what the removal recovers.",
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


def _resampled(r: dict) -> dict[str, Any]:
    """What the score's bootstrap redraws of one row: per-pair correctness and the per-victim
    values of its masking and worst-case attack indices (own judge), with the attack's floors."""
    m, w = r["masking"], r["worst"]
    a_lpips, a_feat = w["a_lpips"], w["judges"][OWN]["a_feat"]
    return {
        "accuracy": torch.tensor([c == "1" for c in r["correct"]], dtype=torch.float64),
        "m_lpips": torch.tensor(m["m_lpips"]["values"]),
        "m_feat": torch.tensor(m["judges"][OWN]["m_feat"]["values"]),
        "a_lpips": torch.tensor(a_lpips["values"]),
        "a_feat": torch.tensor(a_feat["values"]),
        "mean_face_a_lpips": a_lpips["floor"],
        "mean_face_a_feat": a_feat["floor"],
    }


def _a2_line(name: str, r: dict) -> list[str]:
    cells = []
    for attack in ("cgan", "channel_drop"):
        own = r["attacks"][attack].get("judges", {}).get(OWN, {})
        cells.append((index_cell(own.get("a_feat")), rate_cell(own.get("rank1"))))
    skipped = r["attacks"]["channel_drop"].get("skipped")
    kept = (
        f"skipped: {skipped}"
        if skipped
        else f"{cells[1][0]}, {r['attacks']['channel_drop']['kept']} kept"
    )
    return [name, cells[0][0], kept, cells[0][1], "-" if skipped else cells[1][1]]


def _table2_line(name: str, r: dict, s: dict) -> list[str]:
    """A row of Table 2: scores, accuracy, and the worst-case indices by the own judge, each
    named by the attack that set it (PSNR and SSIM: that of A_feat's attack)."""
    worst = r.get("worst", {"a_lpips": None, "judges": {}})
    own = worst["judges"].get(OWN, {})
    feat = r["attacks"][own["a_feat"]["attack"]] if own.get("a_feat") else {}
    return [
        name,
        _scored(s, "score"),
        _scored(s, "privacy_score"),
        fmt(s.get("accuracy_score")),
        accuracy_cell(r["accuracy"], r["accuracy_ci95"], r.get("accuracy_cluster_ci95")),
        fmt(r["masking"]["m_lpips"]["value"]) if "masking" in r else "-",
        fmt(r["masking"]["judges"][OWN]["m_feat"]["value"]) if "masking" in r else "-",
        named_cell(worst["a_lpips"], index_cell),
        named_cell(own.get("a_feat"), index_cell),
        fmt(feat.get("psnr"), 2),
        fmt(feat.get("ssim")),
        named_cell(own.get("rank1"), rate_cell),
        fmt(r["ceilings"][OWN].get("rank1")) if "ceilings" in r else "-",
    ]


def _scored(s: dict, key: str) -> str:
    """A score with its bootstrap interval."""
    if s.get(key) is None:
        return "-"
    return f"{fmt(s[key])} {interval(s[f'{key}_ci95'])}"


def _judge_line(name: str, r: dict, judge: str) -> list[str]:
    """A row of the worst-case indices `judge` gives one method, each with its attack."""
    scored = r["worst"]["judges"][judge]
    return [
        name,
        fmt(r["masking"]["judges"][judge]["m_feat"]["value"]),
        named_cell(scored.get("a_feat"), index_cell),
        named_cell(scored.get("rank1"), rate_cell),
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


def paired_row(a: str, b: str, row_a: dict, row_b: dict, data: DataConfig) -> list[str]:
    """One line of the paired tests on `data`'s pairs: accuracies, A - B with its interval
    clustered by identity (the verdict's ground), discordant pairs and McNemar's p."""
    test = mcnemar(row_a["correct"], row_b["correct"])
    difference = identity_difference(data, row_a["correct"], row_b["correct"])
    lo, hi = difference["ci95"]
    verdict = f"{a} higher" if lo > 0 else f"{b} higher" if hi < 0 else "within noise"
    return [
        a,
        b,
        fmt(row_a["accuracy"]),
        fmt(row_b["accuracy"]),
        f"{difference['difference']:+.3f} {cluster_interval(difference['ci95'])}",
        str(test["only_a"]),
        str(test["only_b"]),
        f"{test['p']:.3g}",
        verdict,
    ]
