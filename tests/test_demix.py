"""White-box demixing on toy mixes, and PPFR-FD inversion with and without the keys."""

from collections.abc import Callable

import pytest
import torch

from ahm_core.attacks import (
    DemixOptions,
    demix,
    invert_ppfr,
    ppfr_forward,
    recover_components,
    recovery_report,
    remove_plane,
    similarity_graph,
)
from ahm_core.attacks.demix import KeylessDemixing
from ahm_core.cases import build_case
from ahm_core.config import AHMConfig, apply_overrides
from ahm_core.data.sources import load_faces, verification_split
from ahm_core.data.synthetic import render_faces
from ahm_core.masking import PPFRFD, build_masking, instahide, mixup, to_gray
from ahm_core.masking.mixup import Mixed

MixFn = Callable[..., Mixed]


def mix_epochs(
    x: torch.Tensor, epochs: int, batch: int, mix: MixFn, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encodings of `x` mixed as in training, each epoch a new shuffle into batches, with the
    items that went into each encoding's slots: every item lands in about 2 * epochs encodings."""
    g = torch.Generator().manual_seed(seed)
    encodings, sources = [], []
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for ids in order.split(batch):
            mixed = mix(x[ids], ids, g)
            encodings.append(mixed.x)
            sources.append(ids[mixed.index])
    return torch.cat(encodings), torch.cat(sources)


def gaussian_items(n: int, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def two_mix(fn: MixFn) -> MixFn:
    return lambda x, labels, g: fn(x, labels, 2, generator=g)


def test_demix_recovers_the_components_of_2_mixes():
    items = gaussian_items(32, (4, 8, 8))
    encodings, sources = mix_epochs(items, epochs=3, batch=16, mix=two_mix(mixup))
    result = demix(encodings, k=2)
    report = recovery_report(result.components, items, threshold=0.9)
    assert report["fraction"] >= 0.9
    # The threshold means something: only an item mixed with itself passes as an encoding.
    copies = int((sources[:, 0] == sources[:, 1]).sum())
    assert recovery_report(encodings, items, threshold=0.9)["recovered"] <= copies
    # The cliques are right: an encoding's recovered components are its items (an item whose
    # clique split in two comes back twice, so match each component to its closest item).
    p = len(result.components)
    corr = torch.corrcoef(torch.cat([result.components.flatten(1), items.flatten(1)]))[:p, p:]
    closest = corr.argmax(dim=1)
    right = [
        set(s.tolist()) <= set(closest[row].tolist())
        for row, s in zip(result.assignment, sources, strict=True)
    ]
    assert sum(right) >= 0.9 * len(right)


def test_sign_robust_fit_beats_the_naive_instahide_attack():
    items = gaussian_items(32, (4, 16, 16))
    encodings, _ = mix_epochs(items, epochs=4, batch=16, mix=two_mix(instahide))
    result = demix(encodings, k=2, mode="instahide")
    robust = recovery_report(result.components.abs(), items.abs(), threshold=0.9)
    naive_options = DemixOptions(sign_rounds=0)  # least squares on the magnitudes only
    naive, _ = recover_components(encodings, result.assignment, "instahide", options=naive_options)
    baseline = recovery_report(naive.abs(), items.abs(), threshold=0.9)
    assert robust["fraction"] >= 0.8
    assert baseline["fraction"] <= 0.5
    assert robust["mean_similarity"] > baseline["mean_similarity"] + 0.05
    # Signs too, up to the one sign per element that the attack cannot see.
    matched = result.components[robust["match"]]
    shared = torch.sign((items * matched).sum(dim=0))
    assert recovery_report(matched * shared, items, threshold=0.9)["fraction"] >= 0.8


def test_known_assignment_with_unknown_coefficients():
    items = gaussian_items(24, (64,), seed=1)
    encodings, sources = mix_epochs(items, epochs=2, batch=12, mix=two_mix(mixup), seed=1)
    components, coefs = recover_components(encodings, sources)
    report = recovery_report(components, items, threshold=0.99)
    assert report["match"] == list(range(24))  # ids are the items themselves
    assert report["recovered"] == 24
    torch.testing.assert_close(coefs.sum(dim=1), torch.ones(len(coefs)))


def test_similarity_separates_encodings_that_share_an_item():
    items = gaussian_items(16, (256,), seed=2)
    encodings, sources = mix_epochs(items, epochs=2, batch=8, mix=two_mix(mixup), seed=2)
    sim = similarity_graph(encodings)
    member = torch.zeros(len(encodings), len(items))
    member[torch.arange(len(encodings))[:, None], sources] = 1.0
    share = (member @ member.T > 0).fill_diagonal_(False)
    other = ~share & ~torch.eye(len(encodings), dtype=torch.bool)
    assert sim[share].min() > sim[other].max()


@pytest.fixture(scope="module")
def faces32() -> torch.Tensor:
    idx = torch.arange(4)
    return to_gray(render_faces(idx, idx, size=32, seed=1))


def test_ppfr_forward_is_the_masking(faces32):
    ppfr = PPFRFD(key_seed=3)
    keys = ppfr.keys(len(faces32))
    oracle = ppfr.mask_explicit(faces32.double(), keys)
    torch.testing.assert_close(ppfr_forward(faces32.double(), ppfr, keys), oracle)


@pytest.mark.parametrize("num_channels", [63, 36])
def test_keys_invert_ppfr_fd(faces32, num_channels):
    ppfr = PPFRFD(num_channels, key_seed=3)
    masked = ppfr.mask(faces32, ppfr.keys(len(faces32)))
    truth = remove_plane(faces32)
    right = recovery_report(invert_ppfr(masked, ppfr, ppfr.keys(4), steps=60), truth)
    wrong_keys = PPFRFD(num_channels, key_seed=4).keys(4)
    wrong = recovery_report(invert_ppfr(masked, ppfr, wrong_keys, steps=60), truth)
    naive = recovery_report(remove_plane(ppfr.render(masked)), truth)
    assert right["match"] == [0, 1, 2, 3]
    assert min(right["similarity"]) > 0.98
    assert max(wrong["similarity"]) < min(right["similarity"]) - 0.05
    assert max(naive["similarity"]) < min(right["similarity"]) - 0.3


def test_demix_then_invert_recovers_faces():
    n = 24  # with fewer faces, removing their mean anti-correlates them too much to cluster
    idx = torch.arange(n)
    faces = render_faces(idx, torch.zeros(n, dtype=torch.long), size=32, seed=2)
    cfg = apply_overrides(AHMConfig(), {"masking.method": "masking_mixup", "mixup.k": 2})
    pipeline = build_masking(cfg)
    encodings, _ = mix_epochs(
        pipeline.encode(faces), epochs=3, batch=12, mix=lambda x, y, g: pipeline.mix(x, y, None, g)
    )
    result = demix(encodings, k=2)
    keys = pipeline.first_stage.keys(
        len(result.components)
    )  # the fixed key, known to this attacker
    images = invert_ppfr(result.components, pipeline.first_stage, keys, steps=40)
    report = recovery_report(images, remove_plane(to_gray(faces)), threshold=0.9)
    assert report["fraction"] >= 0.9


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        similarity_graph(torch.zeros(3, 4), mode="cutmix")
    with pytest.raises(ValueError, match="min_link"):
        DemixOptions(min_link=0.0)
    with pytest.raises(ValueError, match="assignment"):
        recover_components(torch.zeros(3, 4), torch.zeros(2, 2, dtype=torch.long))


def demix_case(tmp_path, method: str, proportions=None, **extra):
    overrides = {
        "data.num_identities": 40,
        "data.images_per_identity": 4,
        "data.image_size": 32,
        "masking.method": method,
        "attack.victims": 24,
        "attack.aux_images": 8,
        "attack.gallery_per_identity": 1,
        "attack.demix_images": 24,
        **extra,
    }
    cfg = apply_overrides(AHMConfig(), overrides)
    faces = load_faces(cfg.data)
    split = verification_split(faces.labels, cfg.data)
    return build_case(
        cfg, faces, split.train, split.pairs, tmp_path, torch.device("cpu"), proportions
    )


def test_the_demixing_attack_mixes_at_the_defence_s_k_and_gets_less_from_larger_k(tmp_path):
    """Keyless: the same mixing and demixing as `demix`, without the minutes of key inversion."""
    found = {}
    for k in (2, 6):
        case = demix_case(tmp_path / str(k), "masking_mixup", **{"mixup.k": k})
        figures = KeylessDemixing().run(case).figures
        assert figures["mixes_per_k"] == {k: 24 * 3}  # 3 rounds of the 24 images, all at k
        found[k] = figures["components_recovered"]
    # Seen: 23 of 24 components at k = 2, 6 at k = 6 (3 mixes per image).
    assert found[2] >= 20 and found[6] < found[2] / 2
    # The adaptive method mixes at the policy's measured shares, each mix's k known.
    case = demix_case(tmp_path / "ada", "masking_adamixup", {2: 0.5, 6: 0.5})
    figures = KeylessDemixing().run(case).figures
    assert set(figures["mixes_per_k"]) == {2, 6} and sum(figures["mixes_per_k"].values()) == 72
