import pytest
import torch

from ahm_core.config import AHMConfig, apply_overrides
from ahm_core.data.synthetic import render_faces
from ahm_core.masking import EigenfaceDP, build_masking, first_stage_of, to_gray
from ahm_core.masking.methods import METHODS
from ahm_core.masking.pipeline import FIT_IMAGES, fit_items

SIZE = 48


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    idx = torch.arange(12)
    return render_faces(idx, idx, size=SIZE, seed=1)


@pytest.fixture(scope="module")
def fit_images() -> torch.Tensor:
    idx = torch.arange(100, 300)
    return render_faces(idx, idx % 7, size=SIZE, seed=1)


def config(method: str, **extra) -> AHMConfig:
    return apply_overrides(
        AHMConfig(), {"masking.method": method, "data.image_size": SIZE, **extra}
    )


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_table_row_builds_training_tensors(method, images, fit_images):
    pipeline = build_masking(config(method), fit_images=fit_images)
    labels = torch.arange(12)
    k = torch.tensor([2, 3, 4, 5] * 3) if METHODS[method].batch_mix == "adaptive" else None
    out = pipeline(images, labels, k=k, generator=torch.Generator().manual_seed(0))
    assert out.x.shape == (12, pipeline.in_channels, SIZE, SIZE)
    assert torch.isfinite(out.x).all()
    torch.testing.assert_close(out.coefs.sum(dim=1), torch.ones(12))
    width = {None: 1, "mixup": 2, "instahide": 2, "adaptive": 5}[METHODS[method].batch_mix]
    assert out.labels.shape == (12, width)
    shown = pipeline.render(out.x)
    assert shown.shape[0] == 12 and shown.shape[-2:] == (SIZE, SIZE)
    assert shown.min().item() >= 0.0 and shown.max().item() <= 1.0


def test_unmixed_methods_keep_labels_with_weight_one(images):
    out = build_masking(config("ppfr_fd"))(images, torch.arange(12) + 5)
    torch.testing.assert_close(out.labels[:, 0], torch.arange(12) + 5)
    assert (out.coefs == 1).all()


def test_encode_of_test_images_uses_the_training_key(images):
    pipeline = build_masking(config("masking_mixup"))
    encoded = pipeline.encode(images)
    torch.testing.assert_close(encoded, pipeline.first_stage.mask(to_gray(images)), rtol=0, atol=0)


def test_adaptive_needs_k_and_fixed_refuses_it(images):
    labels = torch.arange(12)
    with pytest.raises(ValueError, match="per-sample k chosen by the policy"):
        build_masking(config("masking_adamixup"))(images, labels)
    with pytest.raises(ValueError, match="do not pass k"):
        build_masking(config("masking_mixup"))(images, labels, k=torch.full((12,), 3))


def test_dp_needs_fit_images():
    with pytest.raises(ValueError, match=r"masking\.method=dp: pass fit_images"):
        build_masking(config("dp"))


def test_dp_noise_shrinks_as_epsilon_grows(images, fit_images):
    gray, fit = to_gray(images), to_gray(fit_images)
    errors = []
    for eps in (0.5, 3.0, 1e4):
        dp = EigenfaceDP(components=64, epsilon=eps).fit(fit)
        out = dp(gray, torch.Generator().manual_seed(0))
        errors.append((out - gray).pow(2).mean().item())
    assert errors[0] > errors[1] > errors[2]
    # With negligible noise the output is the 64-eigenface reconstruction: close to the input.
    assert errors[2] < 0.01


def test_dp_refuses_unfitted_use_and_other_sizes(images, fit_images):
    with pytest.raises(RuntimeError, match="call fit"):
        EigenfaceDP()(to_gray(images))
    dp = EigenfaceDP(components=8).fit(to_gray(fit_images))
    with pytest.raises(ValueError, match="fitted on"):
        dp(torch.rand(2, 1, 32, 32))


def test_dp_fits_its_eigenfaces_on_images_of_every_identity():
    labels = torch.arange(300).repeat_interleave(20)  # a folder's order: person by person
    train = torch.arange(len(labels))
    chosen = fit_items(train, seed=0)
    assert len(chosen) == FIT_IMAGES and len(labels[chosen].unique()) == 300
    assert len(labels[train[:FIT_IMAGES]].unique()) == 103  # what the first 2,048 span
    assert torch.equal(fit_items(train[:100], seed=0), train[:100])  # fewer: all of them


@pytest.mark.parametrize("method", sorted(METHODS))
def test_indices_compare_with_what_the_masking_saw(method):
    cfg = apply_overrides(AHMConfig(), {"masking.method": method, "data.image_size": 32})
    fit = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    pipeline = build_masking(cfg, fit_images=fit if first_stage_of(cfg).fitted else None)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    seen = pipeline.seen(images)
    if METHODS[method].first_stage == "rgb":
        assert torch.equal(seen, images)  # the masking saw colour: compare with colour
    else:
        assert torch.equal(seen, to_gray(images).expand(-1, 3, -1, -1))  # it never saw colour
