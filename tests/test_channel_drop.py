"""The appendix-A.2 attack: it ranks the channels by the signal-to-noise it measures on its own
faces through the defence, never keeps a channel of no signal, tries each kept count up its
budget ladder, and skips the first stages without frequency channels, saying why."""

from pathlib import Path

import pytest
import torch

from ahm_core.attacks import ATTACKS
from ahm_core.attacks.cgan import cgan_for
from ahm_core.attacks.channel_drop import channel_snr, ranked_channels
from ahm_core.cases import build_case
from ahm_core.config import AHMConfig, apply_overrides
from ahm_core.data.sources import load_faces, verification_split
from ahm_core.masking.methods import METHODS

KEPT = (4, 6)


def case_of(method: str, folder: Path, first_stage=None, **overrides):
    cfg = apply_overrides(
        AHMConfig(),
        {
            "data.num_identities": 12,
            "data.images_per_identity": 6,
            "data.image_size": 32,
            "masking.method": method,
            "masking.dp_components": 8,
            "policy.k_set": (2, 3),
            "attack.victims": 8,
            "attack.aux_images": 12,
            "attack.holdout": 4,
            "attack.demix_images": 4,
            "attack.cgan_epochs": 1,
            "attack.rungs": 1,
            "attack.ngf": 8,
            "attack.ndf": 8,
            "attack.kept_channels": KEPT,
            **overrides,
        },
    )
    faces = load_faces(cfg.data)
    split = verification_split(faces.labels, cfg.data)
    return build_case(
        cfg, faces, split.train, split.pairs, folder, torch.device("cpu"), None, first_stage
    )


def test_the_snr_of_known_channels():
    g = torch.Generator().manual_seed(0)
    face = torch.randn(400, 1, 4, 4, generator=g)
    signal = torch.cat([face, face * 0, face * 0, face * 3], dim=1)  # 0: signal, 1-2: none

    def noisy() -> torch.Tensor:
        noise = torch.randn(400, 4, 4, 4, generator=g) * torch.tensor([0.1, 1.0, 0.0, 0.0]).view(
            1, 4, 1, 1
        )
        return signal + noise

    measured = channel_snr(noisy(), noisy())
    assert measured.snr[0] == pytest.approx(100, rel=0.25)  # variance 1 against 0.01
    assert measured.snr[3] == float("inf")  # signal, no noise
    assert measured.signal[2] == 0 and measured.snr[2] == 0  # identically zero
    assert measured.snr[1] < 0.1  # noise only
    with pytest.raises(ValueError, match="two \\[N, C, h, w\\] encodings"):
        channel_snr(noisy(), noisy()[:, :2])


@pytest.mark.parametrize("method", sorted(METHODS))
def test_it_applies_to_every_first_stage_with_frequency_channels(method, tmp_path):
    case = case_of(method, tmp_path)
    reason = ATTACKS["channel_drop"].skip(case)
    assert (reason is None) == (METHODS[method].first_stage not in ("rgb", "dp")), reason


@pytest.mark.parametrize("method", ["mixup_fd", "ppfr_fd", "dctdp"])
def test_it_never_keeps_a_channel_of_no_signal(method, tmp_path):
    # At 8x upsampling many block-DCT channels of a 32 px face are zero (up to rounding: a
    # variance 1e-20 of the largest or less).
    case = case_of(method, tmp_path, **{"attack.kept_channels": (60,), "masking.upsample": 8})
    variance = case.pipeline.encode(case.aux_images).double().var(dim=(0, 2, 3))
    zero = (variance <= 1e-20 * variance.max()).nonzero().flatten().tolist()
    if method != "dctdp":  # DCTDP adds noise to every channel: none is zero, some carry none
        assert zero, "the test needs zero channels"
    ranked = ranked_channels(case)
    assert not set(ranked.tolist()) & set(zero)
    reason = ATTACKS["channel_drop"].skip(case)
    assert reason is not None and "channels of signal" in reason  # 60 >= the channels of signal
    case.cache.clear()
    case.cfg.attack.kept_channels = (4,)
    kept = ATTACKS["channel_drop"].kept(case)
    assert len(kept) == 4 and not set(kept.tolist()) & set(zero)


def test_on_dctdp_it_keeps_the_channels_of_most_measured_snr_and_reconstructs(tmp_path):
    budget = {"logits": torch.linspace(-2, 2, 63), "shift": torch.zeros(63)}
    case = case_of("dctdp", tmp_path, budget)
    g = torch.Generator().manual_seed(case.cfg.train.seed)
    aux = case.aux_images
    snr = channel_snr(case.pipeline.encode(aux, g), case.pipeline.encode(aux, g)).snr
    attack = ATTACKS["channel_drop"]
    kept = attack.kept(case)
    assert len(kept) in KEPT
    assert set(kept.tolist()) == set(snr.argsort(descending=True)[: len(kept)].tolist())
    result = attack.run(case)
    assert cgan_for(case, kept).trained.in_channels == len(kept)
    assert result.figures["kept"] == len(kept) and set(result.figures["tried"]) == {"4", "6"}
    assert result.faces.shape == (8, 3, 32, 32) and torch.isfinite(result.faces).all()
    assert torch.equal(result.targets, case.images(case.victims(8)))


def test_on_ppfr_fd_noiseless_channels_are_ranked_by_its_own_order(tmp_path):
    case = case_of("ppfr_fd", tmp_path)
    order = case.pipeline.first_stage.drop_order(case.aux_images)
    ranked = ranked_channels(case)
    # Every channel of signal is noiseless (fixed key): the white-box order decides, reversed.
    assert ranked.tolist() == [c for c in order.flip(0).tolist() if c in set(ranked.tolist())]
