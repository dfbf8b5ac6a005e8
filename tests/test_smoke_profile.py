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
