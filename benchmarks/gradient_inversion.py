"""Gradient inversion against breaching's inverting-gradients attacker, on the same gradient.

For each batch size (1, 4 and 8 images) and seed (0-2), one FedSGD gradient of the default small
IR-SE with the MixUp-ArcFace head over 100 identities, on 32 px synthetic faces in [-1, 1] (the
project's normalisation: mean 0.5 and std 0.5 per channel), labels known. Both attackers invert
that one gradient in the same run, at the same iterations and restarts, boxed to [-1, 1]:

- ours: `invert_gradients` with the defaults of `InversionOptions` (the blend of the global and
  per-layer cosine distances, total variation 0.5, cosine step decay, boxed);
- breaching's `OptimizationBasedAttacker` with its `invertinggradients` configuration (one global
  cosine, total variation 0.2, Adam on signed gradients, step decay, boxed), wired to this model:
  the model returns the head's cosine logits, the loss applies the ArcFace margin and scale of
  the same head, and the data's mean and std are (0.5, 0.5, 0.5).

Each reconstruction is matched to the true batch (Hungarian on cosine) and scored by cosine and
PSNR (`match_and_score`); the ratio is ours / breaching's. A summary line per batch size gives
the means over seeds. Deterministic on the CPU: every draw is seeded (faces, network, both
attackers' starts) and it runs on one thread. Breaching is optional, the `peer` extra:

    .venv/bin/pip install --no-deps breaching==0.1.2   # its requirements are ours already
    .venv/bin/python benchmarks/gradient_inversion.py [--iterations 600] [--restarts 1]
        [--images 1,4,8] [--seeds 0,1,2]

Without breaching it says so in one line and runs ours only. A 600-iteration inversion takes
about 45 s (1 image) to 95 s (8 images) on one core, each attacker.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import logging
import time
import warnings
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn

from ahm_core.attacks.gradient_inversion import (
    InversionOptions,
    TrainingLoss,
    Update,
    invert_gradients,
    match_and_score,
    simulate_update,
)
from ahm_core.config import AHMConfig, apply_overrides
from ahm_core.data.synthetic import SynthFaces
from ahm_core.models import build_backbone, build_head
from ahm_core.models.heads import MixUpArcFace

SIZE = 32
MEAN = STD = (0.5, 0.5, 0.5)  # x = (image - 0.5) / 0.5, the RGB first stage's [-1, 1]
BOX = ((0.0 - MEAN[0]) / STD[0], (1.0 - MEAN[0]) / STD[0])


@dataclass(frozen=True)
class Case:
    """One client's batch, the network it trained and the gradient it shared."""

    x: Tensor
    labels: Tensor  # [B], distinct and sorted
    net: TrainingLoss
    update: Update


@dataclass(frozen=True)
class Score:
    """Mean cosine and PSNR of the matched reconstruction, and the attack's seconds."""

    cosine: float
    psnr: float
    seconds: float


def network(images: int, seed: int) -> TrainingLoss:
    """The default small IR-SE and MixUp-ArcFace head at 32 px, seeded, dropout removed; in
    train mode as a client trains, but for one image in eval mode (BatchNorm1d cannot train on
    one sample)."""
    cfg = apply_overrides(AHMConfig(), {"data.image_size": SIZE})
    torch.manual_seed(seed)
    backbone = build_backbone(cfg.model, 3, SIZE)
    net = TrainingLoss(backbone, build_head(cfg.model, cfg.data.num_identities))
    for parent in list(net.modules()):  # breaching re-enters train mode: no dropout to re-enable
        for name, child in parent.named_children():
            if isinstance(child, nn.Dropout):
                setattr(parent, name, nn.Identity())
    return net.train(images > 1)


