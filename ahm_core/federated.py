"""The federated task without Flower: a client's partition and round of local training, the
server's initial model and global evaluation, and reading Flower's run config. `client/app.py`
and `server/` are thin Flower shells over these functions (screening is `ahm_core.screening`,
injected faults `ahm_core.faults`).

What travels is a flat state dict of floating-point tensors (integer buffers stay home, see
`_travelling`): `backbone.*` always, `head.*` only with
`federation.share_head` (the head then spans every training identity). Otherwise each client's
ArcFace head covers its own people and never leaves it, as in federated face recognition where a
client's identities are private. Every client and the server derive the same data, split and
partition from the config, so nothing but weights and metrics crosses the wire.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch
from torch import Tensor

from ahm_core.checks import validate
from ahm_core.config import AHMConfig, apply_overrides, from_flat, to_dict, to_flat
from ahm_core.data.base import FaceSet
from ahm_core.data.pairs import Pairs, make_pairs
from ahm_core.data.partition import partition
from ahm_core.data.sources import RunData, relabel, run_data
from ahm_core.evaluate import evaluate_verification
from ahm_core.io import atomic_write, load_checkpoint
from ahm_core.masking import MaskingPipeline
from ahm_core.masking.pipeline import masking_for_run
from ahm_core.models import build_backbone, build_head, load_travelled
from ahm_core.runs import count_ks
from ahm_core.train import STATE_KEYS, Trainer, resolve_device

State = dict[str, Tensor]
T = TypeVar("T")


# Run-config keys the Flower apps read besides the `section.key` entries of AHMConfig.
APP_DEFAULTS: dict[str, bool | int | float | str] = {
    "out-dir": "outputs/federated",  # the server's checkpoint, rounds.json, captured updates
    "resume": True,  # continue from out-dir's checkpoint when there is one
    "metrics-port": 0,  # Prometheus exporter of the server; 0: off
    "metrics-address": "127.0.0.1",
    "client-state-dir": "",  # where clients also keep their state on disk; "": memory only
    "run-token": "",  # the launcher's id of this launch; the server echoes it in status.json
}


def parse_flower_run_config(flat: Mapping[str, Any]) -> tuple[AHMConfig, dict[str, Any]]:
    """Flower's flat run config -> the validated AHMConfig (its `section.key` entries) and the
    app options (APP_DEFAULTS keys)."""
    options = {key: flat.get(key, default) for key, default in APP_DEFAULTS.items()}
    cfg = validate(from_flat({k: v for k, v in flat.items() if k not in APP_DEFAULTS}))
    return cfg, options


class ClientData(NamedTuple):
    """One client's training items and labels (local or global ids) and its validation pairs."""

    partition_id: int
    items: Tensor
    labels: Tensor
    num_classes: int
    val_pairs: Pairs | None


_MEMO: dict[str, tuple[str, Any]] = {}


def _memo(kind: str, key: Any, build: Callable[[], T]) -> T:
    """The last value built for `kind`, rebuilt when its key changes: clients that share a
    simulation worker process load the data and derive the partition once."""
    key = json.dumps(key, sort_keys=True)
    hit = _MEMO.get(kind)
    if hit is None or hit[0] != key:
        _MEMO[kind] = hit = (key, build())
    return hit[1]


def federated_data(cfg: AHMConfig) -> RunData:
    """The run's faces, training items and held-out verification pairs."""
    return _memo("data", to_dict(cfg)["data"], lambda: run_data(cfg.data))


def run_masking(cfg: AHMConfig, data: RunData) -> MaskingPipeline:
    """The federation's masking pipeline: the same keys for every client and the server."""
    return _memo("masking", to_flat(cfg), lambda: masking_for_run(cfg, data.faces, data.train))


