"""Training-data loading speed from a folder of JPEG faces, by number of loader workers.

Writes `--images` synthetic faces as 112x112 JPEGs into a temporary folder per identity (the
layout of an extracted CASIA-WebFace, `data=folder`), then times one pass of the trainer's own
loader (`Trainer.loader`: shuffled whole batches, pinned memory on a GPU) with 0 workers and with
each count of `--workers`, and prints images/s and the ratio to 0 workers. Compare it with the
training step's images/s (benchmarks/train_step.py; benchmarks/gpu.sh prints both): the loader
must stay ahead of the GPU, which is what `train.workers` (8 in profile=paper) is for.

    .venv/bin/python benchmarks/loader.py [--images 4096] [--workers 1,2] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from ahm_core.config import AHMConfig, apply_overrides
from ahm_core.data.folders import FolderFaces
from ahm_core.data.synthetic import render_faces
from ahm_core.masking import build_masking
from ahm_core.train import Trainer

IDENTITIES = 64


def write_faces(root: Path, count: int, size: int) -> None:
    """`count` synthetic faces as JPEG files, IDENTITIES folders of them."""
    ids = torch.arange(count) % IDENTITIES
    faces = render_faces(torch.arange(count), ids, size=size, seed=0)
    pixels = (faces * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, (face, identity) in enumerate(zip(pixels, ids.tolist(), strict=True)):
        folder = root / f"id{identity}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(face).save(folder / f"{i}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--workers", default="1,2", help="worker counts to time besides 0")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (pinned memory)")
    args = parser.parse_args()
    counts = [0] + [int(w) for w in args.workers.split(",")]

    with tempfile.TemporaryDirectory(prefix="ahm-bench-loader-") as tmp:
        write_faces(Path(tmp), args.images, args.size)
        faces = FolderFaces(tmp, size=args.size)
        items, labels = torch.arange(len(faces)), faces.labels
        rates = {}
        for workers in counts:
            cfg = apply_overrides(
                AHMConfig(),
                {
                    "data.image_size": args.size,
                    "train.batch_size": args.batch,
                    "train.workers": workers,
                    "train.device": args.device,
                    "model.blocks": (1,),
                    "model.width": 8,
                },
            )
            trainer = Trainer(cfg, build_masking(cfg), IDENTITIES, steps_per_epoch=1)
            start, seen = time.perf_counter(), 0
            for images, _ in trainer.loader(faces, items, labels):
                seen += len(images)
            rates[workers] = seen / (time.perf_counter() - start)
    device = torch.device(args.device)
    pinned = ", pinned" if device.type == "cuda" else ""
    print(
        f"loading {args.images} JPEG faces {args.size}x{args.size}, batch {args.batch}{pinned}, "
        f"{os.cpu_count()} CPUs:"
    )
    for workers, rate in rates.items():
        print(f"  {workers:2d} workers {rate:8.0f} images/s  {rate / rates[0]:5.2f}x 0 workers")


if __name__ == "__main__":
    main()
