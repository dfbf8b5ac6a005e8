"""The standard benchmarks: an InsightFace `.bin` scored on its own pairs in InsightFace's folds,
and TAR@FAR as InsightFace's `calculate_val` computes it, against hand computations."""

from __future__ import annotations

import io
import pickle

import pytest
import torch
from PIL import Image
from scales import NODES, ONE_ROUND, TRAIN, config

from ahm_core.config import AHMConfig, apply_overrides
from ahm_core.data.benchmarks import insightface_folds, load_benchmark
from ahm_core.data.synthetic import SynthFaces
from ahm_core.evaluate import evaluate_verification, tar_at_far_folds
from ahm_core.experiment import run_centralized
from ahm_core.masking import build_masking
from ahm_core.models import build_backbone
from simulations.local import run_local


def _png(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def write_bin(path, faces: SynthFaces, pairs: list[tuple[int, int]]) -> list[bool]:
    """A verification .bin as InsightFace stores one: encoded images, two per pair, and issame."""
    same = [bool(faces.labels[a] == faces.labels[b]) for a, b in pairs]
    images = [_png(faces.images_uint8([i])[0]) for pair in pairs for i in pair]
    path.write_bytes(pickle.dumps((images, same), protocol=4))
    return same


@pytest.fixture(scope="module")
def synthetic_bin(tmp_path_factory):
    faces = SynthFaces(num_identities=30, images_per_identity=4, size=32, seed=7)
    g = torch.Generator().manual_seed(0)
    pairs = [(4 * p, 4 * p + 1 + int(torch.randint(3, (1,), generator=g))) for p in range(30)]
    pairs += [(4 * p, 4 * ((p + 1) % 30) + 2) for p in range(30)]
    path = tmp_path_factory.mktemp("bins") / "synth_lfw.bin"
    return path, faces, pairs, write_bin(path, faces, pairs)


def test_folds_are_contiguous_as_scikit_learn_kfold_makes_them():
    assert insightface_folds(6000).bincount().tolist() == [600] * 10
    folds = insightface_folds(605)
    assert folds.bincount().tolist() == [61] * 5 + [60] * 5
    assert torch.equal(folds, folds.sort().values)  # no shuffle


def test_a_bin_is_scored_on_its_own_pairs(synthetic_bin):
    path, faces, pairs, same = synthetic_bin
    bench = load_benchmark(path, size=32, max_pixels=10**6)
    assert bench.name == "synth_lfw" and len(bench.pairs) == 60
    assert bench.pairs.left.tolist() == list(range(0, 120, 2))
    assert torch.equal(bench.pairs.right, bench.pairs.left + 1)
    assert bench.pairs.same.tolist() == same and bench.pairs.fold.tolist() == [
        p // 6 for p in range(60)
    ]
    originals = faces.images_uint8([i for pair in pairs for i in pair])
    assert torch.equal(bench.faces.images_uint8(torch.arange(120)), originals)  # PNG: lossless


def test_tar_at_far_per_fold_by_hand():
    dist = [0.1, 0.32, 0.5, 0.7, 0.2, 0.05, 0.29, 0.31, 0.2, 0.6, 0.9, 0.25]
    dist = torch.tensor(dist, dtype=torch.float64)
    same = torch.tensor([0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 1], dtype=torch.bool)
    fold = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    report = tar_at_far_folds(dist, same, fold, far=0.25)
    # Fold 0 is judged by fold 1's negatives (0.29, 0.31): FAR is 0 up to 0.290 and 0.5 from
    # 0.291 to 0.310, so FAR 0.25 is half-way: threshold 0.300. Under it: positives 0.2 and
    # 0.05 (TAR 1), negative 0.1 of 4 (FAR 1/4).
    # Fold 1 is judged by fold 0's negatives (0.1, 0.32, 0.5, 0.7): FAR is 0.25 from 0.101 to
    # 0.320, taken at the run's last threshold, 0.320. Under it: positives 0.2 and 0.25 of 4
    # (TAR 1/2), negatives 0.29 and 0.31 of 2 (FAR 1).
    tar, far = [1.0, 0.5], [0.25, 1.0]
    assert report["mean"] == pytest.approx(sum(tar) / 2)
    assert report["std"] == pytest.approx(abs(tar[0] - tar[1]) / 2)
    assert report["far"] == pytest.approx(sum(far) / 2)
    assert tar_at_far_folds(dist, same, fold, far=1.5)["mean"] == 0.0  # never reached: 0


def test_a_run_scores_every_bin_after_every_epoch(synthetic_bin, tmp_path):
    path = synthetic_bin[0]
    cfg = apply_overrides(
        AHMConfig(),
        {**TRAIN, "masking.method": "ppfr_fd", "train.epochs": 1, "data.verification": str(path)},
    )
    metrics = run_centralized(cfg, tmp_path)
    report = metrics["benchmarks"]["synth_lfw"]
    assert metrics["history"][0]["benchmarks"]["synth_lfw"] == report
    assert report["pairs"] == 60 and set(report["tar_at_far_1e-3_folds"]) == {"mean", "std", "far"}
    # The same figure from the saved model, scored directly: the run reports what it measured.
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    masking = build_masking(cfg)
    model = build_backbone(cfg.model, masking.in_channels, cfg.data.image_size)
    model.load_state_dict(state["backbone"])
    bench = load_benchmark(path, cfg.data.image_size, cfg.data.max_pixels)
    direct = evaluate_verification(model, bench.faces, bench.pairs, masking.encode)
    assert direct["accuracy"] == report["accuracy"]


def test_a_federation_scores_every_bin_after_every_round(synthetic_bin, tmp_path):
    cfg = apply_overrides(config(ONE_ROUND), {"data.verification": str(synthetic_bin[0])})
    summary = run_local(cfg, tmp_path, NODES)
    assert [sorted(r["benchmarks"]) for r in summary["rounds"]] == [["synth_lfw"]] * 2
    assert summary["final_benchmarks"] == summary["rounds"][-1]["benchmarks"]
    assert summary["final_benchmarks"]["synth_lfw"]["pairs"] == 60
