"""Every hostile client of the robustness probes, each a whole in-process federation
(`simulations.local`): a mode the checks or the screen reject ends with exactly the model of the
honest clients alone (the hostile ones failing instead), with the reason counted in every round;
a mode that is kept (a false partition label, an honest replay) ends as the clean run does.

Hostile replies come two ways: the project's fault mod (`federation.fault_mode`, the coalition
modes included) and a transport-level tamperer (`Tampered`), a node that sends whatever it
likes in place of its honest reply. A bool num-examples is not among them: Flower's
MetricRecord refuses to hold one, so no node can send it."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from scales import ONE_ROUND, config

from ahm_core.config import AHMConfig
from ahm_core.faults import faulty_partitions
from simulations.local import FIRST_NODE_ID, LocalGrid, run_local

pytestmark = pytest.mark.slow
NODES = 6
ROUNDS = 2
Tamper = Callable[[str, RecordDict, int], RecordDict]  # (phase, honest reply, round) -> sent


def base(**extra) -> AHMConfig:
    return config(
        ONE_ROUND,
        **{
            "federation.num_clients": NODES,
            "federation.min_clients": NODES,
            "federation.rounds": ROUNDS,
            "federation.fraction_evaluate": 1.0,
            **extra,
        },
    )


ONE, PAIR = 1 / NODES, 2 / NODES  # fault fractions: one hostile client, a coalition of two


def hostile_nodes(fraction: float) -> set[int]:
    """The nodes of the partitions the fault mod would make hostile at `fraction`."""
    cfg = base(**{"federation.fault_fraction": fraction})
    return {FIRST_NODE_ID + p for p in faulty_partitions(cfg, NODES)}


class Tampered(LocalGrid):
    """A LocalGrid whose hostile nodes send `tamper(phase, honest reply, round)` instead."""

    tamper: Tamper | None = None
    nodes: frozenset[int] = frozenset()

    def _handle(self, message: Message) -> Message:
        reply = super()._handle(message)
        if message.metadata.dst_node_id not in self.nodes or reply.has_error():
            return reply
        phase = message.metadata.message_type.split(".")[0]
        number = int(message.content["config"]["server-round"])
        return Message(type(self).tamper(phase, reply.content, number), reply_to=message)


def run(tmp: Path, cfg: AHMConfig, tamper: Tamper | None = None, nodes=frozenset()) -> dict:
    grid = type("Grid", (Tampered,), {"tamper": staticmethod(tamper), "nodes": frozenset(nodes)})
    summary = run_local(cfg, tmp, NODES, grid if tamper else LocalGrid, resume=False)
    state = torch.load(tmp / "checkpoint.pt", weights_only=True)["state"]
    return {"summary": summary, "state": state}


def train(change: Callable[[dict, dict], tuple[dict, dict]]) -> Tamper:
    """A tamper of train replies: `change(arrays, metrics)` as numpy arrays and plain values."""

    def tamper(phase: str, content: RecordDict, number: int) -> RecordDict:
        if phase != "train":
            return content
        arrays = {k: v.numpy() for k, v in content["arrays"].items()}
        arrays, metrics = change(arrays, dict(content["metrics"]))
        if isinstance(arrays, ArrayRecord):
            return RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)})
        record = ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})
        return RecordDict({"arrays": record, "metrics": MetricRecord(metrics)})

    return tamper


def evaluate(change: Callable[[dict], dict]) -> Tamper:
    def tamper(phase: str, content: RecordDict, number: int) -> RecordDict:
        if phase == "train":
            return content
        return RecordDict({"metrics": MetricRecord(change(dict(content["metrics"])))})

    return tamper


def arrays_with(key_fn: Callable[[dict], dict]) -> Callable:
    return lambda a, m: (key_fn(a), m)


def metric(**values) -> Callable:
    return lambda a, m: (a, {**m, **values})


def first(a: dict) -> str:
    return next(k for k, v in a.items() if v.dtype == np.float32 and v.ndim > 1)


def header(array: np.ndarray, shape: tuple) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue() + array.tobytes()


def raw(a: dict, key: str, blob: Array) -> ArrayRecord:
    record = ArrayRecord({k: Array(np.asarray(v)) for k, v in a.items()})
    record[key] = blob
    return record


def replay() -> Tamper:
    """Round 1 honest; every later round resends the round-1 reply."""
    kept: dict[str, RecordDict] = {}

    def tamper(phase: str, content: RecordDict, number: int) -> RecordDict:
        if phase == "train":
            kept.setdefault("first", content)
            return kept["first"]
        return content

    return tamper


def alternating() -> Tamper:
    """Sign-flipped x10 weights in odd rounds, honest in even ones."""

    def tamper(phase: str, content: RecordDict, number: int) -> RecordDict:
        if phase != "train" or number % 2 == 0:
            return content
        arrays = {k: v.numpy() for k, v in content["arrays"].items()}
        arrays = {k: -10 * v if v.dtype == np.float32 else v for k, v in arrays.items()}
        record = ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})
        return RecordDict({"arrays": record, "metrics": content["metrics"]})

    return tamper


# mode -> (fault fraction, fault mode or a tamper, the train reasons every round, kept or not)
FAULT_MODES = {
    "nan": "non_finite",
    "explode": "norm",
    "signflip": "statistics",
    "scale": "norm_outlier",
    "noise": "norm_outlier",
    "zeros": "norm_outlier",
    "stale": "stale",
    "huge_examples": "metrics",
    "zero_examples": "metrics",
    "negative_examples": "metrics",
    "int_tensors": "arrays",
    "missing_metrics": "metrics",
    "false_partition": "metrics",
}
# fault_scale inside every other bound; drift at 2: a shared part twice the member's own update
COALITION_MODES = {"collude_signflip": 2.9, "collude_scale": 2.9, "collude_drift": 2.0}
TAMPERS: dict[str, tuple[Tamper, str | tuple[str, ...]]] = {  # the reasons it may be given
    "wrong shape": (train(arrays_with(lambda a: {**a, first(a): a[first(a)][:1]})), "arrays"),
    "float64": (
        train(arrays_with(lambda a: {**a, first(a): a[first(a)].astype(np.float64)})),
        "arrays",
    ),
    "int64": (
        train(arrays_with(lambda a: {**a, first(a): a[first(a)].astype(np.int64)})),
        "arrays",
    ),
    "extra tensor": (
        train(arrays_with(lambda a: {**a, "extra": np.zeros(3, np.float32)})),
        "arrays",
    ),
    "missing tensor": (
        train(arrays_with(lambda a: {k: v for k, v in a.items() if k != first(a)})),
        "arrays",
    ),
    "Inf weight": (
        train(arrays_with(lambda a: {**a, first(a): np.full_like(a[first(a)], np.inf)})),
        "non_finite",
    ),
    "subnormal weights": (
        train(
            arrays_with(
                lambda a: {
                    k: np.full_like(v, 1e-40) if v.dtype == np.float32 else v for k, v in a.items()
                }
            )
        ),
        "norm_outlier",
    ),
    "zeroed statistics": (
        train(
            arrays_with(
                lambda a: {
                    k: np.zeros_like(v) if k.endswith(("running_mean", "running_var")) else v
                    for k, v in a.items()
                }
            )
        ),
        ("norm_outlier", "direction"),  # the statistics' norm or their direction, by round
    ),
    "header announcing 1e12 elements": (
        train(
            lambda a, m: (
                raw(
                    a,
                    first(a),
                    Array(
                        "float32",
                        a[first(a)].shape,
                        "numpy.ndarray",
                        header(a[first(a)], (10**12,)),
                    ),
                ),
                m,
            )
        ),
        "arrays",
    ),
    "garbage bytes": (
        train(
            lambda a, m: (
                raw(
                    a,
                    first(a),
                    Array("float32", a[first(a)].shape, "numpy.ndarray", b"\x93NUMPY junk"),
                ),
                m,
            )
        ),
        "arrays",
    ),
    "NaN loss": (train(metric(loss=float("nan"))), "metrics"),
    "Inf loss": (train(metric(loss=float("inf"))), "metrics"),
    "negative loss": (train(metric(loss=-1.0)), "metrics"),
    "float num-examples": (train(metric(**{"num-examples": 40.5})), "metrics"),
    "Inf images-per-s": (train(metric(**{"images-per-s": float("inf")})), "metrics"),
    "PMF not summing to 1": (
        train(metric(**{"k-values": [2, 3], "k-counts": [5, 5], "k-pmf": [0.9, 0.9]})),
        "metrics",
    ),
    "k beyond the set": (train(metric(**{"k-values": [99], "k-counts": [10]})), "metrics"),
    "k lists of two lengths": (
        train(lambda a, m: (a, {**m, "k-counts": [*m["k-counts"], 1]})),
        "metrics",
    ),
    "partition 1e300": (train(metric(**{"partition-id": 1e300})), "metrics"),
    "no metrics": (
        lambda p, c, n: RecordDict({"arrays": c["arrays"]}) if p == "train" else c,
        "malformed",
    ),
    "two array records": (
        lambda p, c, n: (
            RecordDict({"arrays": c["arrays"], "more": c["arrays"], "metrics": c["metrics"]})
            if p == "train"
            else c
        ),
        "malformed",
    ),
}
EVALUATE_TAMPERS: dict[str, Tamper] = {
    "NaN accuracy": evaluate(lambda m: {**m, "accuracy": float("nan")}),
    "accuracy 1.5": evaluate(lambda m: {**m, "accuracy": 1.5}),
    "pairs 1e9": evaluate(lambda m: {**m, "num-examples": 10**9}),
}


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[float, dict]:
    """The clean run, and the run whose hostile clients (one, or the coalition) fail instead."""
    root = tmp_path_factory.mktemp("references")
    out = {"clean": run(root / "clean", base())}
    for fraction in (ONE, PAIR):
        failing = base(**{"federation.fault_fraction": fraction, "federation.fault_mode": "raise"})
        out[fraction] = run(root / f"failing_{fraction:.2f}", failing)
    return out


def as_tuple(reasons: str | tuple[str, ...]) -> tuple[str, ...]:
    return (reasons,) if isinstance(reasons, str) else reasons


def rejected(result: dict, phase: str = "rejected") -> Counter:
    total: Counter = Counter()
    for record in result["summary"]["rounds"][1:]:
        total.update(record[phase])
    return total


def same_model(a: dict, b: dict) -> bool:
    return a["state"].keys() == b["state"].keys() and all(
        torch.equal(a["state"][k], b["state"][k]) for k in a["state"]
    )


@pytest.mark.parametrize("mode", FAULT_MODES)
def test_a_hostile_client_of_the_fault_mod_is_rejected_in_every_round(mode, references, tmp_path):
    cfg = base(**{"federation.fault_fraction": ONE, "federation.fault_mode": mode})
    result = run(tmp_path, cfg)
    assert rejected(result) == {FAULT_MODES[mode]: ROUNDS}
    assert same_model(result, references[ONE])


@pytest.mark.parametrize("mode", COALITION_MODES)
def test_a_coalition_of_two_sending_one_update_is_rejected_in_every_round(
    mode, references, tmp_path
):
    overrides = {"federation.fault_scale": COALITION_MODES[mode]}
    cfg = base(**{"federation.fault_fraction": PAIR, "federation.fault_mode": mode, **overrides})
    result = run(tmp_path, cfg)
    assert rejected(result) == {"duplicate": 2 * ROUNDS}
    assert same_model(result, references[PAIR])


@pytest.mark.parametrize("name", TAMPERS)
def test_a_tampered_train_reply_is_rejected_in_every_round(name, references, tmp_path):
    tamper, reasons = TAMPERS[name]
    result = run(tmp_path, base(), tamper, hostile_nodes(ONE))
    counted = rejected(result)
    assert sum(counted.values()) == ROUNDS and set(counted) <= set(as_tuple(reasons)), counted
    assert same_model(result, references[ONE])


@pytest.mark.parametrize("name", EVALUATE_TAMPERS)
def test_a_tampered_evaluate_reply_is_rejected_and_training_is_untouched(
    name, references, tmp_path
):
    result = run(tmp_path, base(), EVALUATE_TAMPERS[name], hostile_nodes(ONE))
    assert rejected(result, "evaluate_rejected") == {"metrics": ROUNDS} and not rejected(result)
    assert same_model(result, references["clean"])


def test_a_client_claiming_another_clients_partition_changes_nothing(references, tmp_path):
    cfg = base(**{"federation.fault_fraction": ONE, "federation.fault_mode": "claim_partition"})
    result = run(tmp_path, cfg)
    assert not rejected(result)
    assert all(len(r["contested"]) == 1 for r in result["summary"]["rounds"][1:])
    clean = references["clean"]["state"]
    assert all(torch.allclose(result["state"][k].float(), clean[k].float()) for k in clean)


def test_a_replayed_reply_and_an_alternating_client_do_no_harm(references, tmp_path):
    """An honest round-1 reply sent again is an honest (stale) contribution: it passes; a client
    that flips only in odd rounds is rejected in those."""
    clean = references["clean"]["summary"]["final_accuracy"]
    replayed = run(tmp_path / "replay", base(), replay(), hostile_nodes(ONE))
    flipping = run(tmp_path / "alternating", base(), alternating(), hostile_nodes(ONE))
    assert sum(rejected(flipping).values()) == (ROUNDS + 1) // 2
    for result in (replayed, flipping):
        assert abs(result["summary"]["final_accuracy"] - clean) < 0.1
