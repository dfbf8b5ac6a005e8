"""Every Flower strategy and DP-FedAvg wrapper for one round end to end on the smallest model
(in-process, `simulations.local`), the ClientApp's fault mod, exact resume with a stateful
server optimiser, FedProx's proximal term, and the DP accountant against a hand computation."""

import math

import pytest
import torch
from flwr.app import MessageType
from opacus.accountants import RDPAccountant
from scales import FEDERATED, NODES, ONE_ROUND, config, federated_client

from ahm_core.config import AHMConfig
from ahm_core.federated import (
    client_data,
    federated_data,
    initial_state,
    local_train,
    run_masking,
)
from ahm_core.privacy import dp_sgd_spent, epsilon_spent, local_dp_std
from ahm_core.screening import floating_keys, norm
from server.strategy import DP_WRAPPERS, STRATEGIES
from simulations.local import LocalGrid, run_local


def one_round(**extra) -> AHMConfig:
    return config(ONE_ROUND, **extra)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_trains_a_round_with_checks_and_screening(strategy, tmp_path):
    summary = run_local(one_round(**{"federation.strategy": strategy}), tmp_path, NODES)
    r = summary["rounds"][1]
    assert (r["sampled"], r["succeeded"], r["accepted"], r["rejected"]) == (NODES, NODES, NODES, {})
    assert r["aggregated"] == (1 if strategy == "krum" else NODES)
    assert len(r["updates"]) == NODES and all(u["reason"] is None for u in r["updates"])
    assert math.isfinite(r["train"]["loss"]) and 0 <= summary["final_accuracy"] <= 1
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert all(
        v.dtype == torch.float32 for k, v in saved["state"].items() if "num_batches" not in k
    )


@pytest.mark.parametrize("mode", ["raise", "nan"])
def test_the_fault_mod_fails_or_poisons_one_client_and_the_round_goes_on(mode, tmp_path):
    faulty = one_round(**{"federation.fault_fraction": 0.34, "federation.fault_mode": mode})
    r = run_local(faulty, tmp_path, NODES)["rounds"][1]
    if mode == "raise":
        assert (r["succeeded"], r["failed"], r["accepted"], r["rejected"]) == (2, 1, 2, {})
    else:  # trained, then corrupted by the mod: the reply arrives and the checks reject it
        assert (r["succeeded"], r["accepted"], r["rejected"]) == (3, 2, {"non_finite": 1})


@pytest.mark.parametrize("dp", DP_WRAPPERS)
def test_dp_fedavg_clips_adds_noise_and_accounts(dp, tmp_path):
    clip = 0.05
    cfg = one_round(
        **{
            "federation.dp": dp,
            "federation.dp_clipping_norm": clip,
            "federation.dp_noise_multiplier": 0.5,
            "federation.dp_clipped_count_stddev": 1.0,  # Flower's n / 20 is too low for n = 3
            "federation.rounds": 2,
        }
    )
    summary = run_local(cfg, tmp_path, NODES)
    rounds = summary["rounds"][1:]
    for number, r in enumerate(rounds, 1):
        assert r["dp"]["releases"] == number
        assert r["dp"]["epsilon"] == pytest.approx(epsilon_spent(0.5, 1.0, number, 1e-5))
    adaptive = dp.endswith("adaptive")
    assert (rounds[-1]["dp"]["clipping_norm"] != clip) == adaptive


@pytest.mark.parametrize("dp", ["server_fixed", "client_fixed"])
def test_dp_clipping_bounds_what_a_round_can_move(dp, tmp_path):
    clip = 1e-3
    cfg = one_round(
        **{
            "federation.dp": dp,
            "federation.dp_clipping_norm": clip,
            "federation.dp_noise_multiplier": 1e-6,  # noise std 1e-6 * clip / n per weight
        }
    )
    data = federated_data(cfg)
    start = initial_state(cfg, run_masking(cfg, data), data)
    run_local(cfg, tmp_path, NODES)
    end = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["state"]
    keys = floating_keys(end)
    assert 0 < norm({k: end[k] - start[k] for k in keys}, keys) < 1.01 * clip
    unclipped = run_local(one_round(), tmp_path / "plain", NODES)
    plain = torch.load(unclipped["checkpoint"], weights_only=True)["state"]
    assert norm({k: plain[k] - start[k] for k in keys}, keys) > 100 * clip


def test_local_dp_noises_every_update_and_accounts_each_round(tmp_path):
    """Flower's LocalDpMod on each of the 3 clients: the round's model moves by their mean, the
    clipped updates (norm <= 0.01) and noise of std sigma / sqrt(3) per value; seeded."""
    epsilon = 50.0
    cfg = one_round(
        **{
            "federation.local_dp": True,
            "federation.local_dp_clipping_norm": 0.01,
            "federation.local_dp_epsilon": epsilon,
            "federation.screen": False,
        }
    )
    data = federated_data(cfg)
    start = initial_state(cfg, run_masking(cfg, data), data)
    summary = run_local(cfg, tmp_path, NODES)
    std = local_dp_std(1.0, epsilon, 1e-5)
    spent = summary["rounds"][1]["local_dp"]
    assert spent["noise_std"] == pytest.approx(std) and spent["releases"] == 1
    assert spent["epsilon"] == pytest.approx(epsilon_spent(std, 1.0, 1, 1e-5))
    end = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["state"]
    moved = torch.cat([(end[k] - start[k]).flatten() for k in start if "running" not in k])
    assert float(moved.std()) == pytest.approx(std / math.sqrt(NODES), rel=0.05)
    assert all(bool((end[k] >= 0).all()) for k in end if k.endswith("running_var"))
    again = run_local(cfg, tmp_path / "again", NODES)
    repeat = torch.load(again["checkpoint"], weights_only=True)["state"]
    assert all(torch.equal(end[k], repeat[k]) for k in end)


