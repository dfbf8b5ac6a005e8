"""FedAvg with what a face-recognition federation needs around it: seeded sampling, screening of
client updates (non-finite or too large: rejected and counted), aggregation in partition order
(so a restarted run sums in the same order) and, for the threat model, capture of chosen
clients' updates together with the global model they started from.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords, sample_nodes

from ahm_core.federated import screen_update
from ahm_core.io import atomic_write


class ScreenedFedAvg(FedAvg):
    """FedAvg weighted by examples over the updates that pass `screen_update`.

    Rounds are numbered from `first_round` (a resumed run continues the count). After each
    round `self.round_stats` holds what the round did: sampled, succeeded, failed, rejected
    by reason, the weighted train loss, the k histogram, and the clients' local accuracy.
    """

    def __init__(
        self,
        *,
        seed: int,
        max_update_norm: float,
        first_round: int = 1,
        capture_dir: Path | None = None,
        capture_clients: int = 0,
        **fedavg: object,
    ) -> None:
        super().__init__(**fedavg)
        self.seed, self.max_update_norm = seed, max_update_norm
        self.offset = first_round - 1
        self.capture_dir, self.capture_clients = capture_dir, capture_clients
        self.round_stats: dict = {}
        self._global: ArrayRecord | None = None

    def _sample(self, grid: Grid, fraction: float, minimum: int, server_round: int) -> list[int]:
        # sample_nodes waits for min_available_nodes; the draw itself is ours, seeded by round.
        _, nodes = sample_nodes(grid, self.min_available_nodes, 0)
        size = min(len(nodes), max(int(len(nodes) * fraction), minimum))
        return random.Random(self.seed * 1_000_003 + server_round).sample(sorted(nodes), size)

    def _messages(
        self,
        arrays: ArrayRecord,
        config: ConfigRecord,
        nodes: list[int],
        server_round: int,
        kind: str,
    ) -> Iterable[Message]:
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, nodes, kind)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the global arrays to a seeded sample of nodes."""
        server_round += self.offset
        self._global = arrays
        nodes = self._sample(grid, self.fraction_train, self.min_train_nodes, server_round)
        self.round_stats = {"round": server_round, "start": time.perf_counter()}
        self.round_stats["sampled"] = len(nodes)
        return self._messages(arrays, config, nodes, server_round, MessageType.TRAIN)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen the replies, capture the chosen ones, average the rest by examples."""
        server_round += self.offset
        self.round_stats["train_wall"] = time.perf_counter() - self.round_stats["start"]
        valid, _ = self._check_and_log_replies(replies, is_train=True, validate=False)
        valid.sort(key=lambda m: _metrics(m).get("partition-id", 0))
        previous = self._global.to_torch_state_dict()
        accepted, rejected = [], Counter()
        for msg in valid:
            if len(msg.content.array_records) != 1 or "num-examples" not in _metrics(msg):
                reason = "malformed"
            else:
                update = _arrays(msg).to_torch_state_dict()
                reason = screen_update(previous, update, self.max_update_norm)
            if reason is None:
                accepted.append(msg)
            else:
                rejected[reason] += 1
        for msg in accepted[: self.capture_clients]:
            self._capture(server_round, previous, msg)
        stats = self.round_stats
        stats |= {"succeeded": len(valid), "failed": stats["sampled"] - len(valid)}
        stats |= {"accepted": len(accepted), "rejected": dict(rejected)}
        if not accepted:
            return None, None
        contents = [msg.content for msg in accepted]
        metrics = [_metrics(msg) for msg in accepted]
        weights = [float(m["num-examples"]) for m in metrics]
        ks: Counter = Counter()
        for m in metrics:
            ks.update(dict(zip(m.get("k-values", []), m.get("k-counts", []), strict=True)))
        summary = {
            "loss": sum(w * float(m["loss"]) for w, m in zip(weights, metrics, strict=True))
            / sum(weights),
            "num-examples": int(sum(weights)),
            "images-per-s": sum(float(m["images-per-s"]) for m in metrics),
            "train-seconds": sum(float(m["train-seconds"]) for m in metrics),
        }
        stats |= {"train": summary, "k_histogram": {str(k): ks[k] for k in sorted(ks)}}
        return aggregate_arrayrecords(contents, self.weighted_by_key), MetricRecord(summary)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Ask a seeded sample of nodes for their local verification accuracy."""
        if self.fraction_evaluate == 0.0:
            return []
        server_round += self.offset
        nodes = self._sample(grid, self.fraction_evaluate, self.min_evaluate_nodes, -server_round)
        return self._messages(arrays, config, nodes, server_round, MessageType.EVALUATE)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Example-weighted local accuracy over the clients that had validation pairs."""
        valid, _ = self._check_and_log_replies(replies, is_train=False, validate=False)
        metrics = [_metrics(m) for m in valid if float(_metrics(m).get("num-examples", 0)) > 0]
        if not metrics:
            return None
        total = sum(float(m["num-examples"]) for m in metrics)
        accuracy = sum(float(m["num-examples"]) * float(m["accuracy"]) for m in metrics) / total
        self.round_stats["client_accuracy"] = accuracy
        return MetricRecord({"accuracy": accuracy, "num-examples": int(total)})

    def _capture(self, server_round: int, previous: dict, msg: Message) -> None:
        """Store a client's update with the global model it started from (threat model)."""
        metrics = dict(_metrics(msg))
        partition_id = int(metrics.get("partition-id", msg.metadata.src_node_id))
        record = {
            "round": server_round,
            "partition_id": partition_id,
            "global": previous,
            "update": _arrays(msg).to_torch_state_dict(),
            "metrics": metrics,
        }
        path = self.capture_dir / f"round_{server_round:04d}" / f"partition_{partition_id}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: torch.save(record, tmp))


def _arrays(msg: Message) -> ArrayRecord:
    return next(iter(msg.content.array_records.values()))


def _metrics(msg: Message) -> MetricRecord:
    return next(iter(msg.content.metric_records.values()), MetricRecord())
