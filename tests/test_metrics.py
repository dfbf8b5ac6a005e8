import math
import socket

import pytest
import torch
import torch.nn.functional as F
import torchvision

from ahm_core.data.synthetic import render_faces
from ahm_core.masking import to_gray
from ahm_core.metrics import (
    LPIPS,
    accuracy_ratio,
    alexnet_checkpoint,
    feature_distance,
    identity_leakage,
    normalise,
    privacy_index,
    psnr,
    ssim,
    table_scores,
)

# The paper's Table 2 (centralized, LFW): method -> (score, privacy score, accuracy score, LFW %).
# The unmasked ArcFace row (LFW 99.23) has no scores in the paper and is not in the norms.
TABLE2 = {
    "Masking+AdaMixUp(k:2-6)": (0.968, 0.979, 0.957, 96.15),
    "Masking+AdaMixUp(k:2-5)": (0.981, 0.975, 0.987, 98.20),
    "Masking+AdaMixUp(k:2-4)": (0.959, 0.925, 0.992, 98.43),
    "Masking+MixUp(k=2)": (0.912, 0.825, 0.999, 98.92),
    "Masking+MixUp(k=3)": (0.940, 0.892, 0.989, 98.20),
    "Masking+MixUp(k=4)": (0.877, 0.975, 0.779, 84.62),
    "Masking+MixUp(k=5)": (0.796, 0.988, 0.605, 73.31),
    "Masking+MixUp(k=6)": (0.750, 1.000, 0.500, 66.53),
    "MixUp-FD(k=2)": (0.749, 0.500, 0.997, 98.76),
    "PPFR-FD": (0.806, 0.613, 1.000, 98.93),
    "DP": (0.753, 0.917, 0.590, 72.36),
    "InstaHide-FD(k=2)": (0.733, 0.713, 0.753, 82.93),
}
ROUNDING = 0.0005 + 1e-9  # half a unit of the paper's third decimal


