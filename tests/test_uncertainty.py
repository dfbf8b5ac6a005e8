"""The intervals figures carry, against textbook values and scipy's own."""

import math

import pytest
import torch
from scipy import stats

from ahm_core.metrics.uncertainty import (
    bootstrap_interval,
    cluster_pair_difference,
    cluster_pair_interval,
    cluster_rate_interval,
    fold_interval,
    mcnemar,
    wilson_interval,
)


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


def outcomes(values: torch.Tensor) -> str:
    return "".join("1" if v else "0" for v in values.tolist())


def test_clustered_interval_of_independent_identities_is_the_naive_bootstrap():
    """One identity a pair, each its own: resampling identities is resampling pairs."""
    right = torch.rand(1000, generator=torch.Generator().manual_seed(0)) < 0.8
    ids = torch.arange(1000)
    lo, hi = cluster_pair_interval(outcomes(right), ids, ids, seed=3)
    naive = bootstrap_interval(right.double(), seed=3)
    assert (lo, hi) == pytest.approx(naive, abs=0.005)
    assert lo < float(right.double().mean()) < hi
    # Pairs of two identities no other pair has: conservative, about sqrt(3) wider, not narrower
    width = cluster_pair_interval(outcomes(right), ids, ids + 1000)
    assert 1.4 < (width[1] - width[0]) / (naive[1] - naive[0]) < 2.1


def test_clustered_interval_widens_with_identities_that_decide_the_outcome():
    """40 identities in 6,000 pairs, each identity easy or hard: the interval is the dyadic
    (two-way clustered) one, several times the naive bootstrap's, which misses the dependence."""
    g = torch.Generator().manual_seed(0)
    effect = torch.randn(40, generator=g)
    left, right = torch.randint(40, (6000,), generator=g), torch.randint(40, (6000,), generator=g)
    correct = torch.rand(6000, generator=g) < torch.sigmoid(1.5 + effect[left] + effect[right])
    lo, hi = cluster_pair_interval(outcomes(correct), left, right)
    naive = bootstrap_interval(correct.double())
    assert hi - lo > 5 * (naive[1] - naive[0])
    residual = correct.double() - correct.double().mean()
    per_identity = torch.zeros(40, dtype=torch.float64)
    two = left != right  # a pair of two identities counts for each, a same-identity pair once
    per_identity.index_add_(0, left, residual).index_add_(0, right[two], residual[two])
    variance = (per_identity.square().sum() - residual[two].square().sum()) / 6000**2
    assert hi - lo == pytest.approx(2 * 1.96 * math.sqrt(variance), rel=0.15)


def test_pairs_of_one_identity_vary_more_than_independent_pairs():
    """Pairs that share one identity: the clustered interval is wider than the naive one."""
    g = torch.Generator().manual_seed(1)
    person = torch.arange(600) // 60  # 10 identities, 60 pairs each
    correct = torch.rand(600, generator=g) < torch.where(person % 2 == 0, 0.95, 0.6)
    clustered = cluster_pair_interval(outcomes(correct), person, person)
    naive = bootstrap_interval(correct.double())
    assert clustered[1] - clustered[0] > 1.5 * (naive[1] - naive[0])


def test_clustered_intervals_are_seeded():
    g = torch.Generator().manual_seed(2)
    left, right = torch.randint(30, (500,), generator=g), torch.randint(30, (500,), generator=g)
    a = outcomes(torch.rand(500, generator=g) < 0.9)
    b = outcomes(torch.rand(500, generator=g) < 0.8)
    assert cluster_pair_interval(a, left, right) == cluster_pair_interval(a, left, right)
    assert cluster_pair_interval(a, left, right, seed=1) != cluster_pair_interval(a, left, right)
    assert cluster_pair_difference(a, b, left, right) == cluster_pair_difference(a, b, left, right)
    hits = torch.rand(50, generator=g) < 0.5
    victims = torch.arange(50) % 10
    assert cluster_rate_interval(hits, victims) == cluster_rate_interval(hits, victims)


def test_clustered_difference_rests_on_identities_not_on_discordant_pairs():
    """A beats B only on the pairs of 2 of 20 identities: McNemar, counting 60 discordant pairs
    as independent, calls it significant; the clustered interval of the difference holds 0."""
    person = torch.arange(1200) // 60
    a = "1" * 1200
    b = "".join("0" if p < 2 and i % 2 else "1" for i, p in enumerate(person.tolist()))
    assert mcnemar(a, b)["p"] < 1e-10
    test = cluster_pair_difference(a, b, person, person)
    assert test["difference"] == pytest.approx(60 / 1200)
    assert test["ci95"][0] <= 0 <= test["ci95"][1] and test["p"] >= 0.05
    # A beats B a little on every identity: beyond noise by both
    b = "".join("0" if i % 10 == 0 else "1" for i in range(1200))
    test = cluster_pair_difference(a, b, person, person)
    assert test["ci95"][0] > 0 and test["p"] < 0.05
    same = cluster_pair_difference(a, a, person, person)
    assert same == {"difference": 0.0, "ci95": [0.0, 0.0], "p": 1.0}


def test_clustered_rate_by_victim_identity():
    hits = torch.tensor([True] * 8 + [False] * 8)  # identity 0's victims all hit, 1's all missed
    victims = torch.tensor([0] * 8 + [1] * 8)
    lo, hi = cluster_rate_interval(hits, victims)
    assert (lo, hi) == (0.0, 1.0)  # two identities: the rate is 0, 0.5 or 1
    assert wilson_interval(8, 16)[1] - wilson_interval(8, 16)[0] < 0.5
    unique = torch.rand(400, generator=torch.Generator().manual_seed(4)) < 0.3
    clustered = cluster_rate_interval(unique, torch.arange(400), seed=5)
    assert clustered == pytest.approx(bootstrap_interval(unique.double(), seed=5), abs=0.01)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: cluster_pair_interval("101", torch.arange(3), torch.arange(2)), "not the same"),
        (lambda: cluster_pair_interval("10", torch.arange(3), torch.arange(3)), "not the same"),
        (lambda: cluster_pair_interval("1x1", torch.arange(3), torch.arange(3)), "a string of"),
        (lambda: cluster_pair_interval("", torch.arange(0), torch.arange(0)), "no pairs"),
        (
            lambda: cluster_pair_difference("11", "1", torch.arange(2), torch.arange(2)),
            "not the same pairs",
        ),
        (lambda: cluster_rate_interval(torch.ones(3), torch.arange(2)), "one label per outcome"),
        (lambda: cluster_rate_interval(torch.ones(0), torch.arange(0)), "no outcomes"),
    ],
)
def test_clustered_intervals_refuse_bad_input_in_one_line(call, message):
    with pytest.raises(ValueError, match=message) as raised:
        call()
    assert "\n" not in str(raised.value)
