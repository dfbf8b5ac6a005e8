"""No reply can crash the server or reach aggregation unchecked: a table of malformed train and
evaluate replies, each rejected with its reason while the aggregate stays what it is without it."""

import io

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from ahm_core.config import AHMConfig, apply_overrides
from server.replies import Limits
from server.strategy import build_strategy
from simulations.local import LocalGrid

LIMITS = Limits(
    num_nodes=5, num_partitions=5, max_examples=1000, max_samples=2000, max_pairs=100, max_k=3
)
GLOBAL = {
    "backbone.w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3),
    "backbone.b": np.ones(3, dtype=np.float32),
    "backbone.bn.running_var": np.ones(6, dtype=np.float32),
    "backbone.n": np.array(5, dtype=np.int64),
}
HONEST = 4  # partitions 0..3 answer honestly; the odd reply comes from the last node


def metrics(partition: int, **extra) -> dict:
    return {
        "num-examples": 40 + partition,
        "partition-id": partition,
        "loss": 2.0 + partition,
        "images-per-s": 10.0,
        "train-seconds": 1.5,
        "k-values": [2, 3],
        "k-counts": [30, 10],
        "k-pmf": [0.5, 0.5, 0.25, 0.75],
        **extra,
    }


# Honest clients move their weights in directions of their own (near-orthogonal in a real
# model, so the screen rejects two that agree): here exactly orthogonal, one basis row each.
OWN = np.linalg.qr(np.random.default_rng(0).standard_normal((15, 15)))[0].astype(np.float32)


def update(partition: int) -> dict:
    """A small honest step in a direction of its own; running statistics like everyone's."""
    rng = np.random.default_rng(partition)
    step = 0.05 * OWN[partition]
    return {
        "backbone.w": GLOBAL["backbone.w"] + step[:12].reshape(4, 3),
        "backbone.b": GLOBAL["backbone.b"] + step[12:],
        "backbone.bn.running_var": (2 + 0.01 * rng.standard_normal(6)).astype(np.float32),
        "backbone.n": np.array(9, dtype=np.int64),
    }


def arrays_of(state: dict) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, dtype=v.dtype)) for k, v in state.items()})


def content(state: dict | None = None, values: dict | None = None, partition: int = 4):
    state = update(partition) if state is None else state
    values = metrics(partition) if values is None else values
    return RecordDict({"arrays": arrays_of(state), "metrics": MetricRecord(values)})


