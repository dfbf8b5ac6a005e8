"""The server side of a federated run: the global model from round 0, its evaluation on held-out
identities after every round, the per-round record (`rounds.json`), an atomic checkpoint per
round, resume from it, and the Prometheus exporter.

Resume: started again on the same `out-dir`, the run continues after the last checkpointed
round with the same config (only `federation.rounds` may grow); with clients that keep their
state on disk (`client-state-dir`) and full participation it ends with the same model as an
uninterrupted run. With `fraction_train` < 1 the seeded draw is over node ids, which a
restarted simulation assigns afresh.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from logging import INFO
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid

from ahm_core.checkpoints import conform, in_range, records, sections
from ahm_core.config import AHMConfig, refuse_changed_config, to_dict
from ahm_core.data.benchmarks import load_benchmarks
from ahm_core.evaluate import benchmark_line
from ahm_core.federated import (
    client_data,
    evaluate_global,
    federated_data,
    initial_state,
    run_masking,
)
from ahm_core.io import atomic_write, load_checkpoint
from ahm_core.masking.methods import mixing_ks
from ahm_core.privacy import dp_sgd_spent, epsilon_spent, local_dp_std
from server.metrics import ServerMetrics
from server.replies import Limits
from server.secagg import SecureGrid
from server.strategy import (
    Guarded,
    build_strategy,
    check_server_state,
    load_server_state,
    server_state,
)

CHECKPOINT_KEYS = ("round", "state", "history", "config", "server_state")


def progress_line(record: dict[str, Any], rounds: int) -> str:
    """A round's line in the log: the global model's accuracy, what became of the clients."""
    line = f"round {record['round']}/{rounds}: verification accuracy {record['accuracy']:.4f}"
    if record["round"] == 0:
        return f"{line} (the initial model)"
    rejected = sum(record["rejected"].values())
    return (
        f"{line}; clients: {record['accepted']} of {record['sampled']} accepted, "
        f"{rejected} rejected, {record['failed']} failed; {record['seconds']:.1f} s"
    )


class ServerRun:
    """One federated run's server, writing under `options['out-dir']`."""

    def __init__(self, cfg: AHMConfig, options: dict[str, Any]) -> None:
        self.cfg, self.options = cfg, options
        self.out = Path(options["out-dir"]).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.checkpoint = self.out / "checkpoint.pt"
        self.data = federated_data(cfg)
        self.masking = run_masking(cfg, self.data)
        self.benchmarks = load_benchmarks(cfg.data)
        self.state = initial_state(cfg, self.masking, self.data)
        self.history: list[dict] = []
        self.done = 0  # rounds finished before this session
        self.saved_server_state: dict[str, Any] = {}
        if options["resume"] and self.checkpoint.exists():
            self._resume()
        self.strategy: Guarded | None = None
        self.metrics: ServerMetrics | None = None

    def _resume(self) -> None:
        saved = load_checkpoint(self.checkpoint, required=CHECKPOINT_KEYS)
        label = str(self.checkpoint)
        config = sections(label, saved["config"])
        refuse_changed_config(self.checkpoint, config, self.cfg)
        rounds = config.get("federation", {}).get("rounds")
        done = in_range(label, "round", saved["round"], rounds if isinstance(rounds, int) else 0)
        conform(label, saved["state"], self.state, "state")
        records(label, "history", saved["history"], "round", done + 1)
        check_server_state(label, saved["server_state"], self.state)
        self.state, self.history, self.done = saved["state"], saved["history"], saved["round"]
        self.saved_server_state = saved["server_state"]
        self._write_rounds()  # a kill between the checkpoint and rounds.json left it stale
        log(INFO, "resuming %s after round %d", self.checkpoint, self.done)

    def limits(self, grid: Grid) -> Limits:
        """What bounds a client's reply: the partitions (the SuperNodes' count, or the
        configured one if larger), the federation's images and a client's pairs and k."""
        f = self.cfg.federation
        images, nodes = len(self.data.train), len(list(grid.get_node_ids()))
        return Limits(
            num_nodes=nodes,
            num_partitions=max(f.num_clients, nodes),
            max_examples=images,
            max_samples=images * f.local_epochs,
            max_pairs=f.eval_pairs,
            max_k=max(mixing_ks(self.cfg), default=2),
        )

    def run(self, grid: Grid) -> dict:
        """The configured strategy for the remaining rounds; returns rounds.json's contents."""
        f = self.cfg.federation
        remaining = f.rounds - self.done
        if remaining <= 0:
            log(INFO, "%s: all %d rounds done", self.checkpoint, f.rounds)
            return self._summary()
        limits = self.limits(grid)
        self.strategy = build_strategy(
            self.cfg, limits, self.done + 1, capture_dir=self.out / "captured"
        )
        if f.secagg:  # the strategy trains over SecAgg+, and evaluates as before
            grid = SecureGrid(grid, f, limits)
        load_server_state(self.strategy, self.saved_server_state)
        port = int(self.options["metrics-port"])
        self.metrics = ServerMetrics(str(self.options["metrics-address"]), port)
        try:
            self.strategy.start(
                grid,
                ArrayRecord(self.state),
                num_rounds=remaining,
                timeout=f.round_timeout,
                evaluate_fn=self.evaluate,
            )
        finally:
            self.metrics.close()
        return self._summary()

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """After each round: verify the global model, record the round, checkpoint it."""
        if server_round == 0 and self.done:
            return None  # round `done` was evaluated before the restart
        number = server_round + self.done
        self.state = arrays.to_torch_state_dict()
        report = evaluate_global(
            self.cfg, self.data.faces, self.data.pairs, self.masking, self.state
        )
        record: dict[str, Any] = {"round": number, "accuracy": report["accuracy"]}
        if number > 0:
            stats = self.strategy.stats
            record["seconds"] = time.perf_counter() - stats.started
            record |= stats.record()
            record |= self._privacy(stats.aggregated > 0, number)
            rejected = stats.rejected + Counter(
                {f"evaluate_{k}": v for k, v in stats.evaluate_rejected.items()}
            )
            self.metrics.record_round(
                number,
                record["seconds"],
                sampled=stats.sampled,
                succeeded=stats.succeeded,
                failed=stats.failed,
                rejected=rejected,
                train_loss=stats.train.get("loss"),
                accuracy=report["accuracy"],
                k_histogram=stats.k_histogram,
                dp_epsilon=record.get("dp", {}).get("epsilon"),
            )
        record["verification"] = report
        record["benchmarks"] = {
            b.name: evaluate_global(self.cfg, b.faces, b.pairs, self.masking, self.state)
            for b in self.benchmarks
        }
        self.history.append(record)
        log(INFO, "%s", progress_line(record, self.cfg.federation.rounds))
        for name, bench in record["benchmarks"].items():
            log(INFO, "round %d: %s %s", number, name, benchmark_line(bench))
        self._save(number)
        return MetricRecord({"accuracy": report["accuracy"]})

    def _privacy(self, released: bool, number: int) -> dict[str, Any]:
        """What each configured DP mechanism has spent after round `number`, logged."""
        f, t = self.cfg.federation, self.cfg.train
        spent: dict[str, Any] = {}
        if f.dp != "none":
            releases = sum(1 for r in self.history if r.get("dp", {}).get("released")) + released
            rate = min(1.0, self.strategy.stats.sampled / self.strategy.limits.num_partitions)
            spent["dp"] = {
                "released": released,
                "releases": releases,
                "noise_multiplier": f.dp_noise_multiplier,
                "clipping_norm": float(self.strategy.clipping_norm),
                "sample_rate": rate,
                "epsilon": epsilon_spent(f.dp_noise_multiplier, rate, releases, f.dp_delta),
                "delta": f.dp_delta,
            }
        if f.local_dp:  # each client releases once a round it is sampled: `number` at most
            std = local_dp_std(f.local_dp_sensitivity, f.local_dp_epsilon, f.local_dp_delta)
            z = std / f.local_dp_sensitivity
            spent["local_dp"] = {
                "epsilon_round": f.local_dp_epsilon,
                "noise_std": std,
                "clipping_norm": f.local_dp_clipping_norm,
                "releases": number,
                "epsilon": epsilon_spent(z, 1.0, number, f.local_dp_delta),
                "delta": f.local_dp_delta,
            }
        if t.dp_sgd:  # the client that spent most: local_epochs a round it is sampled
            spent["dp_sgd"] = max(
                (dp_sgd_spent(t, size, number * f.local_epochs) for size in self.client_sizes()),
                key=lambda s: s["epsilon"],
            )
        for name, entry in spent.items():
            log(
                INFO,
                "%s: (%.3f, %g)-DP after round %d",
                name,
                entry["epsilon"],
                entry["delta"],
                number,
            )
        return spent

    def client_sizes(self) -> list[int]:
        """Each partition's training images (the server derives the partitions as clients do)."""
        partitions = self.strategy.limits.num_partitions
        return [
            len(client_data(self.cfg, self.data, p, partitions).items) for p in range(partitions)
        ]

    def _save(self, number: int) -> None:
        saved = {
            "round": number,
            "state": self.state,
            "history": self.history,
            "config": to_dict(self.cfg),
            "server_state": server_state(self.strategy) if self.strategy else {},
        }
        atomic_write(self.checkpoint, lambda tmp: torch.save(saved, tmp))
        self._write_rounds()

    def _write_rounds(self) -> None:
        text = json.dumps(self._summary(), indent=2)
        atomic_write(self.out / "rounds.json", lambda tmp: tmp.write_text(text))

    def _summary(self) -> dict:
        return {
            "method": self.cfg.masking.method,
            "final_accuracy": self.history[-1]["accuracy"] if self.history else None,
            "final_benchmarks": self.history[-1].get("benchmarks", {}) if self.history else {},
            "rounds": self.history,
            "checkpoint": str(self.checkpoint),
            "config": to_dict(self.cfg),
        }
