"""A centralized run of one method: data -> identity-disjoint split -> training -> metrics.json.

The hydra entry point `simulations.centralized` is a thin shell around `run_centralized`, which
also runs from a notebook. A run folder holds `checkpoint.pt` (after every epoch, atomically,
with the history) and `metrics.json` (written from that history); started again on the same
folder it resumes from the checkpoint under the same config.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr
from torch import Tensor

from ahm_core.checkpoints import records
from ahm_core.config import AHMConfig, ConfigError, to_dict
from ahm_core.data.base import FaceSet
from ahm_core.data.benchmarks import load_benchmarks
from ahm_core.data.sources import run_data
from ahm_core.evaluate import benchmark_line
from ahm_core.io import atomic_write
from ahm_core.masking import MaskingPipeline
from ahm_core.masking.methods import METHODS
from ahm_core.masking.pipeline import masking_for_run
from ahm_core.plots import save_k_shares, save_scatter
from ahm_core.runs import count_ks, shares
from ahm_core.train import Trainer

log = logging.getLogger(__name__)
MARKED_EPOCHS = 20  # the k-dynamics plot marks epoch boundaries in runs of fewer epochs
CONDITIONED_FACES = 1024  # training faces on which a per-face policy's choices are shown


def run_centralized(cfg: AHMConfig, out_dir: str | Path, resume: bool = True) -> dict:
    """Train `cfg.masking.method` on `cfg.data`; write and return the run's metrics.

    Resumed, the run continues only under the checkpoint's config (RESUMABLE options aside),
    and metrics.json is rewritten from the history the checkpoint carries, so the two agree.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = out_dir / "checkpoint.pt"
    data = run_data(cfg.data)
    steps = len(data.train) // cfg.train.batch_size
    if steps == 0:
        raise ConfigError(
            f"train.batch_size: {cfg.train.batch_size} is more than the {len(data.train)} "
            "training images, so an epoch has no step"
        )
    masking = masking_for_run(cfg, data.faces, data.train)
    benchmarks = load_benchmarks(cfg.data)
    trainer = Trainer(cfg, masking, data.num_classes, steps)
    history: list[dict] = []
    metrics: dict | None = None
    start = time.perf_counter()
    if resume and checkpoint.exists():
        saved = trainer.restore(checkpoint, ("history",))
        history = records(str(checkpoint), "history", saved["history"], "epoch", trainer.epoch)
        log.info("resumed %s at epoch %d", checkpoint, trainer.epoch)
    while trainer.epoch < cfg.train.epochs:
        epoch = trainer.train_epoch(data.faces, data.train, data.labels)
        epoch["verification"] = trainer.verify(data.faces, data.pairs)
        epoch["benchmarks"] = {b.name: trainer.verify(b.faces, b.pairs) for b in benchmarks}
        history.append(epoch)
        trainer.save(checkpoint, history=history)
        log.info(
            "epoch %d: loss %.3f, verification %.4f, %.0f images/s",
            epoch["epoch"],
            epoch["loss"],
            epoch["verification"]["accuracy"],
            epoch["images_per_s"],
        )
        for name, report in epoch["benchmarks"].items():
            log.info("epoch %d: %s %s", epoch["epoch"], name, benchmark_line(report))
        metrics = _write_metrics(
            out_dir, cfg, masking, history, checkpoint, time.perf_counter() - start
        )
    if metrics is None:  # a finished run resumed: metrics.json rebuilt from the checkpoint
        metrics = _write_metrics(
            out_dir, cfg, masking, history, checkpoint, time.perf_counter() - start
        )
    if trainer.policy is not None and trainer.policy.per_image:
        metrics["k_conditioning"] = k_conditioning(trainer, data.faces, data.train, data.labels)
        metrics["k_conditioning"]["plot"] = str(
            save_k_conditioning(out_dir / "k_conditioning.png", cfg, metrics["k_conditioning"])
        )
        text = json.dumps(metrics, indent=2)
        atomic_write(out_dir / "metrics.json", lambda tmp: tmp.write_text(text))
    return metrics


