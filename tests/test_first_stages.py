"""The first-stage registry: every stage against its step-by-step recipe, DCTDP's budget, and the
config refusing what a stage cannot take."""

from pathlib import Path

import pytest
import torch

from ahm_core.checks import validate
from ahm_core.config import AHMConfig, ConfigError, apply_overrides
from ahm_core.data.synthetic import render_faces
from ahm_core.freq import bdct_explicit, ibdct, minmax
from ahm_core.masking import DCTDP, FIRST_STAGES, build_masking, to_gray
from ahm_core.masking.dp import laplace
from ahm_core.masking.methods import METHODS, MethodSpec

SIZE = 32
STAGE_METHOD = {spec.first_stage: m for m, spec in reversed(METHODS.items())}  # the first


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    idx = torch.arange(16)
    return render_faces(idx, idx % 4, size=SIZE, seed=3)


def stage(name: str, faces: torch.Tensor, **extra):
    cfg = apply_overrides(
        AHMConfig(),
        {"masking.method": STAGE_METHOD[name], "data.image_size": SIZE, "masking.dp_components": 8}
        | extra,
    )
    return build_masking(cfg, fit_images=faces).first_stage


def reference(name: str, s, faces: torch.Tensor, seed: int) -> torch.Tensor:
    """Each stage's recipe written out from its paper, step by step, in float64."""
    g = torch.Generator().manual_seed(seed)
    gray = to_gray(faces).double()
    if name == "rgb":
        return faces * 2 - 1
    if name == "bdct":
        return bdct_explicit(gray)
    if name == "ppfr_fd":
        return s.mask_explicit(gray, s.keys(len(faces)))
    if name == "dp":  # project, clip to the fitted range, Laplace noise, decode, clamp
        proj = ((gray.flatten(1) - s.mean) @ s.basis.T).clamp(s.low, s.high)
        noisy = proj + (s.high - s.low) / s.epsilon * laplace(tuple(proj.shape), g, "cpu")
        return (s.mean + noisy @ s.basis).clamp(0, 1).view_as(gray) * 2 - 1
    assert name == "dctdp"  # AC channels, then per channel: learnt mean + (sensitivity/eps_i) z
    coeffs = bdct_explicit(gray)[:, 1:]
    eps_i = s.epsilon * torch.softmax(s.module.logits.detach().double(), 0)
    z = laplace(tuple(coeffs.shape), g, "cpu")
    scale = (s.sensitivity / 255 / eps_i)[:, None, None]
    return coeffs + s.module.shift.detach().double()[:, None, None] + scale * z


def test_every_registered_stage_makes_some_method():
    assert set(STAGE_METHOD) == set(FIRST_STAGES)
    assert all(spec.first_stage in FIRST_STAGES for spec in METHODS.values())


@pytest.mark.parametrize("name", sorted(FIRST_STAGES))
def test_each_stage_matches_its_step_by_step_recipe(name, faces):
    s = stage(name, faces)
    if s.module is not None:  # a trained budget, not the uniform start
        with torch.no_grad():
            s.module.logits.copy_(torch.linspace(-2, 2, len(s.module.logits)))
            s.module.shift.fill_(0.01)
    out = s.encode(faces, torch.Generator().manual_seed(5))
    assert out.shape == (16, s.in_channels, SIZE, SIZE)
    expected = reference(name, s, faces, seed=5).to(out.dtype)
    # float32 through two self-normalisations (unit std): a few ulps of a channel's std become
    # up to 6e-5 here on an AVX2 EPYC, against 2e-5 where this tolerance was first set
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    diff = s.differentiable_encode(faces, torch.Generator().manual_seed(5))
    torch.testing.assert_close(diff, expected, atol=1e-4, rtol=1e-4)
    shown = s.render(out)
    assert (
        shown.shape[0] == 16 and shown.shape[1] in (1, 3) and 0 <= shown.min() <= shown.max() <= 1
    )


@pytest.mark.parametrize("name", sorted(FIRST_STAGES))
def test_the_differentiable_encode_passes_gradients_to_the_images(name, faces):
    s = stage(name, faces)
    images = faces[:4].clone().requires_grad_(True)
    s.differentiable_encode(images, torch.Generator().manual_seed(0)).square().sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "logits", [torch.zeros(63), torch.linspace(-30, 30, 63), torch.randn(63) * 1e3]
)
@pytest.mark.parametrize("epsilon", [0.5, 252.0])
def test_dctdp_allocation_sums_to_its_epsilon_whatever_the_logits(logits, epsilon):
    s = DCTDP(epsilon)
    with torch.no_grad():
        s.module.logits.copy_(logits)  # what a federated average of hostile clients could be
    allocation = s.allocation().detach()
    assert (allocation >= 0).all()
    assert float(allocation.sum()) == pytest.approx(epsilon, rel=1e-5)
    torch.testing.assert_close(s.scales(), 1.0 / 255 / allocation)


