"""The whole threat chain at CI scale: a tiny federated run, then every attack on it."""

import csv
import json

import pytest
from hydra import compose, initialize

from ahm_core.attacks import ATTACKS
from ahm_core.config import AHMConfig, apply_overrides
from ahm_core.evaluate import identity_interval, pair_identities
from ahm_core.masking.methods import METHODS
from ahm_core.threat import DP_FEDAVG, _accuracy_cell, dp_fedavg_config, run_threat_model
from simulations.local import run_local
from simulations.schema import register, split_run_config

register()


@pytest.mark.slow
def test_threat_model_smoke_makes_a_run_and_reports_every_defence(tmp_path):
    """In process: the federations through `simulations.local` (the CLI's glue around them is
    the entry points' test), then every attack through `run_threat_model`."""
    with initialize(version_base=None, config_path="../simulations/conf"):
        # dlib judges in the paper-table test on ORL; here its 0.1 s a face would double the time
        hcfg = compose("threat_model", ["profile=smoke", "attack.judges=[own]"])
    cfg, options = split_run_config(hcfg)
    run = tmp_path / "run"
    # clients keep their state on disk, as the CLI's client_state=true: the released model
    state = {"client-state-dir": str(run / "client_state")}
    run_local(cfg, run, options["supernodes"], **state)
    state = {"client-state-dir": str(run / DP_FEDAVG / "client_state")}
    run_local(dp_fedavg_config(run, cfg), run / DP_FEDAVG, options["supernodes"], **state)
    report = run_threat_model(
        run, cfg, log=lambda line: None, compared={DP_FEDAVG: run / DP_FEDAVG}
    )
    assert report == run / "threat_report.md"
    result = json.loads((run / "threat_report.json").read_text())
    rows = result["defences"]
    defences = list(AHMConfig().attack.defences)  # the DCTDP rows among them
    assert "dctdp" in defences and "dctdp_adamixup" in defences
    assert list(rows) == [*defences, "dp_fedavg"]
    for defence, row in rows.items():
        attacks = row["attacks"]
        assert list(attacks) == list(ATTACKS)  # every registered attack, run or skipped with why
        trained = defence in (result["method"], "dp_fedavg")  # attacked at its own run's model
        mixes = METHODS[row.get("method", defence)].batch_mix is not None
        assert ("skipped" in attacks["demix"]) == (not mixes)
        first_stage = METHODS[row.get("method", defence)].first_stage
        keyed = mixes and first_stage == "ppfr_fd"  # with its fixed key, demixed without it too
        assert ("skipped" in attacks["demix_keyless"]) == (not keyed)
        worst = row["worst"]["judges"]["own"]["rank1"]  # the worst case names its attack
        assert worst["rank1"] == max(
            a["judges"]["own"]["rank1"].get("rank1", -1)
            for a in attacks.values()
            if "skipped" not in a
        )
        assert (run / "threat" / defence / "ladder.png").is_file()
        assert ("skipped" in attacks["channel_drop"]) == (first_stage == "rgb")  # no channels
        assert ("skipped" in attacks["model_inversion"]) == (not trained)
        assert ("accuracy" in row) == trained
        gi = attacks["gradient_inversion"]
        assert -1 <= gi["input_cosine"] <= 1
        assert gi["model"] == ("captured global" if trained else "initial")
        for name, scored in attacks.items():
            if "skipped" in scored:
                continue
            assert (run / "threat" / defence / f"{name}.png").is_file()
            own = scored["judges"]["own"]
            rank1 = own["rank1"]
            assert rank1["rank1_ci95"][0] <= rank1["rank1"] <= rank1["rank1_ci95"][1]
            if name != "model_inversion":  # it claims identities only, no original to compare
                lo, hi = own["a_feat"]["ci95"]
                assert lo <= own["a_feat"]["value"] <= hi
                assert own["a_feat"]["gain"] == pytest.approx(
                    own["a_feat"]["floor"] - own["a_feat"]["value"]
                )
        ceiling = row["ceilings"]["own"]
        assert ceiling["rank1"] >= rank1["chance"]
    dp = rows["dp_fedavg"]
    assert dp["method"] == "arcface" and 0 <= dp["accuracy"] <= 1 and dp["dp"]["epsilon"] > 0
    assert (run / "dp_fedavg" / "checkpoint.pt").is_file()
    demixed = rows["masking_mixup"]["attacks"]["demix"]
    assert 0 <= demixed["faces_recovered"] <= demixed["images"] == 24
    gmi = rows[result["method"]]["attacks"]["model_inversion"]
    assert 0 <= gmi["top1"] <= gmi["top5"] <= 1 and gmi["feature_distance"] > 0
    report = (run / "threat_report.md").read_text()
    assert all(f"| {defence} |" in report for defence in rows)
    with (run / "threat_report.csv").open() as handle:
        lines = list(csv.DictReader(handle))
    # one line per defence and attack, and each defence's worst case over them
    assert len(lines) == len(rows) * (len(ATTACKS) + 1)
    assert sum(line["Attack"] == "worst case" for line in lines) == len(rows)


def test_defences_accuracy_cell_adds_the_interval_clustered_by_identity():
    """A trained row that holds its final per-pair outcomes shows, in braces, their interval
    clustered by the identities of the run's pairs; without them, accuracy ± fold std alone."""
    data = {"data.num_identities": 60, "data.images_per_identity": 6, "data.image_size": 32}
    cfg = apply_overrides(AHMConfig(), {**data, "data.num_pairs": 600})
    left = pair_identities(cfg.data)[0]
    correct = "".join("0" if w else "1" for w in (left == left.unique()[0]).tolist())
    row = {"accuracy": 0.9, "accuracy_std": 0.02, "correct": correct}
    lo, hi = identity_interval(cfg.data, correct)
    assert lo < hi and _accuracy_cell(cfg, row) == f"0.900 ± 0.020 {{{lo:.3f}, {hi:.3f}}}"
    assert _accuracy_cell(cfg, {"accuracy": 0.9, "accuracy_std": 0.02}) == "0.900 ± 0.020"
    assert _accuracy_cell(cfg, {}) == "-"  # a defence without a trained run
