"""DP-SGD (`train.dp_sgd`, Opacus): each sample's gradient clipped as a hand computation clips
it, the noise of the configured scale, Poisson batches, and the epsilon of the accountant."""

from __future__ import annotations

import pytest
import torch
from scales import TRAIN, config

from ahm_core.checks import validate
from ahm_core.config import AHMConfig, ConfigError
from ahm_core.data.synthetic import SynthFaces
from ahm_core.dp_sgd import PrivateSGD
from ahm_core.masking import build_masking
from ahm_core.models import MixUpArcFace
from ahm_core.privacy import epsilon_spent
from ahm_core.train import Trainer

BATCH = 6
PRIVATE = {
    "masking.method": "arcface",
    "model.norm": "group",
    "model.dropout": 0.0,  # a sample's loss alone is then its loss in the batch
    "train.flip": False,
    "train.batch_size": BATCH,
    "train.momentum": 0.0,
    "train.weight_decay": 0.0,
    "train.lr": 1.0,
    "train.dp_sgd": True,
    "train.dp_max_grad_norm": 0.05,  # below every sample's gradient norm: each one is clipped
}


def tiny(**extra) -> AHMConfig:
    return config(TRAIN, **{**PRIVATE, **extra})


def trainer(cfg: AHMConfig) -> Trainer:
    return Trainer(cfg, build_masking(cfg), num_classes=4, steps_per_epoch=1)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    faces = SynthFaces(4, 3, size=32)
    return faces.images_uint8(torch.arange(BATCH)), faces.labels[:BATCH]


def parameters(t: Trainer) -> list[torch.nn.Parameter]:
    return [*t.backbone.parameters(), *t.head.parameters()]


def weights(t: Trainer) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in parameters(t)])


