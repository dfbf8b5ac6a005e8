"""A centralized run of one method: data -> identity-disjoint split -> training -> metrics.json.

The hydra entry point `simulations.centralized` is a thin shell around `run_centralized`, which
also runs from a notebook. A run folder holds `checkpoint.pt` (after every epoch, atomically) and
`metrics.json`; started again on the same folder it resumes from the checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from torch import Tensor

from ahm_core.config import METHODS, AHMConfig, to_dict
from ahm_core.data.base import FaceSet
from ahm_core.data.sources import load_faces, relabel, verification_split
from ahm_core.io import atomic_write
from ahm_core.masking import MaskingPipeline, build_masking
from ahm_core.train import Trainer

log = logging.getLogger(__name__)
DP_FIT_IMAGES = 2048


def run_centralized(cfg: AHMConfig, out_dir: str | Path, resume: bool = True) -> dict:
    """Train `cfg.masking.method` on `cfg.data`; write and return the run's metrics."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    faces = load_faces(cfg.data)
    split = verification_split(faces.labels, cfg.data)
    labels, num_classes = relabel(faces.labels[split.train])
    masking = masking_for_run(cfg, faces, split.train)
    steps = len(split.train) // cfg.train.batch_size
    trainer = Trainer(cfg, masking, num_classes, steps)
    checkpoint = out_dir / "checkpoint.pt"
    history: list[dict] = []
    if resume and checkpoint.exists():
        trainer.restore(checkpoint)
        if (out_dir / "metrics.json").exists():
            history = json.loads((out_dir / "metrics.json").read_text())["history"]
        log.info("resumed %s at epoch %d", checkpoint, trainer.epoch)
    start = time.perf_counter()
    while trainer.epoch < cfg.train.epochs:
        epoch = trainer.train_epoch(faces, split.train, labels)
        epoch["verification"] = trainer.verify(faces, split.pairs)
        history.append(epoch)
        trainer.save(checkpoint)
        log.info(
            "epoch %d: loss %.3f, verification %.4f, %.0f images/s",
            epoch["epoch"],
            epoch["loss"],
            epoch["verification"]["accuracy"],
            epoch["images_per_s"],
        )
        _write_metrics(out_dir, cfg, history, checkpoint, time.perf_counter() - start)
    return json.loads((out_dir / "metrics.json").read_text())


def masking_for_run(cfg: AHMConfig, faces: FaceSet, train: Tensor) -> MaskingPipeline:
    """The run's masking pipeline; DP fits its eigenfaces on (up to 2,048) training images."""
    fit = None
    if METHODS[cfg.masking.method].domain == "dp":
        fit = faces.images_uint8(train[:DP_FIT_IMAGES]).float() / 255.0
    return build_masking(cfg, fit_images=fit)


def _write_metrics(
    out_dir: Path, cfg: AHMConfig, history: list[dict], checkpoint: Path, seconds: float
) -> None:
    last = history[-1]
    metrics = {
        "method": cfg.masking.method,
        "verification_accuracy": last["verification"]["accuracy"],
        "verification": last["verification"],
        "checkpoint": str(checkpoint),
        "epochs": len(history),
        "train_seconds_this_session": round(seconds, 1),
        "history": history,
        "config": to_dict(cfg),
    }
    if METHODS[cfg.masking.method].mixing == "adaptive":
        total: dict[str, int] = {}
        for epoch in history:
            for k, count in epoch["k_histogram"].items():
                total[k] = total.get(k, 0) + count
        n = sum(total.values()) or 1
        metrics["k_histogram"] = total
        metrics["k_proportions"] = {k: round(v / n, 4) for k, v in sorted(total.items())}
    text = json.dumps(metrics, indent=2)
    atomic_write(out_dir / "metrics.json", lambda tmp: tmp.write_text(text))
