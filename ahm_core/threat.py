"""The threat report of a finished federated run: every adversary of DESIGN section 4, run for real,
against each defence of `attack.defences` on the same victims (`threat_report.md`).

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
Identity leakage and feature indices use the run's unmasked ArcFace reference network.

Runs trained otherwise enter the report as rows of their own (`compared`): the DP-FedAvg row is
an unmasked ArcFace federation trained with DP-FedAvg (`dp_fedavg_config`), attacked the same way
at its own captured global model and released model, beside its accuracy and (epsilon, delta).
Every row with a trained run carries that run's final verification accuracy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ahm_core.attacks.cgan import attack_data
from ahm_core.attacks.demix import demix, invert_ppfr, recovery_report, remove_plane
from ahm_core.attacks.gradient_inversion import (
    InversionOptions,
    TrainingLoss,
    invert_gradients,
    match_and_score,
    simulate_update,
)
from ahm_core.attacks.model_inversion import (
    GMIOptions,
    attack_report,
    invert_identities,
    train_evaluator,
    train_prior,
    white_box_logits,
)
from ahm_core.config import AHMConfig, apply_overrides, from_dict, to_flat
from ahm_core.data.sources import relabel
from ahm_core.experiment import masking_for_run
from ahm_core.federated import FederatedData, client_data, federated_data, unpack_state
from ahm_core.io import atomic_write, load_checkpoint
from ahm_core.masking import MaskingPipeline
from ahm_core.masking.mixup import mixup
from ahm_core.masking.pipeline import to_gray
from ahm_core.metrics import LPIPS, attack_effect, identity_leakage
from ahm_core.models import build_backbone, build_head
from ahm_core.paper import feature_model, fmt, md_table, reference_arcface, train_cgan
from ahm_core.plots import save_grid
from ahm_core.report import EVALUATOR, client_epochs, k_proportions
from ahm_core.train import resolve_device

Log = Callable[[str], None]


DP_FEDAVG = "dp_fedavg"  # the row of an unmasked ArcFace federation trained with DP-FedAvg


def dp_fedavg_config(run_dir: Path, settings: AHMConfig) -> AHMConfig:
    """The DP-FedAvg row's run: the config of the run in `run_dir` unmasked (ArcFace), with the
    `federation.dp*` settings of `settings`; federation.dp as set there, or client-side fixed
    clipping (the server then sees only clipped updates)."""
    cfg, _, _ = _load_run(run_dir, None)
    dp = {k: v for k, v in to_flat(settings).items() if k.startswith("federation.dp")}
    if dp["federation.dp"] == "none":
        dp["federation.dp"] = "client_fixed"
    return apply_overrides(
        cfg, {**dp, "masking.method": "arcface", "federation.strategy": "fedavg"}
    )


def _load_run(run_dir: Path, attack_cfg: AHMConfig | None) -> tuple[AHMConfig, dict, dict]:
    """A finished run's config (with `attack_cfg`'s attack budget), checkpoint and rounds.json."""
    saved = load_checkpoint(run_dir / "checkpoint.pt", required=("config", "state"))
    cfg = from_dict(saved["config"])
    if attack_cfg is not None:
        budget = {k: v for k, v in to_flat(attack_cfg).items() if k.startswith("attack.")}
        cfg = apply_overrides(cfg, budget)
    return cfg, saved, json.loads((run_dir / "rounds.json").read_text())


def _trained(summary: dict) -> dict[str, Any]:
    """A trained run's figures for its row: final accuracy with its 10-fold std, and the
    DP-FedAvg budget spent when it had one."""
    last = summary["rounds"][-1]
    figures = {
        "accuracy": summary["final_accuracy"],
        "accuracy_std": last["verification"]["accuracy_std"],
    }
    if "dp" in last:
        figures["dp"] = {k: last["dp"][k] for k in ("epsilon", "delta", "noise_multiplier")}
        figures["dp"]["clipping_norm"] = last["dp"]["clipping_norm"]
    return figures


def run_threat_model(
    run_dir: str | Path,
    attack_cfg: AHMConfig | None = None,
    log: Log = print,
    compared: dict[str, Path] | None = None,
) -> Path:
    """Attack the finished run in `run_dir` (its attack budget from `attack_cfg.attack` when
    given), and each run of `compared` (row name -> run folder) as a row of its own; writes
    threat_report.md and threat_report.json in `run_dir` and returns the report's path."""
    run_dir = Path(run_dir)
    cfg, saved, summary = _load_run(run_dir, attack_cfg)
    device = resolve_device(cfg.train.device)
    data = federated_data(cfg)
    log("threat model: the unmasked ArcFace reference network")
    reference = reference_arcface(cfg, run_dir / EVALUATOR, client_epochs(cfg))
    feature = feature_model(Path(reference["checkpoint"]), cfg, device)
    lpips = LPIPS(calibrated=cfg.attack.lpips_calibrated, device=device)
    context = _Context(cfg, data, run_dir, saved, summary, feature, lpips, device)
    rows = {}
    for defence in cfg.attack.defences:
        log(f"threat model: {defence}")
        rows[defence] = _defence_row(context, defence, log)
    if cfg.masking.method in rows:
        rows[cfg.masking.method] |= _trained(summary)
    for name, other_dir in (compared or {}).items():
        log(f"threat model: {name} (the run in {other_dir})")
        other_cfg, other_saved, other_summary = _load_run(Path(other_dir), attack_cfg)
        other = _Context(
            other_cfg,
            data,
            Path(other_dir),
            other_saved,
            other_summary,
            feature,
            lpips,
            device,
            context.shared,
        )
        rows[name] = _defence_row(other, other_cfg.masking.method, log, run_dir / "threat" / name)
        rows[name] |= {"method": other_cfg.masking.method, **_trained(other_summary)}
    result = {"run": str(run_dir), "method": cfg.masking.method, "defences": rows}
    text = json.dumps(result, indent=2)
    atomic_write(run_dir / "threat_report.json", lambda tmp: tmp.write_text(text))
    markdown = _markdown(cfg, result)
    return atomic_write(run_dir / "threat_report.md", lambda tmp: tmp.write_text(markdown))


