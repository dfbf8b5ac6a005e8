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
from ahm_core.scoring import attack_case, ceilings, score


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
