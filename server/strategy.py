"""The server's strategy: any of Flower's own (`STRATEGIES`), optionally inside one of Flower's
DP-FedAvg wrappers (`DP_WRAPPERS`), with what a face-recognition federation needs around it.

`Guarded` wraps that strategy as Flower's DP wrappers wrap theirs: it holds `self.strategy`,
overrides the four hooks of Flower's Strategy and calls into the wrapped one:

- configure: a seeded draw of nodes (sorted ids, so it depends on the seed and the node set
  only), rounds numbered from `first_round` (a resumed run continues the count, which FedAdam's
  bias correction reads);
- aggregate_train: every reply checked (`server.replies`) and screened (`ahm_core.screening`),
  bounded in what it moves, weights bounded, the chosen clients' updates captured for the threat
  model, then the wrapped strategy's own aggregation over the rest, in partition order; the
  result keeps the model's dtypes. A round in which nothing passes keeps the global model;
- aggregate_evaluate: the same for the clients' verification accuracy.

`build_strategy` composes Guarded(DP wrapper(base)) for a config, Guarded outermost, so the DP
wrapper clips and noises only what passed; `server_state` / `load_server_state` carry the server
optimiser's state (FedAvgM momentum, FedAdam/FedYogi/FedAdagrad moments, adaptive clipping
norm) through a checkpoint.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    Bulyan,
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    Strategy,
)

from ahm_core.config import AHMConfig, ConfigError, FederationConfig, check_choice
from ahm_core.federated import seeded_globals
from ahm_core.io import CheckpointError, atomic_write
from ahm_core.screening import bounded, bounded_weights, screen_round
from server.replies import (
    Limits,
    RejectedError,
    TrainReply,
    check_evaluate,
    check_train,
    template,
)
from server.secagg import check_secagg


def _fedopt(f: FederationConfig, cfg: AHMConfig) -> dict[str, Any]:
    return {
        "eta": f.fedopt_eta,
        "eta_l": cfg.train.lr,
        "beta_1": f.fedopt_beta_1,
        "beta_2": f.fedopt_beta_2,
        "tau": f.fedopt_tau,
    }


# name -> (Flower's class, its parameters from the config)
STRATEGIES: dict[str, tuple[type[Strategy], Any]] = {
    "fedavg": (FedAvg, lambda f, cfg: {}),
    "fedprox": (FedProx, lambda f, cfg: {"proximal_mu": f.proximal_mu}),
    "fedavgm": (
        FedAvgM,
        lambda f, cfg: {"server_learning_rate": f.server_lr, "server_momentum": f.server_momentum},
    ),
    "fedadam": (FedAdam, _fedopt),
    "fedyogi": (FedYogi, _fedopt),
    "fedadagrad": (
        FedAdagrad,
        lambda f, cfg: {"eta": f.fedopt_eta, "eta_l": cfg.train.lr, "tau": f.fedopt_tau},
    ),
    "fedmedian": (FedMedian, lambda f, cfg: {}),
    "fedtrimmedavg": (FedTrimmedAvg, lambda f, cfg: {"beta": f.trim_beta}),
    "krum": (Krum, lambda f, cfg: {"num_malicious_nodes": f.malicious_clients}),
    "multikrum": (
        MultiKrum,
        lambda f, cfg: {
            "num_malicious_nodes": f.malicious_clients,
            "num_nodes_to_select": f.multikrum_select
            or max(1, f.min_clients - f.malicious_clients),
        },
    ),
    "bulyan": (Bulyan, lambda f, cfg: {"num_malicious_nodes": f.malicious_clients}),
}
DP_STRATEGIES = ("fedavg", "fedprox")  # a plain mean of the clipped updates, as DP needs
# federation.dp -> (Flower's wrapper, its parameters besides the wrapped strategy)
DP_WRAPPERS: dict[str, tuple[type[Strategy], Any]] = {
    "server_fixed": (
        DifferentialPrivacyServerSideFixedClipping,
        lambda f, n: {
            "noise_multiplier": f.dp_noise_multiplier,
            "clipping_norm": f.dp_clipping_norm,
            "num_sampled_clients": n,
        },
    ),
    "client_fixed": (
        DifferentialPrivacyClientSideFixedClipping,
        lambda f, n: {
            "noise_multiplier": f.dp_noise_multiplier,
            "clipping_norm": f.dp_clipping_norm,
            "num_sampled_clients": n,
        },
    ),
    "server_adaptive": (
        DifferentialPrivacyServerSideAdaptiveClipping,
        lambda f, n: _adaptive(f, n),
    ),
    "client_adaptive": (
        DifferentialPrivacyClientSideAdaptiveClipping,
        lambda f, n: _adaptive(f, n),
    ),
}
# State a server optimiser keeps between rounds, by attribute of Flower's strategies.
OPTIMISER_STATE = ("current_arrays", "momentum_vector", "m_t", "v_t")
DP_STATE = ("clipping_norm",)


def check_strategy(f: FederationConfig) -> None:
    """Raise `ConfigError` unless `federation.strategy` and `federation.dp` name one of
    `STRATEGIES` and `DP_WRAPPERS` and fit together."""
    check_choice("federation.strategy", f.strategy, STRATEGIES)
    check_choice("federation.dp", f.dp, ("none", *DP_WRAPPERS))
    if f.strategy == "bulyan" and f.min_clients < 4 * f.malicious_clients + 3:
        raise ConfigError(
            f"federation.min_clients: bulyan needs 4 * federation.malicious_clients + 3 = "
            f"{4 * f.malicious_clients + 3} clients a round, got {f.min_clients}"
        )
    check_secagg(f)
    if f.dp != "none" and f.strategy not in DP_STRATEGIES:
        raise ConfigError(
            f"federation.dp: DP-FedAvg's noise is calibrated to a mean of clipped updates; "
            f"expected federation.strategy in {', '.join(DP_STRATEGIES)}, got {f.strategy}"
        )


def _adaptive(f: FederationConfig, n: int) -> dict[str, Any]:
    return {
        "noise_multiplier": f.dp_noise_multiplier,
        "num_sampled_clients": n,
        "initial_clipping_norm": f.dp_clipping_norm,
        "target_clipped_quantile": f.dp_target_quantile,
        "clip_norm_lr": f.dp_clip_lr,
        "clipped_count_stddev": f.dp_clipped_count_stddev or None,
    }


@dataclass
class RoundStats:
    """What one round did, for rounds.json and the Prometheus exporter."""

    round: int
    started: float = field(default_factory=time.perf_counter)
    sampled: int = 0
    succeeded: int = 0  # replies without an error
    failed: int = 0  # errors and missing replies
    accepted: int = 0
    aggregated: int = 0  # updates the strategy averaged (Krum: one of the accepted)
    rejected: Counter = field(default_factory=Counter)  # train replies, by reason
    evaluate_rejected: Counter = field(default_factory=Counter)
    train_wall: float = 0.0
    train: dict[str, float] = field(default_factory=dict)
    k_histogram: dict[str, int] = field(default_factory=dict)
    k_pmf: dict[str, list[list[float]]] = field(default_factory=dict)  # by partition, per update
    contested: list[int] = field(default_factory=list)  # partitions two or more nodes claimed
    client_accuracy: float | None = None
    updates: list[dict[str, Any]] = field(default_factory=list)  # each reply's verdict

    def record(self) -> dict[str, Any]:
        """The round as plain data (rounds.json)."""
        data = asdict(self)
        del data["started"]
        data["rejected"], data["evaluate_rejected"] = (
            dict(self.rejected),
            dict(self.evaluate_rejected),
        )
        return data


class _SortedGrid:
    """The grid as the base strategy sees it: node ids in sorted order."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def get_node_ids(self) -> list[int]:
        return sorted(self.grid.get_node_ids())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)