def npy(array: np.ndarray, shape: tuple) -> bytes:
    """`array`'s bytes behind an .npy header that announces `shape`."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer,
        {
            "descr": np.lib.format.dtype_to_descr(array.dtype),
            "fortran_order": False,
            "shape": shape,
        },
    )
    return buffer.getvalue() + array.tobytes()


def with_array(key: str, array: Array) -> RecordDict:
    record = content()
    record["arrays"][key] = array
    return record


W = GLOBAL["backbone.w"]
BAD_TRAIN = {
    "no num-examples": (
        content(values={k: v for k, v in metrics(4).items() if k != "num-examples"}),
        "metrics",
    ),
    "zero examples": (content(values=metrics(4, **{"num-examples": 0})), "metrics"),
    "negative examples": (content(values=metrics(4, **{"num-examples": -9})), "metrics"),
    "NaN examples": (content(values=metrics(4, **{"num-examples": float("nan")})), "metrics"),
    "Inf examples": (content(values=metrics(4, **{"num-examples": float("inf")})), "metrics"),
    "float examples": (content(values=metrics(4, **{"num-examples": 40.5})), "metrics"),
    "examples beyond the federation": (
        content(values=metrics(4, **{"num-examples": 10**12})),
        "metrics",
    ),
    "a list as examples": (content(values=metrics(4, **{"num-examples": [1, 2]})), "metrics"),
    "no loss": (content(values={k: v for k, v in metrics(4).items() if k != "loss"}), "metrics"),
    "NaN loss": (content(values=metrics(4, loss=float("nan"))), "metrics"),
    "negative loss": (content(values=metrics(4, loss=-1.0)), "metrics"),
    "a list as loss": (content(values=metrics(4, loss=[1.0, 2.0])), "metrics"),
    "Inf images-per-s": (content(values=metrics(4, **{"images-per-s": float("inf")})), "metrics"),
    "k lists of two lengths": (content(values=metrics(4, **{"k-counts": [1, 2, 3]})), "metrics"),
    "k of 1": (content(values=metrics(4, **{"k-values": [1, 2]})), "metrics"),
    "k beyond the set": (content(values=metrics(4, **{"k-values": [2, 99]})), "metrics"),
    "a PMF not summing to 1": (content(values=metrics(4, **{"k-pmf": [0.9, 0.9]})), "metrics"),
    "a PMF cut mid-row": (content(values=metrics(4, **{"k-pmf": [0.5, 0.5, 1.0]})), "metrics"),
    "a negative probability": (content(values=metrics(4, **{"k-pmf": [1.5, -0.5]})), "metrics"),
    "a NaN probability": (content(values=metrics(4, **{"k-pmf": [float("nan"), 1.0]})), "metrics"),
    "a PMF without k": (
        content(values=metrics(4, **{"k-values": [], "k-counts": [], "k-pmf": [1.0]})),
        "metrics",
    ),
    "more PMFs than images": (content(values=metrics(4, **{"k-pmf": [0.5] * 10**6})), "metrics"),
    "no partition-id": (
        content(values={k: v for k, v in metrics(4).items() if k != "partition-id"}),
        "metrics",
    ),
    "partition -1": (content(values=metrics(4, **{"partition-id": -1})), "metrics"),
    "partition -inf": (content(values=metrics(4, **{"partition-id": float("-inf")})), "metrics"),
    "partition -1e300": (content(values=metrics(4, **{"partition-id": -1e300})), "metrics"),
    "partition past the last": (content(values=metrics(4, **{"partition-id": 5})), "metrics"),
    "missing key": (
        content(state={k: v for k, v in update(4).items() if k != "backbone.b"}),
        "arrays",
    ),
    "extra key": (content(state={**update(4), "head.w": np.zeros(2, np.float32)}), "arrays"),
    "wrong shape": (content(state={**update(4), "backbone.b": np.ones(4, np.float32)}), "arrays"),
    "float64 weights": (content(state={**update(4), "backbone.w": W.astype(np.float64)}), "arrays"),
    "int64 weights of 1e12": (
        content(state={**update(4), "backbone.w": np.full((4, 3), 10**12, np.int64)}),
        "arrays",
    ),
    "object dtype": (
        with_array("backbone.w", Array("object", (4, 3), "numpy.ndarray", b"x")),
        "arrays",
    ),
    "header announcing 1e12 elements": (
        with_array("backbone.w", Array("float32", (4, 3), "numpy.ndarray", npy(W, (10**12,)))),
        "arrays",
    ),
    "shape announcing 1e12 elements": (
        with_array("backbone.w", Array("float32", (10**12,), "numpy.ndarray", npy(W, (4, 3)))),
        "arrays",
    ),
    "bytes beyond the shape": (
        with_array(
            "backbone.w", Array("float32", (4, 3), "numpy.ndarray", npy(W, (4, 3)) + bytes(10**5))
        ),
        "arrays",
    ),
    "unknown dtype": (
        with_array("backbone.w", Array("no-such-type", (4, 3), "numpy.ndarray", npy(W, (4, 3)))),
        "arrays",
    ),
    "not numpy": (
        with_array("backbone.w", Array("float32", (4, 3), "torch", npy(W, (4, 3)))),
        "arrays",
    ),
    "garbage bytes": (
        with_array("backbone.w", Array("float32", (4, 3), "numpy.ndarray", b"\x93NUMPY junk")),
        "arrays",
    ),
    "NaN weight": (
        content(state={**update(4), "backbone.b": np.array([0, np.nan, 1], np.float32)}),
        "non_finite",
    ),
    "Inf weight": (
        content(state={**update(4), "backbone.b": np.array([0, np.inf, 1], np.float32)}),
        "non_finite",
    ),
    "two ArrayRecords": (
        RecordDict(
            {
                "a": arrays_of(update(4)),
                "b": arrays_of(update(4)),
                "metrics": MetricRecord(metrics(4)),
            }
        ),
        "malformed",
    ),
    "no MetricRecord": (RecordDict({"arrays": arrays_of(update(4))}), "malformed"),
    "two MetricRecords": (
        RecordDict(
            {
                "arrays": arrays_of(update(4)),
                "m": MetricRecord(metrics(4)),
                "n": MetricRecord(metrics(4)),
            }
        ),
        "malformed",
    ),
}


def cfg(**extra) -> AHMConfig:
    return apply_overrides(AHMConfig(), {"federation.num_clients": 5, **extra})


def round_of(odd: RecordDict | Error | None, **extra):
    """One train round of 4 honest replies (+ the odd one); the aggregate and the stats."""
    strategy = build_strategy(cfg(**extra), LIMITS)
    grid = LocalGrid({}, LIMITS.num_partitions)
    sent = sorted(
        strategy.configure_train(1, arrays_of(GLOBAL), ConfigRecord(), grid),
        key=lambda m: m.metadata.dst_node_id,
    )
    replies = [Message(content(partition=p), reply_to=sent[p]) for p in range(HONEST)]
    if odd is not None:
        replies.append(Message(odd, reply_to=sent[HONEST]))
    arrays, _ = strategy.aggregate_train(1, replies)
    return arrays, strategy.stats


CLEAN, _ = round_of(None)


def same(a: ArrayRecord, b: ArrayRecord) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


@pytest.mark.parametrize("name", BAD_TRAIN)
def test_a_bad_train_reply_is_rejected_with_its_reason(name):
    odd, reason = BAD_TRAIN[name]
    arrays, stats = round_of(odd)
    assert stats.rejected == {reason: 1} and stats.accepted == HONEST
    assert same(arrays, CLEAN)


def test_the_clean_round_averages_every_honest_reply_in_the_models_dtypes():
    _, stats = round_of(content())  # a fifth honest reply
    assert stats.accepted == stats.aggregated == HONEST + 1 and not stats.rejected
    assert [CLEAN[k].dtype for k in GLOBAL] == ["float32", "float32", "float32", "int64"]
    assert CLEAN["backbone.n"].numpy() == 9
    assert stats.train["weight"] == sum(40 + p for p in range(HONEST + 1))
    assert stats.k_histogram == {"2": 150, "3": 50}
    assert stats.k_pmf == {str(p): [[0.5, 0.5], [0.25, 0.75]] for p in range(HONEST + 1)}


def test_a_reply_of_a_method_without_a_policy_carries_no_k_and_passes():
    _, stats = round_of(content(values=metrics(4, **{"k-values": [], "k-counts": [], "k-pmf": []})))
    assert stats.accepted == HONEST + 1 and not stats.rejected
    assert "4" not in stats.k_pmf


def test_an_error_reply_fails_and_a_round_with_nothing_valid_keeps_the_global_model():
    arrays, stats = round_of(Error(code=1, reason="boom"))
    assert (stats.failed, stats.rejected) == (1, {}) and same(arrays, CLEAN)
    strategy = build_strategy(cfg(), LIMITS)
    grid = LocalGrid({}, LIMITS.num_partitions)
    sent = list(strategy.configure_train(1, arrays_of(GLOBAL), ConfigRecord(), grid))
    junk = [
        Message(content(values=metrics(p, loss=float("nan"))), reply_to=m)
        for p, m in enumerate(sent)
    ]
    assert strategy.aggregate_train(1, junk) == (None, None)
    assert strategy.stats.rejected == {"metrics": len(sent)}


def test_a_client_claiming_another_clients_partition_never_gets_the_honest_one_rejected():
    """The node id is the SuperLink's, the partition id a claim: both replies are kept, and the
    contested label is neither captured nor logged as that partition's PMF."""
    arrays, stats = round_of(content(values=metrics(4, **{"partition-id": 2})))
    assert stats.accepted == stats.aggregated == HONEST + 1 and not stats.rejected
    assert stats.contested == [2] and "2" not in stats.k_pmf and "1" in stats.k_pmf
    truthful, _ = round_of(content())
    assert all(np.allclose(arrays[k].numpy(), truthful[k].numpy()) for k in GLOBAL)


