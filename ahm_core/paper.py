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
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ahm_core.cells import Cell, Runner, cell_config, run_cells, seed_list, sequential
from ahm_core.config import AHMConfig, ConfigError, DataConfig
from ahm_core.evaluate import identity_difference
from ahm_core.io import atomic_write
from ahm_core.judges import OWN
from ahm_core.masking.methods import PAIRED, ROWS, TABLE1, Row, table_rows
from ahm_core.metrics import table_scores
from ahm_core.metrics.privacy import score_intervals
from ahm_core.metrics.uncertainty import mcnemar, over_seeds, paired_seeds
from ahm_core.privacy import spent_notes
from ahm_core.scoring import budget_rows, table_row
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

TABLE2 = frozenset(row.name for row in table_rows(2))
_PRIVACY_INTRO = (
    "Privacy indices use {label}; verification accuracy on held-out identities, with its "
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
    "identities redrawn with every pair between them, or with all their victims."
)


def slug(name: str) -> str:
    """A row's folder name: its name in lower case, every other character an underscore."""
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def run_tables(
    cfg: AHMConfig,
    out_dir: str | Path,
    log: Callable[[str], None] = print,
    only: Collection[str] | None = None,
    seeds: int | Sequence[int] | None = None,
    runner: Runner = sequential,
    resume: bool = True,
    attack: bool = True,
) -> dict[str, dict[int, dict]]:
    """Run (or reuse) every row of `ROWS` at every seed (`seed_list`), or the rows whose folder
    names (`slug`) are `only` and ArcFace, then write the report; returns {row: {seed: result}}.

    Each (row, seed) is a cell (`ahm_core.cells`) that `runner` runs, here or as a task elsewhere;
    the first seed's ArcFace network judges every cell's attacks, so it runs first. Without
    `attack` the cells are trained and compared on accuracy only; a later run with attacks
    reuses their trained networks and adds the attacks."""
    out_dir = Path(out_dir)
    rows = list(ROWS)
    arcface = rows[0]  # the unmasked ArcFace row, whose network judges the others
    if only is not None:
        unknown = sorted(set(only) - {slug(row.name) for row in rows})
        if unknown:
            names = ", ".join(slug(row.name) for row in rows)
            raise ConfigError(f"rows: unknown row {unknown[0]!r}; expected some of {names}")
        rows = [row for row in rows if row is arcface or slug(row.name) in only]
    seeds = seed_list(cfg, seeds)

    def cell(row: Row, seed: int, judge: Path | None) -> Cell:
        folder = out_dir / "rows" / slug(row.name) / f"seed_{seed}"
        return Cell(row, seed, cell_config(cfg, row, seed), folder, judge, resume)

    results: dict[str, dict[int, dict]] = {row.name: {} for row in rows}
    total = len(rows) * len(seeds)
    # on a terminal (disable=None), whatever train.progress says of the steps inside each cell
    with tqdm(total=total, desc="cells", unit="cell", disable=None) as bar:

        def run(cells: list[Cell]) -> None:
            for c, result, hit in run_cells(cells, runner):
                results[c.row.name][c.seed] = result
                bar.update()
                cached = "cached, " if hit else ""
                log(f"[{_done(results)}/{total}] {c.label}: {cached}{_line(result)}")

        run([cell(arcface, seeds[0], None)])
        judge = Path(results[arcface.name][seeds[0]]["checkpoint"])
        run(
            [
                cell(row, seed, judge if attack and row is not arcface else None)
                for seed in seeds
                for row in rows
                if (row, seed) != (arcface, seeds[0])
            ]
        )
    ordered = {name: {s: runs[s] for s in seeds} for name, runs in results.items()}
    write_tables(ordered, out_dir, cfg)
    return ordered


def _done(results: dict[str, dict[int, dict]]) -> int:
    return sum(len(runs) for runs in results.values())


def _line(result: dict) -> str:
    """One finished cell: its accuracy and, when attacked, the worst rank-1 by the own judge."""
    line = f"accuracy {fmt(result['accuracy'])}"
    rank1 = result.get("worst", {}).get("judges", {}).get(OWN, {}).get("rank1")
    if rank1:
        line += f", worst rank-1 {fmt(rank1['rank1'])} ({rank1['attack']})"
    return line


