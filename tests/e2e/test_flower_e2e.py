"""End to end on Flower's Ray simulation backend: `flwr run` of this project, offline.

Each run has its own FLWR_HOME and ports; its SuperLink is stopped by PID. About 20-60 s each.
"""

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from scales import E2E, config

from ahm_core.config import AHMConfig
from simulations.flower import FLWR_HOME, free_port, launch, stop_superlink, superlink_pids


def e2e(**extra) -> AHMConfig:
    return config(E2E, **extra)


def scrape(port: int) -> dict[str, float]:
    """`name{labels}` -> value from the exporter, parsed with prometheus_client's parser."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}"] = sample.value
    return values


@pytest.mark.fast  # the fast tier's one real `flwr run`
def test_flwr_run_trains_captures_and_exports_metrics(tmp_path, capfd):
    port = free_port()
    scrapes: list[dict] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            with contextlib.suppress(OSError):  # not serving yet, or already closed
                scrapes.append(scrape(port))
            time.sleep(0.3)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        summary = launch(
            e2e(**{"federation.capture_clients": 1}),
            tmp_path,
            supernodes=2,
            **{"metrics-port": port},
        )
    finally:
        done.set()
        poller.join()
    lines = "".join(capfd.readouterr()).splitlines()  # what `flwr run --stream` printed
    progress = [line for line in lines if "/2: verification accuracy" in line]
    assert len(progress) == 3, progress  # one line a round (and round 0), not one per handler
    assert not [line for line in lines if "DEBUG" in line]
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert summary["final_accuracy"] > rounds[0]["accuracy"] + 0.03  # beats the untrained model
    for r in rounds[1:]:
        assert (r["sampled"], r["succeeded"], r["failed"], r["accepted"]) == (2, 2, 0, 2)
        assert r["train"]["weight"] > 0 and 0 < r["client_accuracy"] <= 1
        assert set(r["k_histogram"]) == {"2", "3"}
        assert set(r["k_pmf"]) == {"0", "1"}  # each client's PMF at every policy update
        assert all(len(row) == 2 for rows in r["k_pmf"].values() for row in rows)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["round"] == 2 and saved["history"] == json.loads(json.dumps(rounds))
    captured = sorted((tmp_path / "captured").glob("round_*/partition_*.pt"))
    assert [p.parent.name for p in captured] == ["round_0001", "round_0002"]
    record = torch.load(captured[0], weights_only=True)
    assert record["partition_id"] == 0 and record["global"].keys() == record["update"].keys()
    moved = [
        k for k in record["global"] if not torch.equal(record["global"][k], record["update"][k])
    ]
    assert moved
    served = [s for s in scrapes if s.get("ahm_round{}", 0) >= 1]
    assert served, "the exporter never served a finished round"
    last = served[-1]
    assert last["ahm_clients_total{outcome=succeeded}"] == 2 * last["ahm_round{}"]
    assert last["ahm_clients_total{outcome=failed}"] == 0
    assert last["ahm_round_duration_seconds_count{}"] == last["ahm_round{}"]
    assert 0 < last["ahm_verification_accuracy{}"] <= 1
    assert last["ahm_k_chosen_total{k=2}"] > 0


@pytest.mark.parametrize(
    ("mode", "extra"),
    [
        ("raise", {}),
        ("hang", {"federation.fault_seconds": 30.0, "federation.round_timeout": 25.0}),
        ("nan", {}),
    ],
)
def test_the_run_completes_on_the_survivors(tmp_path, mode, extra):
    cfg = e2e(
        **{
            "federation.rounds": 1,
            "federation.fault_fraction": 0.34,
            "federation.fault_mode": mode,
            "federation.fraction_evaluate": 0.0,
            **extra,
        }
    )
    r = launch(cfg, tmp_path, supernodes=3, stream=False)["rounds"][1]
    assert r["sampled"] == 3
    if mode == "nan":  # the faulty client answers with a poisoned update: rejected, counted
        assert (r["succeeded"], r["accepted"], r["rejected"]) == (3, 2, {"non_finite": 1})
    else:
        assert (r["succeeded"], r["failed"], r["accepted"]) == (2, 1, 2)
    assert r["train"]["weight"] > 0


def test_secure_aggregation_over_flower_transport(tmp_path):
    """SecAgg+'s four stages through the real SuperLink: every client finishes the protocol,
    and the server captures the mean, not a client's update."""
    cfg = e2e(
        **{"federation.secagg": True, "federation.rounds": 1, "federation.capture_clients": 1}
    )
    r = launch(cfg, tmp_path, supernodes=3, stream=False)["rounds"][1]
    assert (r["sampled"], r["succeeded"], r["accepted"]) == (3, 3, 3)
    captured = list((tmp_path / "captured" / "round_0001").iterdir())
    assert [p.name for p in captured] == ["aggregate.pt"]
    assert torch.load(captured[0], weights_only=True)["clients"] == 3


def _rounds_done(out: Path) -> int:
    try:
        return json.loads((out / "rounds.json").read_text())["rounds"][-1]["round"]
    except (OSError, ValueError, KeyError, IndexError):
        return 0


def test_a_killed_run_resumes_to_the_same_final_model(tmp_path, federated_cli):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    run = federated_cli(whole, [])
    assert run.wait(timeout=600) == 0, run.stderr.read().decode()[-3000:]
    run = federated_cli(broken, [])
    try:
        while _rounds_done(broken) < 1:
            assert run.poll() is None, run.stderr.read().decode()[-3000:]
            time.sleep(0.2)
    finally:
        os.killpg(run.pid, signal.SIGKILL)  # the launcher and flwr run
        run.wait()
        stop_superlink(broken / FLWR_HOME)  # detached: what a relaunch on `broken` would do
        assert not superlink_pids(broken / FLWR_HOME)
    assert _rounds_done(broken) < 3
    rerun = federated_cli(broken, [])
    assert rerun.wait(timeout=600) == 0, rerun.stderr.read().decode()[-3000:]
    a = torch.load(whole / "checkpoint.pt", weights_only=True)
    b = torch.load(broken / "checkpoint.pt", weights_only=True)
    assert a["round"] == b["round"] == 3
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    accuracy = [[r["accuracy"] for r in s["history"]] for s in (a, b)]
    assert accuracy[0] == accuracy[1]


def test_stop_superlink_ignores_processes_it_did_not_start(tmp_path):
    assert not superlink_pids(tmp_path)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        stop_superlink(tmp_path, grace=0.1)
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
