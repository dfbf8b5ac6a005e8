import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ahm_core.attacks import CGANAttack, CGANOptions, UnetGenerator, attack_data, unet_levels
from ahm_core.cases import dominant_sources, mask_for_attack, sample_ks
from ahm_core.config import AHMConfig, apply_overrides
from ahm_core.data.synthetic import SynthFaces
from ahm_core.masking import build_masking
from ahm_core.plots import LABEL_WIDTH, save_grid

SIZE = 32
AUX_IDS, VICTIM_IDS, PER_ID = 40, 10, 8
SMALL = CGANOptions(ngf=16, ndf=16)


@pytest.fixture(scope="module")
def faces() -> tuple[torch.Tensor, torch.Tensor]:
    """[400, 3, 32, 32] synthetic faces and their identities (aux 0..39, victims 40..49)."""
    synth = SynthFaces(AUX_IDS + VICTIM_IDS, PER_ID, size=SIZE, seed=0)
    return synth.images_uint8(torch.arange(len(synth))).float() / 255.0, synth.labels


def pipeline(method: str):
    return build_masking(apply_overrides(AHMConfig(), {"masking.method": method}))


def small_attack(in_channels: int = 3, seed: int = 0) -> CGANAttack:
    return CGANAttack(in_channels, SIZE, options=CGANOptions(ngf=8, ndf=8, seed=seed))


@pytest.mark.parametrize(
    ("channels", "size", "masked_size", "out_channels", "levels"),
    [
        (63, 32, 32, 3, 4),  # PPFR-FD
        (64, 48, 24, 3, 4),  # block DCT with upsample 4: the input is resized to the face
        (3, 64, 64, 1, 5),
        (1, 112, 112, 3, 5),  # 112 -> ... -> 7 -> 3: odd sizes come back through the decoder
        (63, 112, 14, 3, 5),  # upsample 1
    ],
)
def test_reconstructions_have_the_face_shape_and_range(
    channels, size, masked_size, out_channels, levels
):
    attack = CGANAttack(channels, size, out_channels, SMALL)
    assert attack.levels == levels
    masked = torch.randn(3, channels, masked_size, masked_size) * 5.0
    out = attack.reconstruct(masked, batch_size=2)
    assert out.shape == (3, out_channels, size, size)
    assert torch.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_training_step_runs_at_a_size_that_is_not_a_power_of_two(norm):
    attack = CGANAttack(64, 48, 3, CGANOptions(ngf=8, ndf=8, norm=norm, gan_mode="lsgan"))
    history = attack.fit(torch.randn(4, 64, 24, 24), torch.rand(4, 3, 48, 48), 1, batch_size=2)
    assert attack.steps == 2 and len(history) == 1
    assert all(torch.isfinite(torch.tensor(v)) for v in history[0].values())


def test_unet_levels_keep_a_bottleneck_of_two_pixels_and_respect_the_cap():
    assert [unet_levels(s, s) for s in (8, 32, 48, 64, 112, 256)] == [2, 4, 4, 5, 5, 7]
    assert unet_levels(256, 256, max_downs=6) == 6
    assert unet_levels(112, 40) == 4
    with pytest.raises(ValueError, match="needs >= 2 levels"):
        unet_levels(7, 7)


def test_dropout_sits_in_the_decoder_levels_above_the_bottleneck_as_in_pix2pix():
    def dropouts(net: nn.Module) -> int:
        return sum(isinstance(m, nn.Dropout) for m in net.modules())

    assert dropouts(UnetGenerator(3, 3, 8, ngf=4)) == 3  # pix2pix's unet_256
    assert dropouts(UnetGenerator(3, 3, 4, ngf=4)) == 2
    assert dropouts(UnetGenerator(3, 3, 8, ngf=4, use_dropout=False)) == 0


