"""Update screening over a round and the injected faults it must catch (Flower-free)."""

import pytest
import torch

from ahm_core.config import AHMConfig, FederationConfig, apply_overrides
from ahm_core.faults import (
    INT_VALUE,
    InjectedFaultError,
    coalition_partition,
    corrupt,
    fail_before_training,
    faulty_partitions,
)
from ahm_core.screening import bounded, bounded_weights, norm, screen_round

GLOBAL = {
    "w": torch.ones(50),
    "b": torch.ones(10),
    "bn.running_mean": torch.zeros(8),
    "bn.running_var": torch.ones(8),
    "count": torch.tensor(7),
}


def honest(seed: int, size: float = 0.1) -> dict:
    """An update of about `size` x the weights' norm in a direction of its own, and running
    statistics that move the way every client's do (towards the data's)."""
    g = torch.Generator().manual_seed(seed)
    state = {k: GLOBAL[k] + size * torch.randn(len(GLOBAL[k]), generator=g) for k in ("w", "b")}
    shared = torch.linspace(0.5, 1.5, 8)
    state["bn.running_mean"] = shared + 0.05 * torch.randn(8, generator=g)
    state["bn.running_var"] = 1 + shared + 0.05 * torch.randn(8, generator=g)
    return {**state, "count": torch.tensor(9)}


def reasons(updates: list, **overrides) -> list:
    f = FederationConfig(**overrides)
    return [s.reason for s in screen_round(GLOBAL, updates, f)]


def test_honest_updates_pass_and_each_bad_kind_is_named():
    good = [honest(i) for i in range(5)]
    assert reasons(good) == [None] * 5
    bases = [honest(i) for i in range(5, 10)]  # each bad update built from its own honest one
    flipped = {k: 2 * GLOBAL[k] - v for k, v in bases[0].items()}
    flipped["count"] = torch.tensor(9)
    scaled10 = {k: GLOBAL[k] + 10 * (v - GLOBAL[k]) for k, v in bases[1].items()}
    scaled200 = {k: GLOBAL[k] + 200 * (v - GLOBAL[k]) for k, v in bases[2].items()}
    zeros = {k: torch.zeros_like(v) for k, v in GLOBAL.items()}
    stale = dict(GLOBAL)
    mean = bases[3]["bn.running_mean"]
    flipped_mean = {**bases[3], "bn.running_mean": 2 * GLOBAL["bn.running_mean"] - mean}
    got = reasons([*good[1:], flipped_mean, flipped, scaled10, scaled200, zeros, stale])
    expected = ["direction", "statistics", "norm_outlier", "norm", "norm_outlier", "stale"]
    assert got == [None] * 4 + expected


def test_a_coalition_sending_one_update_is_rejected_whatever_its_sign_or_size():
    good = [honest(i) for i in range(6)]
    base = honest(9)  # weights flipped x 2.5, statistics as trained: inside the other bounds
    crafted = {**base, **{k: GLOBAL[k] - 2.5 * (base[k] - GLOBAL[k]) for k in ("w", "b")}}
    assert reasons([*good, crafted, dict(crafted)]) == [None] * 6 + ["duplicate"] * 2
    assert reasons([good[0], crafted, dict(crafted)]) == [None, "duplicate", "duplicate"]
    near = {**crafted, "w": crafted["w"] + 0.01 * torch.randn(50)}  # a little noise of its own
    assert reasons([*good, crafted, near]) == [None] * 6 + ["duplicate"] * 2
    assert reasons([*good, crafted, dict(crafted)], max_pair_cosine=1.0) == [None] * 8
    verdicts = screen_round(GLOBAL, [*good, crafted, dict(crafted)], FederationConfig())
    assert all(v.pair_cosine < 0.5 for v in verdicts[:6])  # what the honest ones came to
    assert all(v.pair_cosine == pytest.approx(1.0) for v in verdicts[6:])


def test_what_passes_moves_the_model_no_further_than_the_rounds_median_update():
    good = [honest(i) for i in range(6)]
    base = honest(9)
    big = {**base, **{k: GLOBAL[k] + 2.5 * (base[k] - GLOBAL[k]) for k in ("w", "b")}}
    updates = [*good, big]
    verdicts = screen_round(GLOBAL, updates, FederationConfig())
    assert [v.reason for v in verdicts] == [None] * 7
    cap = sorted(v.norm for v in verdicts)[3]  # the median of the 7 accepted norms
    out = bounded(GLOBAL, updates, verdicts, FederationConfig())
    for u, v in zip(out, verdicts, strict=True):
        moved = norm({k: u[k] - GLOBAL[k] for k in ("w", "b")}, ("w", "b"))
        assert moved == pytest.approx(min(v.norm, cap), rel=1e-5)
        assert v.clip == pytest.approx(min(1.0, cap / v.norm), rel=1e-6)
    assert torch.equal(out[0]["count"], good[0]["count"])
    unclipped = bounded(GLOBAL, updates, verdicts, FederationConfig(dp="server_fixed"))
    assert all(u is w for u, w in zip(unclipped, updates, strict=True))  # DP: as sent


