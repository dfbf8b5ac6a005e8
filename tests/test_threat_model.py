"""The whole threat chain at CI scale: a tiny federated run, then every attack on it."""

import csv
import json

import pytest
from hydra import compose, initialize
from scales import NODES, ONE_ROUND, config

from ahm_core.attacks import ATTACKS
from ahm_core.checks import validate
from ahm_core.config import AHMConfig, apply_overrides
from ahm_core.evaluate import identity_interval, pair_identities
from ahm_core.masking.methods import METHODS
from ahm_core.threat import COMPARED, _accuracy_cell, compared_config, run_threat_model
from server.strategy import check_strategy
from simulations.local import run_local
from simulations.schema import register, split_run_config

register()


@pytest.mark.slow
def test_threat_model_smoke_makes_a_run_and_reports_every_defence(tmp_path):
    """In process: the federations through `simulations.local` (the CLI's glue around them is
    the entry points' test), then every attack through `run_threat_model`."""
    with initialize(version_base=None, config_path="../simulations/conf"):
        # dlib judges in the paper-table test on ORL; here its 0.1 s a face would double the time
        overrides = ["profile=smoke", "attack.judges=[own]", "attack.gi_aggregated=[1,2]"]
        hcfg = compose("threat_model", overrides)
    cfg, options = split_run_config(hcfg)
    run = tmp_path / "run"
    # clients keep their state on disk, as the CLI's client_state=true: the released model
    state = {"client-state-dir": str(run / "client_state")}
    run_local(cfg, run, options["supernodes"], **state)
    compared = {name: run / name for name in ("dp_fedavg", "secagg")}
    for name, folder in compared.items():
        state = {"client-state-dir": str(folder / "client_state")}
        run_local(compared_config(name, run, cfg), folder, options["supernodes"], **state)
    report = run_threat_model(run, cfg, log=lambda line: None, compared=compared)
    assert report == run / "threat_report.md"
    result = json.loads((run / "threat_report.json").read_text())
    rows = result["defences"]
    defences = list(AHMConfig().attack.defences)  # the DCTDP rows among them
    assert "dctdp" in defences and "dctdp_adamixup" in defences
    assert list(rows) == [*defences, *compared]
    for defence, row in rows.items():
        attacks = row["attacks"]
        assert list(attacks) == list(ATTACKS)  # every registered attack, run or skipped with why
        trained = defence in (result["method"], *compared)  # attacked at its own run's model
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
        model = "captured global model" if trained else "initial model"
        if defence == "secagg":  # the server captured the mean of the round's clients
            model += f", the mean of {options['supernodes']} clients' updates"
        assert gi["model"] == model
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
    aggregated = rows["secagg"]["aggregated"]  # leakage against the clients averaged
    assert list(aggregated) == ["1", "2"] and "aggregated" not in rows["dp_fedavg"]
    assert all(
        -1 <= a["input_cosine"] <= 1 and a["count"] == 4 * int(n) for n, a in aggregated.items()
    )
    assert (
        "## `secagg`: gradient inversion of the securely aggregated update"
        in (run / "threat_report.md").read_text()
    )
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


@pytest.mark.parametrize("name", COMPARED)
def test_each_compared_row_is_an_unmasked_federation_with_its_mechanism(name, tmp_path):
    """The row's config: the attacked run's, unmasked (ArcFace, FedAvg), with the mechanism's
    settings from the config given, and valid as it stands."""
    run = tmp_path / "run"
    cfg = apply_overrides(AHMConfig(), {"train.dp_noise_multiplier": 0.5})
    run_local(config(ONE_ROUND), run, NODES)
    row = compared_config(name, run, cfg)
    validate(row)
    check_strategy(row.federation)
    assert (row.masking.method, row.federation.strategy) == ("arcface", "fedavg")
    mechanism = {
        "dp_fedavg": row.federation.dp == "client_fixed",
        "dp_sgd": row.train.dp_sgd and row.train.dp_noise_multiplier == 0.5,
        "dp_sgd_strong": row.train.dp_sgd and row.train.dp_noise_multiplier == 2.0,
        "local_dp": row.federation.local_dp and not row.federation.screen,
        "secagg": row.federation.secagg,
    }
    assert mechanism[name] and sum(mechanism.values()) == 1
