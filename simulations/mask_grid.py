"""Mask a few synthetic faces with every method of the paper's tables and save PNG grids.

Rows: the originals, then the naive render of what each method hands to the recognition network,
one per row of the paper's tables that has a grid label (`ahm_core.masking.methods.grid_rows`:
PPFR-FD, frequency- and RGB-domain MixUp/InstaHide with k=2, DP, DCTDP at its untrained uniform
budget, PPFR-FD + MixUp k=2..6, and PPFR-FD + MixUp with a per-sample k as the policy would
choose it). A second grid shows six synthetic identities (rows) in eight images each (pose,
expression, light, background, noise).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor

from ahm_core.config import AHMConfig, apply_overrides
from ahm_core.data.synthetic import SynthFaces
from ahm_core.masking import build_masking
from ahm_core.masking.methods import grid_rows
from ahm_core.plots import save_grid


def masking_rows(faces: Tensor, fit_images: Tensor, seed: int = 0) -> list[tuple[str, Tensor]]:
    """(label, rendered batch) for the original faces and each row of `grid_rows()`; faces are
    [n, 3, H, W] in [0, 1]. An adaptive row draws each face's k uniformly from its k set."""
    # No network is built here: one stage of the backbone only keeps any even size valid.
    base = apply_overrides(AHMConfig(), {"data.image_size": faces.shape[-1], "model.blocks": (1,)})
    labels = torch.arange(len(faces))
    rows = [("original", faces)]
    for row in grid_rows():
        cfg = apply_overrides(base, {"masking.method": row.method, **row.overrides})
        pipeline = build_masking(cfg, fit_images=fit_images)
        g = torch.Generator().manual_seed(seed)
        k = None
        if pipeline.batch_mix == "adaptive":
            ks = torch.tensor(cfg.policy.k_set)
            k = ks[torch.randint(len(ks), (len(faces),), generator=g)]
        batch = pipeline(faces, labels, k=k, generator=g)
        rows.append((row.grid, pipeline.render(batch.x)))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder")
    parser.add_argument("--faces", type=int, default=6, help="faces per row (>= 6 for k=6)")
    parser.add_argument("--size", type=int, default=112, help="face size in pixels (32..112, even)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.faces < 6:
        parser.error("--faces must be >= 6: Masking+MixUp k=6 mixes six faces of the row")
    if not (32 <= args.size <= 112 and args.size % 2 == 0):
        parser.error(f"--size must be an even number of pixels in 32..112, got {args.size}")
    data = SynthFaces(
        num_identities=args.faces + 64, images_per_identity=4, size=args.size, seed=args.seed
    )
    shown = torch.arange(args.faces) * data.images_per_identity  # one face per identity
    faces = data.images_uint8(shown).float() / 255
    # DP fits its eigenfaces on other people than the ones shown.
    fit = data.images_uint8(torch.arange(args.faces * 4, len(data))).float() / 255
    rows = masking_rows(faces, fit, args.seed)
    grid = save_grid([r for _, r in rows], args.out / "masking_grid.png", [n for n, _ in rows])
    print(f"wrote {grid}")
    people = SynthFaces(num_identities=6, images_per_identity=8, size=args.size, seed=args.seed)
    strips = [people.images_uint8(range(i * 8, i * 8 + 8)).float() / 255 for i in range(6)]
    names = [f"identity {i}" for i in range(6)]
    print(f"wrote {save_grid(strips, args.out / 'synthfaces.png', names)}")


if __name__ == "__main__":
    main()
