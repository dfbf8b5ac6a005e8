"""The threat report of a finished federated run: every adversary of docs/design.md section 4,
run for real, against each defence of `attack.defences` on the same victims (`threat_report.md`).

The adversary has the model's structure and parameters and all masked data (the paper's threat
model), and the masking pipeline with its keys (white box). Per defence:
- gradient inversion (`attacks.gradient_inversion`): a client's update on `attack.gi_batch` of its
  masked, mixed training images (FedSGD, or FedAvg with `attack.gi_local_steps` unrolled steps),
  computed at the run's captured global model for the run's own defence and at the seeded
  initial model for the others (as breaching attacks at initialisation); labels and mixing
  coefficients given, as the threat model allows. Scored against the true masked inputs;
- the chain: the recovered tensors go through the defence's CGAN (trained on auxiliary pairs of
  other people) to faces, scored against the victims' faces (the dominant component of a mix);
- white-box demixing (`attacks.demix`, mixing defences): `attack.demix_images` private images each
  mixed `attack.demix_rounds` times with k=2, demixed, and PPFR-FD inverted with the keys;
- model inversion (`attacks.model_inversion`, the run's own defence): a GAN prior on auxiliary
  faces, latents optimised for identities of client 0 through its released head, judged by an
  independent classifier trained on client 0's faces.
Every attack is an `Attack` of the registry (`ahm_core.attacks.ATTACKS`) run on the defence's
`Case` and scored by `ahm_core.scoring` as the paper tables are: against what the masking saw,
beside the mean face and chance, judged by the run's unmasked ArcFace reference network and by
dlib's pretrained descriptor. An attack that does not apply to a defence says why.

Runs trained otherwise enter the report as rows of their own (`compared`, `COMPARED`): unmasked
ArcFace federations each with one mechanism of the federated privacy stack (DP-FedAvg, DP-SGD at
two noise levels, local DP, SecAgg+), attacked the same way at their own captured global model
and released model, beside their accuracy and (epsilon, delta). Under SecAgg+ the curious server
captures only the mean update: gradient inversion attacks the mean of the round's clients, and the
row also shows its leakage against the number of clients averaged (`attack.gi_aggregated`).
Every row with a trained run carries that run's final verification accuracy.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from ahm_core.attacks import ATTACKS
from ahm_core.cases import Case, Released, build_case
from ahm_core.config import AHMConfig, apply_overrides, to_flat
from ahm_core.data.sources import RunData
from ahm_core.evaluate import identity_interval
from ahm_core.federated import (
    client_data,
    federated_data,
    trained_first_stage,
    unpack_state,
)
from ahm_core.io import load_checkpoint
from ahm_core.judges import OWN, Judges, judges, reference_arcface
from ahm_core.metrics import LPIPS
from ahm_core.metrics.privacy import FeatureModel
from ahm_core.models import build_head, load_travelled
from ahm_core.privacy import epsilons, spent_notes
from ahm_core.runs import (
    REFERENCE,
    client_epochs,
    k_proportions,
    load_run,
    trained_figures,
)
from ahm_core.scoring import (
    aggregated_inversion,
    aggregated_section,
    attack_case,
    budget_rows,
    ceilings,
    worst_case,
)
from ahm_core.tables import (
    Table,
    cluster_interval,
    fmt,
    index_cell,
    named_cell,
    rate_cell,
    write_report,
)
from ahm_core.train import resolve_device

Log = Callable[[str], None]


def _settings(settings: AHMConfig, prefix: str) -> dict[str, Any]:
    return {k: v for k, v in to_flat(settings).items() if k.startswith(prefix)}


def _dp_fedavg(settings: AHMConfig) -> dict[str, Any]:
    dp = _settings(settings, "federation.dp")
    if dp["federation.dp"] == "none":
        dp["federation.dp"] = "client_fixed"  # the server then sees only clipped updates
    return dp


def _dp_sgd(factor: float) -> Callable[[AHMConfig], dict[str, Any]]:
    def overrides(settings: AHMConfig) -> dict[str, Any]:
        dp = _settings(settings, "train.dp_")
        dp["train.dp_noise_multiplier"] *= factor
        return {**dp, "train.dp_sgd": True, "model.norm": "group"}

    return overrides


# The rows of runs trained otherwise (`compared`): an unmasked ArcFace federation (FedAvg) with
# one mechanism of the federated privacy stack, as the attacked run's config trains it with the
# mechanism's `settings` from the config given. dp_sgd_strong: 4 x the noise multiplier.
COMPARED: dict[str, Callable[[AHMConfig], dict[str, Any]]] = {
    "dp_fedavg": _dp_fedavg,
    "dp_sgd": _dp_sgd(1.0),
    "dp_sgd_strong": _dp_sgd(4.0),
    "local_dp": lambda s: {
        **_settings(s, "federation.local_dp"),
        "federation.local_dp": True,
        "federation.screen": False,
    },
    "secagg": lambda s: {**_settings(s, "federation.secagg"), "federation.secagg": True},
}


def compared_config(name: str, run_dir: Path, settings: AHMConfig) -> AHMConfig:
    """The config of row `name` of `COMPARED`: the run in `run_dir`'s, unmasked, with the
    mechanism's settings of `settings`."""
    cfg, _, _ = load_run(run_dir, None)
    unmasked = {"masking.method": "arcface", "federation.strategy": "fedavg"}
    return apply_overrides(cfg, {**COMPARED[name](settings), **unmasked})


