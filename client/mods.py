"""The ClientApp's train mods, outermost first: Flower's clipping of the configured client-side
DP-FedAvg, then the injected faults (`ahm_core.faults`), so a faulty update is clipped as an
honest one would be."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable

from ahm_core.faults import corrupt, fail_before_training, faulty_partitions
from ahm_core.federated import parse_flower_run_config

CLIPPING_MODS = {"client_fixed": fixedclipping_mod, "client_adaptive": adaptiveclipping_mod}


def node_partition(context: Context) -> tuple[int, int]:
    """The SuperNode's partition id and the number of partitions (its node config)."""
    return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])


def dp_clipping(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's clipping mod of the configured client-side DP-FedAvg, or nothing."""
    cfg, _ = parse_flower_run_config(context.run_config)
    mod = CLIPPING_MODS.get(cfg.federation.dp)
    return call_next(msg, context) if mod is None else mod(msg, context, call_next)


def injected_faults(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """On a faulty partition (`federation.fault_*`): fail before training, or train honestly
    and send the corrupted reply instead; elsewhere nothing."""
    cfg, _ = parse_flower_run_config(context.run_config)
    partition_id, num_partitions = node_partition(context)
    if partition_id not in faulty_partitions(cfg, num_partitions):
        return call_next(msg, context)
    fail_before_training(cfg)
    start = msg.content["arrays"].to_torch_state_dict()
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    seed = int(msg.content["config"]["server-round"]) * 100_003 + partition_id
    honest = reply.content["arrays"].to_torch_state_dict()
    arrays, metrics = corrupt(cfg, start, honest, dict(reply.content["metrics"]), seed=seed)
    content = RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord(metrics)})
    return Message(content, reply_to=msg)