@torch.no_grad()
def k_conditioning(trainer: Trainer, faces: FaceSet, items: Tensor, labels: Tensor) -> dict:
    """What a per-face policy conditions on: for up to `CONDITIONED_FACES` training faces, in
    whole training batches (its BatchNorm normalises over the batch), the expected k of each
    face's PMF against the trained recogniser's confidence on the unmixed masked face (the cosine
    to its own class centre), with Spearman's rank correlation and its p-value."""
    size = trainer.cfg.train.batch_size
    n = min(len(items), CONDITIONED_FACES) // size * size
    generator = torch.Generator().manual_seed(trainer.cfg.train.seed)  # the masking's noise
    k_values = torch.tensor(trainer.policy.k_set, dtype=torch.float32)
    trainer.backbone.eval()
    expected, confidence = [], []
    for start in range(0, n, size):
        batch = items[start : start + size]
        images = faces.images_uint8(batch).to(trainer.device).float().div_(255.0)
        x = trainer.masking.encode(images, generator)
        expected.append(trainer.policy.pmf(x).cpu() @ k_values)
        with trainer.autocast():
            cosine = trainer.head.cosine(trainer.backbone(trainer.layout(x)))
        own = labels[start : start + size].to(trainer.device)[:, None]
        confidence.append(cosine.gather(1, own)[:, 0].float().cpu())
    ks, conf = torch.cat(expected), torch.cat(confidence)
    rho, p = spearmanr(conf.numpy(), ks.numpy()) if n > 2 else (float("nan"), float("nan"))
    return {
        "faces": n,
        "spearman": round(float(rho), 4),
        "spearman_p": float(p),
        "expected_k": [round(float(k), 4) for k in ks],
        "confidence": [round(float(c), 4) for c in conf],
    }


def save_k_conditioning(path: Path, cfg: AHMConfig, found: dict) -> Path:
    """The per-face policy's expected k against the recogniser's confidence, one dot a face."""
    title = (
        f"per-face policy ({cfg.policy.reward}): Spearman {found['spearman']:+.3f} "
        f"(p {found['spearman_p']:.2g}, {found['faces']} training faces)"
    )
    return save_scatter(
        path,
        found["confidence"],
        found["expected_k"],
        "recogniser's cosine to the face's own class (unmixed, masked)",
        "expected k of the face's PMF",
        title,
    )


def _write_metrics(
    out_dir: Path,
    cfg: AHMConfig,
    masking: MaskingPipeline,
    history: list[dict],
    checkpoint: Path,
    seconds: float,
) -> dict:
    """metrics.json from the run's history (the checkpoint's), written atomically; returned."""
    last = history[-1]
    metrics = {
        "method": cfg.masking.method,
        "verification_accuracy": last["verification"]["accuracy"],
        "verification": last["verification"],
        "benchmarks": last.get("benchmarks", {}),
        "checkpoint": str(checkpoint),
        "epochs": len(history),
        "train_seconds_this_session": round(seconds, 1),
        "history": history,
        "config": to_dict(cfg),
    }
    if learnt := masking.first_stage.describe(out_dir):
        metrics["first_stage"] = learnt
    if "dp_sgd" in last:  # what DP-SGD had spent by the last epoch
        metrics["dp_sgd"] = last["dp_sgd"]
    if METHODS[cfg.masking.method].batch_mix == "adaptive":
        total = count_ks(epoch["k_histogram"] for epoch in history)
        metrics["k_histogram"] = total
        metrics["k_proportions"] = shares(total)
        metrics["k_proportions_final_epoch"] = shares(last["k_histogram"])
        metrics["policy_updates"] = sum(epoch["policy_updates"] for epoch in history)
        metrics["k_dynamics"] = str(save_k_dynamics(out_dir / "k_dynamics.png", cfg, history))
    text = json.dumps(metrics, indent=2)
    atomic_write(out_dir / "metrics.json", lambda tmp: tmp.write_text(text))
    return json.loads(text)


def save_k_dynamics(path: Path, cfg: AHMConfig, history: list[dict]) -> Path:
    """The policy's PMF at every update of the run, as k shares over training (epochs dotted)."""
    pmfs = [pmf for epoch in history for pmf in epoch.get("pmfs", [])]
    marks = list(itertools.accumulate(len(epoch.get("pmfs", [])) for epoch in history))[:-1]
    marks = marks if len(marks) < MARKED_EPOCHS else []  # past that, lines would hide the areas
    reward = f"reward {cfg.policy.reward}, {len(pmfs)} PMFs, lr {cfg.policy.lr:g}"
    return save_k_shares(
        path, cfg.policy.k_set, pmfs, "policy update", f"PMF over k ({reward})", marks
    )
