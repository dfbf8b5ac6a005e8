"""What a checkpoint read back must hold, checked before any of it is used (and so before
anything is written over it): a tampered or foreign file is refused with one line naming the
file and the field. `conform` compares a value with what this code would write now (keys,
types, shapes, dtypes, finite numbers); the rest checks what varies along a run (a round, a
record, an optimiser's buffers)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ahm_core.io import CheckpointError


def _kind(value: Any) -> str:
    return type(value).__name__


def _fail(label: str, field: str, what: str) -> None:
    raise CheckpointError(f"{label}: {field or 'the checkpoint'}: {what}")


def _tensor(label: str, field: str, value: Any, shape: Sequence[int] | None = None) -> Tensor:
    """`value` as a tensor of `shape` (any, if None) whose floating values are all finite."""
    if not isinstance(value, Tensor):
        _fail(label, field, f"expected a tensor, got a {_kind(value)}")
    if shape is not None and tuple(value.shape) != tuple(shape):
        _fail(label, field, f"shape {tuple(value.shape)}, expected {tuple(shape)}")
    if (value.is_floating_point() or value.is_complex()) and not torch.isfinite(value).all():
        _fail(label, field, "holds NaN or infinite values")
    return value


def conform(label: str, value: Any, like: Any, field: str = "") -> None:
    """Raise CheckpointError unless `value` has the structure of `like`: a mapping with the same
    keys, a list of the same length, tensors of the same shape and dtype with finite values,
    and numbers, strings, booleans and None where `like` has them."""
    if isinstance(like, Tensor):
        _tensor(label, field, value, like.shape)
        if value.dtype != like.dtype:
            _fail(label, field, f"dtype {value.dtype}, expected {like.dtype}")
    elif isinstance(like, Mapping):
        if not isinstance(value, Mapping):
            _fail(label, field, f"expected a mapping, got a {_kind(value)}")
        missing, extra = set(like) - set(value), set(value) - set(like)
        if missing or extra:
            names = ", ".join(sorted(map(str, missing))) or "none"
            surplus = ", ".join(sorted(map(str, extra))) or "none"
            _fail(label, field, f"keys missing: {names}; unexpected: {surplus}")
        for key in like:
            conform(label, value[key], like[key], f"{field}.{key}" if field else str(key))
    elif isinstance(like, list | tuple):
        if not isinstance(value, list | tuple) or len(value) != len(like):
            got = f"{len(value)} items" if isinstance(value, list | tuple) else f"a {_kind(value)}"
            _fail(label, field, f"expected a list of {len(like)}, got {got}")
        for i, (item, model) in enumerate(zip(value, like, strict=True)):
            conform(label, item, model, f"{field}[{i}]")
    elif isinstance(like, bool):
        if not isinstance(value, bool):
            _fail(label, field, f"expected true or false, got {value!r}")
    elif isinstance(like, int):
        if not isinstance(value, int) or isinstance(value, bool):
            _fail(label, field, f"expected an integer, got {value!r}")
    elif isinstance(like, float):
        if not isinstance(value, int | float) or isinstance(value, bool):
            _fail(label, field, f"expected a number, got {value!r}")
        if not math.isfinite(value):
            _fail(label, field, f"expected a finite number, got {value}")
    elif isinstance(like, str):
        if not isinstance(value, str):
            _fail(label, field, f"expected a string, got {value!r}")
    elif like is None and value is not None:
        _fail(label, field, f"expected nothing (None), got a {_kind(value)}")


def sections(label: str, config: Any) -> dict[str, dict]:
    """A saved config (`to_dict` shape): a mapping of sections, each a mapping."""
    if not isinstance(config, dict) or not all(isinstance(s, dict) for s in config.values()):
        _fail(label, "config", "expected a mapping of sections")
    return config


def in_range(label: str, field: str, value: Any, top: int) -> int:
    """An integer in [0, top]: a round, a step or an epoch."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
        _fail(label, field, f"expected an integer in [0, {top}], got {value!r}")
    return value


def records(label: str, field: str, value: Any, key: str, length: int) -> list[dict]:
    """`length` records (mappings) numbered by `key` (an integer each, in order, from the first
    record's) whose `accuracy`, where there is one, is a number in [0, 1]."""
    if not isinstance(value, list) or len(value) != length:
        got = f"{len(value)} records" if isinstance(value, list) else f"a {_kind(value)}"
        _fail(label, field, f"expected a list of {length} records, got {got}")
    first = None
    for i, record in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(record, Mapping):
            _fail(label, where, f"expected a record (mapping), got a {_kind(record)}")
        if i == 0 and isinstance(record.get(key), int):
            first = record[key]
        if first is None or record.get(key) != first + i or isinstance(record.get(key), bool):
            _fail(
                label, where, f"{key} {record.get(key)!r}, expected the records numbered in order"
            )
        accuracy = record.get("accuracy")
        if "accuracy" in record and not (
            isinstance(accuracy, int | float)
            and not isinstance(accuracy, bool)
            and 0 <= accuracy <= 1
        ):
            _fail(label, f"{where}.accuracy", f"expected a number in [0, 1], got {accuracy!r}")
    return value


def distribution(label: str, field: str, value: Any, k_set: Sequence[int] | None) -> None:
    """None where there is no policy (`k_set` None), else PMFs over `k_set`: a tensor whose
    last axis holds one probability per k, each in [0, 1], summing to 1."""
    if k_set is None:
        conform(label, value, None, field)
        return
    pmf = _tensor(label, field, value)
    if pmf.ndim == 0 or pmf.shape[-1] != len(k_set) or not pmf.is_floating_point():
        _fail(label, field, f"expected PMFs over the {len(k_set)} k of policy.k_set")
    if (pmf < 0).any() or (pmf.sum(-1) - 1).abs().max() > 1e-3:
        _fail(label, field, "expected probabilities in [0, 1] summing to 1")


def optimiser(label: str, field: str, value: Any, like: torch.optim.Optimizer) -> None:
    """A torch optimiser's state dict for `like`'s parameters: its param groups as `like`'s,
    and every buffer of a parameter finite and (unless a scalar) of that parameter's shape."""
    if not isinstance(value, Mapping) or set(value) != {"state", "param_groups"}:
        _fail(label, field, "expected an optimiser state (state and param_groups)")
    conform(
        label, value["param_groups"], like.state_dict()["param_groups"], f"{field}.param_groups"
    )
    params = [p for group in like.param_groups for p in group["params"]]
    state = value["state"]
    if not isinstance(state, Mapping):
        _fail(label, f"{field}.state", f"expected a mapping, got a {_kind(state)}")
    for index, buffers in state.items():
        where = f"{field}.state[{index!r}]"
        if not isinstance(index, int) or not 0 <= index < len(params):
            _fail(label, where, f"expected a parameter index in [0, {len(params)})")
        if not isinstance(buffers, Mapping):
            _fail(label, where, f"expected a mapping of buffers, got a {_kind(buffers)}")
        for name, buffer in buffers.items():
            shape = None if isinstance(buffer, Tensor) and buffer.ndim == 0 else params[index].shape
            _tensor(label, f"{where}.{name}", buffer, shape)
