"""The Flower-free federated task: partitions, local rounds, client state, screening, faults."""

import pytest
import torch
from flwr.supercore.differential_privacy import compute_clip_model_update
from scales import FEDERATED, config, federated_client

from ahm_core.config import AHMConfig
from ahm_core.federated import (
    ClientStateStore,
    client_data,
    initial_state,
    local_evaluate,
    local_train,
    pack_state,
    parse_flower_run_config,
    unpack_state,
)
from ahm_core.train import Trainer


def tiny(**extra) -> AHMConfig:
    return config(FEDERATED, **extra)


def test_partitions_are_disjoint_people_with_local_labels():
    cfg = tiny()
    data, _, first = federated_client(cfg, 0)
    _, _, second = federated_client(cfg, 1)
    people = [set(data.faces.labels[c.items].tolist()) for c in (first, second)]
    assert people[0] and people[1] and not people[0] & people[1]
    for client, ids in zip((first, second), people, strict=True):
        assert client.num_classes == len(ids)
        assert sorted(client.labels.unique().tolist()) == list(range(len(ids)))
        assert client.val_pairs is not None
    held_out = set(data.faces.labels[data.pairs.left].tolist())
    assert not held_out & (people[0] | people[1])
    with pytest.raises(ValueError, match="partition-id"):
        client_data(cfg, data, 2, 2)


def test_a_shared_head_spans_every_training_identity():
    cfg = tiny(**{"federation.share_head": True})
    data, masking, client = federated_client(cfg)
    assert client.num_classes == data.num_classes
    state = initial_state(cfg, masking, data)
    assert state["head.weight"].shape[0] == data.num_classes
    result = local_train(cfg, data, client, masking, state, 1)
    assert result.shared.keys() == state.keys()


def test_a_local_round_trains_only_the_backbone_it_shares():
    cfg = tiny()
    data, masking, client = federated_client(cfg)
    start = initial_state(cfg, masking, data)
    assert all(k.startswith("backbone.") for k in start)
    result = local_train(cfg, data, client, masking, start, 1)
    assert result.shared.keys() == start.keys()
    assert any(not torch.equal(result.shared[k], start[k]) for k in start)
    m = result.metrics
    assert m["num-examples"] == len(client.items) and m["partition-id"] == 0
    assert m["k-values"] == [2, 3] and sum(m["k-counts"]) > 0
    rows = [m["k-pmf"][i : i + 2] for i in range(0, len(m["k-pmf"]), 2)]  # one per update
    assert rows and all(sum(row) == pytest.approx(1.0, abs=1e-4) for row in rows)
    assert 0 < m["loss"] < 100 and m["images-per-s"] > 0
    local = local_evaluate(cfg, data, client, masking, result.shared)
    assert local["num-examples"] == len(client.val_pairs) and 0 <= local["accuracy"] <= 1


def test_only_floating_point_tensors_travel_so_a_dp_clip_bounds_the_weights():
    """BatchNorm's step counters stay home: in an update they would be the step count of every
    BatchNorm layer, and Flower's DP clipping (its norm over every array) would shrink the
    weights' move to a sliver of the clipping norm."""
    cfg = tiny()
    data, masking, client = federated_client(cfg)
    start = initial_state(cfg, masking, data)
    trainer = Trainer(cfg, masking, client.num_classes, 1)
    assert any(not v.is_floating_point() for v in trainer.backbone.state_dict().values())
    assert all(v.is_floating_point() for v in start.values())
    sent = local_train(cfg, data, client, masking, start, 1).shared
    assert sent.keys() == start.keys()
    keys = list(start)
    clipped = [sent[k].numpy().copy() for k in keys]
    compute_clip_model_update(clipped, [start[k].numpy() for k in keys], 0.5)
    moved = sum(
        float(((c - start[k].numpy()) ** 2).sum()) for c, k in zip(clipped, keys, strict=True)
    )
    assert moved**0.5 == pytest.approx(0.5, rel=1e-4)  # the update clipped to exactly C