def write_tables(runs: dict[str, dict[int, dict]], out_dir: Path, cfg: AHMConfig) -> Path:
    """report.md (with report.json), table2.csv and privacy_accuracy.png from the cells' results
    {row: {seed: result}}: the figures over seeds first, then the first seed's run in detail."""
    seeds = list(next(iter(runs.values())))
    results = {n: by_seed[seeds[0]] for n, by_seed in runs.items()}
    absent = next((r["absent_judges"] for r in results.values() if "absent_judges" in r), {})
    masked = _masked(results)
    per_seed = {s: _scores({n: by_seed[s] for n, by_seed in runs.items()}) for s in seeds}
    summary = _over_seeds(runs, per_seed)
    paired = _paired_seeds(per_seed, runs)
    scores = per_seed[seeds[0]]
    for name, bounds in score_intervals(
        {n: _resampled(r) for n, r in masked.items()}, cfg.train.seed
    ).items():
        scores[name] |= {f"{key}_ci95": b for key, b in bounds.items()}
    label = next((r["lpips_label"] for r in masked.values()), "LPIPS")
    adaptive = {n: r for n, r in results.items() if r.get("k_proportions")}
    judged = next((list(r["ceilings"]) for r in masked.values()), [OWN])  # own first
    intro = (
        _PRIVACY_INTRO.format(label=label)
        if masked
        else "Accuracy only (`attacks=false`): verification accuracy on held-out identities, "
        "with its 95% interval over the 10 folds; no row was attacked. A rerun into this folder "
        "with attacks reuses every trained network and adds the privacy columns."
    )
    md: list[str | Table] = [
        f"# Paper tables on {cfg.data.source} faces ({cfg.data.image_size} px)",
        "",
        intro,
        *[f"\nThe `{name}` columns are absent: {why}" for name, why in absent.items()],
        *spent_notes(results),
        "",
        *_seed_section(runs, summary, paired),
        f"## Table 2: accuracy and privacy (the run of seed {seeds[0]})",
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
            [_table2_line(n, r, scores.get(n, {})) for n, r in results.items() if n in TABLE2],
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
        f"## Table 1: RGB against frequency domain (accuracy, k=2; mean ± std over {len(seeds)} "
        "seed(s))",
        "",
        Table(
            ["Method", "RGB domain", "Frequency domain"],
            [[label, _spread(summary, rgb), _spread(summary, fd)] for label, rgb, fd in TABLE1],
        ),
        "",
        f"## Paired tests within the run of seed {seeds[0]}: a difference beyond its pairs' noise?",
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
    ]
    if masked:
        _scatter(scores, out_dir / "privacy_accuracy.png")
        md += [
            "![privacy against accuracy](privacy_accuracy.png)",
            "",
            "## Reconstructions (original / masked render / CGAN)",
            "",
            *[
                f"### {n}\n\n![{n}]({Path(r['attacks']['cgan']['grid']).relative_to(out_dir)})\n"
                for n, r in masked.items()
            ],
        ]
        md += _budgets({n: r for n, r in results.items() if "attacks" in r}, out_dir)
        md += _appendix_a2(masked, cfg, out_dir)
    data = {
        "rows": results,
        "scores": scores,
        "absent_judges": absent,
        "seeds": seeds,
        "over_seeds": summary,
        "paired_over_seeds": paired,
        "runs": {n: {str(s): r for s, r in by_seed.items()} for n, by_seed in runs.items()},
    }
    return write_report(out_dir / "report.md", md, data)


def _masked(results: dict[str, dict]) -> dict[str, dict]:
    """The attacked rows of Table 2."""
    return {n: r for n, r in results.items() if n in TABLE2 and "attacks" in r}


def _scores(results: dict[str, dict]) -> dict[str, dict]:
    """The paper's scores of one seed's Table 2 (each row against the others of that seed)."""
    return table_scores(
        {
            n: {"accuracy": r["accuracy"], **table_row(r["masking"], r["worst"])}
            for n, r in _masked(results).items()
        }
    )


def _figures(r: dict, s: dict) -> dict[str, float | None]:
    """What the seed tables summarise of one cell: accuracy, scores and worst-case leakage."""
    own = r.get("worst", {}).get("judges", {}).get(OWN, {})
    return {
        "accuracy": r["accuracy"],
        "score": s.get("score"),
        "privacy_score": s.get("privacy_score"),
        "a_feat": (own.get("a_feat") or {}).get("value"),
        "rank1": (own.get("rank1") or {}).get("rank1"),
    }


