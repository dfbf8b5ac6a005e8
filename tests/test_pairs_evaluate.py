import pytest
import torch
from torch import nn

from ahm_core.config import AHMConfig, apply_overrides
from ahm_core.data.folders import FolderFaces
from ahm_core.data.pairs import Pairs, holdout_identities, make_pairs
from ahm_core.data.sources import run_data
from ahm_core.data.synthetic import SynthFaces
from ahm_core.evaluate import (
    embed,
    evaluate_verification,
    fold_accuracy,
    identity_difference,
    identity_interval,
    pair_identities,
    tar_at_far,
    verification_report,
)
from ahm_core.masking import build_masking
from ahm_core.metrics.uncertainty import cluster_pair_interval, fold_interval


def test_pairs_are_balanced_disjoint_and_reproducible():
    labels = torch.arange(100).repeat_interleave(10)
    pairs = make_pairs(labels, seed=3)
    assert len(pairs) == 6000
    assert torch.equal(torch.bincount(pairs.fold), torch.full((10,), 600))
    for f in range(10):
        in_fold = pairs.fold == f
        assert pairs.same[in_fold].sum() == 300
        assert torch.equal(labels[pairs.left] == labels[pairs.right], pairs.same)
        people = set(labels[pairs.left[in_fold]].tolist()) | set(
            labels[pairs.right[in_fold]].tolist()
        )
        others = set(labels[pairs.left[~in_fold]].tolist()) | set(
            labels[pairs.right[~in_fold]].tolist()
        )
        assert not people & others  # identity-disjoint folds
    assert (pairs.left != pairs.right).all()
    keys = set(zip(pairs.left.tolist(), pairs.right.tolist(), strict=True))
    assert len(keys) == 6000  # no pair twice
    again = make_pairs(labels, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(pairs, again, strict=True))


def test_pairs_of_a_small_set_share_identities_across_folds():
    labels = torch.arange(10).repeat_interleave(10)
    pairs = make_pairs(labels)
    assert len(pairs) == 900  # all 450 same-identity pairs, and as many others
    assert pairs.same.sum() == 450
    assert torch.equal(torch.bincount(pairs.fold), torch.full((10,), 90))


def test_holdout_identities_and_pairs_on_the_held_out_part():
    labels = torch.arange(30).repeat_interleave(4)
    train, test = holdout_identities(labels, 25, seed=1)
    assert not set(labels[train].tolist()) & set(labels[test].tolist())
    assert len(train) + len(test) == 120
    pairs = make_pairs(labels, items=test)
    assert set(pairs.left.tolist()) | set(pairs.right.tolist()) <= set(test.tolist())
    with pytest.raises(ValueError, match="hold out 30 of 30"):
        holdout_identities(labels, 30)


def test_fold_accuracy_by_hand():
    # Fold 0: same at 0.305 and 1.205, different at 0.905 and 1.505.
    # Fold 1: same at 0.405, different at 0.605.  Fold 2: same at 0.205, different at 0.255.
    dist = torch.tensor([0.305, 1.205, 0.905, 1.505, 0.405, 0.605, 0.205, 0.255])
    same = torch.tensor([True, True, False, False, True, False, True, False])
    fold = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    acc, thr = fold_accuracy(dist, same, fold)
    # Fold 0 is judged with the first threshold that is best on folds 1-2: 0.21 gets 3 of 4
    # right (0.205 same; 0.255, 0.605 different; 0.405 wrong); nothing gets 4 of 4. At 0.21
    # fold 0 predicts all four different: 2 of 4 right.
    # Fold 1 is judged on folds 0 and 2: 0.21 is the first to get 4 of 6 (0.305, 1.205 wrong);
    # 0.31 and 1.21 tie with it, none does better. At 0.21 fold 1 predicts both different: 1 of 2.
    # Fold 2 is judged on folds 0 and 1: 0.41 gets 5 of 6 (only 1.205 wrong), the sole best.
    # At 0.41 fold 2 predicts both same: 1 of 2.
    torch.testing.assert_close(thr, torch.tensor([0.21, 0.21, 0.41]))
    torch.testing.assert_close(acc, torch.tensor([0.5, 0.5, 0.5]))


