"""Bad input through every entry point ends in one line naming the key, the value and what is
expected, with exit status 1 and no traceback: hydra's four and the Flower run config. `-v`
turns on DEBUG logs."""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from scales import TRAIN, hydra_args

import simulations.flower
from ahm_core.data.synthetic import SynthFaces, write_image_folder
from simulations.cli import entry
from simulations.flower import PROJECT, flwr_env, stop_superlink
from simulations.schema import register

TINY = [*hydra_args(TRAIN), "train.epochs=1", "data.test_fraction=0.2"]
ENTRY_POINTS = ("centralized", "federated", "paper_tables", "threat_model")

# (override, what the line says after "prog: "), for every entry point.
BAD = [
    ("train.batch_size=abc", "train.batch_size=abc: Value 'abc' of type 'str' could not be"),
    ("train.batch_size=1.5", "train.batch_size=1.5: Value '1.5' of type 'float' could not"),
    ("train.batch_size=true", "train.batch_size=true: Value 'True' of type 'bool' could not"),
    ("train.batch_size=inf", "train.batch_size=inf: Value 'inf' of type 'float' could not"),
    ("train.batch_size=0", "train.batch_size: must be >= 1, got 0"),
    ("train.flip=maybe", "train.flip=maybe: Value 'maybe' is not a valid bool"),
    ("train.lr=", "train.lr=: Value '' of type 'str' could not be converted to Float"),
    ("policy.k_set=abc", "policy.k_set=abc: Invalid value assigned: str is not a ListConfig"),
    ("policy.k_set=[a]", "policy.k_set=[a]: Value 'a' of type 'str' could not be converted"),
    ("policy.k_set=[]", "policy.k_set: the candidate set of k is empty"),
    ("policy.k_set=[1,2]", "policy.k_set: k must be >= 2"),
    ("model.blocks=[]", "model.blocks: expected one or more stages of >= 1 block each"),
    ("model.blocks=[0]", "model.blocks: expected one or more stages of >= 1 block each"),
    ("model.blocks=[1,1,1,1,1,1,1]", "data.image_size: 7 stages of model.blocks="),
    ("train.momentum=nan", "train.momentum: must be a finite number, got nan"),
    ("train.lr=inf", "train.lr: must be a finite number, got inf"),
    ("federation.max_update_norm=nan", "federation.max_update_norm: must be a finite number"),
    ("federation.fraction_train=nan", "federation.fraction_train: must be a finite number"),
    ("federation.fault_fraction=nan", "federation.fault_fraction: must be a finite number"),
    ("data.test_fraction=nan", "data.test_fraction: must be a finite number, got nan"),
    ("data.test_fraction=1.0", "data.test_fraction: must be < 1.0, got 1.0"),
    ("model.margin=inf", "model.margin: must be a finite number, got inf"),
    ("data.seed=-1", "data.seed: must be >= 0, got -1"),
    ("data.num_identities=1", "data.num_identities: must be >= 3, got 1"),
    ("data.num_identities=1e9", "data.num_identities=1e9: Value '1000000000.0' of type"),
    ("data.image_size=1000", "data.image_size: synthetic faces take (32, 112), got 1000"),
    ("mixup.k=1", "mixup.k: must be >= 2, got 1"),
    ("masking.num_channels=64", "masking.num_channels: must be <= 63, got 64"),
    ("masking.method=rot13", "masking.method: unknown value 'rot13'; expected one of arcface"),
    ("masking.method=null", "masking.method=null: field 'masking.method' is not Optional"),
    ("train.device=garbage", "train.device: unknown device 'garbage'; expected auto, cpu"),
    ("train.device=cuda:7", "train.device: cuda:7 requested, but this machine has 0 CUDA"),
    ("data.root=[1,2]", "data.root=[1,2]: Cannot convert 'list' to string"),
    ("data.source=folder", "data.root: required for data.source=folder"),
    ("train.foo=1", "train.foo: unknown option; expected one of amp, batch_size"),
    ("+train.foo=1", "train.foo: unknown option; expected one of amp, batch_size"),
    ("foo=1", "foo: unknown option; expected one of attack"),
    ("profile=nope", "Could not find 'profile/nope'; Available options in 'profile': default,"),
    ("data=nope", "Could not find 'data/nope'; Available options in 'data': folder, insightface"),
    ("resume=maybe", "resume=maybe: Value 'maybe' is not a valid bool"),
    # absurd but valid-looking: refused before anything starts, not a hang or a MemoryError
    ("train.lr=1e300", "train.lr: must be <= 10.0, got 1e+300"),
    ("model.scale=1e300", "model.scale: must be <= 1024.0, got 1e+300"),
    ("federation.local_epochs=1000000000", "federation.local_epochs: must be <= 100000, got"),
    ("model.embedding_size=2147483648", "model.embedding_size: must be <= 65536, got"),
    ("data.num_identities=1000000000", "data.num_identities: a run of this config needs at least"),
    ("train.device=meta", "train.device: meta holds shapes without values"),
    # privacy settings that cannot work together
    ("federation.local_dp=true", "federation.local_dp: every update carries LocalDpMod's noise"),
    ("train.dp_sgd=true masking.method=arcface", "train.dp_sgd: per-sample gradients need a"),
    ("model.norm=layer", "model.norm: unknown value 'layer'; expected one of batch, group"),
]
# Failing only once the data is read: in the process itself for these two (a federation's
# ServerApp reads them; see test_flwr_run_ends_bad_input_in_one_line).
DATA = [
    ("data=folder data.root=/nonexistent", "data.root: /nonexistent is not a folder"),
    ("data=insightface data.root=/", "/train.rec: RecordIO file not found"),
    ("train.batch_size=1000", "train.batch_size: 1000 is more than the 114 training images"),
]
LAUNCH = [
    ("supernodes=0", "supernodes=0: expected at least 1 SuperNode"),
    ("supernodes=1", "supernodes=1: below federation.min_clients=2"),
    ("cpus_per_client=0", "cpus_per_client=0: expected at least 1 CPU"),
    ("gpus_per_client=nan", "gpus_per_client=nan: expected a number >= 0"),
    ("metrics_port=99999", "metrics_port=99999: expected 0 (off) or a TCP port 1..65535"),
    ("client_state=maybe", "client_state=maybe: Value 'maybe' is not a valid bool"),
]
# The four share one parser (simulations.cli, simulations.schema): the whole list through one of
# them, and one case of each kind (a hydra conversion, a schema bound) through every other.
CASES = [("centralized", *case) for case in BAD]
CASES += [(entry, *case) for entry in ENTRY_POINTS[1:] for case in (BAD[0], BAD[4])]
CASES += [(entry, *case) for entry in ("centralized", "paper_tables") for case in DATA[:2]]
CASES += [("centralized", *DATA[2])]
CASES += [(entry, *case) for entry in ("federated", "threat_model") for case in LAUNCH]


