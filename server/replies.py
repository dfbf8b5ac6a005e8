"""Every value in a client's reply is untrusted: the checks a reply passes before any of it is
used. A reply that fails is rejected with a reason; nothing in it reaches aggregation.

A train reply holds one ArrayRecord with exactly the global model's keys, shapes and dtypes
(checked on each array's own .npy header before it is decoded, so no header can announce more
memory than the model has) and finite floats, and one MetricRecord whose values have the right
types and ranges (`TRAIN_METRICS`). An evaluate reply holds one MetricRecord (`EVALUATE_METRICS`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message
from torch import Tensor

NPY_HEADER_LIMIT = 4096  # bytes an .npy header may take beside the array's own data
Template = dict[str, tuple[tuple[int, ...], np.dtype]]


class RejectedError(ValueError):
    """A reply that must not be used; `reason` is the counter's label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class Limits(NamedTuple):
    """What the server knows that bounds a reply (its partitions, images, pairs and k) and the
    SuperNodes connected when the run started."""

    num_nodes: int
    num_partitions: int
    max_examples: int  # training images in the whole federation
    max_samples: int  # images one client can train on in a round (all, every local epoch)
    max_pairs: int  # a client's validation pairs at most
    max_k: int  # the largest k a client may mix


class TrainReply(NamedTuple):
    """A train reply that passed: its message, node, partition, arrays, canonical metrics and its
    policy's PMFs (one row per update over k-values; none for a method without a policy)."""

    message: Message
    node: int
    partition_id: int
    state: dict[str, Tensor]
    metrics: dict[str, Any]
    k_pmf: list[list[float]]


def _integer(low: Callable[[Limits], int], high: Callable[[Limits], int]) -> Callable:
    def check(value: Any, limits: Limits) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected an integer, got {value!r}")
        if not low(limits) <= value <= high(limits):
            raise ValueError(f"expected {low(limits)}..{high(limits)}, got {value}")
        return value

    return check


def _real(low: float, high: float = math.inf) -> Callable:
    def check(value: Any, limits: Limits) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected a number, got {value!r}")
        if not (math.isfinite(value) and low <= value <= high):
            raise ValueError(f"expected a finite number in [{low}, {high}], got {value}")
        return float(value)

    return check


def _integers(low: Callable[[Limits], int], high: Callable[[Limits], int]) -> Callable:
    one = _integer(low, high)

    def check(value: Any, limits: Limits) -> list[int]:
        if not isinstance(value, list):
            raise TypeError(f"expected a list of integers, got {value!r}")
        return [one(v, limits) for v in value]

    return check


def _reals(low: float, high: float, most: Callable[[Limits], int]) -> Callable:
    one = _real(low, high)

    def check(value: Any, limits: Limits) -> list[float]:
        if not isinstance(value, list):
            raise TypeError(f"expected a list of numbers, got {value!r}")
        if len(value) > most(limits):
            raise ValueError(f"expected at most {most(limits)} numbers, got {len(value)}")
        return [one(v, limits) for v in value]

    return check


PMF_TOLERANCE = 1e-3  # how far from 1 a reported PMF (rounded to 5 digits) may sum


# name -> (check, default; None: required)
TRAIN_METRICS: dict[str, tuple[Callable, Any]] = {
    "num-examples": (_integer(lambda _: 1, lambda lim: lim.max_examples), None),
    "partition-id": (_integer(lambda _: 0, lambda lim: lim.num_partitions - 1), None),
    "loss": (_real(0.0), None),
    "images-per-s": (_real(0.0), 0.0),
    "train-seconds": (_real(0.0), 0.0),
    "k-values": (_integers(lambda _: 2, lambda lim: lim.max_k), []),
    "k-counts": (_integers(lambda _: 0, lambda lim: lim.max_samples), []),
    # one PMF per policy update (at most one update per image), each over k-values
    "k-pmf": (_reals(0.0, 1.0, lambda lim: lim.max_samples * (lim.max_k - 1)), []),
    "num-partitions": (_integer(lambda _: 1, lambda lim: lim.num_partitions), 0),  # its view
    # client-side adaptive DP: Flower's clipping mod says whether it clipped this update
    "norm_bit": (_integer(lambda _: 0, lambda _: 1), 0),
}
EVALUATE_METRICS: dict[str, tuple[Callable, Any]] = {
    "num-examples": (_integer(lambda _: 0, lambda lim: lim.max_pairs), None),
    "partition-id": (_integer(lambda _: 0, lambda lim: lim.num_partitions - 1), None),
    "accuracy": (_real(0.0, 1.0), None),
}