def make_case(images: int, seed: int) -> Case:
    """`images` synthetic faces of distinct identities and their FedSGD gradient."""
    faces = SynthFaces(num_identities=images, images_per_identity=1, size=SIZE, seed=seed)
    x = (faces.images_uint8(range(images)).float() / 255 - MEAN[0]) / STD[0]
    labels = torch.arange(images)
    net = network(images, seed)
    update = simulate_update(net, x, labels[:, None], torch.ones(images, 1))
    return Case(x, labels, net, update)


def run_ours(case: Case, options: InversionOptions) -> Score:
    """The project's attack with `options`, boxed to the valid range."""
    start = time.perf_counter()
    shape, labels = tuple(case.x.shape), case.labels[:, None]
    coefs = torch.ones(len(case.labels), 1)
    result = invert_gradients(case.net, case.update, shape, labels, coefs, options)
    return _score(result.x, case.x, time.perf_counter() - start)


class CosineLogits(nn.Module):
    """Breaching's view of the network: input -> the head's cosine logits [B, classes]. It holds
    the same modules, so its parameters are the network's, in the same order."""

    def __init__(self, net: TrainingLoss) -> None:
        super().__init__()
        self.backbone, self.head = net.backbone, net.head

    def forward(self, x: Tensor) -> Tensor:
        return self.head.cosine(self.backbone(x))


class MarginLoss(nn.Module):
    """The ArcFace loss on cosine logits: the head's margin on each label's cosine, its scale,
    the mean cross-entropy; with `CosineLogits`, the same loss as `TrainingLoss` for k = 1."""

    def __init__(self, head: MixUpArcFace) -> None:
        super().__init__()
        self.head = head  # only its margin and scale are used: breaching's copy of it is inert

    def forward(self, cos: Tensor, labels: Tensor) -> Tensor:
        target = cos.gather(1, labels[:, None])
        margin = self.head._margin(target)  # cos(theta + m), the head's own, in one place
        shifted = cos.scatter_add(1, labels[:, None], margin - target)
        return F.cross_entropy(shifted * self.head.scale, labels)


def breaching_inputs(case: Case) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The server payload and the shared data breaching's attackers take for this case.

    Buffers are shared only in eval mode (one image), so that breaching runs the model as the
    client did: in eval mode with the running statistics, or in train mode on batch statistics.
    """
    model = CosineLogits(case.net)
    buffers = None if case.net.training else [b.detach() for b in model.buffers()]
    names = [name for name, _ in case.net.named_parameters()]
    metadata = OmegaConf.create(
        {"modality": "vision", "shape": list(case.x.shape[1:]), "mean": MEAN, "std": STD}
    )
    payload = {
        "parameters": [p.detach() for p in model.parameters()],
        "buffers": buffers,
        "metadata": metadata,
    }
    shared = {
        "gradients": [case.update[name] for name in names],
        "buffers": None,
        "metadata": {
            "num_data_points": len(case.labels),
            "labels": case.labels.clone(),
            "local_hyperparams": None,
        },
    }
    return [payload], [shared]


def breaching_attacker(case: Case, iterations: int, restarts: int) -> Any:
    """Breaching's `OptimizationBasedAttacker` in its invertinggradients configuration at this
    budget, on the network's cosine logits with the margin loss."""
    breaching = _import_breaching()
    overrides = [
        f"optim.max_iterations={iterations}",
        f"restarts.num_trials={restarts}",
        f"optim.callback={iterations}",  # its progress log: first and last iteration only
    ]
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hydra's version_base notice
        cfg = breaching.get_attack_config("invertinggradients", overrides=overrides)
    model, loss = CosineLogits(case.net), MarginLoss(case.net.head)
    return breaching.attacks.prepare_attack(model, loss, cfg)


def run_breaching(case: Case, iterations: int, restarts: int, seed: int) -> Score:
    """Breaching's invertinggradients attacker at the same budget on the same gradient."""
    attacker = breaching_attacker(case, iterations, restarts)
    payload, shared = breaching_inputs(case)
    torch.manual_seed(seed)  # breaching draws its starts from the global generator
    start = time.perf_counter()
    reconstructed, _ = attacker.reconstruct(payload, shared, {}, dryrun=False)
    return _score(reconstructed["data"], case.x, time.perf_counter() - start)


