import pytest
import torch

from ahm_core.data.synthetic import render_faces
from ahm_core.freq import bdct, ibdct, minmax
from ahm_core.masking import PPFRFD, Keys, to_gray
from ahm_core.masking.ppfr_fd import zigzag_channels


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    idx = torch.arange(6)
    return to_gray(render_faces(idx, idx, size=112, seed=3))


def zero_outputs(m: PPFRFD, keys: Keys) -> list[set[int]]:
    """Output channels that are identically zero: both mixed inputs come from a channel with a
    frequency index 4, which bilinear x8 upsampling never produces."""
    dead = torch.tensor([c // 8 == 4 or c % 8 == 4 for c in m.channels.tolist()])
    c = m.num_channels
    result = []
    for p1, p2 in zip(keys.p1, keys.p2, strict=True):
        after_mix = dead[p1] & dead[p1.roll(-1)]
        result.append(set(torch.nonzero(after_mix[p2]).flatten().tolist()))
    assert all(len(r) < c for r in result)
    return result


def test_zigzag_order():
    assert zigzag_channels(5) == sorted([1, 8, 16, 9, 2])
    assert zigzag_channels(63) == list(range(1, 64))
    with pytest.raises(ValueError, match="num_channels"):
        zigzag_channels(64)


@pytest.mark.parametrize("num_channels", [63, 36])
def test_fused_matches_the_explicit_recipe(faces, num_channels):
    m = PPFRFD(num_channels=num_channels, key_seed=5)
    keys = m.keys(len(faces))
    fused = m.mask(faces, keys)
    oracle = m.mask_explicit(faces.double(), keys)
    assert fused.shape == (6, num_channels, 112, 112)
    assert (fused.double() - oracle).abs().max().item() < 1e-2


def test_each_channel_is_self_normalised(faces):
    m = PPFRFD(key_seed=1)
    keys = m.keys(len(faces))
    out = m.mask(faces, keys).double()
    mean, std = out.mean(dim=(2, 3)), out.std(dim=(2, 3), unbiased=False)
    assert mean.abs().max().item() < 1e-4
    for i, dead in enumerate(zero_outputs(m, keys)):
        for c in range(m.num_channels):
            expected = 0.0 if c in dead else 1.0
            assert std[i, c].item() == pytest.approx(expected, abs=2e-3)


def test_fixed_keys_are_deterministic_and_secret(faces):
    a = PPFRFD(key_seed=7).mask(faces)
    torch.testing.assert_close(PPFRFD(key_seed=7).mask(faces), a, rtol=0, atol=0)
    other = PPFRFD(key_seed=8).mask(faces)
    assert (other - a).abs().mean().item() > 0.3


def test_per_image_keys_differ_between_images_and_follow_the_generator(faces):
    m = PPFRFD(keys="per_image")
    twice = torch.cat([faces[:1], faces[:1]])
    out = m.mask(twice, generator=torch.Generator().manual_seed(0))
    assert (out[0] - out[1]).abs().mean().item() > 0.3
    again = m.mask(twice, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, out, rtol=0, atol=0)


def test_mask_on_real_faces(orl_gray):
    m = PPFRFD()
    keys = m.keys(len(orl_gray))
    fused = m.mask(orl_gray, keys)
    assert fused.shape == (40, 63, 112, 92)
    assert (fused.double() - m.mask_explicit(orl_gray.double(), keys)).abs().max().item() < 1e-2
    torch.testing.assert_close(ibdct(bdct(orl_gray)), orl_gray, atol=1e-4, rtol=0)


def test_bfloat16_follows_float32(faces):
    m = PPFRFD()
    half = m.mask(faces.bfloat16())
    assert half.dtype == torch.bfloat16
    assert (half.float() - m.mask(faces)).abs().mean().item() < 0.02


def test_render_puts_channels_in_their_slots(faces):
    m = PPFRFD(num_channels=36)
    coeffs = bdct(faces)
    shown = m.render(coeffs[:, m.channels])
    kept = torch.zeros_like(coeffs)
    kept[:, m.channels] = coeffs[:, m.channels]
    torch.testing.assert_close(shown, minmax(ibdct(kept)), atol=1e-5, rtol=0)
    rendered = m.render(m.mask(faces))
    assert rendered.shape == faces.shape
    assert rendered.min().item() >= 0.0 and rendered.max().item() <= 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(faces):
    m = PPFRFD()
    torch.testing.assert_close(m.mask(faces.cuda()).cpu(), m.mask(faces), atol=1e-3, rtol=0)


def test_bad_input_is_refused(faces):
    m = PPFRFD()
    with pytest.raises(ValueError, match="expected a tensor"):
        m.mask(faces[0])
    bad = faces.clone()
    bad[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        m.mask(bad)
    with pytest.raises(ValueError, match="expected 63 channel"):
        m.render(torch.rand(1, 62, 8, 8))
    with pytest.raises(ValueError, match="keys must be"):
        PPFRFD(keys="random")


@pytest.mark.parametrize(("upsample", "size"), [(8, (37, 53)), (4, (38, 52)), (2, (36, 52))])
def test_odd_sizes_and_other_upsampling(upsample, size):
    gray = torch.rand(3, 1, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    m = PPFRFD(upsample=upsample)
    keys = m.keys(3)
    out = m.mask(gray, keys)
    assert out.shape == (3, 63, size[0] * upsample // 8, size[1] * upsample // 8)
    torch.testing.assert_close(out, m.mask_explicit(gray, keys), atol=1e-6, rtol=0)
    assert m.render(out).shape == gray.shape