def client_data(
    cfg: AHMConfig, data: RunData, partition_id: int, num_partitions: int
) -> ClientData:
    """Partition `partition_id` of `num_partitions` over the training identities."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id: expected 0..{num_partitions - 1}, got {partition_id}")
    f = cfg.federation
    parts = _memo(
        "partitions",
        [to_flat(cfg), num_partitions],
        lambda: partition(
            data.labels,
            num_partitions,
            f.partition,
            f.dirichlet_alpha,
            f.val_fraction,
            cfg.data.seed,
            f.min_client_images,
            f.drop_small_clients,
        ),
    )
    if partition_id >= len(parts):
        raise ValueError(
            f"partition {partition_id}: dropped, fewer than federation.min_client_images="
            f"{cfg.federation.min_client_images} images"
        )
    part = parts[partition_id]
    labels, num_classes = data.labels[part.train], data.num_classes
    if not f.share_head:
        labels, num_classes = relabel(labels)
    val_pairs = None
    if len(part.val):
        try:
            val_pairs = make_pairs(
                data.faces.labels, data.train[part.val], f.eval_pairs, seed=cfg.data.seed
            )
        except ValueError:  # too few people or images in the validation split for pairs
            val_pairs = None
    return ClientData(partition_id, data.train[part.train], labels, num_classes, val_pairs)


def initial_state(cfg: AHMConfig, masking: MaskingPipeline, data: RunData) -> State:
    """The global model before round 1, seeded by `train.seed`."""
    torch.manual_seed(cfg.train.seed)
    backbone = build_backbone(cfg.model, masking.in_channels, cfg.data.image_size)
    state = _travelling("backbone", backbone.state_dict())
    if masking.first_stage.module is not None:  # a trained first stage is global, as the backbone
        stage = masking.first_stage.module.state_dict()
        state |= _travelling("first_stage", {k: v.detach().clone() for k, v in stage.items()})
    if cfg.federation.share_head:
        state |= _travelling("head", build_head(cfg.model, data.num_classes).state_dict())
    return state


def client_config(cfg: AHMConfig, partition_id: int) -> AHMConfig:
    """A client's training config: its own seed, no progress bar, and a schedule that spans
    every round (the client joins it at the server's round, see `Trainer.seek`)."""
    f = cfg.federation
    return apply_overrides(
        cfg,
        {
            "train.epochs": f.rounds * f.local_epochs,
            "train.seed": cfg.train.seed + 1 + partition_id,
            "train.progress": False,
        },
    )


class LocalResult(NamedTuple):
    """What a client's round produced: the arrays it shares, its metrics, its private state."""

    shared: State
    metrics: dict[str, int | float | list]
    state: bytes


def local_train(
    cfg: AHMConfig,
    data: RunData,
    client: ClientData,
    masking: MaskingPipeline,
    shared: State,
    server_round: int,
    state: bytes | None = None,
    proximal_mu: float = 0.0,
) -> LocalResult:
    """`federation.local_epochs` epochs from the global arrays, continuing the client's head,
    optimiser, policy and RNGs from `state` (a fresh client starts them from its seed); with
    `proximal_mu` > 0 the loss carries FedProx's proximal term."""
    ccfg = client_config(cfg, client.partition_id)
    trainer = Trainer(ccfg, masking, client.num_classes, len(client.items) // ccfg.train.batch_size)
    if state is not None:
        saved = unpack_state(state, trainer.device)
        saved["backbone"] = trainer.backbone.state_dict()  # replaced by the global one below
        trainer.load_state_dict(saved)
    load_shared(trainer, shared)
    if proximal_mu > 0:
        trainer.loss_terms.append(proximal_term(trainer, proximal_mu))
    trainer.seek((server_round - 1) * cfg.federation.local_epochs)
    start = time.perf_counter()
    epochs = [
        trainer.train_epoch(data.faces, client.items, client.labels)
        for _ in range(cfg.federation.local_epochs)
    ]
    seconds = time.perf_counter() - start
    ks = count_ks(epoch.get("k_histogram", {}) for epoch in epochs)
    order = sorted(range(len(ccfg.policy.k_set)), key=lambda i: ccfg.policy.k_set[i])
    pmfs = [pmf[i] for epoch in epochs for pmf in epoch.get("pmfs", []) for i in order]
    metrics = {
        "num-examples": len(client.items),
        "partition-id": client.partition_id,
        "loss": sum(e["loss"] for e in epochs) / len(epochs),
        "images-per-s": len(client.items) * len(epochs) / seconds,
        "train-seconds": seconds,
        "k-values": [int(k) for k in sorted(ks, key=int)],
        "k-counts": [ks[k] for k in sorted(ks, key=int)],
        "k-pmf": pmfs,  # the PMF of every policy update, one row per update in k-values order
    }
    return LocalResult(
        shared_state(trainer, cfg.federation.share_head), metrics, pack_state(trainer)
    )


def proximal_term(trainer: Trainer, mu: float) -> Callable[[Trainer], Tensor]:
    """FedProx's mu/2 * |w - w_global|^2 over the backbone's parameters as they are now (the
    global ones, just loaded), a term for `Trainer.loss_terms`."""
    start = {name: p.detach().clone() for name, p in trainer.backbone.named_parameters()}

    def term(t: Trainer) -> Tensor:
        moved = [(p - start[name]).square().sum() for name, p in t.backbone.named_parameters()]
        return 0.5 * mu * torch.stack(moved).sum()

    return term


def local_evaluate(
    cfg: AHMConfig, data: RunData, client: ClientData, masking: MaskingPipeline, shared: State
) -> dict[str, int | float]:
    """Verification accuracy of the global backbone on the client's validation pairs."""
    if client.val_pairs is None:
        return {"num-examples": 0, "accuracy": 0.0, "partition-id": client.partition_id}
    report = evaluate_global(cfg, data.faces, client.val_pairs, masking, shared)
    return {
        "num-examples": len(client.val_pairs),
        "accuracy": report["accuracy"],
        "partition-id": client.partition_id,
    }


def evaluate_global(
    cfg: AHMConfig, faces: FaceSet, pairs: Pairs, masking: MaskingPipeline, shared: State
) -> dict:
    """Verification report of the shared backbone on `pairs` (inputs masked, never mixed)."""
    device = resolve_device(cfg.train.device)
    backbone = build_backbone(cfg.model, masking.in_channels, cfg.data.image_size).to(device)
    load_travelled(backbone, _unprefixed("backbone", shared))
    load_first_stage(masking, shared)
    return evaluate_verification(backbone, faces, pairs, masking.encode, device=device)


def trained_first_stage(shared: State) -> State | None:
    """The state of a trained first stage in a global model (None: the stage trains nothing)."""
    return _unprefixed("first_stage", shared) or None


def load_first_stage(masking: MaskingPipeline, shared: State) -> None:
    """Put the global state of a trained first stage (DCTDP's budget) into the pipeline."""
    if masking.first_stage.module is not None:
        load_travelled(masking.first_stage.module, _unprefixed("first_stage", shared))


def load_shared(trainer: Trainer, shared: State) -> None:
    """Put the global arrays into a trainer's backbone (and head, when it is shared)."""
    load_travelled(trainer.backbone, _unprefixed("backbone", shared))
    load_first_stage(trainer.masking, shared)
    head = _unprefixed("head", shared)
    if head:
        load_travelled(trainer.head, head)


def shared_state(trainer: Trainer, share_head: bool) -> State:
    """The arrays a client sends: its backbone (with a trained first stage), and its head when
    the head is shared."""
    state = _travelling("backbone", trainer.backbone.state_dict())
    if trainer.first_stage is not None:
        state |= _travelling("first_stage", trainer.first_stage.state_dict())
    if share_head:
        state |= _travelling("head", trainer.head.state_dict())
    # copies: the first stage's module is the pipeline's, which the next global state overwrites
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def pack_state(trainer: Trainer) -> bytes:
    """A client's private state (head, optimiser, policy, RNGs) as bytes; the backbone is left
    out, since the next round brings the global one."""
    state = trainer.state_dict()
    del state["backbone"]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def unpack_state(blob: bytes, device: torch.device | str = "cpu") -> dict:
    """Read what `pack_state` wrote (tensors and plain data only: weights_only)."""
    required = [key for key in STATE_KEYS if key != "backbone"]
    return load_checkpoint(blob, required, name="client state", map_location=device)


class ClientStateStore:
    """A client's private state on its own disk, by round, so a restarted federation resumes
    exactly: it keeps the newest state before the current round and the current one."""

    def __init__(self, root: str | Path, partition_id: int) -> None:
        self.folder = Path(root) / f"partition_{partition_id}"

    def _rounds(self) -> list[int]:
        names = (re.fullmatch(r"round_(\d+)\.pt", p.name) for p in self.folder.glob("round_*.pt"))
        return sorted(int(m.group(1)) for m in names if m)

    def load_before(self, server_round: int) -> bytes | None:
        """The state saved after the client's latest round before `server_round`, if any."""
        earlier = [r for r in self._rounds() if r < server_round]
        return (self.folder / f"round_{earlier[-1]:04d}.pt").read_bytes() if earlier else None

    def save(self, server_round: int, blob: bytes) -> None:
        """Write this round's state atomically and drop the ones no restart can need."""
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(
            self.folder / f"round_{server_round:04d}.pt", lambda tmp: tmp.write_bytes(blob)
        )
        earlier = [r for r in self._rounds() if r < server_round]
        for r in earlier[:-1]:
            (self.folder / f"round_{r:04d}.pt").unlink(missing_ok=True)


@contextlib.contextmanager
def seeded_globals(seed: int) -> Iterator[None]:
    """Python's and numpy's global RNGs seeded inside, restored after: Flower's node sampling
    and its DP noise (DP-FedAvg's, LocalDpMod's) draw from them."""
    saved, saved_np = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(saved)
        np.random.set_state(saved_np)


def _travelling(prefix: str, state: dict[str, Tensor]) -> State:
    """The part of a module's state that travels, its keys prefixed: the floating-point tensors.
    Integer buffers (BatchNorm's num_batches_tracked) stay home: they count steps, carry no
    direction, go unused at a fixed momentum, and in an update they would swamp a DP clipping
    norm (every BatchNorm layer's step count) and overflow SecAgg+'s quantisation range."""
    return {f"{prefix}.{k}": v for k, v in state.items() if v.is_floating_point()}


def _unprefixed(prefix: str, state: State) -> State:
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in state.items() if k.startswith(f"{prefix}.")}
