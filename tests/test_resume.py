"""Honest resume and durable writes: a run resumes only under its own config, its record is
rebuilt from the checkpoint after any kill, a checkpoint error names the file, and every write
is on disk (fsynced) before it counts."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from scales import NODES, ONE_ROUND, config

import ahm_core.experiment
from ahm_core import io as ahm_io
from ahm_core.config import ConfigError, apply_overrides
from ahm_core.experiment import run_centralized
from ahm_core.io import CheckpointError, atomic_write, load_checkpoint
from simulations.local import run_local


def _history(metrics: dict) -> list[int]:
    return [epoch["epoch"] for epoch in metrics["history"]]


def test_a_centralized_run_refuses_to_resume_under_another_config(tmp_path, tiny):
    cfg = tiny(**{"masking.method": "ppfr_fd", "train.epochs": 1})
    run_centralized(cfg, tmp_path)
    other = apply_overrides(cfg, {"masking.key_seed": 7, "train.lr": 0.5, "train.epochs": 2})
    with pytest.raises(ConfigError) as err:
        run_centralized(other, tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'checkpoint.pt'}: written with another config")
    assert "masking.key_seed 0 -> 7, train.lr 0.1 -> 0.5)" in str(err.value)
    assert _history(json.loads((tmp_path / "metrics.json").read_text())) == [1]
    longer = run_centralized(apply_overrides(cfg, {"train.epochs": 2}), tmp_path)  # may grow
    assert _history(longer) == [1, 2]


def test_a_kill_between_checkpoint_and_metrics_loses_no_epoch(tmp_path, monkeypatch, tiny):
    cfg = tiny(**{"masking.method": "ppfr_fd"})  # 2 epochs
    write = ahm_core.experiment._write_metrics
    calls = []

    def killed_after_the_second_checkpoint(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # epoch 2's checkpoint is written, its metrics are not
        return write(*args)

    monkeypatch.setattr(ahm_core.experiment, "_write_metrics", killed_after_the_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run_centralized(cfg, tmp_path)
    assert _history(json.loads((tmp_path / "metrics.json").read_text())) == [1]
    monkeypatch.setattr(ahm_core.experiment, "_write_metrics", write)
    metrics = run_centralized(cfg, tmp_path)  # nothing left to train: the record is rebuilt
    saved = load_checkpoint(tmp_path / "checkpoint.pt")
    assert _history(metrics) == [1, 2] and metrics["history"] == saved["history"]
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    (tmp_path / "metrics.json").unlink()  # a finished checkpoint without its metrics
    assert run_centralized(cfg, tmp_path)["history"] == metrics["history"]


def test_a_federated_rerun_repairs_a_stale_rounds_json(tmp_path):
    cfg = config(ONE_ROUND)
    done = run_local(cfg, tmp_path, NODES)
    stale = {**done, "rounds": done["rounds"][:1], "final_accuracy": 0.123}
    (tmp_path / "rounds.json").write_text(json.dumps(stale))  # killed before rounds.json
    repaired = run_local(cfg, tmp_path, NODES)  # all rounds done: no training
    assert json.loads((tmp_path / "rounds.json").read_text()) == repaired == done
    other = apply_overrides(cfg, {"federation.strategy": "fedmedian"})
    with pytest.raises(ConfigError, match=r"federation\.strategy 'fedavg' -> 'fedmedian'"):
        run_local(other, tmp_path, NODES)


def _global(path):
    torch.save({"x": os.getcwd}, path)  # a checkpoint that would call a function


def _truncated(path):
    torch.save({"x": torch.zeros(100)}, path)
    path.write_bytes(path.read_bytes()[:300])


def _pickled(path):
    path.write_bytes(pickle.dumps({"x": 1}))  # no torch zip: torch's legacy loader


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p.write_bytes(b""), "not a readable checkpoint (EOFError)"),
        (lambda p: p.write_bytes(b"junk" * 50), "not a readable checkpoint"),
        (_truncated, "not a readable checkpoint (PytorchStreamReader failed"),
        (_global, "refused: it holds more than tensors and plain data"),
        (lambda p: torch.save([1, 2], p), "holds a list, not a checkpoint dict"),
        (lambda p: torch.save({"x": 1}, p), "not this kind of checkpoint (no config,"),
        (_pickled, "not a readable checkpoint"),
    ],
)
def test_a_bad_checkpoint_is_one_line_naming_the_file(make, reason, tmp_path, tiny):
    checkpoint = tmp_path / "checkpoint.pt"
    make(checkpoint)
    with pytest.raises(CheckpointError) as err:
        run_centralized(tiny(**{"masking.method": "ppfr_fd", "train.epochs": 1}), tmp_path)
    message = str(err.value)
    assert message.startswith(f"{checkpoint}: {reason}"), message
    assert "\n" not in message and "weights_only" not in message


def test_atomic_write_fsyncs_the_file_then_renames_then_fsyncs_the_folder(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def record_fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def record_replace(src, dst) -> None:
        events.append(("replace", str(dst)))
        replace(src, dst)

    monkeypatch.setattr(ahm_io.os, "fsync", record_fsync)
    monkeypatch.setattr(ahm_io.os, "replace", record_replace)
    target = tmp_path / "result.json"
    atomic_write(target, lambda tmp: tmp.write_text("{}"))
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]
    assert events[0][1].startswith(str(tmp_path / ".result.json."))  # the temporary file
    assert events[1][1] == str(target) and events[2][1] == str(tmp_path)
    assert target.read_text() == "{}"
