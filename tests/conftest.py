"""Shared fixtures: the real faces of ../shared/data, skipped with a reason where absent; the
tiers (`slow` for tests/e2e/ unless marked `fast`). The tiny scales are in `scales.py`."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scales import TRAIN, config

from ahm_core.config import AHMConfig

E2E = Path(__file__).parent / "e2e"
SHARED_DATA = Path(os.environ.get("AHM_SHARED_DATA", Path(__file__).parents[2] / "shared/data"))


@pytest.fixture
def tiny() -> Callable[..., AHMConfig]:
    """The training tests' tiny scale (`scales.TRAIN`) with dotted overrides:
    `tiny(**{"masking.method": "ppfr_fd"})`."""
    return functools.partial(config, TRAIN)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-face folder (CI has it; a user's clone does not)."""
    if not (SHARED_DATA / "orl_faces").is_dir():
        pytest.skip(f"real faces not available: {SHARED_DATA / 'orl_faces'} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def orl_gray(shared_data: Path) -> torch.Tensor:
    """The first image of each of the 40 ORL subjects, gray [40, 1, 112, 92] in [0, 1]."""
    paths = [shared_data / "orl_faces" / f"s{i}" / "1.pgm" for i in range(1, 41)]
    arrays = [np.asarray(Image.open(p).convert("L"), dtype=np.float32) / 255.0 for p in paths]
    return torch.from_numpy(np.stack(arrays))[:, None]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every end-to-end test (tests/e2e/) belongs to the slow tier unless it is marked fast."""
    for item in items:
        if E2E in item.path.parents and not item.get_closest_marker("fast"):
            item.add_marker(pytest.mark.slow)
