"""What secure aggregation costs a round: Flower's SecAgg+ against plain FedAvg, side by side.

In-process federations (`simulations.local`, the project's ServerApp and ClientApp, one client
after another) at the demo's scale (profile=federated: 4 clients, 100 synthetic identities at 32
px) and with 100 clients (two identities of 20 images each: the synthetic set grown to 250
identities so that 200 train), 2 rounds each, the screen's clipping and median statistics off in
both (secure aggregation cannot apply them; the rest of the screen checks FedAvg's updates and
SecAgg+'s aggregate). For each it prints the round's wall time, the time its clients
trained (their `train-seconds`), the protocol's own time (the rest), and the bytes that crossed
the grid each way (each message's content as Flower's protobuf serialises it), for round 2
(round 1 also loads the data). Times vary between runs on a shared machine; the bytes do not.

    .venv/bin/python benchmarks/secagg.py
    .venv/bin/python benchmarks/secagg.py --clients 4,100 --rounds 2
    .venv/bin/python benchmarks/secagg.py --clients 100 --num-shares 11  # SecAgg+'s sparse graph
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import ClassVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from byzantine import demo_config  # noqa: E402  (the demo's profile, composed once)
from flwr.common.serde import recorddict_to_proto  # noqa: E402

from ahm_core.config import apply_overrides  # noqa: E402
from simulations.local import LocalGrid, run_local  # noqa: E402


def counting_grid() -> type[LocalGrid]:
    """A LocalGrid class that adds up the bytes of every message and reply, by round."""

    class Counting(LocalGrid):
        sent: ClassVar[dict[int, int]] = {}
        received: ClassVar[dict[int, int]] = {}

        def _handle(self, message):
            number = _round(message)
            self.sent[number] = self.sent.get(number, 0) + _bytes(message)
            reply = super()._handle(message)
            self.received[number] = self.received.get(number, 0) + _bytes(reply)
            return reply

    return Counting


def _round(message) -> int:
    """The round a message serves: its config's server-round (the strategy's messages), else
    its group id (the SecAgg+ workflow's)."""
    config = message.content.config_records.get("config", {})
    if "server-round" in config:
        return int(config["server-round"])
    group = message.metadata.group_id
    return int(group) if group.isdigit() else 0


def _bytes(message) -> int:
    """The message's content as Flower serialises it for the wire (its protobuf's size)."""
    if message.has_error():
        return 0
    return recorddict_to_proto(message.content).ByteSize()


def measure(clients: int, rounds: int, secagg: bool, shares: float) -> dict:
    """One federation's last round: wall time, its clients' training time, bytes each way."""
    cfg = demo_config(
        {
            "federation.num_clients": clients,
            "federation.min_clients": clients,
            "federation.rounds": rounds,
            "federation.fraction_evaluate": 0.0,
            "federation.capture_clients": 0,
            "federation.clip_ratio": 0.0,
            "federation.median_statistics": False,
            "federation.secagg": secagg,
            "federation.secagg_num_shares": shares,
        }
    )
    # where the demo's 80 training identities do not give each client two, the synthetic set
    # grows (with one, a client's ArcFace loss is 0: softmax over its one class)
    trained = math.ceil(cfg.data.num_identities * (1 - cfg.data.test_fraction))
    if 2 * clients > trained:
        total = math.ceil(2 * clients / (1 - cfg.data.test_fraction))
        cfg = apply_overrides(cfg, {"data.num_identities": total})
    grid = counting_grid()
    with tempfile.TemporaryDirectory() as out:
        summary = run_local(cfg, out, clients, grid, resume=False)
    last = summary["rounds"][-1]
    if last["accepted"] != clients:
        raise SystemExit(
            f"secagg: {clients} clients, secagg={secagg}: {last['accepted']} updates accepted in "
            f"round {last['round']} (failed {last['failed']}); expected every client's"
        )
    return {
        "seconds": last["seconds"],
        "train_seconds": last["train"].get("train-seconds", 0.0),
        "sent": grid.sent[last["round"]],
        "received": grid.received[last["round"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="4,100")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--num-shares",
        type=float,
        default=1.0,
        help="federation.secagg_num_shares: a fraction of the clients (<= 1) or a count",
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    print("| clients | aggregation | round s | training s | protocol s | sent MB | received MB |")
    print("|---|---|---|---|---|---|---|")
    for clients in [int(n) for n in args.clients.split(",")]:
        rows = {}
        for secagg in (False, True):
            row = measure(clients, args.rounds, secagg, args.num_shares)
            rows[secagg] = row
            name = "SecAgg+" if secagg else "FedAvg"
            print(
                f"| {clients} | {name} | {row['seconds']:.2f} | {row['train_seconds']:.2f} | "
                f"{row['seconds'] - row['train_seconds']:.2f} | {row['sent'] / 1e6:.2f} | "
                f"{row['received'] / 1e6:.2f} |",
                flush=True,
            )
        plain, secure = rows[False], rows[True]
        ratios = [secure[k] / plain[k] for k in ("seconds", "sent", "received")]
        print(f"| {clients} | ratio | {ratios[0]:.2f} | | | {ratios[1]:.2f} | {ratios[2]:.2f} |")


if __name__ == "__main__":
    main()
