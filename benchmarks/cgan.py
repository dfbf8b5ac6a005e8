"""Training speed of the CGAN (pix2pix) attack on PPFR-FD channels, on the CPU or a GPU.

Trains the attack of `attack.*`'s defaults (ngf = ndf = 64, U-Net generator, PatchGAN
discriminator) on random masked tensors [N, 63, S, S] and faces [N, 3, S, S] for one epoch of
`--steps` batches, through `CGANAttack.fit` as the threat model does, and prints images/s (one
image = one generator and discriminator step on it), the best of `--repeats` epochs after a
warm-up epoch, and the peak memory on a GPU.

    .venv/bin/python benchmarks/cgan.py [--size 112] [--batch 16] [--device cuda]
"""

from __future__ import annotations

import argparse
import time

import torch

from ahm_core.attacks.cgan import CGANAttack, CGANOptions
from ahm_core.config import AHMConfig
from ahm_core.masking import PPFRFD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=16, help="attack.cgan_batch_size")
    parser.add_argument("--steps", type=int, default=10, help="batches per timed epoch")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = parser.parse_args()
    device = torch.device(args.device)

    channels, n = PPFRFD().num_channels, args.batch * args.steps
    g = torch.Generator().manual_seed(0)
    masked = torch.randn(n, channels, args.size, args.size, generator=g)
    faces = torch.rand(n, 3, args.size, args.size, generator=g)
    options = CGANOptions.from_config(AHMConfig().attack)
    attack = CGANAttack(channels, args.size, options=options, device=device)

    def epoch() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        attack.fit(masked, faces, epochs=1, batch_size=args.batch)  # reads its losses: synced
        return time.perf_counter() - start

    warmup = epoch()
    best = min(epoch() for _ in range(args.repeats))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = (
        f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
        if device.type == "cuda"
        else ""
    )
    print(
        f"CGAN attack, {channels} channels -> 3 x {args.size}x{args.size}, ngf {options.ngf}, "
        f"ndf {options.ndf}, batch {args.batch}, {where}, {torch.get_num_threads()} threads: "
        f"{n / best:.1f} images/s (warm-up epoch {warmup:.1f} s{peak})"
    )


if __name__ == "__main__":
    main()