def test_options_and_sizes_are_checked():
    with pytest.raises(ValueError, match="n_layers_d=4"):
        CGANAttack(3, 32, options=CGANOptions(n_layers_d=4))
    with pytest.raises(ValueError, match="gan_mode"):
        CGANOptions(gan_mode="wgan")
    attack = small_attack()
    with pytest.raises(ValueError, match="masked: expected"):
        attack.reconstruct(torch.zeros(1, 4, SIZE, SIZE))
    with pytest.raises(ValueError, match="targets: expected"):
        attack.fit(torch.zeros(2, 3, SIZE, SIZE), torch.zeros(2, 3, 16, 16))


def test_cgan_reconstructs_held_out_identities_better_than_the_mean_face(faces):
    images, labels = faces
    aux_rows = labels < AUX_IDS
    aux, victim = attack_data(
        pipeline("arcface"),
        images[aux_rows],
        images[~aux_rows],
        labels[~aux_rows],
        generator=torch.Generator().manual_seed(0),
    )
    assert set(victim.labels.tolist()).isdisjoint(labels[aux_rows].tolist())
    assert torch.equal(victim.targets, images[~aux_rows])  # no mixing: the target is the original
    attack = CGANAttack(3, SIZE, options=SMALL)
    attack.fit(aux.masked, aux.targets, epochs=4, batch_size=16)
    recon = attack.reconstruct(victim.masked)
    mean_face = aux.targets.mean(dim=0, keepdim=True).expand_as(victim.targets)

    def feature(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(F.avg_pool2d(x, 4).flatten(1) - 0.5, dim=1)

    scores = {}
    for name, guess in (("cgan", recon), ("mean", mean_face)):
        err = guess - victim.targets
        cos = (feature(guess) * feature(victim.targets)).sum(dim=1).mean()
        scores[name] = (err.abs().mean().item(), err.square().mean().item(), cos.item())
    print("L1, MSE, cosine of 8x8 pixels:", scores)
    assert scores["cgan"][0] < 0.7 * scores["mean"][0]
    assert scores["cgan"][1] < 0.7 * scores["mean"][1]
    assert scores["cgan"][2] > scores["mean"][2] + 0.2


def test_dominant_source_adds_up_a_row_drawn_twice():
    coefs = torch.tensor([[0.4, 0.3, 0.3], [0.2, 0.5, 0.3], [0.5, 0.5, 0.0]])
    index = torch.tensor([[0, 4, 4], [1, 2, 3], [2, 0, 1]])
    # Row 0: source 4 totals 0.6 > 0.4; row 2: a tie goes to the first column.
    assert dominant_sources(coefs, index).tolist() == [4, 2, 2]


@pytest.mark.parametrize("method", ["mixup_rgb", "masking_adamixup", "instahide_fd"])
def test_target_of_a_mixed_sample_is_its_source_of_largest_coefficient(faces, method):
    images, labels = faces
    victim = images[-40:]
    proportions = {2: 0.3, 3: 0.3, 5: 0.4} if method == "masking_adamixup" else None
    aux, vic = attack_data(
        pipeline(method),
        images[:40],
        victim,
        labels[-40:],
        proportions,
        torch.Generator().manual_seed(3),
    )
    assert aux.masked.shape[0] == 40 and (aux.labels == -1).all()
    assert (vic.coefs > 0).sum(dim=1).min() >= 2  # every victim sample really is mixed
    for i in range(len(victim)):
        totals: dict[int, float] = {}
        for source, coef in zip(vic.index[i].tolist(), vic.coefs[i].tolist(), strict=True):
            totals[source] = totals.get(source, 0.0) + coef
        best = max(totals, key=totals.get)
        assert vic.sources[i] == best
        assert torch.equal(vic.targets[i], victim[best])
        assert vic.labels[i] == labels[-40:][best]
    if method == "mixup_rgb":  # the masked tensor is the mixture the record describes
        sources = (victim * 2 - 1)[vic.index]  # [N, k, 3, H, W]
        expected = (vic.coefs[:, :, None, None, None] * sources).sum(dim=1)
        torch.testing.assert_close(vic.masked, expected)


def test_k_is_drawn_in_the_given_proportions():
    proportions = {2: 0.5, 3: 0.2, 4: 0.0, 5: 0.3}
    ks = sample_ks(proportions, 20_000, torch.Generator().manual_seed(0))
    for k, share in proportions.items():
        assert abs((ks == k).float().mean().item() - share) < 0.015
    # Through the masking: the realised k of each sample is its count of non-zero coefficients.
    images = torch.rand(800, 3, 16, 16)
    out = mask_for_attack(
        pipeline("masking_adamixup"),
        images,
        torch.arange(800),
        {2: 0.5, 3: 0.2, 5: 0.3},
        torch.Generator().manual_seed(1),
    )
    realised = (out.coefs > 0).sum(dim=1)
    for k, share in {2: 0.5, 3: 0.2, 4: 0.0, 5: 0.3}.items():
        assert abs((realised == k).float().mean().item() - share) < 0.06


def test_k_proportions_must_fit_the_method():
    images = torch.rand(8, 3, 16, 16)
    fixed = pipeline("mixup_rgb")  # k = 2
    out = mask_for_attack(fixed, images, k_proportions={2: 1.0, 3: 0.0})
    assert ((out.coefs > 0).sum(dim=1) == 2).all()
    with pytest.raises(ValueError, match="fixed k=2"):
        mask_for_attack(fixed, images, k_proportions={3: 1.0})
    with pytest.raises(ValueError, match="mixes nothing"):
        mask_for_attack(pipeline("arcface"), images, k_proportions={2: 1.0})
    with pytest.raises(ValueError, match="k_proportions"):
        mask_for_attack(pipeline("masking_adamixup"), images)
    with pytest.raises(ValueError, match="shares"):
        sample_ks({2: 0.0}, 5)


def test_checkpoint_round_trip_restores_reconstructions_and_training(faces, tmp_path):
    images = faces[0][:24]
    masked = images * 2 - 1
    attack = small_attack()
    attack.fit(masked, images, epochs=1, batch_size=8)
    path = attack.save(tmp_path / "cgan.pt")
    restored = CGANAttack.load(path)
    assert restored.steps == attack.steps == 3
    torch.testing.assert_close(
        restored.reconstruct(masked), attack.reconstruct(masked), rtol=0, atol=0
    )
    # Optimiser moments, BatchNorm statistics and the RNG travel too: training continues alike.
    attack.fit(masked, images, epochs=1, batch_size=8)
    restored.fit(masked, images, epochs=1, batch_size=8)
    torch.testing.assert_close(
        restored.reconstruct(masked), attack.reconstruct(masked), rtol=0, atol=0
    )
    with pytest.raises(ValueError, match="checkpoint is for"):
        small_attack(in_channels=4).load_state_dict(attack.state_dict())


def test_a_seed_fixes_training_and_leaves_the_global_rng_alone(faces):
    images = faces[0][:24]
    masked = images * 2 - 1
    before = torch.get_rng_state()
    runs = []
    for seed in (0, 0, 1):
        attack = small_attack(seed=seed)
        attack.fit(masked, images, epochs=1, batch_size=8)
        runs.append(attack.reconstruct(masked))
    assert torch.equal(torch.get_rng_state(), before)
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    assert (runs[0] - runs[2]).abs().max() > 1e-3
    assert not torch.equal(attack.reconstruct(masked, seed=1), runs[2])  # the noise channel


def test_an_attack_picture_resizes_and_pads_its_rows(faces, tmp_path):
    originals = faces[0][:5]
    renders = F.avg_pool2d(originals.mean(dim=1, keepdim=True), 2)  # gray, half size
    rows = [originals, renders, originals.flip(0)[:3]]  # the last row shorter: blanks at its end
    path = save_grid(rows, tmp_path / "fig3.png", ["original", "masked", "reconstruction"])
    with Image.open(path) as picture:
        assert picture.size == (LABEL_WIDTH + 5 * (SIZE + 2) + 2, 3 * (SIZE + 4))
        last = picture.crop(
            (LABEL_WIDTH + 3 * (SIZE + 2) + 2, 2 * (SIZE + 4), picture.width, picture.height)
        )
        assert last.getextrema() == ((255, 255), (255, 255), (255, 255))  # blank, not a face
