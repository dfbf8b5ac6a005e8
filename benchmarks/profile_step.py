"""Profile of the training step: where its time goes and how often the host waits for the GPU.

Runs `--steps` steps (whole policy intervals) of one method under torch.profiler after a
warm-up, prints the ops with the most self time (device time on a GPU, CPU time otherwise), and
on a GPU the synchronising CUDA runtime calls per step (cudaStreamSynchronize, which a blocking
copy or a `.item()` makes, and cudaDeviceSynchronize): AdaMixUp makes one per policy interval,
to read the strategy network's PMF, and no other. `--trace` writes a Chrome trace.

    .venv/bin/python benchmarks/profile_step.py --device cuda --batch 128 [--method arcface]
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

from ahm_core.config import AHMConfig, apply_overrides
from ahm_core.masking import build_masking
from ahm_core.train import Trainer

CLASSES = 1000
SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="masking_adamixup", help="masking.method")
    parser.add_argument("--backbone", default="ir_se_50")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="a multiple of policy_interval")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--trace", help="write a Chrome trace (chrome://tracing) here")
    args = parser.parse_args()

    cfg = apply_overrides(
        AHMConfig(),
        {
            "masking.method": args.method,
            "model.backbone": args.backbone,
            "data.image_size": args.size,
            "train.batch_size": args.batch,
            "train.device": args.device,
            "train.progress": False,
            "policy.k_set": (2, 3, 4, 5, 6),
            "policy.interval": 10,
        },
    )
    trainer = Trainer(cfg, build_masking(cfg), CLASSES, steps_per_epoch=1000)
    cuda = trainer.device.type == "cuda"
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), generator=g)
    images = images.to(torch.uint8)
    batch = (images.pin_memory() if cuda else images, torch.randint(0, CLASSES, (args.batch,)))
    for _ in range(cfg.policy.interval):  # warm-up: kernels, allocator, caches
        trainer.train_step(*batch)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            trainer.train_step(*batch)
        if cuda:
            torch.cuda.synchronize(trainer.device)
    where = torch.cuda.get_device_name(trainer.device) if cuda else "CPU"
    print(f"{args.method}, {args.backbone}, {args.size}x{args.size}, batch {args.batch}, {where}")
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=args.rows))
    if cuda:
        calls = Counter(e.name for e in prof.events() if e.name in SYNCS)
        per_step = {name: calls[name] / args.steps for name in SYNCS}
        print("synchronising CUDA calls per step:", per_step)
    if args.trace:
        prof.export_chrome_trace(args.trace)


if __name__ == "__main__":
    main()