def test_report_uses_squared_l2_of_the_embeddings():
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    pairs = Pairs(
        torch.tensor([0, 0, 2, 1]),
        torch.tensor([2, 1, 3, 3]),
        torch.tensor([True, False, False, True]),
        torch.tensor([0, 0, 1, 1]),
    )
    report = verification_report(emb, pairs)
    # Distances 0, 2, 4, 2. Fold 0 threshold from fold 1 (d=4 diff, d=2 same): 2.01 -> fold 0
    # predicts 0 same (right) and 2 same (wrong). Fold 1 from fold 0 (0 same, 2 diff): 0.01 ->
    # fold 1 predicts both different: 4 right, 2 wrong.
    assert report["thresholds"] == [2.01, 0.01]
    assert report["accuracy"] == 0.5 and report["accuracy_std"] == 0.0
    assert report["tar_at_far_1e-3"] is None and report["pairs"] == 4


def test_tar_at_far():
    negatives = torch.linspace(1.0, 3.0, 2000)
    positives = torch.tensor([0.1, 0.5, 1.0005, 1.5])
    dist = torch.cat([positives, negatives])
    same = torch.cat([torch.ones(4, dtype=torch.bool), torch.zeros(2000, dtype=torch.bool)])
    # 0.1% of 2000 negatives = 2 may pass: threshold = the third smallest negative (1.002).
    assert tar_at_far(dist, same) == 0.75
    assert tar_at_far(dist[:900], same[:900]) is None


class Pixels(nn.Module):
    """A fixed embedding: the pooled, centred image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        small = nn.functional.adaptive_avg_pool2d(x, 8).flatten(1)
        return small - small.mean(dim=1, keepdim=True)


def test_embedding_sums_image_and_flip():
    faces = SynthFaces(num_identities=2, images_per_identity=2, size=32)
    pipeline = build_masking(
        apply_overrides(AHMConfig(), {"masking.method": "arcface", "data.image_size": 32})
    )
    emb = embed(Pixels(), faces, torch.arange(4), pipeline.encode, batch_size=3)
    images = faces.images_uint8(range(4)).float() / 255
    expected = Pixels()(pipeline.encode(images)) + Pixels()(pipeline.encode(images.flip(-1)))
    torch.testing.assert_close(emb, nn.functional.normalize(expected, dim=1))
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))


def test_orl_smoke_train_on_s1_s30_verify_on_s31_s40(shared_data):
    faces = FolderFaces(shared_data / "orl_faces", size=32)
    assert faces.identity_names[30:] == [f"s{i}" for i in range(31, 41)]
    test = torch.nonzero(faces.labels >= 30).flatten()
    pairs = make_pairs(faces.labels, items=test)
    assert set(faces.labels[torch.cat([pairs.left, pairs.right])].tolist()) == set(range(30, 40))
    cfg = apply_overrides(
        AHMConfig(),
        {
            "masking.method": "ppfr_fd",
            "data.source": "folder",
            "data.root": str(shared_data),
            "data.image_size": 32,
        },
    )
    pipeline = build_masking(cfg)
    raw = evaluate_verification(Pixels(), faces, pairs, lambda x: x)
    masked = evaluate_verification(Pixels(), faces, pairs, pipeline.encode)
    assert raw["pairs"] == 900 and len(raw["thresholds"]) == 10
    assert raw["accuracy"] > 0.75  # ORL people are told apart by their pixels
    assert 0.0 <= masked["accuracy"] <= 1.0


def test_identity_interval_of_a_runs_stored_outcomes():
    """The interval a report computes from a run's stored `correct`: clustered by the identities
    of the pairs the config makes (12 held out in 600 pairs), so wider than the folds' t
    interval when a few identities decide the outcome; seeded; the pairs' count checked."""
    data = apply_overrides(
        AHMConfig(),
        {
            "data.num_identities": 60,
            "data.images_per_identity": 6,
            "data.image_size": 32,
            "data.num_pairs": 600,
        },
    ).data
    run = run_data(data)
    left, right = pair_identities(data)
    assert torch.equal(left, run.faces.labels[run.pairs.left]) and len(right) == len(run.pairs)
    assert torch.equal(left == right, run.pairs.same)
    hard = left.unique()[:3]  # every pair of 3 of the 12 identities is wrong
    wrong = torch.isin(left, hard) | torch.isin(right, hard)
    correct = "".join("0" if w else "1" for w in wrong.tolist())
    clustered = identity_interval(data, correct)
    assert clustered == list(cluster_pair_interval(correct, left, right))
    assert identity_interval(data, correct) == clustered  # a rerun prints the same
    folds = torch.stack([(~wrong[run.pairs.fold == f]).double().mean() for f in range(10)])
    lo, hi = fold_interval(folds)
    assert clustered[1] - clustered[0] > 2 * (hi - lo)
    test = identity_difference(data, "1" * len(correct), correct)
    assert test["difference"] == pytest.approx(float(wrong.double().mean()))
    with pytest.raises(ValueError, match="not the same pairs"):
        identity_interval(data, correct[:-1])
