"""How far noise alone moves the policy's PMF, beside how far a signal moves it: the strategy
network at a given lr paid a constant reward plus noise, and a reward rising with k plus the same
noise, on random inputs of the study's masked shape (docs/reproduction.md, rewards with known
answers). Prints one line per seed; deterministic on one machine."""

from __future__ import annotations

import argparse

import torch

from ahm_core.config import PolicyConfig
from ahm_core.known_answers import drive, largest_move
from ahm_core.policy import NETS, AdaptivePolicy, build_policy


def noise_and_signal(
    net: str, lr: float, updates: int, seed: int, slope: float, channels: int, size: int
) -> tuple[float, float, float]:
    """(largest share move under noise, share of the largest k before, and after the signal)."""
    k_set = (2, 3, 4, 5, 6)
    probe = torch.randn(32, channels, size, size, generator=torch.Generator().manual_seed(99))

    def inputs(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(n, channels, size, size, generator=g), torch.zeros(n)

    def fresh() -> AdaptivePolicy:
        torch.manual_seed(seed)
        return build_policy(PolicyConfig(k_set=k_set, net=net, lr=lr), channels)

    policy = fresh()
    before = policy.pmf(probe)
    drive(policy, inputs, lambda ks, _: torch.full_like(ks, 3.0), updates, seed=seed + 1)
    moved = largest_move(before, policy.pmf(probe))
    policy = fresh()
    drive(policy, inputs, lambda ks, _: slope * ks, updates, seed=seed + 1)
    return moved, float(before[-1]), float(policy.pmf(probe)[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="resnet18", choices=NETS)
    parser.add_argument("--lr", type=float, default=PolicyConfig.lr)
    parser.add_argument("--updates", type=int, default=615, help="the study's 615 by default")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--slope", type=float, default=0.2, help="signal, nats per unit of k")
    parser.add_argument("--channels", type=int, default=63, help="masked channels (PPFR-FD: 63)")
    parser.add_argument("--size", type=int, default=4, help="masked side (32 px faces: 4)")
    args = parser.parse_args(argv)
    if not args.lr > 0:
        parser.error(f"--lr: must be > 0, got {args.lr}")
    for name in ("updates", "seeds", "channels", "size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: must be >= 1, got {getattr(args, name)}")
    torch.set_num_threads(1)
    print(f"{args.net} at lr {args.lr:g}, {args.updates} updates, noise 1 nat per sample")
    for seed in range(args.seeds):
        moved, start, end = noise_and_signal(
            args.net, args.lr, args.updates, seed, args.slope, args.channels, args.size
        )
        print(
            f"seed {seed}: noise alone moved a share by {moved:.3f}; a {args.slope:g}-nat-per-k "
            f"signal moved P(k=6) from {start:.3f} to {end:.3f}"
        )


if __name__ == "__main__":
    main()
