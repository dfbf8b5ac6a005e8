import math

import pytest
import torch

from ahm_core.freq import bdct, bdct_explicit, dct_matrix, fused_kernel, ibdct


def test_dct_matrix_is_orthonormal():
    d = dct_matrix()
    torch.testing.assert_close(d @ d.T, torch.eye(8, dtype=torch.float64))
    assert d[0, 0].item() == pytest.approx(1 / math.sqrt(8))


def test_fused_equals_explicit_float32_at_112():
    x = torch.rand(4, 1, 112, 112, generator=torch.Generator().manual_seed(0))
    fused, explicit = bdct(x), bdct_explicit(x)
    assert fused.shape == (4, 64, 112, 112)
    assert (fused - explicit).abs().max().item() < 1e-4


SIZES = [(112, 112), (40, 56), (37, 53), (8, 16)]
VALID = [(u, s) for u in (1, 2, 4, 8) for s in SIZES if s[0] % (8 // u) == s[1] % (8 // u) == 0]


@pytest.mark.parametrize(("upsample", "size"), VALID)
def test_fused_equals_explicit_and_round_trips(upsample, size):
    x = torch.rand(3, 1, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    coeffs = bdct(x, upsample)
    assert coeffs.shape == (3, 64, size[0] * upsample // 8, size[1] * upsample // 8)
    torch.testing.assert_close(coeffs, bdct_explicit(x, upsample), rtol=0, atol=1e-12)
    torch.testing.assert_close(ibdct(coeffs, upsample), x, rtol=0, atol=1e-10)


def test_channel_layout_is_dct_basis_of_each_block():
    # With upsample=1 the transform is the plain 8x8 block DCT: check one block by hand.
    x = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    d = dct_matrix()
    block = x[0, 0, 8:16, 0:8]
    expected = (d @ block @ d.T).reshape(64)
    torch.testing.assert_close(bdct(x, 1)[0, :, 1, 0], expected)


def test_bdct_of_a_constant_image_is_pure_dc():
    coeffs = bdct(torch.full((1, 1, 24, 24), 0.5, dtype=torch.float64))
    assert coeffs[:, 1:].abs().max().item() < 1e-12
    torch.testing.assert_close(coeffs[:, 0], torch.full((1, 24, 24), 4.0, dtype=torch.float64))


def test_frequency_four_vanishes_after_bilinear_x8():
    # A documented property the masking relies on: 15 channels are identically zero at u=8.
    rows = fused_kernel(8, dtype=torch.float64).flatten(1).abs().sum(1)
    zero = {c for c in range(64) if c // 8 == 4 or c % 8 == 4}
    assert all(rows[c] < 1e-12 for c in zero)
    assert all(rows[c] > 1e-6 for c in set(range(64)) - zero)


def test_bfloat16_is_close_to_float32():
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    half = bdct(x.bfloat16())
    assert half.dtype == torch.bfloat16
    assert (half.float() - bdct(x)).abs().max().item() < 0.05
    back = ibdct(half)
    assert back.dtype == torch.bfloat16
    assert (back.float() - x).abs().max().item() < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    x = torch.rand(2, 1, 112, 112)
    torch.testing.assert_close(bdct(x.cuda()).cpu(), bdct(x), atol=1e-4, rtol=0)
    torch.testing.assert_close(ibdct(bdct(x.cuda())).cpu(), x, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("x", "phrase"),
    [
        (torch.rand(1, 112, 112), "expected a tensor \\[N, C, H, W\\]"),
        (torch.rand(2, 3, 16, 16), "expected 1 channel"),
        (torch.zeros(1, 1, 16, 16, dtype=torch.long), "floating-point"),
        (torch.full((1, 1, 16, 16), float("nan")), "NaN or Inf"),
    ],
)
def test_bad_input_gives_one_clear_error(x, phrase):
    with pytest.raises(ValueError, match=phrase):
        bdct(x)


def test_bad_sizes_and_factors_are_refused():
    with pytest.raises(ValueError, match="divisible by 8/upsample = 2"):
        bdct(torch.rand(1, 1, 15, 16), upsample=4)
    with pytest.raises(ValueError, match="upsample must be one of"):
        bdct(torch.rand(1, 1, 16, 16), upsample=3)
    with pytest.raises(ValueError, match="expected 64 channel"):
        ibdct(torch.rand(1, 63, 4, 4))
