"""The ClientApp's train mods, outermost first: Flower's SecAgg+ (the client's side of secure
aggregation), Flower's clipping of the configured client-side DP-FedAvg, Flower's local DP, then
the injected faults (`ahm_core.faults`), so a faulty update is clipped, noised and securely
aggregated as an honest one would be."""

from __future__ import annotations

import dataclasses
from functools import partial

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.mod import LocalDpMod, adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat

from ahm_core.faults import coalition_partition, corrupt, fail_before_training, faulty_partitions
from ahm_core.federated import parse_flower_run_config, seeded_globals

CLIPPING_MODS = {"client_fixed": fixedclipping_mod, "client_adaptive": adaptiveclipping_mod}


def node_partition(context: Context) -> tuple[int, int]:
    """The SuperNode's partition id and the number of partitions (its node config)."""
    return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])


def secure_aggregation(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """With `federation.secagg`, Flower's SecAgg+ mod: the client's side of the protocol
    (`server.secagg`), around training that sends its update; without it, nothing."""
    cfg, _ = parse_flower_run_config(context.run_config)
    if not cfg.federation.secagg:
        return call_next(msg, context)
    uniform = cfg.federation.dp != "none"
    return secaggplus_mod(
        msg, context, partial(_update_reply, call_next=call_next, uniform=uniform)
    )


def _update_reply(
    msg: Message, context: Context, call_next: ClientAppCallable, uniform: bool
) -> Message:
    """The reply as SecAgg+ masks it: the update (trained - received, in sorted key order: a
    clipping range fits an update, not a BatchNorm variance), weighted by num-examples (by 1
    under DP-FedAvg, whose mean is unweighted), with the metrics in the clear. The training
    below sees the message without the protocol's own record (Flower's clipping mod expects
    the server's config alone)."""
    msg.content = RecordDict({k: v for k, v in msg.content.items() if k != RECORD_KEY_CONFIGS})
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    start, trained = msg.content["arrays"], reply.content["arrays"]
    update = [trained[k].numpy() - start[k].numpy() for k in sorted(start)]
    metrics = reply.content["metrics"]
    weight = 1 if uniform else int(metrics["num-examples"])
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(update), weight, {})
    # Flower 1.42's secaggplus_mod reads the reply in the legacy FitRes record layout
    content = recorddict_compat.fitres_to_recorddict(fitres, False)
    content["metrics"] = metrics  # beside the legacy records, which hold no lists
    return Message(content, reply_to=msg)


def dp_clipping(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's clipping mod of the configured client-side DP-FedAvg, or nothing."""
    cfg, _ = parse_flower_run_config(context.run_config)
    mod = CLIPPING_MODS.get(cfg.federation.dp)
    return call_next(msg, context) if mod is None else mod(msg, context, call_next)


def local_dp(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's LocalDpMod as `federation.local_dp_*` configure it, or nothing: the update
    clipped, Gaussian noise on every value sent, drawn from numpy's RNG seeded by the run, the
    round and the partition (so a run repeats); running variances the noise pushed below 0 are
    floored there (post-processing, which keeps the guarantee; BatchNorm takes their root)."""
    cfg, _ = parse_flower_run_config(context.run_config)
    f = cfg.federation
    if not f.local_dp:
        return call_next(msg, context)
    mod = LocalDpMod(
        f.local_dp_clipping_norm, f.local_dp_sensitivity, f.local_dp_epsilon, f.local_dp_delta
    )
    partition_id, _ = node_partition(context)
    number = int(msg.content["config"]["server-round"])
    with seeded_globals((cfg.train.seed * 1_000_003 + number) * 100_003 + partition_id):
        reply = mod(msg, context, call_next)
    if reply.has_error():
        return reply
    arrays = {
        k: Array(np.maximum(v.numpy(), 0)) if k.endswith("running_var") else v
        for k, v in reply.content["arrays"].items()
    }
    content = RecordDict({"arrays": ArrayRecord(arrays), "metrics": reply.content["metrics"]})
    return Message(content, reply_to=msg)


def injected_faults(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """On a faulty partition (`federation.fault_*`): fail before training, or train honestly
    (a pooling coalition on its first member's partition) and send the corrupted reply instead;
    elsewhere nothing."""
    cfg, _ = parse_flower_run_config(context.run_config)
    partition_id, num_partitions = node_partition(context)
    if partition_id not in faulty_partitions(cfg, num_partitions):
        return call_next(msg, context)
    fail_before_training(cfg)
    start = msg.content["arrays"].to_torch_state_dict()
    trained_on = coalition_partition(cfg, partition_id, num_partitions)
    if trained_on != partition_id:
        node_config = {**context.node_config, "partition-id": trained_on}
        context = dataclasses.replace(context, node_config=node_config)
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    seed = int(msg.content["config"]["server-round"]) * 100_003 + partition_id
    honest = reply.content["arrays"].to_torch_state_dict()
    metrics = {**reply.content["metrics"], "partition-id": partition_id}
    arrays, metrics = corrupt(cfg, start, honest, metrics, seed=seed)
    content = RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord(metrics)})
    return Message(content, reply_to=msg)
