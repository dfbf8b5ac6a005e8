import dataclasses

import pytest
import torch
import torch.nn.functional as F

from ahm_core.attacks import (
    GANPrior,
    Generator,
    GMIOptions,
    attack_report,
    invert_identities,
    train_evaluator,
    train_prior,
    white_box_logits,
)
from ahm_core.config import AHMConfig, apply_overrides
from ahm_core.data.synthetic import SynthFaces
from ahm_core.masking import build_masking
from ahm_core.models import build_backbone, build_head

SIZE, CLASSES, PER_ID, AUX_IDS = 16, 8, 32, 40
TRAIN_PER_ID = 24  # the rest of each identity's images are unseen by every model
OPTIONS = GMIOptions(
    image_size=SIZE,
    latent_dim=32,
    ngf=16,
    ndf=16,
    gan_epochs=40,
    batch_size=32,
    g_lr=5e-4,
    d_lr=2e-3,
    iterations=100,
    restarts=8,
    lr=0.01,
    eval_epochs=30,
    eval_width=16,
)


def faces(identities: int, per_id: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic faces rendered at 32 px and pooled to SIZE; another seed, other people."""
    synth = SynthFaces(identities, per_id, size=32, seed=seed)
    images = synth.images_uint8(torch.arange(len(synth))).float() / 255.0
    return F.avg_pool2d(images, 32 // SIZE), synth.labels


@pytest.fixture(scope="module")
def private() -> tuple[torch.Tensor, torch.Tensor]:
    """The victims' training faces (the first TRAIN_PER_ID of each identity)."""
    images, labels = faces(CLASSES, PER_ID, seed=0)
    seen = torch.arange(len(labels)) % PER_ID < TRAIN_PER_ID
    return images[seen], labels[seen]


@pytest.fixture(scope="module")
def prior() -> GANPrior:
    return train_prior(faces(AUX_IDS, 16, seed=1)[0], OPTIONS)


@pytest.fixture(scope="module")
def evaluator(private):
    return train_evaluator(*private, OPTIONS)


def train_target(method: str, images: torch.Tensor, labels: torch.Tensor):
    """A tiny FRNet trained with the project's ArcFace loss on masked faces: the attacked model."""
    cfg = apply_overrides(
        AHMConfig(),
        {
            "masking.method": method,
            "model.blocks": (1, 1),
            "model.width": 8,
            "model.embedding_size": 32,
        },
    )
    pipeline = build_masking(cfg)
    torch.manual_seed(0)
    backbone = build_backbone(cfg.model, pipeline.in_channels, SIZE)
    head = build_head(cfg.model, CLASSES)
    params = [*backbone.parameters(), *head.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    for _ in range(15):
        for idx in torch.randperm(len(images)).split(16):
            flip = torch.rand(len(idx)) < 0.5
            x = torch.where(flip[:, None, None, None], images[idx].flip(-1), images[idx])
            loss = head(backbone(pipeline.encode(x)), labels[idx, None], torch.ones(len(idx), 1))
            optimizer.zero_grad()
            loss.mean().backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            optimizer.step()
    return white_box_logits(backbone, head, pipeline)


def identity_loss(logits_fn, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return F.cross_entropy(logits_fn(images), labels).item()


def test_prior_moves_generated_statistics_toward_the_aux_faces(prior):
    aux = faces(AUX_IDS, 16, seed=1)[0]

    def gap(generated: torch.Tensor) -> float:
        channel_stats = torch.stack([generated.mean(dim=(0, 2, 3)), generated.std(dim=(0, 2, 3))])
        target = torch.stack([aux.mean(dim=(0, 2, 3)), aux.std(dim=(0, 2, 3))])
        return (channel_stats - target).abs().mean().item()

    torch.manual_seed(0)
    untrained = Generator(OPTIONS.latent_dim, SIZE, OPTIONS.ngf).eval()
    with torch.no_grad():
        before = untrained(torch.randn(256, OPTIONS.latent_dim).clamp(-1, 1))
    after = prior.sample(256)
    print(f"channel-statistics gap: untrained {gap(before):.3f}, trained {gap(after):.3f}")
    assert after.shape == (256, 3, SIZE, SIZE)
    assert gap(after) < 0.4 * gap(before)
    assert len(prior.history) == OPTIONS.gan_epochs
    # Neither network wins outright: log 4 = 1.39 is the loss at the equilibrium.
    assert 0.3 < prior.history[-1]["d_loss"] < 2.0


def test_prior_round_trips_through_a_file(prior, tmp_path):
    restored = GANPrior.load(prior.save(tmp_path / "prior.pt"))
    assert restored.options == prior.options and restored.history == prior.history
    torch.testing.assert_close(restored.sample(4, seed=3), prior.sample(4, seed=3), rtol=0, atol=0)


@pytest.mark.parametrize("method", ["arcface", "ppfr_fd", "mixup_fd", "dp"])
def test_differentiable_encode_matches_encode_and_passes_gradients(method, private):
    images = private[0][:4].clone()
    cfg = apply_overrides(AHMConfig(), {"masking.method": method, "masking.dp_components": 8})
    pipeline = build_masking(cfg, fit_images=private[0])
    if method != "dp":  # DP draws its noise per call
        expected = pipeline.encode(images)
        torch.testing.assert_close(
            pipeline.differentiable_encode(images), expected, atol=1e-3, rtol=0
        )
    images.requires_grad_(True)
    pipeline.differentiable_encode(images).square().sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_evaluator_recognises_unseen_images_of_the_private_identities(evaluator):
    images, labels = faces(CLASSES, PER_ID, seed=0)
    unseen = torch.arange(len(labels)) % PER_ID >= TRAIN_PER_ID
    with torch.no_grad():
        accuracy = (evaluator(images[unseen]).argmax(dim=1) == labels[unseen]).float().mean()
    assert accuracy >= 0.8


def test_inversion_of_an_rgb_target_recovers_its_identities(prior, evaluator, private):
    target = train_target("arcface", *private)
    reconstructions, labels = invert_identities(prior, target, torch.arange(CLASSES), OPTIONS)
    assert reconstructions.shape == (CLASSES * OPTIONS.restarts, 3, SIZE, SIZE)
    assert torch.equal(labels, torch.arange(CLASSES).repeat_interleave(OPTIONS.restarts))
    attack = attack_report(reconstructions, labels, evaluator, *private)
    # The same latents before the search: the prior alone, with no knowledge of the target.
    prior_only = attack_report(prior.sample(len(labels)), labels, evaluator, *private)
    print("GMI on the RGB target:", attack, "prior alone:", prior_only)
    assert attack["count"] == len(labels)
    # Chance is 1/8; over seeds 0-4 top-1 was 0.27-0.44, the prior alone's 0.06-0.16.
    assert attack["top1"] > 0.2
    assert attack["top1"] > prior_only["top1"] + 0.1
    assert attack["top5"] > prior_only["top5"] + 0.1
    assert attack["feature_distance"] < 0.9 * prior_only["feature_distance"]
    assert attack["knn_distance"] < 0.9 * prior_only["knn_distance"]


def test_inversion_goes_through_the_ppfr_fd_masking(prior, evaluator, private):
    target = train_target("ppfr_fd", *private)
    options = dataclasses.replace(OPTIONS, iterations=25, restarts=2)
    reconstructions, labels = invert_identities(prior, target, torch.arange(CLASSES), options)
    assert reconstructions.shape == (CLASSES * 2, 3, SIZE, SIZE)
    assert torch.isfinite(reconstructions).all()
    assert reconstructions.min() >= 0 and reconstructions.max() <= 1
    start = prior.sample(len(labels), seed=options.seed)  # where the search began
    before = identity_loss(target, start, labels)
    after = identity_loss(target, reconstructions, labels)
    print(f"PPFR-FD target: identity loss {before:.2f} -> {after:.2f};", end=" ")
    print(attack_report(reconstructions, labels, evaluator, *private))
    assert after < 0.5 * before