def test_the_running_statistics_aggregated_are_the_accepted_updates_median():
    good = [honest(i) for i in range(5)]
    shifted = [{**honest(i), "bn.running_mean": honest(i)["bn.running_mean"] + 1} for i in (7, 8)]
    updates = [*good, *shifted]
    f = FederationConfig(min_update_cosine=-1.0)  # let the shifted pair through
    verdicts = screen_round(GLOBAL, updates, f)
    assert [v.reason for v in verdicts] == [None] * 7
    out = bounded(GLOBAL, updates, verdicts, f)
    expected = torch.stack([u["bn.running_mean"] for u in updates]).median(dim=0).values
    assert all(torch.allclose(u["bn.running_mean"], expected) for u in out)
    assert float(expected.max()) < float(torch.stack([u["bn.running_mean"] for u in good]).max())
    plain = bounded(GLOBAL, updates, verdicts, FederationConfig(median_statistics=False))
    assert torch.equal(plain[5]["bn.running_mean"], shifted[0]["bn.running_mean"])


def test_a_flip_of_the_weights_alone_looks_like_an_honest_update():
    """Honest weight updates are near-orthogonal, so the weights' direction is not bounded."""
    good = [honest(i) for i in range(5)]
    flipped = {**good[0], **{k: 2 * GLOBAL[k] - good[0][k] for k in ("w", "b")}}
    assert reasons([*good[1:], flipped]) == [None] * 5


def test_a_round_too_small_for_a_majority_keeps_only_the_model_bounds():
    good = [honest(0), honest(1)]
    flipped = {
        **good[0],
        "bn.running_mean": 2 * GLOBAL["bn.running_mean"] - good[0]["bn.running_mean"],
    }
    assert reasons([good[1], flipped]) == [None, None]  # two updates: no majority to ask
    big = {k: GLOBAL[k] + 200 * (v - GLOBAL[k]) for k, v in good[0].items()}
    assert reasons([good[1], big]) == [None, "norm"]  # 13 x the model's norm
    assert reasons([good[1]], max_update_norm=0.01) == ["norm"]


def test_the_verdicts_describe_every_update():
    verdicts = screen_round(GLOBAL, [honest(i) for i in range(3)], FederationConfig())
    for v in verdicts:
        assert 0.05 < v.ratio < 0.5 and v.norm > 0 and -1 <= v.cosine <= 1
        assert 0.9 < v.statistics_cosine <= 1 and abs(v.pair_cosine) < 0.5 and v.clip <= 1


def test_one_flip_in_a_round_of_three_is_rejected_alone():
    """Against the median of the two others, which in a round of three is their mean, a flipped
    update's statistics drag the honest ones' reference below zero too; against the round's
    median the honest pair sets it."""
    a, b, c = honest(1), honest(2), honest(3)
    start = GLOBAL["bn.running_mean"]
    flipped = {**c, "bn.running_mean": start - 2 * (c["bn.running_mean"] - start)}
    assert reasons([a, b, flipped]) == [None, None, "direction"]


def test_weights_are_bounded_by_the_rounds_median_claim():
    assert bounded_weights([100, 120, 10**9], 2.0) == [100.0, 120.0, 240.0]
    assert bounded_weights([50, 50], 2.0) == [50.0, 50.0]


def faulty_cfg(mode: str, **extra) -> AHMConfig:
    overrides = {"federation.fault_fraction": 0.25, "federation.fault_mode": mode, **extra}
    return apply_overrides(AHMConfig(), overrides)


def test_faulty_partitions_are_a_seeded_fraction():
    cfg = faulty_cfg("raise")
    faulty = faulty_partitions(cfg, 8)
    assert len(faulty) == 2 and faulty == faulty_partitions(cfg, 8) and faulty <= set(range(8))


@pytest.mark.parametrize("mode", ["raise", "hang"])
def test_failing_modes_raise_before_training(mode):
    with pytest.raises(InjectedFaultError, match=mode):
        fail_before_training(faulty_cfg(mode, **{"federation.fault_seconds": 0.01}))
    fail_before_training(faulty_cfg("signflip"))  # corrupting modes train first


