"""Secure aggregation (`federation.secagg`): a round's training goes through Flower's SecAgg+
protocol, so the server learns the clients' weighted mean update and no client's own.

`SecureGrid` is the grid the strategy trains over. Its `send_and_receive` runs the four stages of
Flower's `SecAggPlusWorkflow` (setup, key sharing, masked vectors, unmasking) for a round's train
messages and answers with one reply per client that finished the protocol: its own metrics, and
as arrays the global model moved by the aggregate. The strategy then averages identical arrays,
so any strategy that aggregates by a mean (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi,
FedAdagrad, and client-side DP-FedAvg, whose noise goes on the mean) works unchanged; the robust
aggregators and server-side DP need each client's update and are refused (`check_secagg`).

Clients send updates, not weights (`client.mods.secure_aggregation`): SecAgg+ clips every value
to [-secagg_clipping_range, +secagg_clipping_range] before quantising it, a range an update fits
and a BatchNorm variance need not. What the server still checks: each client's metrics (its
weight, partition and k figures, in the clear beside its masked vector) before the vectors are
summed, the masked vector's shapes, and the aggregate against the screen's model bounds. Those
metrics travel as a MetricRecord beside the legacy records SecAgg+ reads, which take no lists.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from logging import WARNING
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import FitIns, bytes_to_ndarray, parameters_to_ndarrays
from flwr.common.logger import log
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid

from ahm_core.config import ConfigError, FederationConfig
from server.replies import TRAIN_METRICS, Limits, RejectedError, check_values

MEAN_STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
REJECTED = 1  # the error code of a reply refused before the masked vectors are summed


def check_secagg(f: FederationConfig) -> None:
    """Raise `ConfigError` for what secure aggregation cannot be combined with."""
    if not f.secagg:
        return
    if f.strategy not in MEAN_STRATEGIES:
        raise ConfigError(
            f"federation.secagg: the server sees only the clients' mean update, and "
            f"{f.strategy} needs each client's; expected federation.strategy in "
            f"{', '.join(MEAN_STRATEGIES)}"
        )
    if f.dp.startswith("server"):
        raise ConfigError(
            f"federation.dp: {f.dp} clips each client's update on the server, which secure "
            "aggregation hides from it; expected none, client_fixed or client_adaptive"
        )
    if f.min_clients < 2:
        raise ConfigError(
            "federation.min_clients: SecAgg+ masks each update with its neighbours', so it "
            f"needs at least 2 clients a round, got {f.min_clients}"
        )
    shares = f.secagg_num_shares
    # Flower tells the clients a count before making it odd for itself: an even one fails them
    if shares > 1 and not (shares == int(shares) and int(shares) % 2 and shares <= f.min_clients):
        raise ConfigError(
            f"federation.secagg_num_shares={shares:g}: a count of neighbours must be an odd "
            f"whole number at most federation.min_clients={f.min_clients} (each round samples "
            "no fewer); or a proportion of the round's clients up to 1"
        )


def share_count(value: float) -> int | float:
    """A SecAgg+ count as Flower takes it: a proportion of the sampled clients up to 1, else a
    number of clients."""
    return value if value <= 1 else int(value)


@dataclass(frozen=True)
class _Node:
    """What the workflow needs of a client proxy: its node id."""

    node_id: int


class _Round:
    """The legacy strategy and context one round of the workflow runs against: its sample is
    the strategy's messages, and its aggregate is kept, not applied."""

    def __init__(self, number: int, messages: Sequence[Message], arrays: ArrayRecord) -> None:
        self.messages = {m.metadata.dst_node_id: m for m in messages}
        self.state = RecordDict(
            {
                MAIN_CONFIGS_RECORD: ConfigRecord({WorkflowKey.CURRENT_ROUND: number}),
                MAIN_PARAMS_RECORD: ArrayRecord(),
            }
        )
        self.strategy, self.client_manager = self, self
        self.results: list[tuple[_Node, Any]] = []
        self.arrays = arrays

    def num_available(self) -> int:
        return len(self.messages)

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list:
        return [(_Node(node), FitIns(parameters, {})) for node in sorted(self.messages)]

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple:
        self.results = results
        return None, {}


