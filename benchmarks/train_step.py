"""Training-step cost of the masking methods, as ratios measured side by side in one run.

At equal backbone, input size and batch it times: unmasked ArcFace, PPFR-FD + MixUp (k=2),
PPFR-FD + fixed MixUp at the largest k of the policy's set, and PPFR-FD + AdaMixUp with that set
at policy_interval=10. It prints step time, images/s and the peak memory each adds over what is
already in use (CUDA allocator, or resident memory on CPU; the first configuration's figure also
holds the allocator's one-time growth), and the ratios
PPFR-FD + MixUp / ArcFace (target <= 1.15x) and AdaMixUp / fixed MixUp (target <= 1.3x). Each
configuration is timed over whole policy intervals, interleaved over repeats; the best repeat
counts. On a CUDA device it also prints IR-SE-50 images/s at 112x112, batch 128, bfloat16 AMP.

    .venv/bin/python benchmarks/train_step.py                  # IR-SE-50, 112x112, batch 16
    .venv/bin/python benchmarks/train_step.py --backbone ir_se_small --size 64 --batch 64
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
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(*batch)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def compare(args: argparse.Namespace) -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), generator=g)
    batch = (images.to(torch.uint8), torch.randint(0, CLASSES, (args.batch,), generator=g))
    trainers = {
        "arcface": make("arcface", args),
        "ppfr_fd+mixup k=2": make("masking_mixup", args, **{"mixup.k": 2}),
        "ppfr_fd+mixup k=6": make("masking_mixup", args, **{"mixup.k": 6}),
        "ppfr_fd+adamixup k=2..6": make("masking_adamixup", args),
    }
    device = next(iter(trainers.values())).device
    print(
        f"{args.backbone}, {args.size}x{args.size}, batch {args.batch}, {device}, "
        f"{torch.get_num_threads()} threads, {args.steps} steps x {args.repeats} repeats"
    )
    best = dict.fromkeys(trainers, float("inf"))
    peaks = {}
    for name, trainer in trainers.items():  # warm-up and peak memory, one config at a time
        before = peak_reset(device)
        time_steps(trainer, batch, args.steps)
        peaks[name] = memory_mib(device, peak=True) - before
    for _ in range(args.repeats):
        for name, trainer in trainers.items():
            best[name] = min(best[name], time_steps(trainer, batch, args.steps))
    for name, seconds in best.items():
        print(
            f"  {name:<24} {seconds * 1e3:9.1f} ms/step {args.batch / seconds:8.1f} images/s "
            f"peak +{peaks[name]:6.0f} MiB"
        )
    masked = best["ppfr_fd+mixup k=2"] / best["arcface"]
    adaptive = best["ppfr_fd+adamixup k=2..6"] / best["ppfr_fd+mixup k=6"]
    print(
        f"PPFR-FD + MixUp / ArcFace step time: {masked:.2f}x (target <= 1.15: "
        f"{'met' if masked <= 1.15 else 'MISSED'})"
    )
    print(
        f"AdaMixUp / fixed MixUp (k=6) step time at policy_interval=10: {adaptive:.2f}x "
        f"(target <= 1.3: {'met' if adaptive <= 1.3 else 'MISSED'})"
    )


def cuda_throughput(args: argparse.Namespace) -> None:
    """IR-SE-50 images/s at 112x112, batch 128, bfloat16 AMP, channels_last, per method."""
    ns = argparse.Namespace(
        **{**vars(args), "backbone": "ir_se_50", "size": 112, "batch": 128, "device": "cuda"}
    )
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (128, 3, 112, 112), generator=g).to(torch.uint8)
    batch = (images.pin_memory(), torch.randint(0, CLASSES, (128,), generator=g))
    print(f"CUDA: {torch.cuda.get_device_name()}, IR-SE-50, 112x112, batch 128, bfloat16 AMP")
    for name, method, extra in [
        ("arcface", "arcface", {}),
        ("ppfr_fd+mixup k=2", "masking_mixup", {"mixup.k": 2}),
        ("ppfr_fd+adamixup k=2..6", "masking_adamixup", {}),
    ]:
        trainer = make(method, ns, **extra)
        time_steps(trainer, batch, 10)
        seconds = time_steps(trainer, batch, args.cuda_steps)
        print(f"  {name:<24} {128 / seconds:8.0f} images/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="ir_se_50")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="a multiple of policy_interval")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cuda-steps", type=int, default=50)
    args = parser.parse_args()
    compare(args)
    if torch.cuda.is_available():
        cuda_throughput(args)


if __name__ == "__main__":
    main()