def run_threat_model(
    run_dir: str | Path,
    attack_cfg: AHMConfig | None = None,
    log: Log = print,
    compared: dict[str, Path] | None = None,
) -> Path:
    """Attack the finished run in `run_dir` (its attack budget from `attack_cfg.attack` when
    given), and each run of `compared` (row name -> run folder) as a row of its own; writes
    threat_report.md, .json and .csv in `run_dir` and returns the report's path."""
    run_dir = Path(run_dir)
    cfg, saved, summary = load_run(run_dir, attack_cfg)
    device = resolve_device(cfg.train.device)
    data = federated_data(cfg)
    log("threat model: the unmasked ArcFace reference network")
    reference = reference_arcface(cfg, run_dir / REFERENCE, client_epochs(cfg))
    judged = judges(Path(reference["checkpoint"]), cfg, device)
    lpips = LPIPS(calibrated=cfg.attack.lpips_calibrated, device=device)
    shared: dict[Any, Any] = {}  # what every case of the report can reuse
    rows = {}
    for defence in cfg.attack.defences:
        log(f"threat model: {defence}")
        own = defence == cfg.masking.method  # attacked at its run's captured and released model
        defence_cfg = apply_overrides(cfg, {"masking.method": defence})
        case = _case(
            defence_cfg,
            data,
            run_dir,
            saved if own else None,
            summary,
            run_dir / "threat" / defence,
            shared,
            judged.models[OWN],
        )
        rows[defence] = _row(case, judged, lpips, log)
        if own:
            rows[defence] |= trained_figures(summary)
    for name, other_dir in (compared or {}).items():
        log(f"threat model: {name} (the run in {other_dir})")
        other_cfg, other_saved, other_summary = load_run(Path(other_dir), attack_cfg)
        folder = run_dir / "threat" / name
        case = _case(
            other_cfg,
            data,
            Path(other_dir),
            other_saved,
            other_summary,
            folder,
            shared,
            judged.models[OWN],
        )
        rows[name] = _row(case, judged, lpips, log)
        rows[name] |= {"method": other_cfg.masking.method, **trained_figures(other_summary)}
    result = {
        "run": str(run_dir),
        "method": cfg.masking.method,
        "defences": rows,
        "absent_judges": judged.absent,
    }
    return write_report(run_dir / "threat_report.md", _markdown(cfg, result), result)


