import json
import subprocess
import sys

TINY = [
    "profile=smoke",
    "train.epochs=1",
    "data.num_identities=24",
    "data.images_per_identity=6",
    "data.num_pairs=200",
    "train.batch_size=16",
    "model.blocks=[1,1]",
    "model.width=8",
]


def run(tmp_path, *overrides):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "simulations.centralized",
            *TINY,
            *overrides,
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_trains_and_writes_metrics(tmp_path):
    done = run(tmp_path, "masking.method=masking_adamixup", "policy.k_set=[2,3]")
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert line["method"] == "masking_adamixup" and set(line["k_proportions"]) <= {"2", "3"}
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["config"]["policy"]["k_set"] == [2, 3]
    assert (tmp_path / "checkpoint.pt").exists()


def test_cli_on_a_folder_of_real_faces(tmp_path, shared_data):
    done = run(
        tmp_path,
        "data=folder",
        f"data.root={shared_data / 'orl_faces'}",
        "data.test_fraction=0.25",
        "masking.method=ppfr_fd",
    )
    assert done.returncode == 0, done.stderr
    assert "40 identities, 400 images" in done.stderr + done.stdout


def test_cli_bad_option_is_one_clear_error(tmp_path):
    done = run(tmp_path, "masking.method=rot13")
    assert done.returncode != 0
    assert "centralized: masking.method: unknown value 'rot13'" in done.stderr


def test_cli_trains_each_seed_as_a_ray_task_and_reuses_finished_ones(tmp_path):
    done = run(tmp_path, "seeds=[0,1]", "ray.cpus_per_cell=1")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.strip().splitlines() if line.startswith("{")]
    runs = {line["seed"]: line["verification_accuracy"] for line in lines if "seed" in line}
    summary = lines[-1]
    assert set(runs) == {0, 1} and summary["seeds"] == [0, 1] and summary["n"] == 2
    assert summary["mean"] == sum(runs.values()) / 2
    for seed in (0, 1):
        metrics = json.loads((tmp_path / f"seed_{seed}" / "train" / "metrics.json").read_text())
        assert metrics["config"]["train"]["seed"] == seed
    again = run(tmp_path, "seeds=[0,1]")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count('"cached": true') == 2


def test_cli_bad_seeds_or_ray_option_is_one_clear_error(tmp_path):
    for bad, expected in (
        ("seeds=[1,1]", "centralized: seeds: expected a count or a list of distinct"),
        ("ray.cpus_per_cell=0", "centralized: ray.cpus_per_cell: expected a number above 0"),
    ):
        done = run(tmp_path, bad)
        assert done.returncode != 0 and expected in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