def _section(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of a shared state under `prefix.`, without it."""
    return {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(f"{prefix}.")}


class _Context:
    """What every attack of one report shares."""

    def __init__(
        self,
        cfg: AHMConfig,
        data: FederatedData,
        run_dir: Path,
        saved: dict,
        summary: dict,
        feature: Callable[[Tensor], Tensor],
        lpips: LPIPS,
        device: torch.device,
        shared: dict | None = None,
    ) -> None:
        self.cfg, self.data, self.run_dir, self.saved = cfg, data, run_dir, saved
        self.feature, self.lpips, self.device = feature, lpips, device
        self.shared = {} if shared is None else shared  # what every run of a report can reuse
        self.proportions = {int(k): v for k, v in (k_proportions(summary) or {}).items()}
        g = torch.Generator().manual_seed(cfg.train.seed)
        train = data.train[torch.randperm(len(data.train), generator=g)]
        need = max(cfg.attack.gi_batch, cfg.attack.demix_images)
        self.victims, self.gallery = train[:need], train[need:]
        held = torch.cat([data.pairs.left, data.pairs.right]).unique()
        aux = held[torch.randperm(len(held), generator=g)][: cfg.attack.aux_images]
        # Loaded once: every defence's attacks use the same auxiliary and gallery faces.
        self.aux_images, self.gallery_images = self.images(aux), self.images(self.gallery)
        records = sorted((run_dir / "captured").glob("round_*/partition_*.pt"))
        self.capture = load_checkpoint(records[0]) if records else None

    def images(self, items: Tensor) -> Tensor:
        return self.data.faces.images_uint8(items).float() / 255.0

    def captured_global(self) -> dict[str, Tensor] | None:
        """The global model of the first captured update (what the server saw a client start
        from), else None."""
        return None if self.capture is None else self.capture["global"]


def _defence_row(ctx: _Context, defence: str, log: Log, folder: Path | None = None) -> dict:
    cfg = apply_overrides(ctx.cfg, {"masking.method": defence})
    pipeline = masking_for_run(cfg, ctx.data.faces, ctx.data.train)
    folder = folder or ctx.run_dir / "threat" / defence
    row = {"gradient_inversion": _gradient_inversion(ctx, cfg, pipeline, folder)}
    if pipeline.mixing is not None:
        log(f"threat model: {defence}: demixing")
        row["demix"] = _demix(ctx, cfg, pipeline)
    if defence == ctx.cfg.masking.method:
        log(f"threat model: {defence}: model inversion of the released model")
        row["model_inversion"] = _model_inversion(ctx, cfg, pipeline)
    return row


def _network(
    cfg: AHMConfig, pipeline: MaskingPipeline, classes: int, state: dict[str, Tensor] | None
) -> nn.Module:
    """Backbone (from the shared `state` when given, else seeded) and a seeded head, in train
    mode as the client trains, dropout off (its draws cannot be replayed)."""
    torch.manual_seed(cfg.train.seed)
    backbone = build_backbone(cfg.model, pipeline.in_channels, cfg.data.image_size)
    if state is not None:
        backbone.load_state_dict(_section(state, "backbone"))
    net = TrainingLoss(backbone, build_head(cfg.model, classes)).train()
    for module in net.modules():
        if isinstance(module, nn.Dropout):
            module.eval()
    return net


def _gradient_inversion(
    ctx: _Context, cfg: AHMConfig, pipeline: MaskingPipeline, folder: Path
) -> dict:
    """Invert a client's update on masked, mixed faces, then turn the result into faces."""
    a = cfg.attack
    g = torch.Generator().manual_seed(cfg.train.seed)
    items = ctx.victims[: a.gi_batch]
    faces = ctx.images(items)
    labels, classes = relabel(ctx.data.faces.labels[items])
    adaptive = pipeline.mixing == "adaptive"
    proportions = None
    if adaptive:  # the policy's measured shares, over the k a batch of gi_batch can mix
        shares = ctx.proportions or dict.fromkeys(cfg.policy.k_set, 1.0)
        proportions = {k: v for k, v in shares.items() if k <= a.gi_batch} or {2: 1.0}
    aux_set, victim_set = attack_data(
        pipeline, ctx.aux_images, faces, ctx.data.faces.labels[items], proportions, g
    )
    masked = victim_set.masked.to(ctx.device)
    # The client's batch: the same mix, with the labels and coefficients its loss used.
    mixed_labels, coefs = labels[victim_set.index], victim_set.coefs
    # The run's own defence is attacked at the global model a captured client started from.
    own = cfg.masking.method == ctx.cfg.masking.method
    captured = ctx.captured_global() if own else None
    net = _network(cfg, pipeline, classes, captured).to(ctx.device)
    options = InversionOptions(
        iterations=a.gi_iterations,
        restarts=a.gi_restarts,
        local_steps=a.gi_local_steps,
        local_lr=cfg.train.lr,
        seed=cfg.train.seed,
        objective=a.gi_objective,
        # The valid range of what the client trains on, as the attacker's own masked faces span it
        bounds=(float(aux_set.masked.min()), float(aux_set.masked.max())),
    )
    update = simulate_update(net, masked, mixed_labels, coefs, options)
    recovered = invert_gradients(net, update, tuple(masked.shape), mixed_labels, coefs, options)
    score = match_and_score(recovered.x, masked)
    matched = recovered.x[score["order"]].detach().cpu()
    originals = victim_set.targets
    if pipeline.domain == "rgb" and pipeline.mixing is None:  # the input is the face: render it
        chained, direct = pipeline.render(matched), originals
    else:
        cgan = train_cgan(cfg, pipeline, aux_set, ctx.device)
        chained, direct = cgan.reconstruct(matched), cgan.reconstruct(victim_set.masked)
    keep = torch.isin(victim_set.labels, ctx.data.faces.labels[ctx.gallery])
    # Scored against what the masking saw (grey for the frequency-domain and DP defences).
    gallery = pipeline.seen(ctx.gallery_images)
    gallery_labels = ctx.data.faces.labels[ctx.gallery]

    def leakage(reconstructions: Tensor) -> dict[str, Any]:
        seen = pipeline.seen(reconstructions[keep])
        return identity_leakage(seen, victim_set.labels[keep], gallery, gallery_labels, ctx.feature)

    chain, perfect = leakage(chained), leakage(direct)
    save_grid(
        [originals, pipeline.render(victim_set.masked), pipeline.render(matched), chained],
        folder / "gradient_inversion.png",
        ["original", "masked input", "recovered input", "recovered face"],
    )
    return {
        "cosine": float(score["cosine"].mean()),
        "psnr": float(score["psnr"].mean()),
        "chain_rank1": chain["rank1"],
        "chain_rank1_ci95": chain["rank1_ci95"],
        "chance": chain["chance"],
        "perfect_inversion_rank1": perfect["rank1"],
        **attack_effect(pipeline.seen(originals), pipeline.seen(chained), ctx.lpips, ctx.feature),
        "grid": str(folder / "gradient_inversion.png"),
        "model": "initial" if captured is None else "captured global",
    }


def _demix(ctx: _Context, cfg: AHMConfig, pipeline: MaskingPipeline) -> dict:
    """Mix private images into 2-mixes, demix them, invert PPFR-FD with the keys."""
    a = cfg.attack
    g = torch.Generator().manual_seed(cfg.train.seed)
    faces = ctx.images(ctx.victims[: a.demix_images])
    encoded = pipeline.encode(faces, g)
    ids = torch.arange(len(encoded))
    mixes = [mixup(encoded, ids, 2, cfg.mixup.max_coef, g).x for _ in range(a.demix_rounds)]
    result = demix(torch.cat(mixes), 2)
    recovered = result.components.reshape(-1, *encoded.shape[1:])
    components = recovery_report(recovered, encoded)
    row = {
        "images": a.demix_images,
        "components_recovered": components["recovered"],
        "mean_similarity": components["mean_similarity"],
    }
    if pipeline.ppfr is not None and pipeline.ppfr.key_mode == "fixed":
        keys = pipeline.ppfr.keys(len(recovered))
        inverted = invert_ppfr(recovered, pipeline.ppfr, keys)
        truth = remove_plane(to_gray(faces))
        row["faces_recovered"] = recovery_report(inverted, truth)["recovered"]
    return row


def _model_inversion(ctx: _Context, cfg: AHMConfig, pipeline: MaskingPipeline) -> dict:
    """GMI against the released model: the global backbone with client 0's head."""
    released = _client_head(ctx, cfg)
    if released is None:
        return {"skipped": "no head of client 0 (client state on disk, or a shared head) found"}
    head, client = released
    a = cfg.attack
    torch.manual_seed(cfg.train.seed)
    backbone = build_backbone(cfg.model, pipeline.in_channels, cfg.data.image_size)
    backbone.load_state_dict(_section(ctx.saved["state"], "backbone"))
    options = GMIOptions(
        image_size=cfg.data.image_size,
        gan_epochs=a.gmi_gan_epochs,
        iterations=a.gmi_iterations,
        restarts=a.gmi_restarts,
        ngf=a.ngf,
        ndf=a.ndf,
        seed=cfg.train.seed,
    )
    # The prior (auxiliary faces) and the judge (client 0's faces) depend on no trained model:
    # every run of one report shares them.
    key = (options, tuple(client.items.tolist()))
    if key not in ctx.shared:
        private = ctx.images(client.items).to(ctx.device)
        ctx.shared[key] = (
            train_prior(ctx.aux_images.to(ctx.device), options),
            train_evaluator(private, client.labels.to(ctx.device), options),
            private,
        )
    prior, evaluator, private = ctx.shared[key]
    logits = white_box_logits(backbone.to(ctx.device), head.to(ctx.device), pipeline)
    targets = torch.arange(min(a.gmi_targets, client.num_classes))
    faces, labels = invert_identities(prior, logits, targets, options)
    return attack_report(faces, labels, evaluator, private, client.labels)


def _client_head(ctx: _Context, cfg: AHMConfig) -> tuple[nn.Module, Any] | None:
    """Client 0's ArcFace head and data, from its state on disk (or the shared global head)."""
    partitions = int(ctx.capture["metrics"].get("num-partitions", 0)) if ctx.capture else 0
    if not partitions:
        return None
    client = client_data(cfg, ctx.data, 0, partitions)
    head = build_head(cfg.model, client.num_classes)
    shared = _section(ctx.saved["state"], "head")
    if shared:
        head.load_state_dict(shared)
        return head, client
    states = sorted(
        (ctx.run_dir / "client_state" / "partition_0").glob("round_*.pt"),
        key=lambda p: int(re.findall(r"\d+", p.name)[0]),
    )
    if not states:
        return None
    head.load_state_dict(unpack_state(states[-1].read_bytes())["head"])
    return head, client


def _compared_notes(rows: dict) -> list[str]:
    """One line per DP-trained row: what it is and the budget it spent."""
    notes = []
    for name, row in rows.items():
        if "dp" in row:
            dp = row["dp"]
            notes.append(
                f"`{name}`: {row['method']} trained with DP-FedAvg, noise multiplier "
                f"{dp['noise_multiplier']}, clipping norm {fmt(dp['clipping_norm'])}: "
                f"({fmt(dp['epsilon'], 2)}, {dp['delta']:g})-DP (Opacus RDP accountant). The "
                "noise is added to the aggregate, so a curious server still sees each client's "
                "clipped update."
            )
    return ["", *notes] if notes else []


def _markdown(cfg: AHMConfig, result: dict) -> str:
    rows, gi_rows, grids = result["defences"], [], []
    for defence, row in rows.items():
        gi = row["gradient_inversion"]
        d = row.get("demix", {})
        mi = row.get("model_inversion", {})
        gi_rows.append(
            [
                defence,
                fmt(gi["cosine"]),
                fmt(gi["psnr"], 1),
                f"{fmt(gi['chain_rank1'])} ({fmt(gi['perfect_inversion_rank1'])})",
                fmt(gi["chance"]),
                fmt(gi["a_feat"]),
                f"{d['components_recovered']}/{d['images']}" if d else "-",
                f"{d['faces_recovered']}/{d['images']}" if "faces_recovered" in d else "-",
                f"{fmt(mi['top1'])} / {fmt(mi['top5'])}" if "top1" in mi else "-",
                f"{fmt(row['accuracy'])} ± {fmt(row['accuracy_std'])}"
                if "accuracy" in row
                else "-",
                fmt(row["dp"]["epsilon"], 2) if "dp" in row else "-",
            ]
        )
        grids.append(
            f"### {defence}\n\n![{defence}]({Path(gi['grid']).relative_to(result['run'])})\n"
        )
    header = [
        "Defence",
        "GI cosine",
        "GI PSNR",
        "Chain rank-1 (perfect inversion)",
        "Chance",
        "Chain A_feat",
        "Demixed components",
        "Demixed faces",
        "GMI top-1 / top-5",
        "Accuracy ± std",
        "DP epsilon",
    ]
    return "\n".join(
        [
            f"# Threat report: run of {cfg.masking.method} on {cfg.data.source} faces",
            "",
            "Gradient inversion (GI) of a client's update on "
            f"{cfg.attack.gi_batch} masked, mixed images ({cfg.attack.gi_local_steps} local "
            "step(s)); cosine and PSNR against the true masked inputs after matching. The chain "
            "maps the recovered inputs to faces with the defence's CGAN; rank-1 is the share of "
            "victims it re-identifies (in brackets, the CGAN on the true masked inputs: a perfect "
            "inversion). Demixing: private images recovered above 0.9 correlation from "
            f"{cfg.attack.demix_rounds} 2-mixes each, in the masked domain and, with the keys, as "
            "faces. GMI: model inversion of the released model (the run's defence only), "
            "accuracy by an independent classifier. Larger A_feat and lower rank-1 mean more "
            "privacy. Accuracy: final verification accuracy of a trained run, with its 10-fold "
            "std (the run's own defence and the compared runs; the others are attacked at the "
            "initial model and have none).",
            *_compared_notes(rows),
            "",
            md_table(header, gi_rows),
            "",
            "## Gradient inversion (original / masked input / recovered input / recovered face)",
            "",
            *grids,
        ]
    )
