"""The attack budget ladder: budgets double up to their caps, the climb stops at the first rung
that does not leak more beyond noise (converged) or after the last (capped), and the attack is
scored at its most leaking rung."""

import json

import pytest
import torch

from ahm_core.attacks.ladder import climb, doubling


def test_budgets_double_up_to_the_caps_without_duplicates():
    assert doubling({"epochs": 40, "aux": 400}, 4) == [
        {"epochs": 5, "aux": 50},
        {"epochs": 10, "aux": 100},
        {"epochs": 20, "aux": 200},
        {"epochs": 40, "aux": 400},
    ]
    assert doubling({"epochs": 1, "aux": 2}, 4) == [
        {"epochs": 1, "aux": 1},
        {"epochs": 1, "aux": 2},
    ]
    assert doubling({"epochs": 7}, 1) == [{"epochs": 7}]


def _leaks(means: dict[int, float], n: int = 64, spread: float = 0.05):
    """leakage(trained) -> per-face values around means[trained]: the same faces every rung, so
    a share of the noise is theirs, and a share is the rung's own."""
    faces = torch.randn(n, generator=torch.Generator().manual_seed(0)) * spread

    def leakage(trained: int) -> torch.Tensor:
        own = torch.randn(n, generator=torch.Generator().manual_seed(trained)) * spread
        return means[trained] + faces + own

    return leakage


def _train(budget: dict) -> int:
    return budget["epochs"]


BUDGETS = [{"epochs": e} for e in (1, 2, 4, 8)]


def test_a_climb_that_stops_rising_converges_and_scores_its_most_leaking_rung():
    trained = []
    result = climb(
        BUDGETS,
        lambda b: trained.append(b) or _train(b),
        _leaks({1: 0.2, 2: 0.5, 4: 0.5005, 8: 0.9}),
        "cosine",
    )
    assert result.converged
    assert [r.budget["epochs"] for r in result.rungs] == [1, 2, 4]  # rung 8 never trained
    assert len(trained) == 3
    assert result.trained == 4 and result.best == 2  # within noise of rung 2, but higher
    figures = json.loads(json.dumps(result.figures()))
    assert figures["converged"] and figures["budget"] == {"epochs": 4}
    assert "converged" in result.summary()


def test_a_climb_still_rising_at_its_last_rung_is_capped():
    result = climb(BUDGETS, _train, _leaks({1: 0.1, 2: 0.3, 4: 0.5, 8: 0.7}), "cosine")
    assert not result.converged and result.best == 3 and len(result.rungs) == 4
    assert "capped" in result.summary()


def test_a_falling_rung_stops_the_climb_and_the_earlier_rung_is_scored():
    result = climb(BUDGETS, _train, _leaks({1: 0.6, 2: 0.3, 4: 0.9, 8: 0.9}), "cosine")
    assert result.converged and result.best == 0 and result.trained == 1
    lo, hi = result.rungs[0].ci95
    assert lo < result.rungs[0].leakage < hi


def test_no_budget_is_refused():
    with pytest.raises(ValueError, match="no budgets"):
        climb([], _train, _leaks({}), "cosine")