def test_each_samples_gradient_is_clipped_as_a_hand_computation_clips_it():
    """A tiny network (a linear layer, GroupNorm, the MixUp-ArcFace head on mixed labels): the
    private step moves it by -lr x the mean of the per-sample gradients, each clipped to C."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.GroupNorm(2, 8))
    head = MixUpArcFace(5, 8, scale=16.0, margin=0.3)
    t = tiny(**{"train.dp_noise_multiplier": 0.0}).train
    sgd = torch.optim.SGD([*net.parameters(), *head.parameters()], lr=1.0)
    private = PrivateSGD(net, head, sgd, t, smallest_batch=1)
    x = torch.randn(BATCH, 12)
    labels = torch.randint(0, 5, (BATCH, 2))
    coefs = torch.tensor([[0.6, 0.4]]).repeat(BATCH, 1)
    twin = [p.detach().clone() for p in (*net.parameters(), *head.parameters())]
    clipped, norms = [], []
    for i in range(BATCH):  # each sample alone, on a twin without Opacus's hooks
        body = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.GroupNorm(2, 8))
        body.load_state_dict(net.state_dict())
        alone = MixUpArcFace(5, 8, scale=16.0, margin=0.3)
        alone.load_state_dict(head.state_dict())
        alone(body(x[i : i + 1]), labels[i : i + 1], coefs[i : i + 1]).sum().backward()
        grad = torch.cat([p.grad.flatten() for p in (*body.parameters(), alone.weight)])
        norms.append(float(grad.norm()))
        clipped.append(grad * min(1.0, t.dp_max_grad_norm / float(grad.norm())))
    before = torch.cat([p.flatten() for p in twin])
    private.optimizer.zero_grad()
    head(net(x), labels, coefs).mean().backward()
    private.optimizer.step()
    moved = torch.cat([p.detach().flatten() for p in (*net.parameters(), *head.parameters())])
    assert min(norms) > t.dp_max_grad_norm  # every sample was clipped
    expected = -torch.stack(clipped).sum(dim=0) / BATCH  # lr 1, noise 0
    assert torch.allclose(moved - before, expected, atol=1e-7, rtol=1e-5)


def test_the_trainer_takes_a_private_step_on_its_network():
    """The same through the Trainer on the IR-SE (GroupNorm): a batch's step against each
    sample's own clipped gradient. GroupNorm over a few channels of small maps is ill-conditioned
    (a batch and a lone sample differ in float32 by up to 1% on a bias), so the whole step is
    compared within 1%."""
    cfg = tiny(**{"train.dp_noise_multiplier": 0.0})
    images, labels = batch()
    private = trainer(cfg)
    before = weights(private)
    private.train_step(images, labels)
    moved = weights(private) - before
    plain = trainer(tiny(**{"train.dp_sgd": False}))  # the same seeded network, no hooks
    assert torch.equal(weights(plain), before)
    clipped = []
    for i in range(BATCH):
        plain.optimizer.zero_grad()
        x = plain.masking.encode(images[i : i + 1].float() / 255.0)
        mixed = plain.masking.mix(x, labels[i : i + 1], None, plain.generator)
        plain.head(plain.backbone(mixed.x), mixed.labels, mixed.coefs).sum().backward()
        grad = torch.cat([p.grad.flatten() for p in parameters(plain)])
        clipped.append(grad * min(1.0, cfg.train.dp_max_grad_norm / float(grad.norm())))
    expected = -cfg.train.lr * torch.stack(clipped).sum(dim=0) / BATCH
    assert float((moved - expected).norm()) < 0.01 * float(expected.norm())


def test_the_noise_has_the_configured_scale_and_is_seeded():
    images, labels = batch()
    moves = {}
    for sigma in (0.0, 2.0):
        t = trainer(tiny(**{"train.dp_noise_multiplier": sigma}))
        before = weights(t)
        t.train_step(images, labels)
        moves[sigma] = weights(t) - before
    noise = moves[2.0] - moves[0.0]  # lr 1: the noise / expected batch
    std = 2.0 * PRIVATE["train.dp_max_grad_norm"] / BATCH
    assert float(noise.std()) == pytest.approx(std, rel=0.05)
    again = trainer(tiny(**{"train.dp_noise_multiplier": 2.0}))
    before = weights(again)
    again.train_step(images, labels)
    assert torch.equal(weights(again) - before, moves[2.0])


def test_an_epoch_draws_poisson_batches_and_reports_the_accountants_epsilon():
    cfg = tiny(**{"train.dp_noise_multiplier": 1.3, "train.dp_delta": 1e-4})
    faces = SynthFaces(4, 12, size=32)
    items, labels = torch.arange(48), faces.labels[:48]
    t = trainer(cfg)
    sizes = [len(y) for _, y in t.loader(faces, items, labels)]
    assert len(sizes) == 48 // BATCH and len(set(sizes)) > 1  # as many draws, of varying size
    assert sizes == [len(y) for _, y in t.loader(faces, items, labels)]  # seeded by epoch
    first = t.train_epoch(faces, items, labels)["dp_sgd"]
    second = t.train_epoch(faces, items, labels)["dp_sgd"]
    q = BATCH / 48
    assert (first["steps"], second["steps"], first["sample_rate"]) == (8, 16, q)
    assert second["epsilon"] == epsilon_spent(1.3, q, 16, 1e-4)
    assert 0 < first["epsilon"] < second["epsilon"]


def test_a_checkpoint_resumes_the_noise_exactly(tmp_path):
    cfg = tiny(**{"train.dp_noise_multiplier": 1.0})
    images, labels = batch()
    first = trainer(cfg)
    first.train_step(images, labels)
    first.save(tmp_path / "checkpoint.pt")
    first.train_step(images, labels)
    second = trainer(cfg)
    second.restore(tmp_path / "checkpoint.pt")
    second.train_step(images, labels)
    assert torch.equal(weights(first), weights(second))


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        ({"model.norm": "batch"}, "train.dp_sgd: per-sample gradients need a network"),
        (
            {"masking.method": "masking_adamixup"},
            "masking.method=masking_adamixup: its policy draws each k from the images",
        ),
        ({"masking.method": "dctdp"}, "its first stage dctdp learns from the images"),
        ({"federation.strategy": "fedprox"}, "FedProx's proximal term has no per-sample"),
    ],
)
def test_what_dp_sgd_cannot_cover_is_refused_in_one_line(overrides, line):
    with pytest.raises(ConfigError) as err:
        validate(tiny(**overrides))
    assert line in str(err.value) and "\n" not in str(err.value)