def _no_launch(*args, **kwargs):
    raise AssertionError("a bad config reached flwr run")


@pytest.mark.parametrize(("entry", "override", "line"), CASES)
def test_a_bad_override_ends_in_one_line(entry, override, line, tmp_path, monkeypatch, capsys):
    _ends_in_one_line(entry, override, line, tmp_path, monkeypatch)
    assert "Traceback" not in capsys.readouterr().err


def test_data_and_path_errors_end_in_one_line(tmp_path, monkeypatch, capsys):
    """A folder where the run writes its result (the checkpoint kept), a symlink loop as a .bin
    path or as the data root, an empty root, identity folders with no images: each one line
    (data_summary says the same of them)."""
    loop, other = tmp_path / "loop.bin", tmp_path / "other.bin"
    loop.symlink_to(other)
    other.symlink_to(loop)
    empty, thin = tmp_path / "empty", tmp_path / "thin"
    empty.mkdir()
    for name in ("a", "b"):
        (thin / name).mkdir(parents=True)
    occupied = tmp_path / "occupied"
    (occupied / "metrics.json").mkdir(parents=True)  # where the run writes its result
    _ends_in_one_line(
        "centralized",
        "",
        f"{occupied}/metrics.json: is a folder; expected a file",
        occupied,
        monkeypatch,
    )
    assert (occupied / "metrics.json").is_dir() and (occupied / "checkpoint.pt").is_file()
    for override, line in [
        (f"data.verification=[{loop}]", f"{loop}: cannot open it (Too many levels of symbolic"),
        (f"data=folder data.root={loop}", f"data.root: {loop} is not a folder"),
        (f"data=folder data.root={empty}", f"no identity folder in {empty} holds >= 2 readable"),
        (f"data=folder data.root={thin}", "(2 identity_below_min_images, 0 image_of_small"),
    ]:
        _ends_in_one_line("centralized", override, line, tmp_path / "run", monkeypatch)
    assert "Traceback" not in capsys.readouterr().err


def test_a_data_folder_that_gained_an_identity_cannot_resume_its_run(tmp_path, monkeypatch):
    """The checkpoint's ArcFace head has one class per identity the run trained on: a folder with
    one more refuses the resume in one line naming the field, and the checkpoint stays."""
    root, run = tmp_path / "faces", tmp_path / "run"
    write_image_folder(SynthFaces(8, 6, size=32), root)
    main = importlib.import_module("simulations.centralized").main
    args = [*TINY, "data=folder", f"data.root={root}", f"hydra.run.dir={run}"]
    monkeypatch.setattr(sys, "argv", ["centralized", *args, "hydra/job_logging=disabled"])
    GlobalHydra.instance().clear()
    main()
    before = (run / "checkpoint.pt").read_bytes()
    write_image_folder(SynthFaces(9, 6, size=32), root)  # id_00008 is new
    _ends_in_one_line(
        "centralized",
        f"data=folder data.root={root} resume=true",
        "checkpoint.pt: head.weight:",
        run,
        monkeypatch,
    )
    assert (run / "checkpoint.pt").read_bytes() == before


