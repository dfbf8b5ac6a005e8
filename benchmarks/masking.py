"""Masking-core speed, as ratios measured side by side in one run, on the CPU or a GPU.

Prints, for PPFR-FD at 112x112, u=8, batch 256: the speed-up of the fused operator over the
explicit recipe (target on the CPU >= 4x) and its throughput against copying a tensor of the
output's size into a freshly allocated one, the memory-bound limit (target >= 0.7x on the CPU,
>= 0.5x on a GPU); then, on the CPU, synthetic faces per second at 112x112 on one core (target
>= 500). Each timing is the best of several interleaved repeats, so a noisy neighbour slows both
sides of a ratio alike.

    .venv/bin/python benchmarks/masking.py [--batch 256] [--repeats 7] [--device cuda]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from ahm_core.data.synthetic import render_faces
from ahm_core.freq import bdct, bdct_explicit
from ahm_core.masking import PPFRFD, to_gray

CPU = torch.device("cpu")


def best_times(
    fns: dict[str, Callable[[], object]], repeats: int, device: torch.device = CPU
) -> dict[str, float]:
    """Best wall time of each function over `repeats` rounds that run them in turn (on a GPU,
    until its work is done)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in fns.values():
        fn()  # warm-up: allocator, caches, lazy kernels
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def verdict(value: float, target: float) -> str:
    return f"target >= {target:g}: {'met' if value >= target else 'MISSED'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--faces", type=int, default=512, help="faces rendered per timing")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = parser.parse_args()
    n, device = args.batch, torch.device(args.device)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"torch {torch.__version__}, {where}, batch {n}, 112x112, u=8")

    idx = torch.arange(n)
    gray = to_gray(render_faces(idx, idx % 10, size=112, seed=0)).to(device)
    ppfr = PPFRFD()
    keys = ppfr.keys(n)
    output = ppfr.mask(gray, keys)
    mb = output.numel() * output.element_size() / 2**20
    fast = best_times(
        {
            "copy": lambda: torch.empty_like(output).copy_(output),
            "ppfr_fused": lambda: ppfr.mask(gray, keys),
            "bdct_fused": lambda: bdct(gray),
        },
        args.repeats,
        device,
    )
    slow = best_times(
        {
            "ppfr_explicit": lambda: ppfr.mask_explicit(gray, keys),
            "bdct_explicit": lambda: bdct_explicit(gray),
        },
        max(2, args.repeats // 3),
        device,
    )
    t = fast | slow
    for name, seconds in t.items():
        print(f"  {name:<14} {seconds * 1e3:8.1f} ms  {n / seconds:9.0f} images/s")
    speedup = t["ppfr_explicit"] / t["ppfr_fused"]
    target = f" ({verdict(speedup, 4)})" if device.type == "cpu" else ""
    print(f"PPFR-FD fused / explicit speed-up: {speedup:.2f}x{target}")
    print(f"block DCT fused / explicit speed-up: {t['bdct_explicit'] / t['bdct_fused']:.2f}x")
    ratio = t["copy"] / t["ppfr_fused"]
    print(
        f"PPFR-FD fused throughput / copy of its {mb:.0f} MiB output into a fresh tensor: "
        f"{ratio:.2f}x ({verdict(ratio, 0.7 if device.type == 'cpu' else 0.5)})"
    )
    if device.type != "cpu":
        return

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ids = torch.arange(args.faces)
    faces = best_times({"faces": lambda: render_faces(ids, ids, 112, 0)}, 3)["faces"]
    torch.set_num_threads(threads)
    rate = args.faces / faces
    print(f"synthetic faces, 112x112, one core: {rate:.0f} faces/s ({verdict(rate, 500)})")


if __name__ == "__main__":
    main()
