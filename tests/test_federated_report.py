"""The privacy/accuracy report of a federated run, on a tiny synthetic set: its accuracy line, the
CGAN attack scored beside its floor, the policy's k shares."""

import copy
import csv
import json

import pytest
import torch
from scales import REPORT, config

from ahm_core.cases import build_case
from ahm_core.config import AHMConfig
from ahm_core.evaluate import identity_interval, pair_identities
from ahm_core.federated import federated_data, initial_state, run_masking
from ahm_core.report import federated_report
from ahm_core.tables import accuracy_cell, cluster_interval, rate_cell

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
    # the server's last evaluation keeps its per-pair outcomes: wrong on every pair of the first
    # held-out identity, so the interval clustered by identity is wider than a pairs' one
    left, right = pair_identities(cfg.data)
    hard = left.unique()[0]
    correct = "".join("0" if w else "1" for w in ((left == hard) | (right == hard)).tolist())
    summary = copy.deepcopy(SUMMARY)
    summary["rounds"][-1]["verification"]["correct"] = correct
    path = federated_report(cfg, summary, tmp_path, log=lambda line: None)
    text = path.read_text()
    clustered = identity_interval(cfg.data, correct)
    assert (
        f"Final verification accuracy 0.600 [0.500, 0.700] {cluster_interval(clustered)} "
        "(untrained 0.500;" in text
    )
    assert "In brackets its 95% interval over the 10 folds; in braces its bootstrap" in text
    assert 'over the whole run {"2": 0.6667, "3": 0.3333}; in the last round {"2": 0.75,' in text
    assert "![k drawn by the clients in every round](k_dynamics.png)" in text
    assert (tmp_path / "k_dynamics.png").stat().st_size > 1000
    result = json.loads((tmp_path / "report.json").read_text())
    assert result["final_accuracy_cluster_ci95"] == clustered
    cgan = result["privacy"]["attacks"]["cgan"]
    assert cgan["count"] == 12 and (tmp_path / "cgan.png").is_file()
    a_lpips = cgan["a_lpips"]
    assert a_lpips["gain"] == pytest.approx(a_lpips["floor"] - a_lpips["value"])
    assert list(result["privacy"]["ceilings"]) == ["own"] and result["absent_judges"] == {}
    with (tmp_path / "report.csv").open() as handle:
        rows = {row["Index"]: row for row in csv.DictReader(handle)}
    assert rows["cgan: Rank-1 identity leakage (own) [95%] (chance)"]["Ceiling"] != "-"
    channel_drop = result["privacy"]["attacks"]["channel_drop"]  # appendix A.2, beside the CGAN
    assert rows["channel_drop: Rank-1 identity leakage (own) [95%] (chance)"]["Value"] == rate_cell(
        channel_drop["judges"]["own"]["rank1"]
    )
    # The worst case over every attack that ran names the attack that set each index.
    worst = result["privacy"]["worst"]["judges"]["own"]["rank1"]
    ran = {n for n, r in result["privacy"]["attacks"].items() if "skipped" not in r}
    assert {"cgan", "channel_drop", "demix", "gradient_inversion"} <= ran
    assert worst["rank1"] == max(
        result["privacy"]["attacks"][n]["judges"]["own"]["rank1"].get("rank1", -1) for n in ran
    )
    assert rows["worst case: Rank-1 (own) [95%] (chance)"]["Value"].endswith(worst["attack"])
    # Each learned attack climbed its ladder: its budget, its flag, its plot.
    assert cgan["budget"]["epochs"] == 1 and len(cgan["ladder"]) in (1, 2)
    assert isinstance(cgan["converged"], bool)
    assert "## Attack budgets" in text and (tmp_path / "ladder.png").stat().st_size > 1000


def test_a_trained_first_stage_is_attacked_as_the_final_model_holds_it(tmp_path, monkeypatch):
    cfg = config(REPORT, **{"masking.method": "dctdp_adamixup"})
    state = final_model(cfg, tmp_path)
    state["first_stage.logits"] = torch.linspace(-3, 3, 63)  # budget on the high channels
    torch.save({"state": state}, tmp_path / "checkpoint.pt")
    seen = []
    monkeypatch.setattr(
        "ahm_core.scoring.build_case",
        lambda *args, **holdings: seen.append(args[-1]) or build_case(*args, **holdings),
    )
    federated_report(cfg, SUMMARY, tmp_path, log=lambda line: None)
    result = json.loads((tmp_path / "report.json").read_text())
    torch.testing.assert_close(seen[0]["logits"], state["first_stage.logits"])
    assert "skipped" not in result["privacy"]["attacks"]["channel_drop"]


def test_cells_put_identity_clustered_intervals_in_braces():
    """Square brackets: the interval as if independent (folds, Wilson's); braces: clustered by
    identity; a cell of a row measured before the clustered interval keeps its old form."""
    entry = {"rank1": 0.375, "rank1_ci95": [0.2, 0.55], "chance": 0.1}
    assert rate_cell(entry) == "0.375 [0.200, 0.550] (0.100)"
    entry["rank1_cluster_ci95"] = [0.15, 0.6]
    assert rate_cell(entry) == "0.375 [0.200, 0.550] {0.150, 0.600} (0.100)"
    assert (
        accuracy_cell(0.975, [0.967, 0.983], [0.96, 0.99]) == "0.975 [0.967, 0.983] {0.960, 0.990}"
    )
    assert accuracy_cell(0.975, None, [0.96, 0.99]) == "0.975 {0.960, 0.990}"
    assert accuracy_cell(None) == "-"
