"""The whole threat chain at CI scale: a tiny federated run, then every attack on it."""

import json
import os
import subprocess
import sys

from ahm_core.config import METHODS


def test_threat_model_smoke_makes_a_run_and_reports_every_defence(tmp_path):
    command = [sys.executable, "-m", "simulations.threat_model", "profile=smoke"]
    command += [f"hydra.run.dir={tmp_path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    assert f"threat report in {run / 'threat_report.md'}" in done.stdout
    result = json.loads((run / "threat_report.json").read_text())
    rows = result["defences"]
    assert list(rows) == ["arcface", "ppfr_fd", "masking_mixup", "masking_adamixup", "dp_fedavg"]
    for defence, row in rows.items():
        gi = row["gradient_inversion"]
        assert -1 <= gi["cosine"] <= 1 and 0 <= gi["chain_rank1"] <= 1
        assert (run / "threat" / defence / "gradient_inversion.png").is_file()
        trained = defence in (result["method"], "dp_fedavg")  # attacked at its own run's model
        assert gi["model"] == ("captured global" if trained else "initial")
        assert ("demix" in row) == (METHODS[row.get("method", defence)].mixing is not None)
        assert ("model_inversion" in row) == trained
        assert ("accuracy" in row) == trained
    dp = rows["dp_fedavg"]
    assert dp["method"] == "arcface" and 0 <= dp["accuracy"] <= 1 and dp["dp"]["epsilon"] > 0
    assert (run / "dp_fedavg" / "checkpoint.pt").is_file()
    demixed = rows["masking_mixup"]["demix"]
    assert 0 <= demixed["faces_recovered"] <= demixed["images"] == 24
    gmi = rows[result["method"]]["model_inversion"]
    assert 0 <= gmi["top1"] <= gmi["top5"] <= 1 and gmi["feature_distance"] > 0
    report = (run / "threat_report.md").read_text()
    assert all(f"| {defence} |" in report for defence in rows)