def test_corrupting_modes_build_on_the_honest_update():
    start, shared = GLOBAL, honest(3)
    metrics = {"num-examples": 40, "partition-id": 2, "loss": 1.0}
    delta = shared["w"] - start["w"]

    def run(mode: str, scale: float = 10.0):
        cfg = faulty_cfg(mode, **{"federation.fault_scale": scale})
        return corrupt(cfg, start, shared, metrics, seed=1)

    assert torch.allclose(run("signflip", 2.0)[0]["w"], start["w"] - 2 * delta)
    assert torch.allclose(run("scale", 10.0)[0]["w"], start["w"] + 10 * delta)
    noisy = run("noise", 3.0)[0]
    floats = [k for k, v in start.items() if v.is_floating_point()]
    moved = float(torch.cat([noisy[k] - start[k] for k in floats]).norm())
    honest_norm = float(torch.cat([shared[k] - start[k] for k in floats]).norm())
    assert moved == pytest.approx(3 * honest_norm, rel=1e-4)
    assert all(float(v.abs().sum()) == 0 for k, v in run("zeros")[0].items() if k != "count")
    assert all(run("stale")[0][k] is start[k] for k in start)
    ints = run("int_tensors")[0]
    assert all(v.dtype == torch.int64 and int(v.flatten()[0]) == INT_VALUE for v in ints.values())
    assert torch.isnan(run("nan")[0]["w"]).all() and run("nan")[0]["count"] == shared["count"]
    assert run("huge_examples")[1]["num-examples"] == 10**9
    assert run("zero_examples")[1]["num-examples"] == 0
    assert run("negative_examples")[1]["num-examples"] == -100
    assert run("missing_metrics")[1] == {"num-examples": 40}
    assert run("false_partition")[1]["partition-id"] == -1
    assert torch.equal(shared["w"], honest(3)["w"])  # the honest update is left as it was


def test_a_coalition_sends_one_crafted_part_from_every_member():
    start, metrics = GLOBAL, {"num-examples": 40, "partition-id": 2, "num-partitions": 8}
    pooled = faulty_cfg("collude_signflip", **{"federation.fault_scale": 2.0})
    members = faulty_partitions(pooled, 8)
    assert {coalition_partition(pooled, p, 8) for p in members} == {min(members)}
    shared = honest(3)
    flipped = corrupt(pooled, start, shared, metrics, seed=1)[0]
    assert torch.allclose(flipped["w"], start["w"] - 2 * (shared["w"] - start["w"]))
    assert flipped["bn.running_var"] is shared["bn.running_var"]  # statistics as trained
    drift = faulty_cfg("collude_drift", **{"federation.fault_scale": 0.5})
    assert coalition_partition(drift, 5, 8) == 5  # each member trains on its own data
    added = []
    for seed, own in ((1, honest(4)), (2, honest(5))):
        sent = corrupt(drift, start, own, metrics, seed=seed)[0]
        extra = {k: sent[k] - own[k] for k in ("w", "b")}
        moved = norm({k: own[k] - start[k] for k in ("w", "b")}, ("w", "b"))
        assert norm(extra, ("w", "b")) == pytest.approx(0.5 * moved, rel=1e-4)
        added.append(torch.cat([extra["w"], extra["b"]]) / norm(extra, ("w", "b")))
        assert torch.equal(sent["bn.running_mean"], own["bn.running_mean"])
    assert torch.allclose(added[0], added[1], atol=1e-6)  # one direction, whoever sends it
    stats = faulty_cfg("collude_statistics", **{"federation.fault_scale": 1.0})
    own = honest(4)
    sent = corrupt(stats, start, own, metrics, seed=1)[0]
    assert torch.equal(sent["w"], own["w"]) and torch.equal(
        sent["bn.running_var"], own["bn.running_var"]
    )
    statistics = ("bn.running_mean", "bn.running_var")
    moved = norm({k: own[k] - start[k] for k in statistics}, statistics)
    shift = {"m": sent["bn.running_mean"] - own["bn.running_mean"]}
    assert norm(shift, ("m",)) == pytest.approx(moved, rel=1e-4)
    claimed = corrupt(faulty_cfg("claim_partition"), start, own, metrics, seed=1)[1]
    assert claimed["partition-id"] == 3


def test_flip_weights_flips_a_clients_own_weights_and_keeps_its_statistics():
    start, shared = GLOBAL, honest(4)
    metrics = {"num-examples": 40, "partition-id": 2, "num-partitions": 8}
    cfg = faulty_cfg("flip_weights", **{"federation.fault_scale": 2.0})
    sent = corrupt(cfg, start, shared, metrics, seed=1)[0]
    assert torch.allclose(sent["w"], start["w"] - 2 * (shared["w"] - start["w"]))
    assert sent["bn.running_mean"] is shared["bn.running_mean"]
    assert coalition_partition(cfg, 5, 8) == 5  # its own data
