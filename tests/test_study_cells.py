"""A study over seeds: its cells, their cache keyed by config, a killed study resumed cell by
cell, the comparison over seeds, and the cells run as Ray tasks on a loopback cluster."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import pytest

from ahm_core.cells import Cell, cell_config, run_cell, seed_list, seeded, sequential
from ahm_core.config import AHMConfig, ConfigError, apply_overrides
from ahm_core.masking.methods import ROWS
from ahm_core.metrics.uncertainty import over_seeds, paired_seeds
from ahm_core.paper import run_tables, slug
from ahm_core.tables import fmt
from tests.scales import REPORT, config


def test_seed_list_takes_a_count_or_a_list_and_refuses_anything_else():
    cfg = apply_overrides(AHMConfig(), {"train.seed": 3})
    assert seed_list(cfg, None) == [3]
    assert seed_list(cfg, 2) == [3, 4]
    assert seed_list(cfg, [7, 1]) == [7, 1]
    for bad in (0, -1, [], [1, 1], [1.5], ["a"], "2", True, [-1]):
        with pytest.raises(ConfigError, match=r"^seeds: expected"):
            seed_list(cfg, bad)


def test_a_seed_moves_the_training_and_key_seeds_together_and_the_first_is_the_run_itself():
    cfg = apply_overrides(AHMConfig(), {"train.seed": 3, "masking.key_seed": 10})
    assert seeded(cfg, 3) == cfg
    other = seeded(cfg, 5)
    assert (other.train.seed, other.masking.key_seed) == (5, 12)
    row = next(r for r in ROWS if r.name == "Masking+MixUp (k=4)")
    cell = cell_config(cfg, row, 5)
    assert (cell.masking.method, cell.mixup.k, cell.train.seed) == ("masking_mixup", 4, 5)


def test_over_seeds_gives_the_run_to_run_std():
    summary = over_seeds([0.80, 0.82, 0.84])
    assert summary["mean"] == pytest.approx(0.82) and summary["std"] == pytest.approx(0.02)
    assert summary["n"] == 3
    assert over_seeds([0.5]) == {"mean": 0.5, "std": None, "n": 1}


def test_paired_seeds_tests_the_per_seed_differences():
    same_sign = paired_seeds([0.9, 0.8, 0.85], [0.8, 0.7, 0.74])
    assert same_sign["difference"] == pytest.approx(0.1033, abs=1e-4)
    lo, hi = same_sign["ci95"]
    assert 0 < lo < same_sign["difference"] < hi  # consistent over seeds: beyond noise
    assert same_sign["p"] == pytest.approx(0.25)  # 2 of the 8 sign assignments are as extreme
    mixed = paired_seeds([0.9, 0.7, 0.8], [0.8, 0.8, 0.8])
    assert mixed["ci95"][0] < 0 < mixed["ci95"][1] and mixed["p"] == pytest.approx(1.0)
    # a paired test: a shift shared by both rows at a seed does not widen the interval
    shifted = paired_seeds([0.9, 0.5, 0.7], [0.8, 0.4, 0.6])
    assert shifted["ci95"] == pytest.approx([0.1, 0.1])
    with pytest.raises(ValueError, match="as many runs"):
        paired_seeds([0.9], [0.8, 0.7])


STUDY = {**REPORT, "train.epochs": 1, "attack.victims": 8, "attack.judges": ("own",)}


class KilledError(Exception):
    """The study stopped midway, as a killed process would."""


def counting(ran: list[str], stop_after: int | None = None):
    """A sequential runner that records each cell it runs and dies after `stop_after` cells."""

    def run(work, cells: Sequence[Cell]) -> Iterator[tuple[Cell, dict]]:
        for cell, result in sequential(work, cells):
            ran.append(cell.label)
            yield cell, result
            if stop_after is not None and len(ran) >= stop_after:
                raise KilledError

    return run


@pytest.mark.slow
def test_a_study_over_two_seeds_resumes_cell_by_cell_and_never_reuses_another_config(tmp_path):
    cfg = config(STUDY)
    ran: list[str] = []
    with pytest.raises(KilledError):
        run_tables(cfg, tmp_path, only={"ppfr_fd"}, seeds=2, runner=counting(ran, 2))
    assert ran == ["ArcFace, seed 0", "PPFR-FD, seed 0"]  # the judge first, then seed by seed
    lines: list[str] = []
    resumed: list[str] = []
    runs = run_tables(cfg, tmp_path, lines.append, {"ppfr_fd"}, 2, counting(resumed))
    assert resumed == ["ArcFace, seed 1", "PPFR-FD, seed 1"]  # only the missing cells
    assert sum("cached" in line for line in lines) == 2 and len(lines) == 4
    assert list(runs) == ["ArcFace", "PPFR-FD"] and all(list(r) == [0, 1] for r in runs.values())
    ppfr = runs["PPFR-FD"]
    assert ppfr[0]["accuracy"] != ppfr[1]["accuracy"] or ppfr[0]["correct"] != ppfr[1]["correct"]
    judge = runs["ArcFace"][0]["checkpoint"]
    assert (
        all(
            json.loads((tmp_path / "rows" / "ppfr_fd" / f"seed_{s}" / "row.json").read_text())[
                "judge"
            ].endswith("seed_0/train/checkpoint.pt")
            for s in (0, 1)
        )
        and judge
    )
    report = (tmp_path / "report.md").read_text()
    assert "## Over seeds: mean ± run-to-run std (number of seeds), seeds [0, 1]" in report
    data = json.loads((tmp_path / "report.json").read_text())
    acc = data["over_seeds"]["PPFR-FD"]["accuracy"]
    assert acc["n"] == 2 and acc["std"] is not None
    assert acc["mean"] == pytest.approx((ppfr[0]["accuracy"] + ppfr[1]["accuracy"]) / 2)
    assert f"{acc['mean']:.3f} ± {acc['std']:.3f} (2)" in report
    paired = {(t["a"], t["b"]): t for t in data["paired_over_seeds"]}
    assert paired[("PPFR-FD", "ArcFace")]["accuracy"]["n"] == 2
    assert set(data["runs"]["PPFR-FD"]) == {"0", "1"}

    again: list[str] = []
    assert run_tables(cfg, tmp_path, lambda line: None, {"ppfr_fd"}, 2, counting(again)) == runs
    assert again == []  # every cell from its cache
    changed = apply_overrides(cfg, {"masking.key_seed": 5})
    with pytest.raises(ConfigError, match=r"written with another config.*masking\.key_seed") as err:
        run_tables(changed, tmp_path, lambda line: None, {"ppfr_fd"}, 2, counting([]))
    assert "\n" not in str(err.value)
    retrained: list[str] = []
    run_tables(changed, tmp_path, lambda line: None, {"ppfr_fd"}, 2, counting(retrained), False)
    assert len(retrained) == 4  # every cell: the key's seed is part of each row's config


@pytest.mark.slow
def test_cells_run_as_ray_tasks_on_a_local_head_and_worker(tmp_path):
    """A Ray head and one worker node on this machine, started here; the study joins them by
    address and its cells run there as tasks."""
    from ray.cluster_utils import Cluster

    from simulations.cells import RayOptions, ray_runner, ray_session

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        options = RayOptions(address=cluster.address)
        with ray_session(options):
            import ray

            assert len([n for n in ray.nodes() if n["Alive"]]) == 2
            runs = run_tables(
                config(STUDY), tmp_path, lambda line: None, set(), 2, ray_runner(options)
            )
        assert list(runs) == ["ArcFace"] and list(runs["ArcFace"]) == [0, 1]
        for seed in (0, 1):
            cached = json.loads(
                (tmp_path / "rows" / "arcface" / f"seed_{seed}" / "row.json").read_text()
            )
            assert cached["seed"] == seed and cached == runs["ArcFace"][seed]
        assert (tmp_path / "report.md").exists()
    finally:
        cluster.shutdown()


def test_a_cell_run_here_writes_its_result_where_the_cache_reads_it(tmp_path):
    """`run_cell` is what a task runs: it writes row.json under the config that made it."""
    row = next(r for r in ROWS if r.method == "arcface")
    cfg = config(STUDY)
    cell = Cell(row, 0, cell_config(cfg, row, 0), tmp_path / "cell")
    result = run_cell(cell)
    saved = json.loads((tmp_path / "cell" / "row.json").read_text())
    assert saved == result and saved["config"]["masking.method"] == "arcface"
    assert "attacks" not in saved and saved["judge"] is None


@pytest.mark.slow
def test_an_accuracy_only_study_is_trained_once_and_attacked_by_a_later_run(tmp_path):
    cfg = config(STUDY)
    runs = run_tables(cfg, tmp_path, lambda line: None, {"masking_mixup__k_2"}, 2, attack=False)
    assert all("attacks" not in r for by_seed in runs.values() for r in by_seed.values())
    report = (tmp_path / "report.md").read_text()
    assert "Accuracy only (`attacks=false`)" in report and "## Reconstructions" not in report
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["over_seeds"]["Masking+MixUp (k=2)"]["accuracy"]["n"] == 2
    assert data["over_seeds"]["Masking+MixUp (k=2)"]["privacy_score"] is None
    trained = {
        s: (tmp_path / "rows" / "masking_mixup__k_2" / f"seed_{s}" / "train" / "checkpoint.pt")
        for s in (0, 1)
    }
    before = {s: path.stat().st_mtime_ns for s, path in trained.items()}
    ran: list[str] = []
    attacked = run_tables(
        cfg, tmp_path, lambda line: None, {"masking_mixup__k_2"}, 2, counting(ran)
    )
    assert ran == ["Masking+MixUp (k=2), seed 0", "Masking+MixUp (k=2), seed 1"]  # ArcFace cached
    assert {s: path.stat().st_mtime_ns for s, path in trained.items()} == before  # not retrained
    for s in (0, 1):
        mixed = attacked["Masking+MixUp (k=2)"][s]
        assert (
            "attacks" in mixed and mixed["accuracy"] == runs["Masking+MixUp (k=2)"][s]["accuracy"]
        )
    assert "## Reconstructions" in (tmp_path / "report.md").read_text()


def test_the_dp_sgd_rows_train_with_their_noise_and_the_report_states_what_they_spent(tmp_path):
    """Table 2's sample-level DP rows (unmasked ArcFace under DP-SGD at z = 1 and 4): each
    cell keeps what Opacus's accountant spent, more noise spends less, the report says so."""
    private = {slug(r.name) for r in ROWS if r.overrides.get("train.dp_sgd")}
    assert private == {"arcface_dp_sgd__z_1", "arcface_dp_sgd__z_4"}
    runs = run_tables(config(STUDY), tmp_path, lambda line: None, private, attack=False)
    first = {name: by_seed[0] for name, by_seed in runs.items()}
    weak, strong = (first[f"ArcFace+DP-SGD (z={z})"]["dp_sgd"] for z in (1, 4))
    assert (weak["noise_multiplier"], strong["noise_multiplier"]) == (1.0, 4.0)
    assert 0 < strong["epsilon"] < weak["epsilon"] and "dp_sgd" not in first["ArcFace"]
    assert first["ArcFace+DP-SGD (z=1)"]["config"]["model.norm"] == "group"
    report = (tmp_path / "report.md").read_text()
    for name, spent in (("z=1", weak), ("z=4", strong)):
        line = (
            f"`ArcFace+DP-SGD ({name})`: arcface trained with DP-SGD: ({fmt(spent['epsilon'], 2)}"
        )
        assert line in report
