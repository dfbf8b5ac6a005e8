"""Update screening over a round and the injected faults it must catch (Flower-free)."""

import pytest
import torch

from ahm_core.config import AHMConfig, FederationConfig, apply_overrides
from ahm_core.faults import (
    INT_VALUE,
    InjectedFaultError,
    corrupt,
    fail_before_training,
    faulty_partitions,
)
from ahm_core.screening import bounded_weights, screen_round

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
    flipped = {k: 2 * GLOBAL[k] - v for k, v in good[0].items()}
    flipped["count"] = torch.tensor(9)
    scaled10 = {k: GLOBAL[k] + 10 * (v - GLOBAL[k]) for k, v in good[0].items()}
    scaled200 = {k: GLOBAL[k] + 200 * (v - GLOBAL[k]) for k, v in good[0].items()}
    zeros = {k: torch.zeros_like(v) for k, v in GLOBAL.items()}
    stale = dict(GLOBAL)
    mean = good[0]["bn.running_mean"]
    flipped_mean = {**good[0], "bn.running_mean": 2 * GLOBAL["bn.running_mean"] - mean}
    got = reasons([*good[1:], flipped_mean, flipped, scaled10, scaled200, zeros, stale])
    expected = ["direction", "statistics", "norm_outlier", "norm", "norm_outlier", "stale"]
    assert got == [None] * 4 + expected


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
        assert 0.05 < v.ratio < 0.5 and v.norm > 0 and abs(v.cosine) < 0.5
        assert 0.9 < v.statistics_cosine <= 1


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
