"""The CI smoke profile: arcface and ppfr_fd must verify >= 0.9; MixUp k=2 and k=6 are reported.

About three minutes on 2 cores in all (each method trains 10 epochs of 3,200 faces at 32 px).
"""

import json

import pytest
from hydra import compose, initialize

from ahm_core.experiment import run_centralized
from simulations.schema import register, split_run_config

register()
pytestmark = pytest.mark.slow  # minutes of training per case: make test-all


def smoke_config(*overrides: str):
    with initialize(version_base=None, config_path="../simulations/conf"):
        hcfg = compose("centralized", ["profile=smoke", *overrides])
    return split_run_config(hcfg)[0]


@pytest.mark.parametrize("method", ["arcface", "ppfr_fd"])
def test_smoke_profile_reaches_090(method, tmp_path):
    metrics = run_centralized(smoke_config(f"masking.method={method}"), tmp_path)
    assert metrics["epochs"] == 10
    assert metrics["verification_accuracy"] >= 0.9, metrics["verification"]


@pytest.mark.parametrize("k", [2, 6])
def test_smoke_profile_reports_masking_mixup(k, tmp_path, capsys):
    cfg = smoke_config("masking.method=masking_mixup", f"mixup.k={k}")
    metrics = run_centralized(cfg, tmp_path)
    assert 0.0 <= metrics["verification_accuracy"] <= 1.0
    with capsys.disabled():
        print(
            json.dumps(
                {
                    "smoke": f"masking_mixup k={k}",
                    "verification_accuracy": metrics["verification_accuracy"],
                }
            )
        )


def test_a_per_face_policy_with_the_kl_reward_under_a_loss_budget_trains_in_the_smoke_profile(
    tmp_path,
):
    overrides = [
        "masking.method=masking_adamixup",
        "policy.reward=kl",
        "policy.context=sample",
        "policy.loss_budget=0.1",
        "policy.net=small",
        "train.epochs=2",
    ]
    metrics = run_centralized(smoke_config(*overrides), tmp_path)
    assert 0.0 <= metrics["verification_accuracy"] <= 1.0
    assert sum(metrics["k_proportions"].values()) == pytest.approx(1.0, abs=1e-3)
    for epoch in metrics["history"]:  # the budget's multiplier after every update
        assert len(epoch["multipliers"]) == epoch["policy_updates"] > 0
        assert all(m >= 0 for m in epoch["multipliers"])
    found = metrics["k_conditioning"]
    assert found["faces"] == len(found["expected_k"]) == len(found["confidence"]) == 1024
    assert all(2 <= k <= 6 for k in found["expected_k"]) and -1 <= found["spearman"] <= 1
    assert (tmp_path / "k_conditioning.png").stat().st_size > 0
    assert json.loads((tmp_path / "metrics.json").read_text())["k_conditioning"] == found