def aggregate_train_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """The round's train metrics over the aggregated replies: weighted loss, totals, k counts."""
    metrics = [next(iter(r.metric_records.values())) for r in records]
    weights = [float(m[weight_key]) for m in metrics]
    ks: Counter = Counter()
    for m in metrics:
        ks.update(dict(zip(m["k-values"], m["k-counts"], strict=True)))
    summary: dict[str, Any] = {
        "loss": sum(w * float(m["loss"]) for w, m in zip(weights, metrics, strict=True))
        / sum(weights),
        "weight": sum(weights),
        "clients": len(metrics),
        "images-per-s": sum(float(m["images-per-s"]) for m in metrics),
        "train-seconds": sum(float(m["train-seconds"]) for m in metrics),
    }
    summary |= {f"k-{k}": ks[k] for k in sorted(ks)}
    return MetricRecord(summary)


class Guarded(Strategy):
    """Checks, screening, seeded sampling, round numbering and capture around the Flower
    strategy it wraps (`self.strategy`), which configures and aggregates."""

    def __init__(
        self,
        strategy: Strategy,
        cfg: AHMConfig,
        limits: Limits,
        first_round: int = 1,
        capture_dir: Path | None = None,
    ) -> None:
        super().__init__()
        self.strategy = strategy
        self.cfg, self.limits = cfg, limits
        self.offset = first_round - 1
        self.capture_dir = capture_dir
        self.stats = RoundStats(first_round)
        self._global: ArrayRecord | None = None

    @property
    def clipping_norm(self) -> float | None:
        """The DP wrapper's clipping norm now (adaptive clipping moves it); None without DP."""
        return getattr(self.strategy, "clipping_norm", None)

    def summary(self) -> None:
        """Log the guard's settings, then the wrapped strategy's."""
        f = self.cfg.federation
        log(
            INFO,
            "\t├──> Guarded: rounds from %d, screen=%s, capture_clients=%d",
            self.offset + 1,
            f.screen,
            f.capture_clients,
        )
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """A seeded sample of nodes gets the global arrays, as the base strategy configures."""
        number = server_round + self.offset
        self.stats = RoundStats(number)
        self._global = arrays
        with seeded_globals(self.cfg.train.seed * 1_000_003 + number):
            messages = self.strategy.configure_train(number, arrays, config, _SortedGrid(grid))
            messages = list(messages)
        self.stats.sampled = len(messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check and screen the replies, capture the chosen ones, aggregate the rest."""
        number = server_round + self.offset
        stats = self.stats
        stats.train_wall = time.perf_counter() - stats.started
        replies = sorted(replies, key=lambda m: m.metadata.src_node_id)
        answered = [m for m in replies if not m.has_error()]
        stats.succeeded = len(answered)
        stats.failed = stats.sampled - len(answered)
        checked = self._checked(answered)
        previous = self._global.to_torch_state_dict()
        f = self.cfg.federation
        if f.screen and checked:
            # Under SecAgg+ every reply holds the one aggregate: it is screened once, alone.
            screened = checked[:1] if f.secagg else checked
            verdicts = screen_round(previous, [c.state for c in screened], f)
            verdicts *= len(checked) // len(screened)
            for reply, verdict in zip(checked, verdicts, strict=True):
                stats.updates.append({"partition": reply.partition_id, **verdict._asdict()})
                if verdict.reason is not None:
                    detail = f"{verdict.reason}: weights moved {verdict.ratio:.3g} x their norm"
                    self._reject(reply.node, verdict.reason, detail)
            aggregated = bounded(previous, [c.state for c in checked], verdicts, f)
            checked = [c for c, v in zip(checked, verdicts, strict=True) if v.reason is None]
        else:
            aggregated = [c.state for c in checked]
        stats.accepted = len(checked)
        labelled = [c for c in checked if c.partition_id not in stats.contested]
        stats.k_pmf = {str(c.partition_id): c.k_pmf for c in labelled if c.k_pmf}
        if not checked:
            log(WARNING, "round %d: no update passed; the global model stays", number)
            return None, None
        # what the clients sent, as a server sees it: under SecAgg+ the aggregate, once
        for reply in labelled[: min(1, f.capture_clients) if f.secagg else f.capture_clients]:
            self._capture(number, previous, reply, len(checked) if f.secagg else 1)
        if f.dp == "none":
            weights = bounded_weights(
                [c.metrics["num-examples"] for c in checked], f.max_weight_ratio
            )
        else:  # DP-FedAvg averages uniformly: one client moves the mean by at most clip / n
            weights = [1.0] * len(checked)
        for reply, state, weight in zip(checked, aggregated, weights, strict=True):
            reply.message.content = RecordDict(  # what the base strategy reads
                {
                    "arrays": ArrayRecord(state),
                    "metrics": MetricRecord({**reply.metrics, "num-examples": weight}),
                }
            )
        with seeded_globals(self.cfg.train.seed * 1_000_003 + number):
            arrays, metrics = self.strategy.aggregate_train(number, [c.message for c in checked])
        if arrays is None:
            return None, metrics
        stats.train = {k: v for k, v in metrics.items() if not k.startswith("k-")}
        stats.aggregated = int(metrics["clients"])
        stats.k_histogram = {k[2:]: int(v) for k, v in metrics.items() if k.startswith("k-")}
        return _conformed(arrays, self._global), metrics

    def _checked(self, answered: list[Message]) -> list[TrainReply]:
        """The replies that pass `check_train`, in (partition, node) order. The node id is the
        SuperLink's, the partition id only the client's claim: nodes that claim one partition
        are each kept on their merits (nothing tells the honest one from the other), and their
        contested label keeps them out of the capture and the PMF log."""
        expected = template(self._global)
        checked: list[TrainReply] = []
        for msg in answered:
            try:
                checked.append(check_train(msg, expected, self.limits))
            except RejectedError as err:
                self._reject(msg.metadata.src_node_id, err.reason, str(err))
        claims = Counter(c.partition_id for c in checked)
        self.stats.contested = sorted(p for p, n in claims.items() if n > 1)
        for partition in self.stats.contested:
            nodes = sorted(c.node for c in checked if c.partition_id == partition)
            log(
                WARNING,
                "round %d: partition %d claimed by nodes %s",
                self.stats.round,
                partition,
                nodes,
            )
        return sorted(checked, key=lambda c: (c.partition_id, c.node))

    def _reject(self, node: int, reason: str, detail: str, phase: str = "train") -> None:
        counter = self.stats.rejected if phase == "train" else self.stats.evaluate_rejected
        counter[reason] += 1
        log(
            WARNING,
            "round %d: %s reply of node %d rejected (%s)",
            self.stats.round,
            phase,
            node,
            detail,
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """A seeded sample of nodes verifies the global backbone on its own pairs."""
        number = server_round + self.offset
        with seeded_globals(self.cfg.train.seed * 1_000_003 - number):
            messages = self.strategy.configure_evaluate(number, arrays, config, _SortedGrid(grid))
            return list(messages)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Pair-weighted local accuracy over the checked replies that had pairs."""
        messages = []
        for msg in replies:
            if msg.has_error():
                continue
            try:
                metrics = check_evaluate(msg, self.limits)
            except RejectedError as err:
                self._reject(msg.metadata.src_node_id, err.reason, str(err), phase="evaluate")
                continue
            if metrics["num-examples"] > 0:
                record = {"num-examples": metrics["num-examples"], "accuracy": metrics["accuracy"]}
                msg.content = RecordDict({"metrics": MetricRecord(record)})
                messages.append(msg)
        if not messages:
            return None
        result = self.strategy.aggregate_evaluate(server_round + self.offset, messages)
        if result is not None:
            self.stats.client_accuracy = float(result["accuracy"])
        return result

    def _capture(self, number: int, previous: dict, reply: TrainReply, clients: int) -> None:
        """Store a client's update, or under SecAgg+ the mean of `clients` clients' (the one
        reply's arrays), with the global model it started from (threat model)."""
        record = {
            "round": number,
            "partition_id": reply.partition_id,
            "clients": clients,
            "global": previous,
            "update": reply.state,
            "metrics": reply.metrics,
        }
        name = "aggregate.pt" if clients > 1 else f"partition_{reply.partition_id}.pt"
        path = self.capture_dir / f"round_{number:04d}" / name
        atomic_write(path, lambda tmp: torch.save(record, tmp))


def _conformed(arrays: ArrayRecord, like: ArrayRecord) -> ArrayRecord:
    """`arrays` in the dtypes of `like`, running variances at least 0: DP-FedAvg's noise can
    push one below, and BatchNorm would take its square root (a floor is post-processing, which
    keeps the DP guarantee)."""
    out = {}
    for key, array in arrays.items():
        value, dtype = array.numpy(), np.dtype(like[key].dtype)
        if value.dtype != dtype:
            value = value.astype(dtype)
        if key.endswith("running_var"):
            value = np.maximum(value, 0)
        out[key] = Array(np.asarray(value))
    return ArrayRecord(out)


def build_strategy(
    cfg: AHMConfig, limits: Limits, first_round: int = 1, capture_dir: Path | None = None
) -> Guarded:
    """`federation.strategy`, inside `federation.dp`'s wrapper when set, inside `Guarded`."""
    f = cfg.federation
    check_strategy(f)
    base, params = STRATEGIES[f.strategy]
    strategy = base(
        fraction_train=f.fraction_train,
        fraction_evaluate=f.fraction_evaluate,
        min_train_nodes=f.min_clients,
        min_evaluate_nodes=f.min_clients if f.fraction_evaluate > 0 else 0,
        min_available_nodes=f.min_clients,
        train_metrics_aggr_fn=aggregate_train_metrics,
        **params(f, cfg),
    )
    if f.dp != "none":
        wrapper, dp_params = DP_WRAPPERS[f.dp]
        sampled = max(f.min_clients, int(limits.num_nodes * f.fraction_train))  # as FedAvg does
        try:
            strategy = wrapper(strategy, **dp_params(f, sampled))
        except ValueError as err:  # Flower's own check of the DP parameters
            raise ConfigError(f"federation.dp={f.dp}: {err}") from None
    return Guarded(strategy, cfg, limits, first_round, capture_dir)


def _layers(strategy: Strategy) -> list[Strategy]:
    """The strategy and the ones it wraps, outermost first: Guarded, a DP wrapper, the base."""
    layers = [strategy]
    while isinstance(getattr(layers[-1], "strategy", None), Strategy):
        layers.append(layers[-1].strategy)
    return layers


def _stateful(strategy: Strategy) -> list[tuple[Strategy, tuple[str, ...]]]:
    """Where the state between rounds lives: the base's optimiser, the DP wrapper's clipping."""
    *wrappers, base = _layers(strategy)
    dp_classes = tuple(cls for cls, _ in DP_WRAPPERS.values())
    dp = [w for w in wrappers if isinstance(w, dp_classes)]
    return [(base, OPTIMISER_STATE), *((w, DP_STATE) for w in dp)]


def _to_torch(value: Any) -> Any:
    if isinstance(value, ArrayRecord):
        return {"array_record": value.to_torch_state_dict()}
    if isinstance(value, np.ndarray | np.generic):  # a 0-d difference is a numpy scalar
        return torch.from_numpy(np.array(value))
    if isinstance(value, dict):
        return {k: _to_torch(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_torch(v) for v in value]
    return value


def _from_torch(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"array_record"}:
        return ArrayRecord(value["array_record"])
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        return {k: _from_torch(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_torch(v) for v in value]
    return value


def server_state(strategy: Strategy) -> dict[str, Any]:
    """What the server optimiser (and adaptive clipping) carries between rounds, as tensors."""
    state = {}
    for obj, names in _stateful(strategy):
        for name in names:
            if getattr(obj, name, None) is not None:
                state[name] = _to_torch(getattr(obj, name))
    return state


def check_server_state(label: str, saved: Any, model: dict[str, torch.Tensor]) -> None:
    """Raise CheckpointError naming `label` and the field unless `saved` is what `server_state`
    writes for a model of `model`'s arrays: the optimiser's arrays (a mapping by the model's
    keys, a list in their order, or the model itself) finite and of the model's shapes, and a
    finite positive clipping norm."""
    if not isinstance(saved, dict) or not set(saved) <= {*OPTIMISER_STATE, *DP_STATE}:
        raise CheckpointError(f"{label}: server_state: expected {', '.join(OPTIMISER_STATE)}")
    shapes = {key: tuple(array.shape) for key, array in model.items()}
    for name, value in saved.items():
        field = f"server_state.{name}"
        if name in DP_STATE:
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 < value < math.inf
            ):
                raise CheckpointError(f"{label}: {field}: expected a finite positive number")
            continue
        if isinstance(value, dict) and set(value) == {"array_record"}:
            value, field = value["array_record"], f"{field}.array_record"
        arrays = list(value.items()) if isinstance(value, dict) else None
        if isinstance(value, list):
            arrays = list(zip(shapes, value, strict=False)) if len(value) == len(shapes) else None
        if arrays is None or {key for key, _ in arrays} != set(shapes):
            raise CheckpointError(f"{label}: {field}: expected one array per model array")
        for key, array in arrays:
            if not isinstance(array, torch.Tensor) or tuple(array.shape) != shapes[key]:
                raise CheckpointError(f"{label}: {field}.{key}: expected an array of {shapes[key]}")
            if array.is_floating_point() and not torch.isfinite(array).all():
                raise CheckpointError(f"{label}: {field}.{key}: holds NaN or infinite values")


def load_server_state(strategy: Strategy, state: dict[str, Any]) -> None:
    """Restore what `server_state` saved."""
    for obj, names in _stateful(strategy):
        for name in names:
            if name in state:
                setattr(obj, name, _from_torch(state[name]))
