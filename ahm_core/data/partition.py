"""Client partitions for federated runs: lists of item indices, never copies of images.

Schemes: `identity` (default; each client holds its own people, so its ArcFace head can stay
local), `iid` (items dealt evenly at random), `dirichlet` (each identity's images spread over
clients by proportions drawn from Dirichlet(alpha): small alpha, strong skew). Each client's
items are split into train and validation by image. The same seed gives the same partition.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

SCHEMES = ("identity", "iid", "dirichlet")  # federation.partition


class ClientPartition(NamedTuple):
    """Item indices of one client's training and validation images."""

    train: Tensor
    val: Tensor


def partition(
    labels: Tensor,
    num_clients: int,
    scheme: str = "identity",
    alpha: float = 0.5,
    val_fraction: float = 0.1,
    seed: int = 0,
    min_size: int = 1,
    drop_small: bool = False,
) -> list[ClientPartition]:
    """Partition items (by their identity `labels`) over clients.

    A client with fewer than `min_size` training items is an error, or is dropped when
    `drop_small` (the others keep their data; the result is shorter).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"partition scheme: unknown {scheme!r}; expected one of {SCHEMES}")
    if num_clients < 1 or not 0 <= val_fraction < 1:
        raise ValueError(
            f"need num_clients >= 1, 0 <= val_fraction < 1: {num_clients}, {val_fraction}"
        )
    rng = np.random.default_rng(seed)
    labels_np = labels.numpy()
    if scheme == "iid":
        shares = np.array_split(rng.permutation(len(labels_np)), num_clients)
    elif scheme == "identity":
        shares = _by_identity(labels_np, num_clients, rng)
    else:
        shares = _dirichlet(labels_np, num_clients, alpha, rng)
    clients = []
    for client, items in enumerate(shares):
        items = rng.permutation(np.sort(items))
        n_val = round(val_fraction * len(items)) if len(items) > 1 else 0
        train, val = np.sort(items[n_val:]), np.sort(items[:n_val])
        if len(train) < min_size:
            if drop_small:
                continue
            raise ValueError(
                f"partition: client {client} gets {len(train)} training images, below the "
                f"minimum {min_size} ({scheme}, {num_clients} clients, {len(labels_np)} images); "
                "use fewer clients or allow dropping small clients"
            )
        clients.append(ClientPartition(torch.from_numpy(train), torch.from_numpy(val)))
    return clients


def _by_identity(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> list:
    """Whole identities per client, dealt greedily (largest first) to the lightest client."""
    ids, counts = np.unique(labels, return_counts=True)
    if len(ids) < num_clients:
        raise ValueError(
            f"partition: {len(ids)} identities cannot give {num_clients} clients one each"
        )
    order = rng.permutation(len(ids))
    order = order[np.argsort(-counts[order], kind="stable")]
    load, owned = np.zeros(num_clients), [[] for _ in range(num_clients)]
    for i in order:
        client = int(np.argmin(load))
        owned[client].append(ids[i])
        load[client] += counts[i]
    return [np.nonzero(np.isin(labels, people))[0] for people in owned]


def _dirichlet(
    labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator
) -> list:
    """Each identity's images split over clients by proportions ~ Dirichlet(alpha)."""
    if alpha <= 0:
        raise ValueError(f"partition: dirichlet alpha must be > 0, got {alpha}")
    shares: list[list[int]] = [[] for _ in range(num_clients)]
    for person in np.unique(labels):
        items = rng.permutation(np.nonzero(labels == person)[0])
        cuts = (np.cumsum(rng.dirichlet([alpha] * num_clients))[:-1] * len(items)).astype(int)
        for client, part in enumerate(np.split(items, cuts)):
            shares[client] += part.tolist()
    return [np.array(s, dtype=np.int64) for s in shares]
