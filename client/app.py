"""The Flower ClientApp: a SuperNode's partition, masked and mixed locally, trained for a round.

Thin over `ahm_core.federated`. The client's private state (ArcFace head over its own people,
optimiser, strategy network, RNGs) lives in `context.state` between rounds and, when the run
config names a `client-state-dir`, on disk too, so a restarted federation resumes exactly.
FedProx's `proximal-mu`, when the server sends it, becomes a term of the local loss; with
client-side DP-FedAvg, Flower's clipping mod clips the update before it leaves, with local DP
Flower's LocalDpMod clips and noises it, with secure aggregation Flower's SecAgg+ mod masks it;
injected faults are a mod inside them all (`client.mods`).
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ahm_core.federated import (
    ClientStateStore,
    client_data,
    federated_data,
    local_evaluate,
    local_train,
    parse_flower_run_config,
    run_masking,
)
from client.mods import (
    dp_clipping,
    injected_faults,
    local_dp,
    node_partition,
    secure_aggregation,
)

STATE_KEY = "ahm-client"
app = ClientApp()


@app.train(mods=[secure_aggregation, dp_clipping, local_dp, injected_faults])
def train(msg: Message, context: Context) -> Message:
    """Local epochs from the global arrays; replies with the shared arrays and metrics."""
    cfg, options = parse_flower_run_config(context.run_config)
    partition_id, num_partitions = node_partition(context)
    config = msg.content["config"]
    server_round = int(config["server-round"])
    proximal_mu = float(config.get("proximal-mu", 0.0))
    shared = msg.content["arrays"].to_torch_state_dict()
    data = federated_data(cfg)
    client = client_data(cfg, data, partition_id, num_partitions)
    store = ClientStateStore(options["client-state-dir"], partition_id)
    state = None
    if STATE_KEY in context.state:
        state = context.state[STATE_KEY]["trainer"]
    elif options["client-state-dir"]:
        state = store.load_before(server_round)
    masking = run_masking(cfg, data)
    result = local_train(cfg, data, client, masking, shared, server_round, state, proximal_mu)
    context.state[STATE_KEY] = ConfigRecord({"trainer": result.state, "round": server_round})
    if options["client-state-dir"]:
        store.save(server_round, result.state)
    return _reply(msg, result.shared, {**result.metrics, "num-partitions": num_partitions})


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Verification accuracy of the global backbone on the client's validation pairs."""
    cfg, _ = parse_flower_run_config(context.run_config)
    partition_id, num_partitions = node_partition(context)
    data = federated_data(cfg)
    client = client_data(cfg, data, partition_id, num_partitions)
    shared = msg.content["arrays"].to_torch_state_dict()
    metrics = local_evaluate(cfg, data, client, run_masking(cfg, data), shared)
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


def _reply(msg: Message, shared: dict, metrics: dict) -> Message:
    content = RecordDict({"arrays": ArrayRecord(shared), "metrics": MetricRecord(metrics)})
    return Message(content, reply_to=msg)