@pytest.fixture
def downloads(monkeypatch) -> list[str]:
    """Every download or network connection attempted during the test (each one also fails)."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args))
        raise RuntimeError("network access attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def uncalibrated() -> LPIPS:
    return LPIPS(calibrated=False)


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    ids = torch.arange(8)
    return render_faces(ids, torch.zeros(8, dtype=torch.long), size=32, seed=3)


def toy_model(seed: int):
    """A fixed random linear embedding of 4x4-pooled images [N, 3, 32, 32]."""
    weight = torch.randn(3 * 8 * 8, 16, generator=torch.Generator().manual_seed(seed))
    return lambda x: F.avg_pool2d(x - 0.5, 4).flatten(1) @ weight


def noise_like(images: torch.Tensor, seed: int) -> torch.Tensor:
    return torch.rand(images.shape, generator=torch.Generator().manual_seed(seed))


def test_lpips_without_cached_backbone_fails_clearly_and_never_downloads(torch_home, downloads):
    with pytest.raises(FileNotFoundError) as err:
        LPIPS()
    message = str(err.value)
    expected = torch_home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert alexnet_checkpoint() == expected
    assert "\n" not in message
    assert str(expected) in message
    assert "torchvision.models.alexnet(weights='IMAGENET1K_V1')" in message
    assert "calibrated=False" in message
    assert downloads == []
    assert not expected.exists()


def test_lpips_uses_the_cached_backbone_file(torch_home, downloads, uncalibrated):
    torch.manual_seed(1)
    state = torchvision.models.alexnet().state_dict()
    path = alexnet_checkpoint()
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    metric = LPIPS()
    assert downloads == []
    assert metric.calibrated and metric.label == "LPIPS"
    trunk = metric.model.net.state_dict()
    for layer in (0, 3, 10):  # first, second and last convolution of alexnet.features
        (name,) = [key for key in trunk if key.endswith(f".{layer}.weight")]
        torch.testing.assert_close(trunk[name], state[f"features.{layer}.weight"])
    a, b = noise_like(torch.empty(4, 3, 40, 40), 0), noise_like(torch.empty(4, 3, 40, 40), 1)
    assert not torch.allclose(metric(a, b), uncalibrated(a, b), rtol=1e-3)
    assert torch.equal(metric(a, a), torch.zeros(4))


def test_uncalibrated_lpips_is_labelled_and_reproducible(uncalibrated, faces):
    assert not uncalibrated.calibrated and uncalibrated.label == "LPIPS (uncalibrated)"
    noise = noise_like(faces, 0)
    again = LPIPS(calibrated=False, batch_size=3)  # same seed, other batching: same numbers
    torch.testing.assert_close(again(faces, noise), uncalibrated(faces, noise))
    other = LPIPS(calibrated=False, seed=1)
    assert not torch.allclose(other(faces, noise), uncalibrated(faces, noise), rtol=1e-3)


def test_lpips_takes_gray_and_small_images(uncalibrated, faces):
    gray = to_gray(faces)
    small = F.interpolate(gray, size=(16, 20), mode="bilinear", align_corners=False)
    noise = noise_like(small, 0)
    distances = uncalibrated(small, noise)
    assert distances.shape == (8,) and bool((distances > 0).all())
    torch.testing.assert_close(
        distances, uncalibrated(small.repeat(1, 3, 1, 1), noise.repeat(1, 3, 1, 1))
    )
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        uncalibrated(faces * 2 - 1, faces)
    with pytest.raises(ValueError, match="same size"):
        uncalibrated(faces, faces[:, :, :, :-1])


def test_psnr_hand_cases():
    a = torch.zeros(2, 3, 16, 16)
    torch.testing.assert_close(psnr(a, a + 0.1), torch.full((2,), 20.0))
    assert bool(torch.isinf(psnr(a, a)).all())
    rgb = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert bool(torch.isinf(psnr(rgb, to_gray(rgb))).all())  # compared on luma


def test_ssim_hand_cases():
    rgb = torch.rand(3, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ssim(rgb, rgb), torch.ones(3))
    torch.testing.assert_close(ssim(rgb, to_gray(rgb)), torch.ones(3))  # compared on luma

    # Constant images m and m + c: only luminance is left, (2m(m+c) + C1) / (m² + (m+c)² + C1).
    c1, c2 = 0.01**2, 0.03**2
    m, c = 0.25, 0.5
    flat = torch.full((1, 1, 16, 16), m, dtype=torch.float64)
    expected = (2 * m * (m + c) + c1) / (m**2 + (m + c) ** 2 + c1)
    assert ssim(flat, flat + c).item() == pytest.approx(expected, rel=1e-12)

    # Ramps a = m + s*d and b = m + 2s*d along x (d = column - centre): a symmetric window keeps the
    # local means on the ramps, and the local variances are s²V, 4s²V, covariance 2s²V, with V
    # the variance of the window's normalised 11-tap Gaussian (sigma 1.5) about its centre.
    taps = [math.exp(-((i - 5) ** 2) / (2 * 1.5**2)) for i in range(11)]
    V = sum(t * (i - 5) ** 2 for i, t in enumerate(taps)) / sum(taps)
    m, s, width = 0.5, 0.02, 24
    d = torch.arange(width, dtype=torch.float64) - (width - 1) / 2
    a = (m + s * d).expand(1, 1, 12, width)
    b = (m + 2 * s * d).expand(1, 1, 12, width)
    centres = d[5 : width - 5]  # where the 11-wide window fits
    mu_a, mu_b = m + s * centres, m + 2 * s * centres
    luminance = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
    structure = (4 * s**2 * V + c2) / (5 * s**2 * V + c2)
    assert ssim(a, b).item() == pytest.approx(float(luminance.mean()) * structure, rel=1e-9)
    assert ssim(b, a).item() == pytest.approx(ssim(a, b).item(), rel=1e-12)
    with pytest.raises(ValueError, match="at least 11"):
        ssim(flat[..., :10], flat[..., :10])


def test_feature_distance(faces):
    model = toy_model(0)
    same = feature_distance(faces, faces.clone(), model)
    assert same.shape == (len(faces),) and same.abs().max() < 1e-6
    gen = torch.Generator().manual_seed(0)
    slight = (faces + 0.03 * torch.randn(faces.shape, generator=gen)).clamp(0, 1)
    near = feature_distance(faces, slight, model).mean()
    far = feature_distance(faces, noise_like(faces, 1), model).mean()
    assert 0 < near < far <= 2
    gray = feature_distance(faces, to_gray(faces), model)  # gray embeds as RGB
    assert 0 < gray.mean() < far
    with pytest.raises(ValueError, match="no images"):
        feature_distance(faces[:0], faces[:0], model)


def test_identity_leakage():
    ids = torch.arange(20) % 10
    gallery = render_faces(ids, torch.arange(20) // 10, size=32, seed=5)
    model = toy_model(1)
    exact = identity_leakage(gallery.clone(), ids, gallery, ids, model)
    assert exact["rank1"] == 1.0 and exact["chance"] == 0.1 and exact["trials"] == 20
    assert exact["rank1_ci95"] == pytest.approx([0.8389, 1.0], abs=1e-4)  # Wilson, 20 of 20
    assert exact["rank1_cluster_ci95"] == [1.0, 1.0]  # every identity's victims all re-identified
    labels = torch.arange(60) % 10
    noise = torch.rand(60, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    blind = identity_leakage(noise, labels, gallery, ids, model, batch_size=7)
    assert abs(blind["rank1"] - blind["chance"]) <= 0.1
    lo, hi = blind["rank1_cluster_ci95"]  # by victim identity: 10 identities, 6 victims each
    assert lo <= blind["rank1"] <= hi and (lo, hi) != tuple(blind["rank1_ci95"])
    # Half the identities' victims are their gallery photos, the others noise: the outcome is
    # decided by the identity, so the interval clustered by it is wider than Wilson's over victims
    half = torch.where((labels < 5)[:, None, None, None], gallery[labels], noise)
    split = identity_leakage(half, labels, gallery, ids, model)
    (lo, hi), (w_lo, w_hi) = split["rank1_cluster_ci95"], split["rank1_ci95"]
    assert lo <= split["rank1"] <= hi and hi - lo > 1.5 * (w_hi - w_lo)
    with pytest.raises(ValueError, match="not in the gallery"):
        identity_leakage(gallery[:1], torch.tensor([10]), gallery, ids, model)


def test_accuracy_ratio():
    assert accuracy_ratio(0.9, 0.99) == pytest.approx(0.9 / 0.99)
    with pytest.raises(ValueError):
        accuracy_ratio(0.9, 0.0)


def test_table2_accuracy_scores_follow_from_lfw():
    scores = table_scores({name: {"accuracy": row[3]} for name, row in TABLE2.items()})
    off = {}
    for name, (_, _, paper, _) in TABLE2.items():
        assert scores[name]["accuracy_score"] == pytest.approx(paper, abs=0.002), name
        assert "privacy_score" not in scores[name] and "score" not in scores[name]
        if abs(scores[name]["accuracy_score"] - paper) > ROUNDING:
            off[name] = round(scores[name]["accuracy_score"], 4)
    # Every row agrees within 0.002, but two are off by more than rounding: k:2-5 has LFW 98.20
    # like MixUp(k=3) yet 0.987 against k=3's 0.989 (norm gives 0.9887), and MixUp(k=2) prints
    # 0.999 where LFW 98.92 gives 0.99985.
    assert off == {"Masking+AdaMixUp(k:2-5)": 0.9887, "Masking+MixUp(k=2)": 0.9998}


def test_table2_score_is_the_mean_not_the_product():
    for name, (score, privacy, accuracy, _) in TABLE2.items():
        assert abs((privacy + accuracy) / 2 - score) <= ROUNDING, name
    # Section 4.2.4 says "product", which the table contradicts (k=2: 0.825 * 0.999 = 0.824).
    score, privacy, accuracy, _ = TABLE2["Masking+MixUp(k=2)"]
    assert abs(privacy * accuracy - score) > 0.05


def test_table_scores_reproduce_table2():
    # The paper's privacy scores span [0.5, 1], so indices all equal to them normalise to them.
    floors = {"mean_face_a_lpips": 2.0, "mean_face_a_feat": 2.0}  # above every index: no cap
    rows = {
        name: {"accuracy": lfw, "m_lpips": p, "m_feat": p, "a_lpips": p, "a_feat": p, **floors}
        for name, (_, p, _, lfw) in TABLE2.items()
    }
    scores = table_scores(rows)
    for name, (score, privacy, _, lfw) in TABLE2.items():
        row = scores[name]
        assert row["accuracy"] == lfw and row["m_lpips"] == privacy  # the inputs are kept
        assert row["privacy_score"] == pytest.approx(privacy, abs=1e-12)
        assert row["score"] == pytest.approx(score, abs=0.002), name
        for key in ("accuracy_score", "privacy_score", "score"):
            assert 0.5 <= row[key] <= 1.0


def test_table_scores_weights_and_missing_indices():
    indices = {"m_lpips": 0.0, "m_feat": 0.0, "a_lpips": 0.0, "a_feat": 0.0}
    indices |= {"mean_face_a_lpips": 1.0, "mean_face_a_feat": 1.0}
    rows = {
        "visual": {"accuracy": 90.0, **indices, "m_lpips": 1.0, "m_feat": 1.0},  # index 0.4
        "attack": {"accuracy": 80.0, **indices, "a_lpips": 1.0, "a_feat": 1.0},  # index 0.6
        "none": {"accuracy": 70.0, **indices},  # index 0
        "partial": {"accuracy": 60.0, "m_lpips": 1.0, "m_feat": 1.0, "a_lpips": None},
        "ArcFace": {"accuracy": 99.0},
    }
    scores = table_scores(rows)
    assert scores["visual"]["privacy_score"] == pytest.approx(0.5 + 0.5 * 0.4 / 0.6)
    assert scores["attack"]["privacy_score"] == 1.0
    assert scores["none"]["privacy_score"] == 0.5
    assert scores["attack"]["score"] == pytest.approx((1.0 + 0.5 + 0.5 * 20 / 39) / 2)
    for name in ("partial", "ArcFace"):  # no privacy, so no comprehensive score either
        assert "privacy_score" not in scores[name] and "score" not in scores[name]
    assert scores["ArcFace"]["accuracy_score"] == 1.0  # but it counts in the accuracy range
    assert scores["partial"]["accuracy_score"] == 0.5
    with pytest.raises(ValueError, match="no accuracy"):
        table_scores({"x": {"m_lpips": 1.0}})


def test_an_attack_worse_than_the_mean_face_earns_no_privacy():
    floors = {"mean_face_a_lpips": 0.3, "mean_face_a_feat": 0.5}
    base = {"accuracy": 0.9, "m_lpips": 0.2, "m_feat": 0.2, **floors}
    at_floor = privacy_index({**base, "a_lpips": 0.3, "a_feat": 0.5})
    failed = privacy_index({**base, "a_lpips": 0.9, "a_feat": 1.2})  # further than the mean face
    learned = privacy_index({**base, "a_lpips": 0.1, "a_feat": 0.2})  # closer: counted as is
    assert failed == at_floor == pytest.approx(0.4 * 0.2 + 0.6 * 0.4)
    assert learned == pytest.approx(0.4 * 0.2 + 0.6 * 0.15)
    scores = table_scores(
        {
            "failed attack": {**base, "a_lpips": 0.9, "a_feat": 1.2},
            "floor": {**base, "a_lpips": 0.3, "a_feat": 0.5},
            "no floor known": {**base, "a_lpips": 0.9, "a_feat": 1.2, "mean_face_a_feat": None},
        }
    )
    assert scores["failed attack"]["privacy_score"] == scores["floor"]["privacy_score"]
    assert "privacy_score" not in scores["no floor known"]


def test_normalise_edge_cases():
    assert normalise({}) == {}
    assert normalise({"only": 3.0}) == {"only": 1.0}
    assert normalise({"a": 2.0, "b": 2.0}) == {"a": 1.0, "b": 1.0}
    assert normalise({"lo": 1.0, "mid": 2.0, "hi": 5.0}) == {"lo": 0.5, "mid": 0.625, "hi": 1.0}