def test_client_state_carries_head_optimiser_policy_and_rngs_exactly():
    """Round 2 from unpacked bytes equals round 2 from the state the client kept."""
    cfg = tiny()
    data, masking, client = federated_client(cfg)
    start = initial_state(cfg, masking, data)
    first = local_train(cfg, data, client, masking, start, 1)
    again = local_train(cfg, data, client, masking, first.shared, 2, first.state)
    replay = local_train(cfg, data, client, masking, first.shared, 2, bytes(first.state))
    assert all(torch.equal(again.shared[k], replay.shared[k]) for k in start)
    fresh = local_train(cfg, data, client, masking, first.shared, 2)
    assert any(not torch.equal(again.shared[k], fresh.shared[k]) for k in start)
    saved = unpack_state(first.state)
    assert "backbone" not in saved and saved["policy"] is not None and saved["optimizer"]["state"]


def test_seek_joins_the_schedule_at_an_epoch():
    cfg = tiny(**{"train.epochs": 4, "train.warmup_epochs": 1})
    _, masking, client = federated_client(cfg)
    stepped = Trainer(cfg, masking, client.num_classes, 3)
    for _ in range(6):
        stepped.optimizer.step()
        stepped.scheduler.step()
    sought = Trainer(cfg, masking, client.num_classes, 3)
    sought.seek(2)
    assert sought.epoch == 2
    assert sought.optimizer.param_groups[0]["lr"] == pytest.approx(
        stepped.optimizer.param_groups[0]["lr"]
    )
    assert sought.scheduler.last_epoch == stepped.scheduler.last_epoch


def test_client_state_store_keeps_what_a_restart_needs(tmp_path):
    store = ClientStateStore(tmp_path, 3)
    assert store.load_before(1) is None
    for r in (1, 2, 4):
        store.save(r, f"state {r}".encode())
    assert store.load_before(4) == b"state 2"  # a restart that redoes round 4
    assert store.load_before(5) == b"state 4"
    assert sorted(p.name for p in store.folder.iterdir()) == ["round_0002.pt", "round_0004.pt"]


def test_run_config_splits_into_config_and_app_options():
    cfg, options = parse_flower_run_config(
        {"mixup.k": 3, "out-dir": "/tmp/x", "metrics-port": 9100}
    )
    assert cfg.mixup.k == 3 and options["out-dir"] == "/tmp/x" and options["metrics-port"] == 9100
    assert options["resume"] is True and options["client-state-dir"] == ""
    with pytest.raises(ValueError, match=r"mixup\.kk"):
        parse_flower_run_config({"mixup.kk": 3})


def test_pack_state_leaves_the_backbone_out():
    cfg = tiny()
    _, masking, client = federated_client(cfg)
    trainer = Trainer(cfg, masking, client.num_classes, 2)
    state = unpack_state(pack_state(trainer))
    assert "backbone" not in state and "head" in state


def test_a_trained_first_stage_travels_with_the_global_model():
    cfg = tiny(**{"masking.method": "dctdp_adamixup", "masking.dctdp_epsilon": 10.0})
    data, masking, client = federated_client(cfg)
    start = initial_state(cfg, masking, data)
    assert {"first_stage.logits", "first_stage.shift"} <= start.keys()
    result = local_train(cfg, data, client, masking, start, 1)
    assert result.shared.keys() == start.keys()
    moved = result.shared["first_stage.logits"]
    assert not torch.equal(moved, start["first_stage.logits"])  # the client trained the budget
    local_evaluate(cfg, data, client, masking, result.shared)  # the server's model, loaded
    torch.testing.assert_close(masking.first_stage.module.logits.detach(), moved)
    assert float(masking.first_stage.allocation().sum()) == pytest.approx(10.0, rel=1e-5)
