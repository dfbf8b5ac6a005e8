"""The privacy/accuracy report of a federated run, on a tiny synthetic set: its accuracy line, the
CGAN attack scored beside its floor, the policy's k shares."""

import csv
import json

import pytest

from ahm_core.config import AHMConfig, apply_overrides
from ahm_core.report import federated_report

TINY = {
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
    "attack.ngf": 8,
    "attack.ndf": 8,
    "attack.lpips_calibrated": False,
    "attack.judges": ("own",),
}
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


def test_federated_report(tmp_path):
    cfg = apply_overrides(AHMConfig(), TINY)
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