class SecureGrid:
    """The grid with the SecAgg+ protocol in place of a train round's plain exchange."""

    def __init__(self, grid: Grid, f: FederationConfig, limits: Limits) -> None:
        self.grid, self.limits = grid, limits
        self.uniform = f.dp != "none"  # DP-FedAvg's mean is unweighted: every weight is 1
        self.workflow = SecAggPlusWorkflow(
            share_count(f.secagg_num_shares),
            share_count(f.secagg_reconstruction_threshold),
            max_weight=float(limits.max_examples),
            clipping_range=f.secagg_clipping_range,
            quantization_range=f.secagg_quantization_range,
            timeout=f.round_timeout,
        )
        self.template: dict[str, tuple[int, ...]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        """Train messages through SecAgg+ (see the module docstring); the rest as they are."""
        messages = list(messages)
        if not messages or messages[0].metadata.message_type != MessageType.TRAIN:
            return list(self.grid.send_and_receive(messages, timeout=timeout))
        arrays = messages[0].content["arrays"]
        number = int(messages[0].content["config"]["server-round"])
        self.template = {k: tuple(arrays[k].shape) for k in sorted(arrays)}
        protocol = _Round(number, messages, arrays)
        state = WorkflowState()
        vetted = _Vetting(self)
        for stage in (
            self.workflow.setup_stage,
            self.workflow.share_keys_stage,
            self.workflow.collect_masked_vectors_stage,
            self.workflow.unmask_stage,
        ):
            try:
                done = stage(vetted, protocol, state)
            except Exception as err:  # a client's malformed keys or shares end the round only
                log(WARNING, "round %d: SecAgg+ %s failed: %s", number, stage.__name__, err)
                return []
            if stage == self.workflow.setup_stage:  # the strategy's own messages travel,
                # each in a record of its own (the strategy's share one, the workflow adds
                # each node's own entries to it)
                state.nid_to_fitins = {
                    n: RecordDict(dict(m.content.items())) for n, m in protocol.messages.items()
                }
            if not done:
                log(WARNING, "round %d: SecAgg+ halted at %s", number, stage.__name__)
                return []
        return self._replies(protocol, vetted.replies)

    def _replies(self, protocol: _Round, sent: dict[int, Message]) -> list[Message]:
        """Each finishing client's stage-2 reply, its content now the global arrays moved by
        the aggregate update and its own metrics."""
        if not protocol.results:
            return []
        update = parameters_to_ndarrays(protocol.results[0][1].parameters)
        keys = sorted(protocol.arrays)  # the order the clients sent their updates in
        start = {key: protocol.arrays[key].numpy() for key in keys}
        moved = {
            key: Array((start[key] + delta).astype(start[key].dtype))
            for key, delta in zip(keys, update, strict=True)
        }
        replies = []
        for node, _ in protocol.results:
            reply = sent[node.node_id]
            metrics = reply.content.metric_records["metrics"]
            reply.content = RecordDict({"arrays": ArrayRecord(moved), "metrics": metrics})
            replies.append(reply)
        return replies


class _Vetting:
    """The grid the workflow talks through: a masked-vector reply whose metrics or shapes are
    wrong is turned into an error before the workflow sums it (it then unmasks the rest as if
    that client had dropped out)."""

    def __init__(self, secure: SecureGrid) -> None:
        self.secure = secure
        self.replies: dict[int, Message] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.secure.grid, name)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        out = []
        for reply in self.secure.grid.send_and_receive(messages, timeout=timeout):
            if reply.has_error() or Key.MASKED_PARAMETERS not in _configs(reply):
                out.append(reply)
                continue
            try:
                self._check(reply)
            except RejectedError as err:
                node = reply.metadata.src_node_id
                log(WARNING, "SecAgg+: masked vector of node %d rejected (%s)", node, err)
                out.append(Message(Error(REJECTED, str(err)), reply_to=reply))
                continue
            self.replies[reply.metadata.src_node_id] = reply
            out.append(reply)
        return out

    def _check(self, reply: Message) -> None:
        content = reply.content
        try:
            weight = content.metric_records["fitres.num_examples"]["num_examples"]
            metrics = content.metric_records["metrics"]
            vectors = [bytes_to_ndarray(b) for b in _configs(reply)[Key.MASKED_PARAMETERS]]
        except (KeyError, TypeError, ValueError, OSError) as err:
            raise RejectedError("malformed", f"not a SecAgg+ reply ({err})") from None
        checked = check_values(metrics, TRAIN_METRICS, self.secure.limits)
        expected = 1 if self.secure.uniform else checked["num-examples"]
        if weight != expected:
            raise RejectedError("metrics", f"its weight {weight!r}, expected {expected}")
        shapes = [(1,), *self.secure.template.values()]
        if [v.shape for v in vectors] != shapes or any(v.dtype.kind not in "iu" for v in vectors):
            raise RejectedError("arrays", "masked vector of other shapes than the model's")


def _configs(reply: Message) -> ConfigRecord:
    return reply.content.config_records.get(RECORD_KEY_CONFIGS, ConfigRecord())
