"""The common case and scoring of every attack: the split, the registry, and indices that sit at
their floor for an attack that learned nothing and at their best for a perfect one."""

from pathlib import Path

import pytest
import torch

from ahm_core.attacks import ATTACKS, Attack, Reconstructions, register
from ahm_core.cases import Case, attack_split, build_case
from ahm_core.config import AHMConfig, apply_overrides
from ahm_core.data.pairs import Pairs
from ahm_core.data.sources import load_faces, verification_split
from ahm_core.judges import Judges
from ahm_core.metrics import LPIPS
from ahm_core.metrics.privacy import score_intervals, table_scores
from ahm_core.scoring import attack_case, ceilings, score, worst_case


def test_attack_split_is_disjoint_bounded_and_seeded():
    labels = torch.arange(30).repeat_interleave(6)  # 30 identities x 6 images
    train, held = torch.arange(120), torch.arange(120, 180)
    pairs = Pairs(held[:30], held[30:], torch.zeros(30, dtype=torch.bool), torch.zeros(30))
    split = attack_split(train, labels, pairs, 25, 2, 40, seed=3)
    attacked, gallery = set(split.victims.tolist()), set(split.gallery.tolist())
    assert len(attacked) == 25 and not attacked & gallery
    assert attacked | gallery <= set(train.tolist())
    per_identity = torch.bincount(labels[split.gallery])
    assert per_identity.max() == 2 and (per_identity > 0).sum() == 20  # every training identity
    assert len(split.aux) == 40 and set(split.aux.tolist()) <= set(held.tolist())
    assert len(split.holdout) == 0
    with_holdout = attack_split(train, labels, pairs, 25, 2, 40, seed=3, holdout=8)
    assert torch.equal(with_holdout.aux, split.aux) and len(with_holdout.holdout) == 8
    assert set(with_holdout.holdout.tolist()) <= set(held.tolist()) - set(split.aux.tolist())
    again = attack_split(train, labels, pairs, 25, 2, 40, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(split, again, strict=True))
    other = attack_split(train, labels, pairs, 25, 2, 40, seed=4)
    assert not torch.equal(split.victims, other.victims)


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Case:
    cfg = apply_overrides(
        AHMConfig(),
        {
            "data.num_identities": 12,
            "data.images_per_identity": 6,
            "data.image_size": 32,
            "masking.method": "arcface",
            "attack.victims": 10,
            "attack.aux_images": 12,
            "attack.gallery_per_identity": 3,
            "attack.demix_images": 4,
        },
    )
    faces = load_faces(cfg.data)
    split = verification_split(faces.labels, cfg.data)
    folder = Path(tmp_path_factory.mktemp("case"))
    return build_case(cfg, faces, split.train, split.pairs, folder, torch.device("cpu"))


def pixels(images: torch.Tensor) -> torch.Tensor:
    """A judge that compares centred pixels."""
    flat = images.flatten(1)
    return flat - flat.mean(dim=1, keepdim=True)


JUDGES = Judges({"own": pixels}, {})


@pytest.fixture(scope="module")
def lpips() -> LPIPS:
    return LPIPS(calibrated=False)