def template(arrays: ArrayRecord) -> Template:
    """The keys, shapes and dtypes every reply's arrays must have: the global model's."""
    return {k: (tuple(a.shape), np.dtype(a.dtype)) for k, a in arrays.items()}


def _metrics(msg: Message, schema: Mapping[str, tuple[Callable, Any]], limits: Limits) -> dict:
    records = msg.content.metric_records
    if len(records) != 1:
        raise RejectedError("malformed", f"expected one MetricRecord, got {len(records)}")
    return check_values(next(iter(records.values())), schema, limits)


def check_values(
    given: Mapping[str, Any], schema: Mapping[str, tuple[Callable, Any]], limits: Limits
) -> dict:
    """A reply's metrics against `schema`, canonical (defaults filled in); raises
    `RejectedError` ("metrics") naming the first bad one."""
    metrics = {}
    for name, (check, default) in schema.items():
        if name not in given:
            if default is None:
                raise RejectedError("metrics", f"{name} is missing")
            metrics[name] = default
            continue
        try:
            metrics[name] = check(given[name], limits)
        except (TypeError, ValueError) as err:
            raise RejectedError("metrics", f"{name}: {err}") from None
    return metrics


def _decode(key: str, array: Array, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The array, once its metadata and its .npy header both say the template's shape and
    dtype and its bytes fit them."""
    try:
        declared = np.dtype(array.dtype)
    except (TypeError, ValueError):
        declared = None
    if array.stype != "numpy.ndarray" or declared != dtype:
        raise RejectedError("arrays", f"{key}: {array.stype} of {array.dtype!r}, expected {dtype}")
    if tuple(array.shape) != shape:
        raise RejectedError("arrays", f"{key}: shape {tuple(array.shape)}, expected {shape}")
    if len(array.data) > dtype.itemsize * math.prod(shape) + NPY_HEADER_LIMIT:
        raise RejectedError("arrays", f"{key}: {len(array.data)} bytes for shape {shape}")
    buffer = io.BytesIO(array.data)
    try:
        version = np.lib.format.read_magic(buffer)
        read_header = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }[version]
        header_shape, fortran, header_dtype = read_header(buffer)
        if (tuple(header_shape), header_dtype) != (shape, dtype) or fortran:
            said = f"{header_shape} {header_dtype}"
            raise RejectedError("arrays", f"{key}: its .npy header says {said}")
        buffer.seek(0)
        return np.load(buffer, allow_pickle=False)
    except (KeyError, ValueError, OSError, EOFError) as err:
        raise RejectedError("arrays", f"{key}: unreadable ({err})") from None


def check_train(msg: Message, expected: Template, limits: Limits) -> TrainReply:
    """The train reply, checked; raises `RejectedError`."""
    records = msg.content.array_records
    if len(records) != 1:
        raise RejectedError("malformed", f"expected one ArrayRecord, got {len(records)}")
    arrays = next(iter(records.values()))
    if set(arrays) != set(expected):
        missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
        raise RejectedError(
            "arrays", f"keys differ from the model's: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    metrics = _metrics(msg, TRAIN_METRICS, limits)
    if len(metrics["k-values"]) != len(metrics["k-counts"]):
        raise RejectedError("metrics", "k-values and k-counts differ in length")
    k_pmf = pmf_rows(metrics)
    state = {}
    for key, (shape, dtype) in expected.items():
        value = torch.from_numpy(_decode(key, arrays[key], shape, dtype))
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise RejectedError("non_finite", f"{key} holds NaN or Inf")
        state[key] = value
    node, partition = msg.metadata.src_node_id, metrics["partition-id"]
    return TrainReply(msg, node, partition, state, metrics, k_pmf)


def pmf_rows(metrics: Mapping[str, Any]) -> list[list[float]]:
    """The reply's k-pmf as one row per policy update over its k-values, each summing to 1;
    raises `RejectedError`."""
    flat, width = metrics["k-pmf"], len(metrics["k-values"])
    if not flat:  # a method without a policy
        return []
    if width == 0 or len(flat) % width:
        raise RejectedError("metrics", f"k-pmf: {len(flat)} numbers are not rows of {width} k")
    rows = [flat[i : i + width] for i in range(0, len(flat), width)]
    for i, row in enumerate(rows):
        if abs(sum(row) - 1.0) > PMF_TOLERANCE:
            raise RejectedError("metrics", f"k-pmf: row {i} sums to {sum(row):.4g}, expected 1")
    return rows


def check_evaluate(msg: Message, limits: Limits) -> dict[str, Any]:
    """The evaluate reply's canonical metrics; raises `RejectedError`."""
    return _metrics(msg, EVALUATE_METRICS, limits)
