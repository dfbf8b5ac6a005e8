"""Attack budgets climbed until leakage stops rising: a privacy figure is only as good as an
adversary trained to convergence.

A learned attack trains once per rung of a budget ladder (each rung from scratch, with the
attack's seed, so a rung is exactly the attack run at that budget); after each rung its leakage
is measured on a held-out part of the attacker's own auxiliary faces (faces it did not train on).
The climb goes on while a rung leaks more than the most leaking one before it beyond noise (a
paired bootstrap over the held-out faces: the 95% interval of the mean difference above 0) and
stops at the first rung that does not (`converged`) or after the last rung (`capped`: the leakage
may still be rising). The attack is scored at its most leaking rung.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from torch import Tensor

from ahm_core.metrics.uncertainty import bootstrap_interval

Budget = dict[str, int]
T = TypeVar("T")


def doubling(caps: Budget, rungs: int) -> list[Budget]:
    """`rungs` budgets doubling every entry up to `caps` (the last rung), duplicates removed:
    {"epochs": 40, "aux": 400} over 4 rungs is 5/50, 10/100, 20/200, 40/400."""
    budgets: list[Budget] = []
    for r in range(rungs):
        scale = 2.0 ** (r + 1 - rungs)
        budget = {name: max(1, math.ceil(cap * scale)) for name, cap in caps.items()}
        if budget not in budgets:
            budgets.append(budget)
    return budgets


@dataclass(frozen=True)
class Rung:
    """One budget trained and the mean leakage it reached on the held-out faces, with its
    bootstrap 95% interval."""

    budget: Budget
    leakage: float
    ci95: tuple[float, float]


@dataclass(frozen=True)
class Climb(Generic[T]):
    """The rungs trained, the most leaking one (`best`, the attack as scored, `trained`), whether
    the climb stopped before the cap, and what leakage measures."""

    rungs: list[Rung]
    best: int
    converged: bool
    measure: str
    trained: T

    def figures(self) -> dict[str, Any]:
        """The climb as JSON: every rung, the budget scored and whether it converged."""
        return {
            "ladder": [
                {"budget": r.budget, "leakage": r.leakage, "ci95": list(r.ci95)} for r in self.rungs
            ],
            "budget": self.rungs[self.best].budget,
            "converged": self.converged,
            "leakage_measure": self.measure,
        }

    def summary(self) -> str:
        """The scored budget and the flag, in a few words."""
        budget = ", ".join(f"{k} {v}" for k, v in self.rungs[self.best].budget.items())
        flag = "converged" if self.converged else "capped"
        return f"{budget} ({flag} after {len(self.rungs)} rungs)"


def climb(
    budgets: Sequence[Budget],
    train: Callable[[Budget], T],
    leakage: Callable[[T], Tensor],
    measure: str,
    seed: int = 0,
) -> Climb[T]:
    """Train `train(budget)` rung by rung and measure `leakage(trained)` ([M] per held-out face,
    larger leaking more) until a rung does not leak more than the best before it beyond noise."""
    if not budgets:
        raise ValueError("climb: no budgets")
    rungs: list[Rung] = []
    best_values: Tensor | None = None
    best, best_trained, converged = 0, None, False
    for i, budget in enumerate(budgets):
        trained = train(budget)
        values = leakage(trained).double().flatten()
        rungs.append(Rung(budget, float(values.mean()), bootstrap_interval(values, seed)))
        if best_values is None:
            best, best_values, best_trained = i, values, trained
            continue
        rising = bootstrap_interval(values - best_values, seed)[0] > 0
        if values.mean() > best_values.mean():
            best, best_values, best_trained = i, values, trained
        if not rising:
            converged = True
            break
    return Climb(rungs, best, converged, measure, best_trained)
