"""The privacy/accuracy report of a federated run, on a tiny synthetic set: its accuracy line, the
CGAN attack scored beside its floor, the policy's k shares."""

import csv
import json

import pytest
import torch
from scales import REPORT, config

from ahm_core.cases import build_case
from ahm_core.config import AHMConfig
from ahm_core.federated import federated_data, initial_state, run_masking
from ahm_core.report import federated_report
from ahm_core.tables import rate_cell

SUMMARY = {  # what rounds.json holds after two rounds
    "final_accuracy": 0.6,
    "rounds": [
        {"round": 0, "accuracy": 0.5},
        {"round": 1, "accuracy": 0.55, "k_histogram": {"2": 10, "3": 10}},
        {
            "round": 2,
            "accuracy": 0.6,
            "k_histogram": {"2": 30, "3": 10},
            "train": {"loss": 3.0},
            "succeeded": 2,
            "sampled": 2,
            "rejected": {},
            "seconds": 1.5,
            "verification": {"accuracy_ci95": [0.5, 0.7]},
        },
    ],
}


def final_model(cfg: AHMConfig, folder) -> dict:
    """The server's checkpoint.pt of the run: its global state (here the initial one)."""
    data = federated_data(cfg)
    state = initial_state(cfg, run_masking(cfg, data), data)
    torch.save({"state": state}, folder / "checkpoint.pt")
    return state


def test_federated_report(tmp_path):
    cfg = config(REPORT)
    final_model(cfg, tmp_path)
    path = federated_report(cfg, SUMMARY, tmp_path, log=lambda line: None)
    text = path.read_text()
    assert "Final verification accuracy 0.600 [0.500, 0.700] (untrained 0.500;" in text
    assert 'over the whole run {"2": 0.6667, "3": 0.3333}; in the last round {"2": 0.75,' in text
    assert "![k drawn by the clients in every round](k_dynamics.png)" in text
    assert (tmp_path / "k_dynamics.png").stat().st_size > 1000
    result = json.loads((tmp_path / "report.json").read_text())
    cgan = result["privacy"]["attacks"]["cgan"]
    assert cgan["count"] == 12 and (tmp_path / "cgan.png").is_file()
    a_lpips = cgan["a_lpips"]
    assert a_lpips["gain"] == pytest.approx(a_lpips["floor"] - a_lpips["value"])
    assert list(result["privacy"]["ceilings"]) == ["own"] and result["absent_judges"] == {}
    with (tmp_path / "report.csv").open() as handle:
        rows = {row["Index"]: row for row in csv.DictReader(handle)}
    assert rows["Rank-1 identity leakage (own) [95%] (chance)"]["Ceiling"] != "-"
    channel_drop = result["privacy"]["attacks"]["channel_drop"]  # appendix A.2, beside the CGAN
    assert rows["A.2: Rank-1 identity leakage (own) [95%] (chance)"]["Value"] == rate_cell(
        channel_drop["judges"]["own"]["rank1"]
    )


def test_a_trained_first_stage_is_attacked_as_the_final_model_holds_it(tmp_path, monkeypatch):
    cfg = config(REPORT, **{"masking.method": "dctdp_adamixup"})
    state = final_model(cfg, tmp_path)
    state["first_stage.logits"] = torch.linspace(-3, 3, 63)  # budget on the high channels
    torch.save({"state": state}, tmp_path / "checkpoint.pt")
    seen = []
    monkeypatch.setattr(
        "ahm_core.scoring.build_case",
        lambda *args: seen.append(args[-1]) or build_case(*args),
    )
    federated_report(cfg, SUMMARY, tmp_path, log=lambda line: None)
    result = json.loads((tmp_path / "report.json").read_text())
    torch.testing.assert_close(seen[0]["logits"], state["first_stage.logits"])
    assert "skipped" not in result["privacy"]["attacks"]["channel_drop"]
