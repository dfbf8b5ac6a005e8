"""The appendix-A.2 attack: it keeps the least redundant channels of every first stage that has
frequency channels (skipping the others with why), and reconstructs from them alone."""

from pathlib import Path

import pytest
import torch

from ahm_core.attacks import ATTACKS
from ahm_core.attacks.cgan import cgan_for
from ahm_core.cases import build_case
from ahm_core.config import AHMConfig, apply_overrides
from ahm_core.data.sources import load_faces, verification_split
from ahm_core.masking.methods import METHODS

KEPT = 6


def case_of(method: str, folder: Path, first_stage=None):
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
            "attack.demix_images": 4,
            "attack.cgan_epochs": 1,
            "attack.ngf": 8,
            "attack.ndf": 8,
            "attack.kept_channels": KEPT,
        },
    )
    faces = load_faces(cfg.data)
    split = verification_split(faces.labels, cfg.data)
    return build_case(
        cfg, faces, split.train, split.pairs, folder, torch.device("cpu"), None, first_stage
    )


@pytest.mark.parametrize("method", sorted(METHODS))
def test_it_applies_to_every_first_stage_with_frequency_channels(method, tmp_path):
    case = case_of(method, tmp_path)
    reason = ATTACKS["channel_drop"].skip(case)
    assert (reason is None) == (METHODS[method].first_stage not in ("rgb", "dp")), reason


def test_on_dctdp_it_keeps_the_channels_of_the_least_learnt_noise_and_reconstructs(tmp_path):
    budget = {
        "logits": torch.linspace(-2, 2, 63),
        "shift": torch.zeros(63),
    }  # high ones: less noise
    case = case_of("dctdp", tmp_path, budget)
    attack = ATTACKS["channel_drop"]
    kept = attack.kept(case)
    assert kept.tolist() == list(range(63 - KEPT, 63))
    result = attack.run(case)
    assert cgan_for(case, kept).in_channels == KEPT
    assert result.faces.shape == (8, 3, 32, 32) and torch.isfinite(result.faces).all()
    assert torch.equal(result.targets, case.images(case.victims(8)))


def test_on_ppfr_fd_it_keeps_the_channels_whose_sources_carry_signal(tmp_path):
    case = case_of("ppfr_fd", tmp_path)
    stage = case.pipeline.first_stage
    order = stage.drop_order(case.aux_images)
    kept = ATTACKS["channel_drop"].kept(case)
    assert sorted(order[-KEPT:].tolist()) == kept.tolist()
    assert set(order.tolist()) == set(range(stage.in_channels))  # a ranking of every channel
