"""Federation at scale on this machine: many virtual clients on Flower's Ray backend.

Runs `flwr run` with N SuperNodes (default 200; 20 sampled per round, a tiny model, 2 rounds)
and prints, measured in the same run:
- peak memory: the largest sum, over the run's lifetime, of the resident memory of the
  SuperLink and everything it started (SuperExec, ServerApp, simulation, Ray and its actors);
  shared pages count once per process, so this is an upper bound;
- overhead per round = the round's training wall time / (sum of its clients' training times /
  parallelism), parallelism = min(CPUs // cpus-per-client, clients per round); target <= 1.25.
  A client's training time is its local epochs' loop; everything else a round spends (Flower
  messaging, Ray scheduling, building the client's model and state) is overhead. Round 1 also
  holds the simulation's start-up (each Ray worker imports torch and loads the data once), so the
  steady state is round 2.

    .venv/bin/python benchmarks/federation.py
    .venv/bin/python benchmarks/federation.py --clients 1000 --local-epochs 4
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import threading
import time
from pathlib import Path

from ahm_core.config import AHMConfig, apply_overrides
from simulations.flower import FLWR_HOME, launch, run_processes

PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def rss_mib(pids: list[int]) -> float:
    """Resident memory of the processes `pids`, in MiB (those gone since are skipped)."""
    total_kib = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total_kib += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KIB
    return total_kib / 1024


class PeakMemory(threading.Thread):
    """Samples the resident memory of the run of FLWR_HOME `home` every `period` seconds."""

    def __init__(self, home: Path, period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.home, self.period = home, period
        self.peak_mib = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak_mib = max(self.peak_mib, rss_mib(run_processes(self.home)))
            time.sleep(self.period)


def config(args: argparse.Namespace) -> AHMConfig:
    """A tiny model and strategy network on synthetic faces, one identity per client."""
    return apply_overrides(
        AHMConfig(),
        {
            "data.image_size": 32,
            "data.num_identities": round(args.clients / 0.8) + 2,
            "data.images_per_identity": args.images,
            "data.num_pairs": 200,
            "data.test_fraction": 0.2,
            "model.blocks": (1, 1),
            "model.width": 8,
            "model.embedding_size": 32,
            "train.batch_size": 8,
            "train.progress": False,
            "masking.method": "masking_adamixup",
            "policy.k_set": (2, 3),
            "policy.interval": 2,
            "policy.net": "small",
            "federation.rounds": 2,
            "federation.local_epochs": args.local_epochs,
            "federation.fraction_train": args.per_round / args.clients,
            "federation.min_clients": args.per_round,
            "federation.num_clients": args.clients,
            "federation.fraction_evaluate": 0.0,
            "federation.val_fraction": 0.0,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--per-round", type=int, default=20)
    parser.add_argument("--images", type=int, default=40, help="images per identity")
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--cpus-per-client", type=int, default=1)
    args = parser.parse_args()
    cfg = config(args)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ahm-bench-federation-") as out:
        sampler = PeakMemory(Path(out) / FLWR_HOME)
        sampler.start()
        summary = launch(
            cfg, out, supernodes=args.clients, cpus_per_client=args.cpus_per_client, stream=False
        )
    wall = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    parallel = min((os.cpu_count() or 1) // args.cpus_per_client, args.per_round)
    print(
        f"{args.clients} virtual clients, {args.per_round} per round, {cfg.federation.rounds} "
        f"rounds, {os.cpu_count()} CPUs, parallelism {parallel}: {wall:.1f} s end to end"
    )
    print(f"peak resident memory of the run's processes: {sampler.peak_mib / 1024:.2f} GiB")
    for r in summary["rounds"][1:]:
        compute = r["train"]["train-seconds"] / parallel
        print(
            f"round {r['round']}: {r['succeeded']}/{r['sampled']} clients, training wall "
            f"{r['train_wall']:.1f} s, client compute / parallelism {compute:.1f} s, "
            f"overhead {r['train_wall'] / compute:.2f}x (target <= 1.25)"
        )


if __name__ == "__main__":
    main()
