"""The Flower ClientApp: a SuperNode's partition, masked and mixed locally, trained for a round.

Thin over `ahm_core.federated`. The client's private state (ArcFace head over its own people,
optimiser, strategy network, RNGs) lives in `context.state` between rounds and, when the run
config names a `client-state-dir`, on disk too, so a restarted federation resumes exactly.
FedProx's `proximal-mu`, when the server sends it, becomes a term of the local loss; with
client-side DP-FedAvg, Flower's clipping mod clips the update before it leaves.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable

from ahm_core.faults import corrupt, fail_before_training, faulty_partitions
from ahm_core.federated import (
    ClientStateStore,
    client_data,
    federated_data,
    local_evaluate,
    local_train,
    run_masking,
    split_run_config,
)

STATE_KEY = "ahm-client"
CLIPPING_MODS = {"client_fixed": fixedclipping_mod, "client_adaptive": adaptiveclipping_mod}
app = ClientApp()


def _node(context: Context) -> tuple[int, int]:
    return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])


def dp_clipping(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's clipping mod of the configured client-side DP-FedAvg, or nothing."""
    cfg, _ = split_run_config(context.run_config)
    mod = CLIPPING_MODS.get(cfg.federation.dp)
    return call_next(msg, context) if mod is None else mod(msg, context, call_next)


@app.train(mods=[dp_clipping])
def train(msg: Message, context: Context) -> Message:
    """Local epochs from the global arrays; replies with the shared arrays and metrics."""
    cfg, options = split_run_config(context.run_config)
    partition_id, num_partitions = _node(context)
    config = msg.content["config"]
    server_round = int(config["server-round"])
    proximal_mu = float(config.get("proximal-mu", 0.0))
    shared = msg.content["arrays"].to_torch_state_dict()
    faulty = partition_id in faulty_partitions(cfg, num_partitions)
    if faulty:
        fail_before_training(cfg)
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
    arrays, metrics = result.shared, {**result.metrics, "num-partitions": num_partitions}
    if faulty:
        arrays, metrics = corrupt(
            cfg, shared, arrays, metrics, seed=server_round * 100_003 + partition_id
        )
    return _reply(msg, arrays, metrics)


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