def victims(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    items = case.victims(case.cfg.attack.victims)
    return case.images(items), case.labels(items)


def test_a_perfect_attack_scores_zero_and_reaches_the_ceiling(case, lpips):
    faces, labels = victims(case)
    result = score(Reconstructions(faces, labels, faces), case, JUDGES, lpips)
    assert result["a_lpips"]["value"] == pytest.approx(0.0, abs=1e-5)
    own = result["judges"]["own"]
    assert own["a_feat"]["value"] == pytest.approx(0.0, abs=1e-5)
    assert own["a_feat"]["floor"] > 0
    assert own["a_feat"]["gain"] == pytest.approx(own["a_feat"]["floor"], abs=1e-5)
    assert own["rank1"] == ceilings(case, JUDGES)["own"]  # untouched victims: the ceiling
    assert result["psnr"] == pytest.approx(100.0)  # identical images, capped


def test_the_mean_face_is_the_floor(case, lpips):
    faces, labels = victims(case)
    mean = case.aux_images.mean(dim=0, keepdim=True).expand_as(faces)
    result = score(Reconstructions(mean, labels, faces), case, JUDGES, lpips)
    for entry in (result["a_lpips"], result["judges"]["own"]["a_feat"]):
        assert entry["gain"] == pytest.approx(0.0, abs=1e-6)
        assert entry["ci95"][0] <= entry["value"] <= entry["ci95"][1]
        assert entry["ci95"][1] - entry["ci95"][0] > 0  # victims differ: the interval has width
    rank1 = result["judges"]["own"]["rank1"]["rank1"]  # one picture: one identity named, at most
    assert rank1 <= torch.bincount(labels).max() / len(labels)


def test_an_attack_is_one_class_and_one_registry_entry(case, lpips):
    class MeanFace(Attack):
        name, holds = "mean_face", "the auxiliary faces"

        def run(self, case: Case) -> Reconstructions:
            faces, labels = victims(case)
            mean = case.aux_images.mean(dim=0, keepdim=True).expand_as(faces)
            return Reconstructions(mean, labels, faces, panels={"original": faces, "mean": mean})

    try:
        register(MeanFace)
        with pytest.raises(ValueError, match="registered twice"):
            register(MeanFace)
        results = attack_case(case, ["mean_face", "demix"], JUDGES, lpips, log=lambda line: None)
    finally:
        ATTACKS.pop("mean_face", None)
    assert results["demix"] == {"skipped": "the defence mixes nothing"}
    assert results["mean_face"]["a_lpips"]["gain"] == pytest.approx(0.0, abs=1e-6)
    assert Path(results["mean_face"]["grid"]).is_file()


def test_reconstructions_check_their_counts():
    faces = torch.rand(3, 3, 8, 8)
    with pytest.raises(ValueError, match="3 faces but 2 labels"):
        Reconstructions(faces, torch.zeros(2), None)
    with pytest.raises(ValueError, match="3 faces but 4 targets"):
        Reconstructions(faces, torch.zeros(3), torch.rand(4, 3, 8, 8))


def test_every_registered_attack_says_what_it_holds():
    assert {"cgan", "gradient_inversion", "demix", "model_inversion"} <= set(ATTACKS)
    for name, attack in ATTACKS.items():
        assert attack.name == name and attack.holds


def test_the_readme_example_attack_runs(case, lpips):
    guide = (Path(__file__).parents[1] / "docs" / "extending.md").read_text()
    section = guide.split("## Adding an attack", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    try:
        exec(compile(code, "docs/extending.md", "exec"), {})
        results = attack_case(case, ["blurred_render"], JUDGES, lpips, log=lambda line: None)
    finally:
        ATTACKS.pop("blurred_render", None)
    blurred = results["blurred_render"]
    assert blurred["summary"] == "blurred render" and blurred["count"] == case.cfg.attack.victims
    assert 0 < blurred["a_lpips"]["value"] < blurred["a_lpips"]["floor"]  # unmasked: it beats it


def _entry(value: float, floor: float = 0.5) -> dict:
    return {
        "value": value,
        "ci95": [value - 0.1, value + 0.1],
        "floor": floor,
        "gain": floor - value,
    }


def _rate(rank1: float) -> dict:
    return {"rank1": rank1, "rank1_ci95": [0.0, 1.0], "chance": 0.1, "trials": 10}


def test_the_worst_case_takes_each_index_from_the_attack_that_leaks_most_on_it():
    attacks = {
        "cgan": {
            "a_lpips": _entry(0.4),
            "judges": {"own": {"a_feat": _entry(0.3), "rank1": _rate(0.2)}},
        },
        # Below its own floor (0.2): counts at the floor, so cgan's 0.3 is not beaten by 0.25.
        "weak": {
            "a_lpips": _entry(0.45),
            "judges": {"own": {"a_feat": _entry(0.25, 0.2), "rank1": _rate(0.6)}},
        },
        "demix": {
            "a_lpips": _entry(0.1),
            "judges": {"own": {"a_feat": _entry(0.15, 0.3), "rank1": _rate(0.1)}},
        },
        "model_inversion": {"judges": {"own": {"rank1": {"skipped": "no claimed identity"}}}},
        "skipped": {"skipped": "the defence mixes nothing"},
    }
    worst = worst_case(attacks, ["own"])
    assert worst["a_lpips"]["attack"] == "demix" and worst["a_lpips"]["value"] == 0.1
    assert worst["judges"]["own"]["a_feat"]["attack"] == "demix"
    assert worst["judges"]["own"]["rank1"]["attack"] == "weak"
    assert worst_case({"cgan": {"skipped": "why"}}, ["own"])["a_lpips"] is None


def _row(shift: float, n: int = 40, pairs: int = 200) -> dict:
    g = torch.Generator().manual_seed(int(shift * 100))
    values = {
        k: (torch.rand(n, generator=g) * 0.2 + shift)
        for k in ("m_lpips", "m_feat", "a_lpips", "a_feat")
    }
    correct = (torch.rand(pairs, generator=g) < 0.9 - shift).double()
    return {**values, "accuracy": correct, "mean_face_a_lpips": 1.0, "mean_face_a_feat": 1.0}


def test_the_score_interval_holds_the_score_and_is_seeded():
    rows = {"a": _row(0.1), "b": _row(0.3), "c": _row(0.5)}
    intervals = score_intervals(rows, seed=1, resamples=100)
    assert intervals == score_intervals(rows, seed=1, resamples=100)
    point = table_scores(
        {
            n: {k: float(v.mean()) if hasattr(v, "mean") else v for k, v in r.items()}
            for n, r in rows.items()
        }
    )
    for name, bounds in intervals.items():
        for key in ("privacy_score", "score"):
            lo, hi = bounds[key]
            assert lo <= point[name][key] + 1e-9 and point[name][key] <= hi + 1e-9, (name, key)
    # Constant values leave nothing to redraw: the interval is the point.
    flat = {
        n: {
            k: (torch.full_like(v, float(v.mean())) if hasattr(v, "mean") else v)
            for k, v in r.items()
        }
        for n, r in rows.items()
    }
    for bounds in score_intervals(flat, resamples=20).values():
        assert bounds["privacy_score"][0] == pytest.approx(bounds["privacy_score"][1])
