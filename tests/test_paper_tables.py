"""The paper's tables at CI scale (profile=small) on synthetic faces and on ORL: structure and
sanity, not the paper's numbers. About a minute and a half per data set on 2 cores."""

import csv
import time

import pytest
from hydra import compose, initialize

from ahm_core.paper import TABLE1_RGB, TABLE2, run_tables
from simulations.schema import register, split_run_config

register()


def small_config(*overrides: str):
    with initialize(version_base=None, config_path="../simulations/conf"):
        return split_run_config(compose("paper_tables", ["profile=small", *overrides]))[0]


def check_report(results: dict, out) -> None:
    assert set(results) == {row.name for row in TABLE2 + TABLE1_RGB}
    for name in ("report.md", "table2.csv", "privacy_accuracy.png"):
        assert (out / name).stat().st_size > 0
    with (out / "table2.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["Method"] for r in table] == [row.name for row in TABLE2]
    for r in table[1:]:  # every masked row has all three scores, each in [0.5, 1]
        for column in ("Score", "Privacy", "Accuracy score"):
            assert 0.5 <= float(r[column]) <= 1.0, (r["Method"], column, r[column])
    assert results["ArcFace"]["accuracy"] >= 0.75  # the unmasked model is accurate
    ppfr = results["PPFR-FD"]  # the CGAN learns to undo a single masking: it beats a mean face
    assert ppfr["a_lpips"] < ppfr["mean_face_a_lpips"]
    assert ppfr["a_feat"] < ppfr["mean_face_a_feat"]
    for name, r in results.items():
        if name != "ArcFace":
            assert (out / r["grid"].split(str(out) + "/")[1]).exists()
            assert r["lpips_label"] == "LPIPS (uncalibrated)"
    for name in ("Masking+AdaMixUp (k:2-6)", "Masking+AdaMixUp (k:2-4)"):
        shares = results[name]["k_proportions"]
        assert sum(shares.values()) == pytest.approx(1.0, abs=1e-3)


def test_small_profile_on_synthetic_faces_and_cache(tmp_path):
    cfg = small_config()
    results = run_tables(cfg, tmp_path, log=lambda line: None)
    check_report(results, tmp_path)
    start = time.perf_counter()
    again = run_tables(cfg, tmp_path, log=lambda line: None)
    assert again == results and time.perf_counter() - start < 20  # every row came from cache


def test_small_profile_on_orl(tmp_path, shared_data):
    cfg = small_config("data=folder", f"data.root={shared_data / 'orl_faces'}")
    check_report(run_tables(cfg, tmp_path, log=lambda line: None), tmp_path)
