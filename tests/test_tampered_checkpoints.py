"""Every checkpoint AHM reads back is checked as strictly as a client's reply: a tampered or
foreign field is refused with one line naming the file and the field, the run does not start,
and the file is left as it was. Centralized (the trainer's state, its history) and federated
(round, model, history, the server optimiser's state of FedAdam and FedAvgM)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from scales import NODES, ONE_ROUND, TRAIN, config

from ahm_core.experiment import run_centralized
from ahm_core.io import CheckpointError
from ahm_core.runs import load_run
from simulations.local import run_local

Tamper = Callable[[dict], None]


def _set(path: str, value) -> Tamper:
    """Set the entry at a dotted path ("history.0.accuracy") of the checkpoint to `value`."""

    def tamper(saved: dict) -> None:
        *parents, last = path.split(".")
        target = saved
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value

    return tamper


def _first(section: str, change: Callable[[torch.Tensor], torch.Tensor]) -> Tamper:
    """Replace the first tensor of a state dict at a dotted path (the model's first weight)."""

    def tamper(saved: dict) -> None:
        state = saved
        for key in section.split("."):
            state = state[key]
        key = next(iter(state))
        state[key] = change(state[key])

    return tamper


def _drop(key: str) -> Tamper:
    return lambda saved: saved.pop(key)


def _refused(folder: Path, tamper: Tamper, field: str, resume: Callable[[Path], object]) -> str:
    """Tamper with the checkpoint in `folder`, resume, and check the refusal names the file and
    `field` and leaves the file untouched; returns the message."""
    checkpoint = folder / "checkpoint.pt"
    saved = torch.load(checkpoint, weights_only=True)
    tamper(saved)
    torch.save(saved, checkpoint)
    before = checkpoint.read_bytes()
    with pytest.raises(CheckpointError) as err:
        resume(folder)
    message = str(err.value)
    assert message.startswith(f"{checkpoint}: {field}"), message
    assert "\n" not in message
    assert checkpoint.read_bytes() == before  # refused, never overwritten
    return message


CENTRALIZED = {"masking.method": "masking_adamixup", "train.epochs": 1}  # with a policy

CENTRAL_CASES = [
    (_set("step", "12"), "step: expected an integer"),
    (_set("step", -1), "step: expected an integer in [0,"),
    (_set("epoch", 99), "epoch: expected an integer in [0, 1]"),
    (_set("epoch", 1.0), "epoch: expected an integer"),
    (_set("rng.torch", torch.zeros(3, dtype=torch.uint8)), "rng.torch: shape (3,)"),
    (_set("rng.generator", "garbage"), "rng.generator: expected a tensor"),
    (_set("optimizer", [1, 2]), "optimizer: expected an optimiser state"),
    (_set("optimizer.state", {0: {"momentum_buffer": torch.zeros(2)}}), "optimizer.state[0]"),
    (_set("optimizer.state", {10**6: {}}), "optimizer.state[1000000]"),
    (_set("optimizer.param_groups", []), "optimizer.param_groups: expected a list"),
    (_set("scheduler", {"last_epoch": "x"}), "scheduler: keys missing"),
    (_first("backbone", lambda w: torch.full_like(w, float("nan"))), "backbone."),
    (_first("backbone", lambda w: w.long()), "backbone."),
    (_first("backbone", lambda w: w[:1]), "backbone."),
    (_first("policy.net", lambda w: w * float("inf")), "policy.net."),
    (_set("policy.counts", "many"), "policy.counts: expected a tensor"),
    (_set("policy.optimizer", None), "policy.optimizer: expected an optimiser state"),
    (_set("policy_pmf", torch.tensor([0.5, 0.6, 0.1])), "policy_pmf: expected probabilities"),
    (_set("policy_pmf", torch.ones(7)), "policy_pmf: expected PMFs over the 3 k"),
    (_set("num_classes", "40"), "num_classes: expected an integer"),
    (_set("history", "garbage"), "history: expected a list of 1 records"),
    (_set("history", [{"epoch": 1}, {"epoch": 2}]), "history: expected a list of 1 records"),
    (_set("history.0", [1]), "history[0]: expected a record"),
    (_set("history.0.epoch", "1"), "history[0]: epoch '1'"),
    (_set("history.0.accuracy", float("nan")), "history[0].accuracy"),
    (_set("config", [1, 2]), "config: expected a mapping of sections"),
]


@pytest.fixture(scope="module")
def central_run(tmp_path_factory) -> tuple:
    cfg = config({**TRAIN, **CENTRALIZED, "policy.k_set": (2, 3, 4), "policy.interval": 1})
    folder = tmp_path_factory.mktemp("central")
    run_centralized(cfg, folder)
    return cfg, folder


@pytest.mark.parametrize(("tamper", "field"), CENTRAL_CASES)
def test_a_tampered_centralized_checkpoint_is_refused(central_run, tamper, field, tmp_path):
    cfg, finished = central_run
    folder = tmp_path / "run"
    shutil.copytree(finished, folder)
    _refused(folder, tamper, field, lambda f: run_centralized(cfg, f))


def test_an_untouched_centralized_checkpoint_resumes(central_run, tmp_path):
    """The checks refuse the tampered field, not the checkpoint the code wrote."""
    cfg, finished = central_run
    shutil.copytree(finished, tmp_path / "run")
    assert run_centralized(cfg, tmp_path / "run")["epochs"] == 1


FEDERATED_CASES = [
    (_set("round", "1"), "round: expected an integer in [0, 1]"),
    (_set("round", 1.0), "round: expected an integer in [0, 1]"),
    (_set("round", -1), "round: expected an integer in [0, 1]"),
    (_set("round", 10**9), "round: expected an integer in [0, 1]"),
    (_set("server_state", [1]), "server_state: expected"),
    (_set("server_state", {"m_t": "garbage"}), "server_state.m_t: expected one array"),
    (_drop("history"), "not this kind of checkpoint (no history)"),
    (_set("history", "garbage"), "history: expected a list of 2 records"),
    (_set("history.1", {"accuracy": 0.5}), "history[1]: round None"),
    (_set("history.1.accuracy", 7.0), "history[1].accuracy: expected a number in [0, 1]"),
    (_set("config", [1]), "config: expected a mapping of sections"),
    (_first("state", lambda w: torch.full_like(w, float("nan"))), "state."),
    (_first("state", lambda w: w.to(torch.int32)), "state."),
    (_first("state", lambda w: w.flatten()[:3]), "state."),
]


@pytest.fixture(scope="module")
def federated_runs(tmp_path_factory) -> dict[str, tuple]:
    """A finished one-round federation per stateful server optimiser."""
    runs = {}
    for strategy in ("fedadam", "fedavgm"):
        cfg = config(ONE_ROUND, **{"federation.strategy": strategy})
        folder = tmp_path_factory.mktemp(strategy)
        run_local(cfg, folder, NODES)
        runs[strategy] = cfg, folder
    return runs


@pytest.mark.parametrize(("tamper", "field"), FEDERATED_CASES)
def test_a_tampered_federated_checkpoint_is_refused(federated_runs, tamper, field, tmp_path):
    cfg, finished = federated_runs["fedadam"]
    folder = tmp_path / "run"
    shutil.copytree(finished, folder)
    _refused(folder, tamper, field, lambda f: run_local(cfg, f, NODES))


def _optimiser_array(strategy: str, name: str, change) -> Tamper:
    def tamper(saved: dict) -> None:
        value = saved["server_state"][name]
        if isinstance(value, dict):
            key = next(iter(value))
            value[key] = change(value[key])
        else:
            value[0] = change(value[0])

    return tamper


@pytest.mark.parametrize(
    ("strategy", "name"), [("fedadam", "m_t"), ("fedadam", "v_t"), ("fedavgm", "momentum_vector")]
)
@pytest.mark.parametrize(
    ("change", "what"),
    [
        (lambda a: torch.full_like(a, float("nan")), "holds NaN or infinite values"),
        (lambda a: torch.zeros(2, 2, 2, 2, 2), "expected an array of"),
        (lambda a: "garbage", "expected an array of"),
    ],
)
def test_a_tampered_server_optimiser_state_is_refused(
    federated_runs, strategy, name, change, what, tmp_path
):
    cfg, finished = federated_runs[strategy]
    folder = tmp_path / "run"
    shutil.copytree(finished, folder)
    message = _refused(
        folder,
        _optimiser_array(strategy, name, change),
        f"server_state.{name}",
        lambda f: run_local(cfg, f, NODES),
    )
    assert what in message


def test_an_untouched_federated_checkpoint_resumes(federated_runs, tmp_path):
    for cfg, finished in federated_runs.values():
        folder = tmp_path / cfg.federation.strategy
        shutil.copytree(finished, folder)
        assert len(run_local(cfg, folder, NODES)["rounds"]) == 2


def _rounds(write: Callable[[Path], None]) -> Callable[[Path], None]:
    def tamper(folder: Path) -> None:
        path = folder / "rounds.json"
        path.unlink()
        write(path)

    return tamper


@pytest.mark.parametrize(
    ("tamper", "field"),
    [
        (_rounds(lambda p: p.write_text("{")), "rounds.json: not JSON (Expecting"),
        (_rounds(lambda p: p.mkdir()), "rounds.json: a folder, expected a JSON file"),
        (_rounds(lambda p: p.write_text("[1, 2]")), "rounds.json: holds a list"),
        (_rounds(lambda p: p.write_text('{"rounds": []}')), "rounds.json: not this kind"),
        (
            _rounds(lambda p: p.write_text('{"rounds": [], "final_accuracy": 1}')),
            "rounds.json: rounds: expected a list of 2 records, got 0 records",
        ),
        (_rounds(lambda p: None), "rounds.json: no such file"),
    ],
)
def test_a_run_folder_the_reports_read_is_checked(federated_runs, tamper, field, tmp_path):
    """The threat model and the reports read a finished run's rounds.json: one line each."""
    _, finished = federated_runs["fedadam"]
    folder = tmp_path / "run"
    shutil.copytree(finished, folder)
    tamper(folder)
    with pytest.raises(CheckpointError) as err:
        load_run(folder, None)
    assert str(err.value).startswith(f"{folder}/{field}"), str(err.value)


def test_a_run_folder_whose_config_is_not_a_mapping_is_refused(federated_runs, tmp_path):
    _, finished = federated_runs["fedadam"]
    folder = tmp_path / "run"
    shutil.copytree(finished, folder)
    saved = torch.load(folder / "checkpoint.pt", weights_only=True)
    torch.save({**saved, "config": ["not", "a", "config"]}, folder / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt: config: expected a mapping"):
        load_run(folder, None)
