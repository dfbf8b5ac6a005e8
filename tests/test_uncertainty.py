"""The intervals figures carry, against textbook values and scipy's own."""

import math

import pytest
import torch
from scipy import stats

from ahm_core.metrics.uncertainty import bootstrap_interval, fold_interval, mcnemar, wilson_interval


@pytest.mark.parametrize(
    ("successes", "trials", "expected"),
    [
        (5, 10, (0.2366, 0.7634)),  # the textbook example
        (0, 20, (0.0, 0.1611)),
        (20, 20, (0.8389, 1.0)),
        (1, 64, (0.0028, 0.0833)),
    ],
)
def test_wilson_interval(successes, trials, expected):
    lo, hi = wilson_interval(successes, trials)
    assert lo == pytest.approx(expected[0], abs=1e-4) and hi == pytest.approx(expected[1], abs=1e-4)
    low, high = stats.binomtest(successes, trials).proportion_ci(method="wilson")
    assert (lo, hi) == pytest.approx((low, high), abs=1e-9)
    assert lo <= successes / trials <= hi  # exactly, at 0 and at every success too


def test_fold_interval_is_students_t_over_the_folds():
    folds = torch.tensor([0.9, 0.92, 0.88, 0.91, 0.95, 0.87, 0.9, 0.93, 0.89, 0.9])
    lo, hi = fold_interval(folds)
    mean, sem = float(folds.double().mean()), float(folds.double().std()) / math.sqrt(10)
    assert (lo + hi) / 2 == pytest.approx(mean)
    assert (hi - lo) / 2 == pytest.approx(2.2622 * sem, rel=1e-4)  # t(0.975, 9) = 2.2622
    assert fold_interval(torch.tensor([0.7])) == (pytest.approx(0.7), pytest.approx(0.7))


def test_wilson_needs_a_trial():
    with pytest.raises(ValueError, match="at least one trial"):
        wilson_interval(0, 0)


def test_mcnemar_counts_discordant_pairs_and_tests_them_exactly():
    a = "1" * 40 + "1" * 10 + "0" * 10  # both right on 40, only A on 10, both wrong on 10
    b = "1" * 40 + "0" * 10 + "0" * 10
    result = mcnemar(a, b)
    assert (result["only_a"], result["only_b"]) == (10, 0)
    assert result["p"] == pytest.approx(2 * 0.5**10)  # all 10 discordant pairs favour A
    assert mcnemar("1100", "0011") == {"only_a": 2, "only_b": 2, "p": 1.0}
    assert mcnemar("11", "11")["p"] == 1.0
    with pytest.raises(ValueError, match="not the same pairs"):
        mcnemar("1", "11")


def test_bootstrap_interval_of_a_mean():
    values = torch.randn(400, generator=torch.Generator().manual_seed(0)) + 3.0
    lo, hi = bootstrap_interval(values, seed=1)
    mean, se = float(values.mean()), float(values.std()) / math.sqrt(len(values))
    assert lo < mean < hi
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.15)  # the normal interval, n = 400
    assert bootstrap_interval(values, seed=1) == (lo, hi)  # seeded: a rerun prints the same
    assert bootstrap_interval(torch.full((5,), 0.25)) == pytest.approx((0.25, 0.25))
    with pytest.raises(ValueError, match="no values"):
        bootstrap_interval(torch.zeros(0))