def _import_breaching() -> Any:
    """breaching, imported quietly (it scripts a function at import, which torch deprecates)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import breaching
    logging.getLogger("breaching").setLevel(logging.WARNING)
    return breaching


def _score(reconstructed: Tensor, truth: Tensor, seconds: float) -> Score:
    score = match_and_score(reconstructed.detach(), truth)
    return Score(float(score["cosine"].mean()), float(score["psnr"].mean()), seconds)


def has_breaching() -> bool:
    """Whether breaching is importable (the `peer` extra)."""
    return importlib.util.find_spec("breaching") is not None


def _ints(text: str) -> list[int]:
    return [int(n) for n in text.split(",")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--restarts", type=int, default=1)
    parser.add_argument("--images", type=_ints, default=[1, 4, 8], help="batch sizes, e.g. 1,4")
    parser.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="seeds, e.g. 0,1")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    peer = has_breaching()
    if not peer:
        print("breaching is not installed (pip install --no-deps breaching==0.1.2): ours only")
    print(f"one FedSGD gradient, {args.iterations} iterations, {args.restarts} restart(s)")
    print(
        "| images | seed | ours: cosine | ours: PSNR (dB) | breaching: cosine "
        "| breaching: PSNR (dB) | ratio: cosine | ratio: PSNR |"
    )
    print("|---|---|---|---|---|---|---|---|")
    summaries = []
    for images in args.images:
        rows: list[tuple[Score, Score | None]] = []
        for seed in args.seeds:
            case = make_case(images, seed)
            options = replace(
                InversionOptions(),
                iterations=args.iterations,
                restarts=args.restarts,
                seed=seed,
                bounds=BOX,
            )
            ours = run_ours(case, options)
            theirs = run_breaching(case, args.iterations, args.restarts, seed) if peer else None
            rows.append((ours, theirs))
            print(f"| {images} | {seed} | {_cells(ours, theirs)} |", flush=True)
        summaries.append(_summary(images, rows))
    print("\n".join(summaries))
    print(f"{torch.get_num_threads()} thread(s), every draw seeded: deterministic on the CPU")


def _summary(images: int, rows: list[tuple[Score, Score | None]]) -> str:
    """One line for a batch size: the means over seeds, their ratios, the seeds ours wins."""
    ours = _mean([o for o, _ in rows])
    line = f"{images} image(s), mean of {len(rows)} seed(s): ours cosine {ours.cosine:.3f}, "
    line += f"{ours.psnr:.1f} dB"
    if any(t is None for _, t in rows):
        return line
    theirs = _mean([t for _, t in rows if t is not None])
    wins = sum(o.cosine >= t.cosine for o, t in rows if t is not None)
    return (
        f"{line}; breaching {theirs.cosine:.3f}, {theirs.psnr:.1f} dB; ratio "
        f"{ours.cosine / theirs.cosine:.2f} (cosine), {ours.psnr / theirs.psnr:.2f} (PSNR); "
        f"ours >= breaching in cosine on {wins} of {len(rows)} seed(s)"
    )


def _mean(scores: list[Score]) -> Score:
    n = len(scores)
    return Score(*(sum(getattr(s, f) for s in scores) / n for f in ("cosine", "psnr", "seconds")))


def _cells(ours: Score, theirs: Score | None) -> str:
    if theirs is None:
        return f"{ours.cosine:.3f} | {ours.psnr:.1f} | | | | "
    return (
        f"{ours.cosine:.3f} | {ours.psnr:.1f} | {theirs.cosine:.3f} | {theirs.psnr:.1f} "
        f"| {ours.cosine / theirs.cosine:.2f} | {ours.psnr / theirs.psnr:.2f}"
    )


if __name__ == "__main__":
    main()
