"""Federation at scale on this machine: many virtual clients on Flower's Ray backend.

Runs `flwr run` with N SuperNodes (default 200; 20 sampled per round, a tiny model, 2 rounds)
and prints, measured in the same run:
- peak memory: the largest sum, over the run's lifetime, of the resident memory of the
  SuperLink and everything it started (SuperExec, ServerApp, simulation, Ray and its actors);
  shared pages count once per process, so this is an upper bound;
- overhead per round = the round's training wall time / (sum of its clients' training times /
  parallelism), parallelism = min(CPUs // cpus-per-client, GPUs // gpus-per-client, clients per
  round); target <= 1.25 on CPUs, <= 1.2 with a GPU shared by the clients.
  A client's training time is its local epochs' loop; everything else a round spends (Flower
  messaging, Ray scheduling, building the client's model and state) is overhead. Round 1 also
  holds the simulation's start-up (each Ray worker imports torch and loads the data once), so the
  steady state is round 2.

--paper-model trains what a GPU user runs instead: IR-SE-50 at 112x112, batch 32, with the
ResNet-18 strategy network.

    .venv/bin/python benchmarks/federation.py
    .venv/bin/python benchmarks/federation.py --clients 1000 --local-epochs 4
    .venv/bin/python benchmarks/federation.py --clients 10 --per-round 10 --device cuda \
        --gpus-per-client 0.1 --paper-model --images 80
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import threading
import time
from pathlib import Path

import torch

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


TINY_MODEL = {
    "data.image_size": 32,
    "model.blocks": (1, 1),
    "model.width": 8,
    "model.embedding_size": 32,
    "train.batch_size": 8,
    "policy.net": "small",
}
PAPER_MODEL = {
    "data.image_size": 112,
    "model.backbone": "ir_se_50",
    "model.embedding_size": 512,
    "train.batch_size": 32,
    "policy.net": "resnet18",
}


def config(args: argparse.Namespace) -> AHMConfig:
    """Two identities per client, AdaMixUp, a tiny model or the paper's, on synthetic faces.

    The same count for every client (one with more would hold up its round), and two: with one
    identity a client's ArcFace loss is 0 (softmax over its one class), so its update is weight
    decay alone, the same as every other client's, and the screen rejects them all as copies.
    """
    trained = 2 * args.clients
    held = max(2, round(trained / 4))  # a fifth of all identities, for verification pairs
    return apply_overrides(
        AHMConfig(),
        {
            **(PAPER_MODEL if args.paper_model else TINY_MODEL),
            "data.num_identities": trained + held,
            "data.images_per_identity": args.images,
            "data.num_pairs": 200,
            "data.test_fraction": held / (trained + held),
            "train.progress": False,
            "train.device": args.device,
            "masking.method": "masking_adamixup",
            "policy.k_set": (2, 3),
            "policy.interval": 2,
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
    parser.add_argument("--images", type=int, default=20, help="images per identity")
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--cpus-per-client", type=int, default=1)
    parser.add_argument("--gpus-per-client", type=float, default=0.0)
    parser.add_argument("--device", default="cpu", help="the clients' and server's: cpu, cuda")
    parser.add_argument("--paper-model", action="store_true", help="IR-SE-50 at 112x112")
    args = parser.parse_args()
    cfg = config(args)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ahm-bench-federation-") as out:
        sampler = PeakMemory(Path(out) / FLWR_HOME)
        sampler.start()
        summary = launch(
            cfg,
            out,
            supernodes=args.clients,
            cpus_per_client=args.cpus_per_client,
            gpus_per_client=args.gpus_per_client,
            stream=False,
        )
    wall = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    parallel = min((os.cpu_count() or 1) // args.cpus_per_client, args.per_round)
    hardware = f"{os.cpu_count()} CPUs"
    if args.gpus_per_client > 0:
        gpus = torch.cuda.device_count()
        parallel = min(parallel, int(gpus / args.gpus_per_client))
        names = sorted({torch.cuda.get_device_name(i) for i in range(gpus)})
        hardware += f", {gpus} x {', '.join(names)} at {args.gpus_per_client} GPU per client"
    target = 1.2 if args.gpus_per_client > 0 else 1.25
    print(
        f"{args.clients} virtual clients ({cfg.model.backbone}, {cfg.data.image_size}x"
        f"{cfg.data.image_size}, {cfg.train.device}), {args.per_round} per round, "
        f"{cfg.federation.rounds} rounds, {hardware}, parallelism {parallel}: {wall:.1f} s "
        "end to end"
    )
    print(f"peak resident memory of the run's processes: {sampler.peak_mib / 1024:.2f} GiB")
    for r in summary["rounds"][1:]:
        if not r["accepted"]:
            raise SystemExit(
                f"federation: round {r['round']}: no update accepted ({r['rejected']})"
            )
        compute = r["train"]["train-seconds"] / parallel
        print(
            f"round {r['round']}: {r['succeeded']}/{r['sampled']} clients, training wall "
            f"{r['train_wall']:.1f} s, client compute / parallelism {compute:.1f} s, "
            f"overhead {r['train_wall'] / compute:.2f}x (target <= {target})"
        )


if __name__ == "__main__":
    main()
