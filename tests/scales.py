"""The tiny scales the tests train at, defined once: `TRAIN` for centralized training,
`FEDERATED` for the federated task, `ONE_ROUND` for in-process federations of `NODES` clients,
`E2E` for `flwr run`, `REPORT` for the attacked run; and the client a federated test holds."""

from __future__ import annotations

from typing import Any

from ahm_core.config import AHMConfig, apply_overrides
from ahm_core.data.sources import RunData
from ahm_core.federated import ClientData, client_data, federated_data, run_masking
from ahm_core.masking import MaskingPipeline

TRAIN: dict[str, Any] = {
    "data.image_size": 32,
    "data.num_identities": 24,
    "data.images_per_identity": 6,
    "data.num_pairs": 200,
    "data.test_fraction": 0.25,
    "model.blocks": (1, 1),
    "model.width": 8,
    "model.embedding_size": 32,
    "train.batch_size": 16,
    "train.epochs": 2,
    "train.progress": False,
    "policy.k_set": (2, 3, 4),
    "policy.interval": 2,
}
FEDERATED: dict[str, Any] = {
    **TRAIN,  # with more images and a federation
    "data.images_per_identity": 8,
    "train.epochs": 1,
    "policy.k_set": (2, 3),
    "masking.method": "masking_adamixup",
    "federation.rounds": 3,
    "federation.val_fraction": 0.25,
    "federation.eval_pairs": 40,
}
E2E: dict[str, Any] = {
    **FEDERATED,  # more people, so that 2-4 SuperNodes each hold several
    "data.num_identities": 40,
    "data.num_pairs": 400,
    "federation.rounds": 2,
    "federation.local_epochs": 2,
}
del E2E["masking.method"], E2E["train.epochs"]  # the app's defaults
NODES = 3  # the in-process federations' clients
ONE_ROUND: dict[str, Any] = {
    **FEDERATED,
    "masking.method": "ppfr_fd",
    "federation.rounds": 1,
    "federation.local_epochs": 1,
    "federation.num_clients": NODES,
    "federation.min_clients": NODES,
    "federation.malicious_clients": 0,  # Bulyan needs 4f + 3 clients: f = 0 with 3
    "federation.fraction_evaluate": 0.0,
}
REPORT: dict[str, Any] = {
    "data.num_identities": 16,
    "data.images_per_identity": 6,
    "data.image_size": 32,
    "data.num_pairs": 60,
    "model.backbone": "ir_se_small",
    "model.blocks": (1, 1, 1),
    "model.width": 8,
    "model.embedding_size": 32,
    "train.batch_size": 16,
    "train.progress": False,
    "masking.method": "masking_adamixup",
    "policy.k_set": (2, 3),
    "policy.net": "small",
    "federation.rounds": 1,
    "federation.local_epochs": 1,
    "attack.victims": 12,
    "attack.aux_images": 16,
    "attack.cgan_epochs": 1,
    "attack.rungs": 2,
    "attack.holdout": 8,
    "attack.kept_channels": (8,),
    "attack.gi_iterations": 10,
    "attack.gi_restarts": 1,
    "attack.demix_images": 8,
    "attack.ngf": 8,
    "attack.ndf": 8,
    "attack.lpips_calibrated": False,
    "attack.judges": ("own",),
}


def config(scale: dict[str, Any], **overrides: Any) -> AHMConfig:
    """`scale` with `overrides` (dotted keys) over the defaults."""
    return apply_overrides(AHMConfig(), {**scale, **overrides})


def hydra_args(scale: dict[str, Any]) -> list[str]:
    """`scale` as hydra overrides (`model.blocks=[1,1]`)."""
    return [
        f"{k}={list(v) if isinstance(v, tuple) else v}".replace(" ", "") for k, v in scale.items()
    ]


def federated_client(
    cfg: AHMConfig, partition_id: int = 0, num_partitions: int = 2
) -> tuple[RunData, MaskingPipeline, ClientData]:
    """The run's data and masking, and one client's share of it."""
    data = federated_data(cfg)
    masking = run_masking(cfg, data)
    return data, masking, client_data(cfg, data, partition_id, num_partitions)
