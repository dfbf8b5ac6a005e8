"""Print the floor table of the policy's rewards (docs/reproduction.md): per k, what a perfect
recogniser still pays under `margin_free` (the mixed label's entropy, which `kl` takes off) and
the sum of squared coefficients that scales the margin bookkeeping of `loss`, measured over draws
of this project's mixing coefficients."""

from __future__ import annotations

import argparse

from ahm_core.config import MixupConfig
from ahm_core.policy import mixing_floors


def floor_table(ks: list[int], max_coef: float, samples: int, seed: int) -> str:
    """The table as markdown, one row per k (deterministic for a seed)."""
    floors = mixing_floors(ks, max_coef, samples, seed)
    lines = [
        "| k | margin_free floor H(q), nats | sum of squared coefficients |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {k} | {f['entropy']:.2f} | {f['sum_sq']:.2f} |" for k, f in floors.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", default="2,3,4,5,6", help="comma-separated k (each >= 2)")
    parser.add_argument("--max-coef", type=float, default=MixupConfig.max_coef)
    parser.add_argument("--samples", type=int, default=100_000, help="coefficient draws per k")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        ks = [int(k) for k in args.k.split(",")]
    except ValueError:
        parser.error(f"--k: expected comma-separated integers, got {args.k!r}")
    if min(ks) < 2:
        parser.error(f"--k: every k must be >= 2, got {min(ks)}")
    if not 1.0 / min(ks) < args.max_coef <= 1.0:
        parser.error(f"--max-coef: must be in (1/{min(ks)}, 1], got {args.max_coef}")
    if args.samples < 1:
        parser.error(f"--samples: must be >= 1, got {args.samples}")
    print(floor_table(ks, args.max_coef, args.samples, args.seed))


if __name__ == "__main__":
    main()