def test_a_weight_above_the_bound_counts_at_the_bound():
    lying = content(values=metrics(4, **{"num-examples": 999}))
    honest = content(values=metrics(4, **{"num-examples": 2 * 42}))  # 2 x the median claim
    assert same(round_of(lying)[0], round_of(honest)[0])
    assert not same(
        round_of(lying, **{"federation.max_weight_ratio": 100.0})[0], round_of(honest)[0]
    )


def test_screening_rejects_a_sign_flipped_update_that_the_checks_let_through():
    flipped = {k: 2 * GLOBAL[k] - v if v.dtype.kind == "f" else v for k, v in update(4).items()}
    arrays, stats = round_of(content(state=flipped))
    assert stats.rejected == {"statistics": 1} and same(arrays, CLEAN)  # a negative variance
    arrays, stats = round_of(content(state=flipped), **{"federation.screen": False})
    assert stats.accepted == HONEST + 1 and not same(arrays, CLEAN)


BAD_EVALUATE = {
    "NaN accuracy": {"accuracy": float("nan")},
    "accuracy above 1": {"accuracy": 1.5},
    "negative accuracy": {"accuracy": -0.1},
    "a list as accuracy": {"accuracy": [0.5]},
    "negative pairs": {"num-examples": -1},
    "pairs beyond the bound": {"num-examples": 10**9},
    "partition -1": {"partition-id": -1},
}


@pytest.mark.parametrize("name", [*BAD_EVALUATE, "missing accuracy"])
def test_a_bad_evaluate_reply_is_rejected_and_the_accuracy_stays(name):
    strategy = build_strategy(cfg(), LIMITS)
    grid = LocalGrid({}, LIMITS.num_partitions)
    strategy.configure_train(1, arrays_of(GLOBAL), ConfigRecord(), grid)
    sent = sorted(
        strategy.configure_evaluate(1, arrays_of(GLOBAL), ConfigRecord(), grid),
        key=lambda m: m.metadata.dst_node_id,
    )

    def reply(p: int, **values) -> Message:
        record = {"num-examples": 10 * (p + 1), "accuracy": 0.5 + 0.1 * p, "partition-id": p}
        record |= values
        if name == "missing accuracy" and p == 4:
            del record["accuracy"]
        return Message(RecordDict({"metrics": MetricRecord(record)}), reply_to=sent[p])

    honest = [reply(p) for p in range(2)]
    odd = reply(4, **BAD_EVALUATE.get(name, {}))
    result = strategy.aggregate_evaluate(1, [*honest, odd])
    assert result["accuracy"] == pytest.approx((10 * 0.5 + 20 * 0.6) / 30)
    assert sum(strategy.stats.evaluate_rejected.values()) == 1
    none = [reply(p, **{"num-examples": 0}) for p in range(2)]
    assert strategy.aggregate_evaluate(1, none) is None  # nobody had pairs: no division by 0