def test_dp_sgd_clients_account_for_the_client_that_spent_most(tmp_path):
    cfg = one_round(**{"train.dp_sgd": True, "model.norm": "group", "federation.rounds": 2})
    summary = run_local(cfg, tmp_path, NODES)
    data = federated_data(cfg)
    sizes = [len(client_data(cfg, data, p, NODES).items) for p in range(NODES)]
    for number, r in enumerate(summary["rounds"][1:], 1):
        assert r["accepted"] == NODES
        expected = max(dp_sgd_spent(cfg.train, n, number)["epsilon"] for n in sizes)
        assert r["dp_sgd"]["epsilon"] == pytest.approx(expected) and expected > 0
    assert 0 <= summary["final_accuracy"] <= 1


class KilledGrid(LocalGrid):
    """A grid whose server dies when the second round's training is sent."""

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if messages and messages[0].metadata.message_type == MessageType.TRAIN:
            self.trains = getattr(self, "trains", 0) + 1
            if self.trains == 2:
                raise KeyboardInterrupt
        return super().send_and_receive(messages, timeout=timeout)


@pytest.mark.parametrize("strategy", ["fedadam", "fedavgm"])
def test_resume_is_exact_with_a_stateful_server_optimiser(strategy, tmp_path):
    cfg = one_round(**{"federation.strategy": strategy, "federation.rounds": 2})
    whole = run_local(cfg, tmp_path / "whole", NODES, **{"client-state-dir": str(tmp_path / "w")})
    broken, state_dir = tmp_path / "broken", {"client-state-dir": str(tmp_path / "clients")}
    with pytest.raises(KeyboardInterrupt):
        run_local(cfg, broken, NODES, KilledGrid, **state_dir)
    saved = torch.load(broken / "checkpoint.pt", weights_only=True)
    assert saved["round"] == 1 and saved["server_state"]  # FedAdam's moments, FedAvgM's momentum
    resumed = run_local(cfg, broken, NODES, **state_dir)
    a = torch.load(whole["checkpoint"], weights_only=True)["state"]
    b = torch.load(resumed["checkpoint"], weights_only=True)["state"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Without the optimiser's state the same resume ends elsewhere: the test can fail.
    saved["server_state"] = {}
    torch.save(saved, broken / "checkpoint.pt")
    amnesic = run_local(cfg, broken, NODES, **state_dir)
    c = torch.load(amnesic["checkpoint"], weights_only=True)["state"]
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_fedprox_pulls_the_local_model_towards_the_global_one():
    cfg = config(FEDERATED, **{"federation.local_epochs": 3})
    data, masking, client = federated_client(cfg)
    start = initial_state(cfg, masking, data)
    keys = [k for k in floating_keys(start) if "running_" not in k]  # weights, not BN statistics

    def distance(mu: float) -> float:
        shared = local_train(cfg, data, client, masking, start, 1, proximal_mu=mu).shared
        return norm({k: shared[k] - start[k] for k in keys}, keys)

    assert distance(100.0) < 0.5 * distance(0.0)


def test_the_accountant_matches_a_hand_computation():
    # q = 1: the Gaussian mechanism's RDP is T * a / (2 z^2) at every order a, and RDP turns into
    # (epsilon, delta) by Balle et al. 2020 (Theorem 21), minimised over Opacus's orders.
    z, rounds, delta = 1.1, 5, 1e-5
    orders = RDPAccountant.DEFAULT_ALPHAS
    by_hand = min(
        rounds * a / (2 * z**2) - (math.log(delta) + math.log(a)) / (a - 1) + math.log((a - 1) / a)
        for a in orders
    )
    assert epsilon_spent(z, 1.0, rounds, delta) == pytest.approx(by_hand, rel=1e-9)
    # q < 1, integer orders: the subsampled Gaussian's A_a = sum_k C(a, k) (1-q)^(a-k) q^k
    # exp((k^2 - k) / (2 z^2)) (Mironov et al. 2019), RDP = T log(A_a) / (a - 1).
    z, q, rounds = 4.0, 0.25, 20

    def rdp(a: int) -> float:
        total = sum(
            math.comb(a, k) * (1 - q) ** (a - k) * q**k * math.exp((k * k - k) / (2 * z * z))
            for k in range(a + 1)
        )
        return rounds * math.log(total) / (a - 1)

    integers = [int(a) for a in orders if float(a).is_integer() and a >= 2]
    by_hand = min(
        rdp(a) - (math.log(delta) + math.log(a)) / (a - 1) + math.log((a - 1) / a) for a in integers
    )
    assert epsilon_spent(z, q, rounds, delta) == pytest.approx(by_hand, rel=1e-6)
    assert epsilon_spent(z, q, 0, delta) == 0.0
