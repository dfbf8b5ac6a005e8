"""Training-step cost of the masking methods, as ratios measured side by side in one run.

At equal backbone, input size and batch it times: unmasked ArcFace, PPFR-FD + MixUp (k=2),
PPFR-FD + fixed MixUp at the largest k of the policy's set, PPFR-FD + AdaMixUp with that set
at policy_interval=10, and ArcFace trained with DP-SGD (GroupNorm, Opacus's per-sample clipping
and noise; its batch here is the full one, not a Poisson draw). It prints each one's warm-up
time (with --compile: the compilation), images/s and the peak memory it adds over what is
already in use (CUDA allocator, or resident memory on CPU; the first configuration's figure also
holds the allocator's one-time growth), and the throughput ratios PPFR-FD + MixUp / ArcFace
(target >= 0.87 on the CPU, i.e. a step at most 1.15x as long; >= 0.9 on a GPU), AdaMixUp /
fixed MixUp at k=6 (target >= 0.77 on the CPU, >= 0.75 on a GPU), AdaMixUp / MixUp at k=2, and
DP-SGD / ArcFace (no target: what the sample-level guarantee costs). Each configuration is timed
over whole policy intervals, interleaved over repeats; the best repeat counts. On a GPU the step
runs as training does there: bfloat16 autocast and channels_last (`train.amp`), and --compile
compiles the backbone (`train.compile`).

    .venv/bin/python benchmarks/train_step.py                  # IR-SE-50, 112x112, batch 16
    .venv/bin/python benchmarks/train_step.py --backbone ir_se_small --size 64 --batch 64
    .venv/bin/python benchmarks/train_step.py --device cuda --batch 128 --steps 20 [--compile]
    .venv/bin/python benchmarks/train_step.py --methods arcface,mixup   # a subset, fewer ratios
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ahm_core.config import AHMConfig, apply_overrides
from ahm_core.masking import build_masking
from ahm_core.train import Trainer

CLASSES = 1000
STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
METHODS = {  # name: (label, masking.method, overrides)
    "arcface": ("arcface", "arcface", {}),
    "mixup": ("ppfr_fd+mixup k=2", "masking_mixup", {"mixup.k": 2}),
    "mixup6": ("ppfr_fd+mixup k=6", "masking_mixup", {"mixup.k": 6}),
    "adamixup": ("ppfr_fd+adamixup k=2..6", "masking_adamixup", {}),
    # ArcFace with DP-SGD (Opacus: per-sample gradients, clipping, noise) needs GroupNorm
    "dp_sgd": ("arcface+dp-sgd", "arcface", {"train.dp_sgd": True, "model.norm": "group"}),
}
TARGETS = {  # (PPFR-FD + MixUp / ArcFace, AdaMixUp / MixUp k=6), as throughput ratios
    "cpu": (1 / 1.15, 1 / 1.3),
    "cuda": (0.9, 0.75),
}


def memory_mib(device: torch.device, peak: bool) -> float:
    """Allocated (CUDA) or resident (CPU, Linux) memory now, or its peak since `peak_reset`."""
    if device.type == "cuda":
        read = torch.cuda.max_memory_allocated if peak else torch.cuda.memory_allocated
        return read(device) / 2**20
    key = "VmHWM:" if peak else "VmRSS:"
    for line in STATUS.read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_reset(device: torch.device) -> float:
    """Start a new peak-memory window; returns the memory already in use."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif CLEAR_REFS.exists():
        CLEAR_REFS.write_text("5")  # resets the process's peak RSS to its current RSS
    return memory_mib(device, peak=False)


def make(method: str, args: argparse.Namespace, **extra: object) -> Trainer:
    cfg = apply_overrides(
        AHMConfig(),
        {
            "masking.method": method,
            "model.backbone": args.backbone,
            "data.image_size": args.size,
            "train.batch_size": args.batch,
            "train.device": args.device,
            "train.compile": args.compile,
            "train.progress": False,
            "policy.k_set": (2, 3, 4, 5, 6),
            "policy.interval": 10,
            **extra,
        },
    )
    return Trainer(cfg, build_masking(cfg), CLASSES, steps_per_epoch=1000)


def time_steps(trainer: Trainer, batch: tuple[torch.Tensor, torch.Tensor], steps: int) -> float:
    """Seconds per step over `steps` steps (a multiple of the policy interval)."""
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(*batch)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    return (time.perf_counter() - start) / steps


def verdict(value: float, target: float) -> str:
    return f"target >= {target:.2f}: {'met' if value >= target else 'MISSED'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="ir_se_50")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="a multiple of policy_interval")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    parser.add_argument("--methods", default=",".join(METHODS), help="from " + ", ".join(METHODS))
    args = parser.parse_args()
    names = args.methods.split(",")
    if unknown := set(names) - set(METHODS):
        parser.error(f"--methods: unknown {sorted(unknown)}, expected some of {list(METHODS)}")

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), generator=g)
    images = images.to(torch.uint8)
    if torch.device(args.device).type == "cuda":
        images = images.pin_memory()  # as the loader's batches are on a GPU
    batch = (images, torch.randint(0, CLASSES, (args.batch,), generator=g))
    trainers = {name: make(METHODS[name][1], args, **METHODS[name][2]) for name in names}
    device = next(iter(trainers.values())).device
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"{args.backbone}, {args.size}x{args.size}, batch {args.batch}, {where}, "
        f"{torch.get_num_threads()} threads, bfloat16 autocast {trainers[names[0]].amp}, "
        f"compile {args.compile}, {args.steps} steps x {args.repeats} repeats"
    )
    best = dict.fromkeys(trainers, float("inf"))
    peaks, warmup = {}, {}
    for name, trainer in trainers.items():  # warm-up and peak memory, one config at a time
        before = peak_reset(device)
        warmup[name] = time_steps(trainer, batch, args.steps) * args.steps
        peaks[name] = memory_mib(device, peak=True) - before
    for _ in range(args.repeats):
        for name, trainer in trainers.items():
            best[name] = min(best[name], time_steps(trainer, batch, args.steps))
    rate = {name: args.batch / seconds for name, seconds in best.items()}
    for name in trainers:
        print(
            f"  {METHODS[name][0]:<24} warm-up {warmup[name]:6.1f} s "
            f"{best[name] * 1e3:9.1f} ms/step {rate[name]:8.1f} images/s "
            f"peak +{peaks[name]:6.0f} MiB"
        )
    masked_target, adaptive_target = TARGETS["cuda" if device.type == "cuda" else "cpu"]
    if {"arcface", "mixup"} <= rate.keys():
        masked = rate["mixup"] / rate["arcface"]
        print(
            f"PPFR-FD + MixUp / ArcFace images/s: {masked:.2f}x ({verdict(masked, masked_target)})"
        )
    if {"adamixup", "mixup6"} <= rate.keys():
        adaptive = rate["adamixup"] / rate["mixup6"]
        print(
            f"AdaMixUp / fixed MixUp (k=6) images/s at policy_interval=10: {adaptive:.2f}x "
            f"({verdict(adaptive, adaptive_target)})"
        )
    if {"adamixup", "mixup"} <= rate.keys():
        print(f"AdaMixUp / MixUp k=2 images/s: {rate['adamixup'] / rate['mixup']:.2f}x")
    if {"dp_sgd", "arcface"} <= rate.keys():
        print(f"ArcFace with DP-SGD / ArcFace images/s: {rate['dp_sgd'] / rate['arcface']:.2f}x")


if __name__ == "__main__":
    main()
