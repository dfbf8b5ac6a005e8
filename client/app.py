"""The Flower ClientApp: a SuperNode's partition, masked and mixed locally, trained for a round.

Thin over `ahm_core.federated`. The client's private state (ArcFace head over its own people,
optimiser, strategy network, RNGs) lives in `context.state` between rounds and, when the run
config names a `client-state-dir`, on disk too, so a restarted federation resumes exactly.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ahm_core.federated import (
    ClientStateStore,
    client_data,
    faulty_partitions,
    federated_data,
    inject_fault,
    local_evaluate,
    local_train,
    run_masking,
    split_run_config,
)

STATE_KEY = "ahm-client"
app = ClientApp()


def _node(context: Context) -> tuple[int, int]:
    return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local epochs from the global arrays; replies with the shared arrays and metrics."""
    cfg, options = split_run_config(context.run_config)
    partition_id, num_partitions = _node(context)
    server_round = int(msg.content["config"]["server-round"])
    shared = msg.content["arrays"].to_torch_state_dict()
    if partition_id in faulty_partitions(cfg, num_partitions):
        corrupted = inject_fault(cfg, shared)
        return _reply(msg, corrupted, {"num-examples": 1, "partition-id": partition_id})
    data = federated_data(cfg)
    client = client_data(cfg, data, partition_id, num_partitions)
    store = ClientStateStore(options["client-state-dir"], partition_id)
    state = None
    if STATE_KEY in context.state:
        state = context.state[STATE_KEY]["trainer"]
    elif options["client-state-dir"]:
        state = store.load_before(server_round)
    result = local_train(cfg, data, client, run_masking(cfg, data), shared, server_round, state)
    context.state[STATE_KEY] = ConfigRecord({"trainer": result.state, "round": server_round})
    if options["client-state-dir"]:
        store.save(server_round, result.state)
    return _reply(msg, result.shared, {**result.metrics, "num-partitions": num_partitions})


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Verification accuracy of the global backbone on the client's validation pairs."""
    cfg, _ = split_run_config(context.run_config)
    partition_id, num_partitions = _node(context)
    data = federated_data(cfg)
    client = client_data(cfg, data, partition_id, num_partitions)
    shared = msg.content["arrays"].to_torch_state_dict()
    metrics = local_evaluate(cfg, data, client, run_masking(cfg, data), shared)
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


def _reply(msg: Message, shared: dict, metrics: dict) -> Message:
    content = RecordDict({"arrays": ArrayRecord(shared), "metrics": MetricRecord(metrics)})
    return Message(content, reply_to=msg)