def _case(
    cfg: AHMConfig,
    data: RunData,
    run_dir: Path,
    saved: dict | None,
    summary: dict,
    folder: Path,
    shared: dict[Any, Any],
    judge: FeatureModel,
) -> Case:
    """The case of one defence. With its trained run (`saved`), the attacker holds the global
    model a captured client started from and the released model; without, the seeded initial
    model (as breaching attacks at initialisation) and no release. `shared`: what every case of
    the report may reuse; `judge` tells the attacks' training when leakage stops rising."""
    holdings: dict[str, Any] = {"shared": shared, "judge": judge}
    if saved is not None:
        records = sorted((run_dir / "captured").glob("round_*/*.pt"))  # a client's, or the mean
        capture = load_checkpoint(records[0]) if records else None
        if capture is not None and capture.get("clients", 1) > 1:  # SecAgg+: what it averaged
            cfg = apply_overrides(cfg, {"attack.gi_clients": int(capture["clients"])})
        holdings["start"] = None if capture is None else _section(capture["global"], "backbone")
        holdings["released"] = _released(cfg, data, run_dir, saved, capture)
    return build_case(
        cfg,
        data.faces,
        data.train,
        data.pairs,
        folder,
        resolve_device(cfg.train.device),
        k_proportions(summary),
        None if saved is None else trained_first_stage(saved["state"]),
        **holdings,
    )


