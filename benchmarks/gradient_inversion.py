"""The gradient-inversion adversary's strength on one FedSGD update, beside breaching's.

The case breaching's inverting-gradients attacker (`OptimizationBasedAttacker`, its
`invertinggradients` config) was measured on for issue 16: one FedSGD gradient of the default
small IR-SE with the MixUp-ArcFace head, 32 px synthetic faces, labels known, at the same
iteration budget. Breaching is a research repository, not a package: its figures below are the
published ones of that measurement, not re-run here. This attack is run four ways side by side,
so what each of its choices buys shows: the objective (the mean of per-tensor cosines, or one
global cosine as breaching) and the box to the valid range [-1, 1]; the best iterate is kept in
all.
Deterministic on the CPU (seeded).

    .venv/bin/python benchmarks/gradient_inversion.py [--iterations 600] [--images 1,4]
"""

from __future__ import annotations

import argparse
import time

import torch

from ahm_core.attacks.gradient_inversion import (
    InversionOptions,
    TrainingLoss,
    invert_gradients,
    match_and_score,
    simulate_update,
)
from ahm_core.config import AHMConfig, apply_overrides
from ahm_core.data.synthetic import SynthFaces
from ahm_core.models import build_backbone, build_head

BREACHING = {1: (0.733, 16.9), 4: (0.436, 11.6)}  # images -> (cosine, PSNR dB), 600 iterations
VARIANTS = {  # name -> (objective, boxed)
    "per-layer, boxed (default)": ("per_layer", True),
    "per-layer, unboxed (before)": ("per_layer", False),
    "global, boxed": ("global", True),
    "global, unboxed": ("global", False),
}


def network(images: int) -> TrainingLoss:
    """The default small IR-SE and MixUp-ArcFace head (over the default 100 identities) at 32 px,
    seeded, dropout off; in train mode as a client trains, but for one image in eval mode
    (BatchNorm1d cannot train on one)."""
    cfg = apply_overrides(AHMConfig(), {"data.image_size": 32})
    torch.manual_seed(0)
    head = build_head(cfg.model, cfg.data.num_identities)
    net = TrainingLoss(build_backbone(cfg.model, 3, 32), head)
    net.train(images > 1)
    for module in net.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--images", default="1,4", help="batch sizes, comma-separated")
    parser.add_argument("--restarts", type=int, default=1)
    args = parser.parse_args()
    print(f"one FedSGD update, {args.iterations} iterations, {args.restarts} restart(s)")
    print("| images | attack | cosine | PSNR (dB) | seconds |")
    print("|---|---|---|---|---|")
    for images in [int(n) for n in args.images.split(",")]:
        faces = SynthFaces(num_identities=images, images_per_identity=1, size=32, seed=0)
        x = faces.images_uint8(range(images)).float() / 255 * 2 - 1
        labels, coefs = torch.arange(images)[:, None], torch.ones(images, 1)
        net = network(images)
        update = simulate_update(net, x, labels, coefs)
        for name, (objective, boxed) in VARIANTS.items():
            options = InversionOptions(
                iterations=args.iterations,
                restarts=args.restarts,
                objective=objective,
                bounds=(-1.0, 1.0) if boxed else None,
            )
            start = time.perf_counter()
            result = invert_gradients(net, update, tuple(x.shape), labels, coefs, options)
            score = match_and_score(result.x, x)
            seconds = time.perf_counter() - start
            cosine, psnr = float(score["cosine"].mean()), float(score["psnr"].mean())
            print(f"| {images} | {name} | {cosine:.3f} | {psnr:.1f} | {seconds:.0f} |", flush=True)
        cosine, psnr = BREACHING.get(images, (float("nan"), float("nan")))
        reference = "breaching invertinggradients (published)"
        print(f"| {images} | {reference} | {cosine:.3f} | {psnr:.1f} | |")


if __name__ == "__main__":
    main()
