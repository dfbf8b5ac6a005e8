"""Fixtures of the end-to-end tests: the federated CLI as a process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from scales import E2E, hydra_args


def _federated_cli(out: Path, overrides: list[str]) -> subprocess.Popen:
    """`python -m simulations.federated` at the E2E scale on 2 SuperNodes for 3 rounds."""
    command = [sys.executable, "-m", "simulations.federated", f"hydra.run.dir={out}"]
    command += [*hydra_args(E2E), "supernodes=2", "federation.rounds=3", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


@pytest.fixture
def federated_cli() -> Callable[[Path, list[str]], subprocess.Popen]:
    """Starts the federated CLI in its own session (so a test can signal the whole group)."""
    return _federated_cli
