"""What the ServerApp's process prints: each Flower line once (not again through a handler a
library put on the root logger, as Opacus does on import), no DEBUG at the default level, and
one progress line per round."""

import io
import logging
from collections import Counter
from logging import DEBUG, INFO

from flwr.common.logger import FLOWER_LOGGER, console_handler, log

import server.app  # noqa: F401  the ServerApp's own setup of Flower's logger
from server.run import progress_line


def test_a_flower_line_is_printed_once_and_debug_not_at_the_default_level(monkeypatch):
    console = io.StringIO()
    monkeypatch.setattr(console_handler, "stream", console)
    # a fresh Flower process's levels (tests run before this one may have moved them)
    monkeypatch.setattr(console_handler, "level", INFO)
    monkeypatch.setattr(FLOWER_LOGGER, "level", INFO)
    monkeypatch.setattr(FLOWER_LOGGER, "disabled", False)  # hydra's dictConfig
    root = logging.StreamHandler(io.StringIO())  # what logging.basicConfig installs
    logging.getLogger().addHandler(root)
    try:
        log(INFO, "round 1/2: a progress line")
        log(DEBUG, "a detail")
    finally:
        logging.getLogger().removeHandler(root)
    assert console.getvalue().count("round 1/2: a progress line") == 1
    assert "a detail" not in console.getvalue() and root.stream.getvalue() == ""


def test_a_round_is_one_line_with_the_accuracy_and_the_clients():
    record = {
        "round": 2,
        "accuracy": 0.71234,
        "sampled": 4,
        "accepted": 2,
        "rejected": Counter({"non_finite": 1}),
        "failed": 1,
        "seconds": 3.25,
    }
    assert progress_line(record, 3) == (
        "round 2/3: verification accuracy 0.7123; clients: 2 of 4 accepted, 1 rejected, "
        "1 failed; 3.2 s"
    )
    initial = progress_line({"round": 0, "accuracy": 0.5}, 3)
    assert initial == "round 0/3: verification accuracy 0.5000 (the initial model)"