def test_dctdp_noise_follows_its_allocation(faces):
    s = DCTDP(63.0)
    with torch.no_grad():
        s.module.logits.copy_(torch.linspace(3, -3, 63))  # low channels get most of the budget
    clean = bdct_explicit(to_gray(faces).double())[:, 1:].float()
    noise = s.encode(faces, torch.Generator().manual_seed(0)) - clean
    spread = noise.abs().mean(dim=(0, 2, 3))  # E|b z| = b for unit Laplace z
    torch.testing.assert_close(spread, s.scales().detach(), rtol=0.1, atol=0)
    order = s.drop_order(faces)
    assert order[0] == 62 and order[-1] == 0  # the noisiest first: the attacker removes them


def test_dctdp_learns_its_budget_from_the_recognition_loss(faces):
    s = DCTDP(20.0)
    assert not s.encode(faces).requires_grad  # an attacker's masked faces carry no graph
    s.module.train()  # as the trainer's
    optimizer = s.optimizer()
    x = s.encode(faces, torch.Generator().manual_seed(0))
    # a recogniser that reads the first channel only: the budget should move towards it
    loss = x[:, 0].sub(bdct_explicit(to_gray(faces))[:, 1].detach()).square().mean()
    loss.backward()
    assert s.module.logits.grad is not None and s.module.logits.grad[0] < 0
    optimizer.step()
    assert s.allocation()[0] > 20.0 / 63


def test_dctdp_renders_its_channels_in_their_slots(faces):
    s = DCTDP(1e9)  # noise negligible
    coeffs = bdct_explicit(to_gray(faces))
    coeffs[:, 0] = 0
    torch.testing.assert_close(s.render(coeffs[:, 1:]), minmax(ibdct(coeffs)), atol=1e-4, rtol=0)


def test_ppfr_fd_drops_first_what_carries_no_signal(faces):
    s = stage("ppfr_fd", faces, **{"masking.channel_mixing": "none"})
    order = s.drop_order(faces)
    energy = bdct_explicit(to_gray(faces).double()).square().mean(dim=(0, 2, 3))
    sources = s.channels[s._fixed.p1][s._fixed.p2]  # masked channel -> its DCT channel
    ranked = energy[sources[order]]
    assert (ranked[1:] >= ranked[:-1]).all()  # least energy first
    assert stage("ppfr_fd", faces, **{"masking.keys": "per_image"}).drop_order(faces) is None


@pytest.mark.parametrize(
    ("overrides", "option"),
    [
        ({"masking.method": "dctdp", "masking.upsample": 3}, "masking.upsample"),
        ({"masking.method": "dctdp", "masking.dctdp_epsilon": 0}, "masking.dctdp_epsilon"),
        ({"masking.method": "dctdp", "masking.dctdp_sensitivity": -1}, "masking.dctdp_"),
        (
            {"masking.method": "ppfr_fd", "masking.channel_mixing": "mixup"},
            "masking.channel_mixing",
        ),
        ({"masking.method": "ppfr_fd", "masking.keys": "random"}, "masking.keys"),
    ],
)
def test_a_stage_refuses_a_bad_option_of_its_section(overrides, option):
    with pytest.raises(ConfigError, match=f"^{option}"):
        validate(apply_overrides(AHMConfig(), {"data.image_size": SIZE, **overrides}))


def test_the_readme_example_first_stage_becomes_a_method(faces):
    guide = (Path(__file__).parents[1] / "docs" / "extending.md").read_text()
    section = guide.split("## Adding a first stage", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    try:
        exec(compile(code, "docs/extending.md", "exec"), {})
        METHODS["low_freq_adamixup"] = MethodSpec("low_freq", "adaptive")
        cfg = apply_overrides(
            AHMConfig(), {"masking.method": "low_freq_adamixup", "data.image_size": SIZE}
        )
        pipeline = build_masking(cfg)
        batch = pipeline(faces, torch.arange(16), k=torch.full((16,), 2))
        assert batch.x.shape == (16, 9, SIZE, SIZE) and pipeline.render(batch.x).shape[1] == 1
        with pytest.raises(ConfigError, match=r"^masking\.upsample"):
            validate(apply_overrides(cfg, {"masking.upsample": 3}))
    finally:
        METHODS.pop("low_freq_adamixup", None)
        FIRST_STAGES.pop("low_freq", None)
