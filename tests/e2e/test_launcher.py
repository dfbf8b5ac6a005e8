"""The launcher tells the truth: `python -m simulations.federated` exits non-zero with one line
when the ServerApp fails, when it is stopped by SIGTERM (and then leaves no SuperLink behind),
and, before anything starts, when its launch options cannot give a federation."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from subprocess import PIPE

import pytest
import torch
from flwr.app import Context, RecordDict
from scales import E2E, hydra_args

from ahm_core.config import AHMConfig, ConfigError, apply_overrides
from server.app import main as server_main
from server.app import status_error, write_status
from simulations.federated import check_launch
from simulations.flower import FLWR_HOME, free_port, run_processes, stop_superlink, superlink_pids

LAUNCH = {
    "supernodes": 2,
    "cpus_per_client": 1,
    "gpus_per_client": 0.0,
    "metrics_port": 0,
    "metrics_address": "127.0.0.1",
}


def _cli(out: Path, overrides: list[str]) -> list[str]:
    """The command line of `python -m simulations.federated` on the E2E scale, writing to out."""
    return [
        sys.executable,
        "-m",
        "simulations.federated",
        f"hydra.run.dir={out}",
        *hydra_args(E2E),
        "supernodes=2",
        *overrides,
    ]


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its parent to reap it does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@pytest.fixture
def taken_port():
    """A loopback port that a socket of this test listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"supernodes": 0}, "supernodes=0: expected at least 1 SuperNode"),
        ({"supernodes": 1}, "supernodes=1: below federation.min_clients=2; expected supernodes>=2"),
        ({"metrics_port": 70000}, "metrics_port=70000: expected 0 (off) or a TCP port 1..65535"),
        ({"metrics_port": -1}, "metrics_port=-1: expected 0 (off) or a TCP port 1..65535"),
        (
            {"metrics_port": 9100, "metrics_address": "192.0.2.1"},
            "metrics_port=9100: cannot serve on metrics_address=192.0.2.1 (Cannot assign",
        ),
    ],
)
def test_launch_options_that_cannot_give_a_federation_are_one_line(options, message):
    start = time.perf_counter()
    with pytest.raises(ConfigError) as stop:
        check_launch(AHMConfig(), {**LAUNCH, **options})
    assert time.perf_counter() - start < 1.0
    assert str(stop.value).startswith(message)
    assert "\n" not in str(stop.value)


def test_a_taken_metrics_port_is_one_line_and_a_free_one_passes(taken_port):
    with pytest.raises(ConfigError, match=rf"metrics_port={taken_port}: cannot serve .*in use"):
        check_launch(AHMConfig(), {**LAUNCH, "metrics_port": taken_port})
    lower = apply_overrides(AHMConfig(), {"federation.min_clients": 1})
    check_launch(lower, {**LAUNCH, "supernodes": 1, "metrics_port": free_port()})


def test_the_cli_refuses_bad_launch_options_before_anything_starts(tmp_path, taken_port):
    cases = {
        "supernodes=1": "federated: supernodes=1: below federation.min_clients=2; ",
        "metrics_port=70000": "federated: metrics_port=70000: expected 0 (off) or a TCP port",
        f"metrics_port={taken_port}": f"federated: metrics_port={taken_port}: cannot serve on ",
    }
    runs = {  # side by side: each pays the interpreter's start-up (torch, hydra), nothing more
        arg: subprocess.Popen(_cli(tmp_path / str(i), [arg]), stdout=PIPE, stderr=PIPE, text=True)
        for i, arg in enumerate(cases)
    }
    for i, (arg, run) in enumerate(runs.items()):
        stdout, stderr = run.communicate(timeout=120)
        assert run.returncode == 1, (arg, stderr)
        assert stdout == "" and stderr.count("\n") == 1, (arg, stderr)
        assert stderr.startswith(cases[arg]), (arg, stderr)
        assert not (tmp_path / str(i) / "run_config.toml").exists()  # no launch began


def test_status_error_trusts_only_this_launchs_complete_status(tmp_path):
    assert "wrote no status" in status_error(tmp_path, "a")
    write_status(tmp_path, "b", "complete")
    assert "wrote no status" in status_error(tmp_path, "a")  # a stale file of another launch
    write_status(tmp_path, "a", "running")
    assert "state 'running'" in status_error(tmp_path, "a")
    write_status(tmp_path, "a", "failed", error="KeyError: 'loss'")
    assert status_error(tmp_path, "a") == "the ServerApp failed: KeyError: 'loss'"
    write_status(tmp_path, "a", "complete")
    assert status_error(tmp_path, "a") is None


def test_a_config_the_server_app_rejects_is_a_failed_status(tmp_path):
    flat = {"out-dir": str(tmp_path), "run-token": "t", "train.batch_size": 0}
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=flat)
    server_main(grid=None, context=context)  # bad input: logged in one line, no traceback
    error = status_error(tmp_path, "t")
    assert error == "the ServerApp failed: train.batch_size: must be >= 1, got 0"


def test_a_failed_server_app_fails_the_launch_in_one_line(tmp_path):
    torch.save({}, tmp_path / "checkpoint.pt")  # a checkpoint with nothing in it: resume raises
    stale = {"final_accuracy": 0.98765, "rounds": [{"round": 0, "accuracy": 0.98765}]}
    (tmp_path / "rounds.json").write_text(json.dumps(stale))  # what an earlier run left
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(_cli(tmp_path, []), env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr[-3000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("federated: the ServerApp failed: "), run.stderr[-3000:]
    assert "Traceback" not in run.stderr  # the ServerApp's own is in the log flwr streams
    assert "final verification accuracy" not in run.stdout and "0.9876" not in run.stdout
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "failed"
    assert not superlink_pids(tmp_path / FLWR_HOME)


def test_sigterm_stops_the_superlink_and_fails_the_launch(tmp_path, federated_cli):
    home = tmp_path / FLWR_HOME
    run = federated_cli(tmp_path, [])
    try:
        while len(run_processes(home)) < 2:  # the SuperLink and what it started
            assert run.poll() is None, run.stderr.read().decode()[-3000:]
            time.sleep(0.1)
        members = run_processes(home)
        os.kill(run.pid, signal.SIGTERM)  # the launcher alone, not its process group
        assert run.wait(timeout=60) == 1
        stderr = run.stderr.read().decode()
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        stop_superlink(home)
    assert stderr.strip().splitlines()[-1] == (
        "federated: interrupted (SIGTERM); stopped the SuperLink"
    ), stderr[-3000:]
    assert "Traceback" not in stderr
    assert not superlink_pids(home)
    assert not [pid for pid in members if _alive(pid)]