def _ends_in_one_line(entry: str, override: str, line: str, tmp_path: Path, monkeypatch) -> None:
    main = importlib.import_module(f"simulations.{entry}").main
    monkeypatch.setattr(simulations.flower, "launch", _no_launch)
    monkeypatch.setattr(importlib.import_module("simulations.federated"), "launch", _no_launch)
    overrides = [*TINY, *override.split(), f"hydra.run.dir={tmp_path}", "resume=false"]
    if any(o.startswith("resume=") for o in override.split()):
        overrides.remove("resume=false")
    monkeypatch.setattr(sys, "argv", [entry, *overrides, "hydra/job_logging=disabled"])
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit) as done:
        main()
    message = done.value.code
    assert isinstance(message, str), f"exit status {message}, expected one line"
    assert message.startswith(f"{entry}: ") and "\n" not in message, message
    assert line in message, message


@pytest.mark.parametrize("flag", [None, "-v", "--verbose"])
def test_verbose_turns_on_debug_for_the_project_and_for_flower(flag, tmp_path, monkeypatch):
    seen = {}

    @entry("centralized", "probe")
    def probe(cfg, options) -> None:
        seen["ahm_core"] = logging.getLogger("ahm_core").level
        seen["flower"] = os.environ.get("FLWR_LOG_LEVEL")  # what `flwr run` would inherit

    register()  # the schemas and the data group, as each entry point does
    monkeypatch.delenv("FLWR_LOG_LEVEL", raising=False)
    argv = ["probe", f"hydra.run.dir={tmp_path}", "hydra/job_logging=disabled"]
    monkeypatch.setattr(sys, "argv", argv[:1] + [flag] * bool(flag) + argv[1:])
    GlobalHydra.instance().clear()
    probe()  # hydra would refuse `-v` as an unknown argument
    verbose = flag is not None
    assert seen == {
        "ahm_core": logging.DEBUG if verbose else logging.INFO,
        "flower": "DEBUG" if verbose else None,
    }
    assert "FLWR_LOG_LEVEL" not in os.environ and sys.argv == argv


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_the_process_exits_1_with_one_line_on_stderr(entry, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", f"simulations.{entry}", "train.momentum=nan"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"{entry}: train.momentum: must be a finite number, got nan"
    ]


# Bad settings of every kind on one command line: hydra's, the schema's, the registries', a run
# option the schema lacks and the launcher's; each is named on its own line.
EVERY_KIND = [
    ("train.lr=abc", "train.lr=abc: Value 'abc' of type 'str' could not be converted to Float"),
    ("data=nope", "In 'federated': Could not find 'data/nope'; Available options in 'data'"),
    ("+unknown=1", "unknown: unknown option; expected one of attack, client_state,"),
    ("federation.rounds=0", "federation.rounds: must be >= 1, got 0"),
    ("masking.method=nope", "masking.method: unknown value 'nope'; expected one of arcface,"),
    ("supernodes=0", "supernodes=0: expected at least 1 SuperNode"),
]


def test_every_bad_setting_is_named_on_its_own_line(tmp_path):
    """One rerun fixes them all: six mistakes, six lines, no traceback, nothing started."""
    done = subprocess.run(
        [sys.executable, "-m", "simulations.federated", *(o for o, _ in EVERY_KIND)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == len(EVERY_KIND), done.stderr
    for line, (_, expected) in zip(
        sorted(lines), sorted(EVERY_KIND, key=lambda e: e[1]), strict=True
    ):
        assert line.startswith(f"federated: {expected}"), (line, expected)
    assert not (tmp_path / "outputs").exists()  # refused before a run folder was made


def test_a_bug_keeps_its_traceback(tmp_path):
    """Only bad input is shortened: an error the code did not expect shows where it arose."""
    script = (
        "import sys; import simulations.paper_tables as p\n"
        "def bug(*a, **k): raise RuntimeError('a bug')\n"
        "p.run_tables = bug; sys.argv = ['paper_tables']; p.main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "RuntimeError: a bug" in done.stderr


def test_flwr_run_ends_bad_input_in_one_line(tmp_path):
    """`flwr run . --run-config`: the ServerApp logs one line, no traceback, and its status.json
    says failed with that line (`flwr run` itself exits 0 whatever the ServerApp did)."""
    home, out = tmp_path / "flwr_home", tmp_path / "out"
    home.mkdir()
    command = [str(Path(sys.executable).parent / "flwr"), "run", str(PROJECT), "--stream"]
    command += ["--run-config", f"train.batch_size=true out-dir='{out}' run-token='t'"]
    command += ["--federation-config", "num-supernodes=2"]
    try:
        done = subprocess.run(
            command, env=flwr_env(home), capture_output=True, text=True, timeout=240
        )
    finally:
        stop_superlink(home)
    line = "train.batch_size: expected an integer, got True"  # not 1, as int(True) would give
    logs = done.stdout + done.stderr
    assert f"ahm: {line}" in logs and "Traceback" not in logs
    assert simulations.flower.status_error(out, "t") == f"the ServerApp failed: {line}"