def _section(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of a shared state under `prefix.`, without it."""
    return {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(f"{prefix}.")}


def _row(case: Case, judged: Judges, lpips: LPIPS, log: Log) -> dict[str, Any]:
    """Every registered attack on one case, scored, the worst case over them, and each judge's
    ceiling on the case; under SecAgg+ also gradient inversion against the clients averaged."""
    attacks = attack_case(case, list(ATTACKS), judged, lpips, log)
    row = {
        "ceilings": ceilings(case, judged),
        "attacks": attacks,
        "worst": worst_case(attacks, list(judged.models)),
    }
    if case.cfg.federation.secagg:
        counts = case.cfg.attack.gi_aggregated
        row["aggregated"] = aggregated_inversion(case, counts, judged, lpips, log)
    return row


def _released(
    cfg: AHMConfig, data: RunData, run_dir: Path, saved: dict, capture: dict | None
) -> Released | None:
    """The released global backbone with client 0's ArcFace head and data: the shared global
    head, else client 0's last state on disk; None when neither is found."""
    partitions = int(capture["metrics"].get("num-partitions", 0)) if capture else 0
    if not partitions:
        return None
    client = client_data(cfg, data, 0, partitions)
    head = build_head(cfg.model, client.num_classes)
    shared = _section(saved["state"], "head")
    if shared:
        load_travelled(head, shared)
    else:
        states = sorted(
            (run_dir / "client_state" / "partition_0").glob("round_*.pt"),
            key=lambda p: int(re.findall(r"\d+", p.name)[0]),
        )
        if not states:
            return None
        head.load_state_dict(unpack_state(states[-1].read_bytes())["head"])
    backbone = _section(saved["state"], "backbone")
    return Released(backbone, head, client.items, client.labels)


def _aggregated_sections(rows: dict) -> list[str | Table]:
    """Per SecAgg+ row, gradient inversion of the mean update against the clients averaged."""
    lines: list[str | Table] = []
    for name, row in rows.items():
        if "aggregated" in row:
            heading = f"## `{name}`: gradient inversion of the securely aggregated update"
            lines += aggregated_section(heading, row["aggregated"], list(row["ceilings"]))
    return lines


def _accuracy_cell(cfg: AHMConfig, row: dict) -> str:
    """A trained row's final accuracy ± its fold std and, when the row holds its per-pair
    outcomes (`correct`), the interval clustered by identity of the run's pairs."""
    if "accuracy" not in row:
        return "-"
    cell = f"{fmt(row['accuracy'])} ± {fmt(row['accuracy_std'])}"
    if row.get("correct") is None:
        return cell
    return f"{cell} {cluster_interval(identity_interval(cfg.data, row['correct']))}"


def _markdown(cfg: AHMConfig, result: dict) -> list[str | Table]:
    rows, absent = result["defences"], result["absent_judges"]
    seen = list(next(iter(rows.values()))["ceilings"])  # the judges that judged, own first
    defences = Table(
        [
            "Defence",
            "Accuracy ± std {95%, by identity}",
            "epsilon (mechanism)",
            *[f"Rank-1 ceiling ({j})" for j in seen],
        ],
        [
            [
                name,
                _accuracy_cell(cfg, row),
                epsilons(row),
                *[rate_cell(row["ceilings"][j]) for j in seen],
            ]
            for name, row in rows.items()
        ],
    )
    lines, grids = [], []
    for name, row in rows.items():
        worst = row["worst"]
        lines.append(
            [
                name,
                "worst case",
                "each index at the attack that set it",
                named_cell(worst["a_lpips"], index_cell),
                "-",
                *[named_cell(worst["judges"][j]["a_feat"], index_cell) for j in seen],
                *[named_cell(worst["judges"][j]["rank1"], rate_cell) for j in seen],
            ]
        )
        for attack, scored in row["attacks"].items():
            if "skipped" in scored:
                lines.append(
                    [name, attack, f"not run: {scored['skipped']}", *["-"] * (2 + 2 * len(seen))]
                )
                continue
            judged = scored["judges"]
            lines.append(
                [
                    name,
                    attack,
                    scored["summary"] or "-",
                    index_cell(scored.get("a_lpips")),
                    fmt(scored.get("psnr"), 1),
                    *[index_cell(judged[j].get("a_feat")) for j in seen],
                    *[rate_cell(judged[j].get("rank1")) for j in seen],
                ]
            )
            grids.append(
                f"### {name}: {attack}\n\n![{name} {attack}]"
                f"({Path(scored['grid']).relative_to(result['run'])})\n"
            )
    attacks = Table(
        [
            "Defence",
            "Attack",
            "Its own figures",
            "A_LPIPS [95%] (mean face; gain)",
            "PSNR",
            *[f"A_feat {j} [95%] (mean face; gain)" for j in seen],
            *[f"Rank-1 {j} [95%] (chance)" for j in seen],
        ],
        lines,
        csv="threat_report.csv",
    )
    return [
        f"# Threat report: run of {cfg.masking.method} on {cfg.data.source} faces",
        "",
        "Each attack of the registry against each defence, on the same victims, scored alike: "
        "indices against what the masking saw, with a bootstrap 95% interval over the victims "
        "and, in brackets, the attacker's mean face (an attack that learned nothing) and the "
        "gain over it; rank-1 re-identification against a gallery of other photos of the "
        "victims, with Wilson's interval, in braces its interval clustered by victim identity "
        "(several victims share one), and chance. Larger indices and lower rank-1 mean more "
        "privacy. Judges: `own`, the run's unmasked ArcFace reference network; `dlib`, dlib's "
        "pretrained ResNet face descriptor; a judge's ceiling is its rank-1 on the untouched "
        "victims.",
        *[f"\nThe `{name}` columns are absent: {why}" for name, why in absent.items()],
        "",
        "Attacks (their budgets are the `attack` options of the run's config), and what each "
        "holds:",
        "",
        *[f"- `{name}`: {attack.holds}" for name, attack in ATTACKS.items()],
        "",
        "Accuracy: the final verification accuracy of a trained run, with its 10-fold std and, "
        "in braces, its bootstrap 95% interval clustered by identity (held-out identities "
        "redrawn with every pair between them: pairs share images and identities, which the "
        "folds' spread ignores).",
        *spent_notes(rows),
        "",
        "## Defences",
        "",
        defences,
        "",
        "## Attacks",
        "",
        attacks,
        "",
        *_aggregated_sections(rows),
        "## Attack budgets",
        "",
        "Each learned attack trains once per rung of its budget ladder (CGAN epochs / auxiliary "
        "pairs, doubling, each rung from scratch) until its leakage on auxiliary faces it held "
        "out stops rising beyond noise (paired bootstrap: converged) or its last rung (capped), "
        "and is scored at its most leaking rung.",
        "",
        Table(
            ["Defence", "Attack", "Scored at", "Ladder", "Held-out leakage per rung", "Seconds"],
            [[n, *line] for n, row in rows.items() for line in budget_rows(row["attacks"])],
        ),
        "",
        *[
            f"![{n}: leakage against budget](threat/{n}/ladder.png)\n"
            for n in rows
            if (Path(result["run"]) / "threat" / n / "ladder.png").exists()
        ],
        "## Pictures",
        "",
        *grids,
    ]
