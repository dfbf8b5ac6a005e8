"""The ServerApp's Prometheus exporter: Flower has none of its own, so the server publishes one.

Metrics (prefix `ahm_`): the current round, round duration (histogram), clients sampled /
succeeded / failed, updates rejected by reason, train loss, verification accuracy, how often each
k was chosen, and DP-FedAvg's epsilon. It serves on `address:port` (127.0.0.1 by default);
port 0 turns it off.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

ROUND_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)


class ServerMetrics:
    """Prometheus metrics of a federated run, in a registry of their own."""

    def __init__(self, address: str = "127.0.0.1", port: int = 0) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.round = Gauge("ahm_round", "Current federated round", registry=r)
        self.round_seconds = Histogram(
            "ahm_round_duration_seconds", "Wall time of a round", buckets=ROUND_BUCKETS, registry=r
        )
        self.clients = Counter(
            "ahm_clients",
            "Clients by outcome (sampled, succeeded, failed)",
            ["outcome"],
            registry=r,
        )
        self.rejected = Counter(
            "ahm_updates_rejected", "Client updates rejected, by reason", ["reason"], registry=r
        )
        self.train_loss = Gauge("ahm_train_loss", "Weighted mean client train loss", registry=r)
        self.accuracy = Gauge(
            "ahm_verification_accuracy", "Global model verification accuracy", registry=r
        )
        self.k_chosen = Counter("ahm_k_chosen", "Samples mixed with each k", ["k"], registry=r)
        self.dp_epsilon = Gauge("ahm_dp_epsilon", "DP-FedAvg epsilon spent so far", registry=r)
        self.server = None
        if port:
            self.server, _ = start_http_server(port, addr=address, registry=r)

    def record_round(
        self,
        number: int,
        seconds: float,
        sampled: int,
        succeeded: int,
        failed: int,
        rejected: Mapping[str, int] | None = None,
        train_loss: float | None = None,
        accuracy: float | None = None,
        k_histogram: Mapping[int | str, int] | None = None,
        dp_epsilon: float | None = None,
    ) -> None:
        """Publish what one round did."""
        self.round.set(number)
        self.round_seconds.observe(seconds)
        for outcome, count in (("sampled", sampled), ("succeeded", succeeded), ("failed", failed)):
            self.clients.labels(outcome=outcome).inc(count)
        for reason, count in (rejected or {}).items():
            self.rejected.labels(reason=reason).inc(count)
        if train_loss is not None:
            self.train_loss.set(train_loss)
        if accuracy is not None:
            self.accuracy.set(accuracy)
        for k, count in (k_histogram or {}).items():
            self.k_chosen.labels(k=str(k)).inc(count)
        if dp_epsilon is not None:
            self.dp_epsilon.set(dp_epsilon)

    def close(self) -> None:
        """Stop serving (the metrics stay readable from the registry)."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
