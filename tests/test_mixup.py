import pytest
import torch

from ahm_core.masking import instahide, mixup
from ahm_core.masking.mixup import mix_coefficients


def batch(n=32, shape=(4, 5, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)


def check_mixed(mixed, x, labels, ks, max_coef):
    n, width = mixed.coefs.shape
    assert width == int(ks.max())
    assert mixed.labels.shape == (n, width) and mixed.index.shape == (n, width)
    torch.testing.assert_close(mixed.coefs.sum(dim=1), torch.ones(n))
    assert mixed.coefs.max().item() <= max_coef + 1e-6
    beyond = torch.arange(width)[None, :] >= ks[:, None]
    assert (mixed.coefs[beyond] == 0).all() and (mixed.coefs[~beyond] > 0).all()
    torch.testing.assert_close(mixed.index[:, 0], torch.arange(n))
    torch.testing.assert_close(mixed.labels, labels[mixed.index])
    expected = (mixed.coefs[:, :, None, None, None] * x[mixed.index]).sum(dim=1)
    torch.testing.assert_close(mixed.x, expected)


@pytest.mark.parametrize("k", [2, 3, 6])
def test_fixed_k(k):
    x, labels = batch()
    mixed = mixup(x, labels, k, 0.55, torch.Generator().manual_seed(1))
    check_mixed(mixed, x, labels, torch.full((32,), k), 0.55)
    # Each extra column is a permutation of the batch.
    for j in range(1, k):
        assert sorted(mixed.index[:, j].tolist()) == list(range(32))


def test_per_sample_k():
    x, labels = batch()
    ks = torch.randint(2, 6, (32,), generator=torch.Generator().manual_seed(2))
    mixed = mixup(x, labels, ks, 0.55, torch.Generator().manual_seed(3))
    check_mixed(mixed, x, labels, ks, 0.55)


def test_k2_with_tight_max_coef_terminates():
    # Only about one draw in ten passes for k=2 at 0.55: failing rows must be redrawn alone.
    coefs = mix_coefficients(torch.full((4096,), 2), 0.55, torch.Generator().manual_seed(0))
    assert coefs.max().item() <= 0.55 and coefs.min().item() >= 0.45


def test_generator_makes_it_reproducible():
    x, labels = batch()
    a = mixup(x, labels, 3, generator=torch.Generator().manual_seed(9))
    b = mixup(x, labels, 3, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=0)
    c = mixup(x, labels, 3, generator=torch.Generator().manual_seed(10))
    assert not torch.equal(a.index, c.index)


def test_instahide_flips_signs_of_the_mixup():
    x, labels = batch(64, (3, 8, 8))
    mixed = mixup(x, labels, 2, generator=torch.Generator().manual_seed(4))
    hidden = instahide(x, labels, 2, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(hidden.coefs, mixed.coefs)
    torch.testing.assert_close(hidden.x.abs(), mixed.x.abs())
    flipped = (hidden.x != mixed.x).float().mean().item()
    assert 0.45 < flipped < 0.55


@pytest.mark.parametrize(
    ("k", "max_coef", "phrase"),
    [
        (40, 0.55, "every k must be in \\[1, batch size 32\\]"),
        (0, 0.55, "every k must be in"),
        (2, 0.5, "max_coef must be in \\(1/2, 1\\]"),
        (3, 1.2, "max_coef must be in"),
        (torch.full((31,), 2), 0.55, "shape \\[32\\]"),
    ],
)
def test_bad_arguments(k, max_coef, phrase):
    x, labels = batch()
    with pytest.raises(ValueError, match=phrase):
        mixup(x, labels, k, max_coef)