def _over_seeds(runs: dict[str, dict[int, dict]], per_seed: dict[int, dict]) -> dict:
    """{row: {figure: mean, run-to-run std and n}} over the seeds each figure exists at."""
    summary: dict[str, dict] = {}
    for name, by_seed in runs.items():
        figures = [_figures(r, per_seed[s].get(name, {})) for s, r in by_seed.items()]
        summary[name] = {
            key: over_seeds(values)
            if (values := [f[key] for f in figures if f[key] is not None])
            else None
            for key in figures[0]
        }
    return summary


def _paired_seeds(per_seed: dict[int, dict], runs: dict[str, dict[int, dict]]) -> list[dict]:
    """Each pair of `PAIRED` that ran, compared over seeds on accuracy, the privacy score and
    the worst-case rank-1 by the own judge (higher: more leakage)."""
    lines = []
    for a, b in PAIRED:
        if not {a, b} <= set(runs):
            continue
        line: dict[str, Any] = {"a": a, "b": b}
        for key in ("accuracy", "privacy_score", "rank1"):
            pairs = [
                (
                    _figures(runs[a][s], per_seed[s].get(a, {}))[key],
                    _figures(runs[b][s], per_seed[s].get(b, {}))[key],
                )
                for s in runs[a]
            ]
            if all(x is not None and y is not None for x, y in pairs):
                line[key] = paired_seeds([x for x, _ in pairs], [y for _, y in pairs])
        lines.append(line)
    return lines


def _spread(summary: dict, name: str, key: str = "accuracy") -> str:
    """A figure as mean ± run-to-run std (n seeds); '-' where the row did not run."""
    entry = (summary.get(name) or {}).get(key)
    if entry is None:
        return "-"
    std = "" if entry["std"] is None else f" ± {entry['std']:.3f}"
    return f"{entry['mean']:.3f}{std} ({entry['n']})"


def _verdict(a: str, b: str, test: dict | None) -> str:
    if test is None:
        return "-"
    lo, hi = test["ci95"]
    if test["n"] < 2:
        return "one seed: no verdict"
    return f"{a} higher" if lo > 0 else f"{b} higher" if hi < 0 else "within run-to-run noise"


def _seed_section(runs: dict, summary: dict, paired: list[dict]) -> list[str | Table]:
    """The figures over seeds and the rows compared paired by seed: the verdicts' ground."""
    seeds = list(next(iter(runs.values())))

    def test_cell(test: dict | None) -> str:
        if test is None:
            return "-"
        return f"{test['difference']:+.3f} {interval(test['ci95'])}, p {test['p']:.3g}"

    return [
        f"## Over seeds: mean ± run-to-run std (number of seeds), seeds {seeds}",
        "",
        "Each row is trained once per seed (its weights, data order, masking noise and key, k "
        "draws and attack draws), the same seeds for every row, so rows compare paired by seed; "
        "the data, its pairs and the judge (the first seed's ArcFace network) are shared. The "
        "std is over the runs (n - 1); scores are computed within each seed's table. The "
        "paired tests below it take the per-seed differences A - B: their mean with a t 95% "
        "interval over seeds and the exact sign-flip p (at least 2 / 2**n, so 0.25 with 3 seeds "
        "and 0.0625 with 5). A verdict needs the interval to exclude 0; the within-run tests "
        "further down see one trained model per row and cannot see this spread.",
        "",
        Table(
            [
                "Method",
                "Accuracy",
                "Score",
                "Privacy score",
                "A_feat (worst, own)",
                "Rank-1 (worst, own)",
            ],
            [
                [
                    n,
                    *[
                        _spread(summary, n, k)
                        for k in ("accuracy", "score", "privacy_score", "a_feat", "rank1")
                    ],
                ]
                for n in runs
            ],
            csv="over_seeds.csv",
        ),
        "",
        Table(
            [
                "A",
                "B",
                "accuracy A - B [95%], p",
                "verdict (accuracy)",
                "privacy score A - B [95%], p",
                "verdict (privacy)",
                "worst rank-1 (own) A - B [95%], p",
                "verdict (rank-1: higher leaks more)",
            ],
            [
                [
                    t["a"],
                    t["b"],
                    test_cell(t.get("accuracy")),
                    _verdict(t["a"], t["b"], t.get("accuracy")),
                    test_cell(t.get("privacy_score")),
                    _verdict(t["a"], t["b"], t.get("privacy_score")),
                    test_cell(t.get("rank1")),
                    _verdict(t["a"], t["b"], t.get("rank1")),
                ]
                for t in paired
            ],
        ),
        "",
    ]


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
    for n, r in attacked.items():
        plot = Path(r["attacks"]["cgan"]["grid"]).with_name("ladder.png")  # the cell's folder
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
