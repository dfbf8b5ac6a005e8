"""Gradient inversion (docs/design.md section 4.2) on tiny models and 16x16 synthetic faces."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ahm_core.attacks import ATTACKS
from ahm_core.attacks.gradient_inversion import (
    OBJECTIVES,
    SCHEDULES,
    InversionOptions,
    TrainingLoss,
    _scheduler,
    blend_cosine_distance,
    cosine_distance,
    invert_gradients,
    layer_cosine_distance,
    match_and_score,
    mechanism,
    recover_labels,
    simulate_update,
    total_variation,
)
from ahm_core.cases import build_case
from ahm_core.config import AHMConfig, TrainConfig, apply_overrides
from ahm_core.data.sources import load_faces, verification_split
from ahm_core.data.synthetic import render_faces
from ahm_core.dp_sgd import PrivateSGD
from ahm_core.masking.pipeline import MaskingPipeline, build_masking
from ahm_core.metrics.privacy import psnr
from ahm_core.models.heads import MixUpArcFace
from ahm_core.privacy import local_dp_std

SIDE, CLASSES, EMBEDDING = 16, 10, 16


class SoftmaxHead(nn.Linear):
    """Linear softmax classifier with the MixUp loss sum_j coefs_j * CE(logits, labels_j)."""

    def forward(self, embeddings: Tensor, labels: Tensor, coefs: Tensor) -> Tensor:
        log_probs = F.log_softmax(super().forward(embeddings), dim=1)
        return -(coefs * log_probs.gather(1, labels)).sum(dim=1)


def tiny_net(in_channels: int, head: str = "softmax", seed: int = 0) -> TrainingLoss:
    """A two-layer MLP on 16x16 inputs with a softmax head over ReLU features (iDLG's setting)
    or an ArcFace head (scale 16) over the linear embedding, as in AHM."""
    torch.manual_seed(seed)
    layers = [
        nn.Flatten(),
        nn.Linear(in_channels * SIDE * SIDE, 32),
        nn.ReLU(),
        nn.Linear(32, EMBEDDING),
    ]
    if head == "softmax":
        return TrainingLoss(nn.Sequential(*layers, nn.ReLU()), SoftmaxHead(EMBEDDING, CLASSES))
    return TrainingLoss(nn.Sequential(*layers), MixUpArcFace(CLASSES, EMBEDDING, scale=16.0))


def faces(identities: Tensor) -> Tensor:
    """One 16x16 synthetic face in [0, 1] per identity."""
    images = render_faces(identities, torch.zeros_like(identities), size=32)
    return F.avg_pool2d(images, 2)


def pipeline(method: str, **mixup: float) -> MaskingPipeline:
    """The method's masking with 15 PPFR-FD channels (for speed) and the given MixUp options."""
    cfg = AHMConfig()
    cfg.masking.method, cfg.masking.num_channels = method, 15
    for name, value in mixup.items():
        setattr(cfg.mixup, name, value)
    return build_masking(cfg)


@pytest.mark.parametrize("head", ["softmax", "arcface"])
def test_fedsgd_recovers_one_unmasked_image(head: str) -> None:
    identity = torch.tensor([3])
    x = faces(identity) * 2 - 1
    labels, coefs = identity[:, None], torch.ones(1, 1)
    net = tiny_net(3, head)
    update = simulate_update(net, x, labels, coefs)
    if head == "softmax":
        # Labels recovered from the update (iDLG), the attacker knowing nothing but the update.
        result = invert_gradients(net, update, tuple(x.shape))
        assert result.labels.tolist() == labels.tolist()
    else:
        result = invert_gradients(
            net, update, tuple(x.shape), labels, coefs, InversionOptions(restarts=4)
        )
    assert float(match_and_score(result.x, x)["cosine"]) > 0.9
    assert result.trace[-1] < result.trace[0]


def test_fedavg_unrolled_local_steps_recover_one_image() -> None:
    identity = torch.tensor([5])
    x = faces(identity) * 2 - 1
    net = tiny_net(3, seed=5)
    options = InversionOptions(local_steps=3, local_lr=0.1, seed=5)
    update = simulate_update(net, x, identity[:, None], torch.ones(1, 1), options)
    fedsgd = simulate_update(net, x, identity[:, None], torch.ones(1, 1))
    assert not torch.allclose(update["backbone.1.weight"], fedsgd["backbone.1.weight"])
    result = invert_gradients(net, update, tuple(x.shape), options=options)
    assert float(match_and_score(result.x, x)["cosine"]) > 0.9


@pytest.mark.parametrize("steps", [1, 3])
def test_simulated_update_is_the_clients_sgd_and_leaves_the_model(steps: int) -> None:
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 8)
    )
    net = TrainingLoss(backbone, MixUpArcFace(CLASSES, 8))
    x, labels, coefs = faces(torch.arange(3)), torch.arange(3)[:, None], torch.ones(3, 1)
    before = copy.deepcopy(net.state_dict())
    options = InversionOptions(local_steps=steps, local_lr=0.05)
    update = simulate_update(net, x, labels, coefs, options)

    client = copy.deepcopy(net)
    sgd = torch.optim.SGD(client.parameters(), lr=options.local_lr)
    for _ in range(steps):
        sgd.zero_grad()
        client(x, labels, coefs).mean().backward()
        sgd.step()
    for name, w in net.named_parameters():
        expected = (w - client.get_parameter(name)) / options.local_lr
        # update = (w - w') / lr: dividing by lr = 0.05 scales float32 rounding up 20 times
        torch.testing.assert_close(update[name], expected.detach(), rtol=1e-4, atol=1e-5)
    for name, value in net.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_recover_labels_finds_the_batch_classes() -> None:
    labels = torch.tensor([7, 2, 9, 4])
    net = tiny_net(3, seed=1)
    update = simulate_update(net, faces(labels) * 2 - 1, labels[:, None], torch.ones(4, 1))
    recovered = recover_labels(update["head.weight"], 4)
    assert sorted(recovered.tolist()) == sorted(labels.tolist())


def test_mixup_coefficients_fitted_jointly_from_recovered_candidates() -> None:
    """MixUp in RGB with lopsided coefficients: the attacker knows neither pairing nor weights."""
    identities = torch.tensor([0, 1])
    generator = torch.Generator().manual_seed(0)
    mixed = pipeline("mixup_rgb", max_coef=0.9)(faces(identities), identities, None, generator)
    net = tiny_net(3)
    update = simulate_update(net, mixed.x, mixed.labels, mixed.coefs)
    candidates = recover_labels(update["head.weight"], 2).expand(2, -1)
    result = invert_gradients(net, update, tuple(mixed.x.shape), candidates)
    scores = match_and_score(result.x, mixed.x)
    assert bool((scores["cosine"] > 0.85).all())

    def per_class(labels: Tensor, coefs: Tensor) -> Tensor:
        return torch.zeros(len(labels), CLASSES).scatter_add(1, labels, coefs)

    fitted = per_class(result.labels, result.coefs)[scores["order"]]
    truth = per_class(mixed.labels, mixed.coefs)
    assert float((fitted - truth).abs().max()) < 0.2


def test_ppfr_fd_mixup_defeats_the_same_attack() -> None:
    """Same tiny model and budget, labels and coefficients given; 'worse' is about the face.

    The attack may recover the mixed PPFR-FD batch (15 channels here, for speed) about as well as
    plain images on some seeds; what it cannot reach is what the attacker wants: the naive
    decoding of its reconstruction loses >= 5 dB of PSNR against the dominant true face, where
    the unmasked reconstruction is the face. (The CGAN of docs/design.md 4.1 is the stronger
    decoder.)
    """
    identities = torch.tensor([1, 2])
    images = faces(identities)
    face_psnr = {}
    for method in ("arcface", "masking_mixup"):
        masking = pipeline(method)
        generator = torch.Generator().manual_seed(0)
        mixed = masking(images, identities, None, generator)
        net = tiny_net(masking.in_channels)
        update = simulate_update(net, mixed.x, mixed.labels, mixed.coefs)
        result = invert_gradients(net, update, tuple(mixed.x.shape), mixed.labels, mixed.coefs)
        scores = match_and_score(result.x, mixed.x)
        if method == "arcface":
            assert bool((scores["cosine"] > 0.9).all())
        dominant = mixed.index.gather(1, mixed.coefs.argmax(dim=1, keepdim=True)).squeeze(1)
        decoded = masking.render(result.x[scores["order"]])
        face_psnr[method] = float(psnr(decoded, images[dominant]).mean())
    assert face_psnr["masking_mixup"] < face_psnr["arcface"] - 5.0


def test_match_and_score_pairs_a_shuffled_batch() -> None:
    generator = torch.Generator().manual_seed(0)
    truth = torch.randn(5, 4, 6, 6, generator=generator)
    shuffle = torch.randperm(5, generator=generator)
    noise = torch.randn(truth.shape, generator=generator)
    small, large = (match_and_score((truth + s * noise)[shuffle], truth) for s in (0.05, 0.3))
    assert torch.equal(shuffle[small["order"]], torch.arange(5))
    assert bool((small["cosine"] > 0.99).all())
    assert bool((small["psnr"] > large["psnr"]).all())


def test_the_objective_is_one_cosine_of_the_whole_updates() -> None:
    g = torch.Generator().manual_seed(0)
    update = [torch.randn(3, 4, generator=g), 100 * torch.randn(5, generator=g)]
    target = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    whole = F.cosine_similarity(
        torch.cat([u.flatten() for u in update]), torch.cat([t.flatten() for t in target]), dim=0
    )
    assert float(cosine_distance(update, target)) == pytest.approx(1 - float(whole))
    per_tensor = [
        F.cosine_similarity(u.flatten(), t.flatten(), dim=0)
        for u, t in zip(update, target, strict=True)
    ]
    assert float(layer_cosine_distance(update, target)) == pytest.approx(
        1 - float(torch.stack(per_tensor).mean())
    )


def test_the_inversion_is_boxed_and_keeps_its_best_iterate() -> None:
    identity = torch.tensor([2, 7])
    x = faces(identity) * 2 - 1
    labels, coefs = identity[:, None], torch.ones(2, 1)
    net = tiny_net(3, "arcface")
    update = simulate_update(net, x, labels, coefs)
    free = InversionOptions(iterations=60, restarts=1, lr=0.3)
    boxed = InversionOptions(iterations=60, restarts=1, lr=0.3, bounds=(-1.0, 1.0))
    unboxed = invert_gradients(net, update, tuple(x.shape), labels, coefs, free)
    result = invert_gradients(net, update, tuple(x.shape), labels, coefs, boxed)
    assert unboxed.x.abs().max() > 1.0  # the test can fail: unboxed, the batch leaves [-1, 1]
    assert result.x.min() >= -1.0 and result.x.max() <= 1.0
    assert result.loss == min(result.trace) and result.loss <= result.trace[-1]


def test_the_default_objective_blends_the_global_and_per_layer_cosines() -> None:
    g = torch.Generator().manual_seed(1)
    update = [torch.randn(3, 4, generator=g), 100 * torch.randn(5, generator=g)]
    target = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    mean = (cosine_distance(update, target) + layer_cosine_distance(update, target)) / 2
    assert float(blend_cosine_distance(update, target)) == pytest.approx(float(mean))
    defaults = InversionOptions()
    assert (defaults.objective, defaults.tv, defaults.schedule) == ("blend", 0.5, "cosine")
    assert OBJECTIVES["blend"] is blend_cosine_distance
    cfg = AHMConfig().attack  # the threat model's attack takes the same defaults
    assert (cfg.gi_objective, cfg.gi_tv) == (defaults.objective, defaults.tv)
    with pytest.raises(ValueError, match="schedule"):
        InversionOptions(schedule="linear")


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_the_step_size_decays_as_the_schedule_says(schedule: str) -> None:
    options = InversionOptions(iterations=80, lr=0.1, schedule=schedule)
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=options.lr)
    scheduler = _scheduler(optimizer, options)
    lrs = []
    for _ in range(options.iterations):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    if schedule == "step":  # x0.1 at 3/8, 5/8 and 7/8 of the run
        assert lrs[29] == pytest.approx(0.1) and lrs[30] == pytest.approx(0.01)
        assert lrs[-1] == pytest.approx(1e-4)
    else:  # cosine: half way at the middle, smooth, to lr / 1000 at the end
        assert lrs[40] == pytest.approx(0.05, abs=1e-3)
        assert all(b < a for a, b in itertools.pairwise(lrs))
        assert lrs[-1] < 1e-3


def test_the_objective_and_schedule_options_reach_the_fit() -> None:
    """The same start and budget: each objective and schedule gives its own trace."""
    identities = torch.tensor([3, 4])
    x = faces(identities) * 2 - 1
    labels, coefs = identities[:, None], torch.ones(2, 1)
    net = tiny_net(3, "arcface")
    update = simulate_update(net, x, labels, coefs)
    settings = [(o, "cosine") for o in OBJECTIVES] + [("blend", "step")]
    traces = [
        invert_gradients(
            net,
            update,
            tuple(x.shape),
            labels,
            coefs,
            InversionOptions(iterations=12, restarts=1, objective=o, schedule=sch),
        ).trace
        for o, sch in settings
    ]
    assert len({tuple(t) for t in traces}) == len(settings)
    assert traces[0][:2] == traces[-1][:2]  # the first step is lr under either schedule


def test_the_total_variation_weight_is_added_to_the_objective() -> None:
    """Same start, weights 0 and 0.7: the first objective values differ by 0.7 * TV(start)."""
    identity = torch.tensor([2, 7])
    x = faces(identity) * 2 - 1
    labels, coefs = identity[:, None], torch.ones(2, 1)
    net = tiny_net(3, "arcface")
    update = simulate_update(net, x, labels, coefs)
    first = {}
    for tv in (0.0, 0.7):
        options = InversionOptions(iterations=1, restarts=1, tv=tv, seed=3, bounds=(-1.0, 1.0))
        first[tv] = invert_gradients(net, update, tuple(x.shape), labels, coefs, options).trace[0]
    start = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)).clamp(-1.0, 1.0)
    assert float(total_variation(start)) > 0.5  # a noisy start: the difference is not small
    assert first[0.7] - first[0.0] == pytest.approx(0.7 * float(total_variation(start)), rel=1e-5)


def test_a_fixed_k_above_the_batch_size_inverts_a_batch_of_k(tmp_path):
    """MixUp with k=5 cannot mix in a client batch of attack.gi_batch=4: the attack inverts an
    update on 5 images instead of failing (as it did on the paper tables' k=5 and k=6 rows)."""
    case = tiny_case(tmp_path, **{"mixup.k": 5, "attack.victims": 4, "attack.gi_batch": 4})
    rec = ATTACKS["gradient_inversion"].run(case)
    assert len(rec.targets) == 5 and rec.faces.shape[0] == 5
    assert 0.0 < rec.figures["input_psnr"] < 100.0


def test_the_mean_of_clients_updates_is_their_union_batchs_fedsgd_update() -> None:
    """Secure aggregation shows the mean of N clients' updates: in FedSGD that is the update of
    the union of their equal batches, so inverting it means recovering all N batches at once."""
    net = tiny_net(3, "arcface")
    x, labels, coefs = faces(torch.arange(4)) * 2 - 1, torch.arange(4)[:, None], torch.ones(4, 1)
    two = simulate_update(net, x, labels, coefs, InversionOptions(clients=2))
    union = simulate_update(net, x, labels, coefs)
    halves = [simulate_update(net, x[s], labels[s], coefs[s]) for s in (slice(0, 2), slice(2, 4))]
    for name in union:
        torch.testing.assert_close(two[name], union[name], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(two[name], (halves[0][name] + halves[1][name]) / 2)
    steps = InversionOptions(clients=2, local_steps=3)  # FedAvg: no longer the union's update
    unrolled = simulate_update(net, x, labels, coefs, steps)
    assert not torch.allclose(unrolled["backbone.1.weight"], union["backbone.1.weight"])


def test_the_attack_inverts_the_mean_of_several_clients_updates(tmp_path):
    overrides = {"mixup.k": 2, "attack.victims": 8, "attack.gi_batch": 2, "attack.gi_clients": 3}
    rec = ATTACKS["gradient_inversion"].run(tiny_case(tmp_path, **overrides))
    assert len(rec.targets) == 6  # 3 clients x 2 images, each client mixing its own
    assert "the mean of 3 clients' updates" in rec.summary


def flat(update: dict[str, Tensor]) -> Tensor:
    return torch.cat([u.flatten() for u in update.values()])


@pytest.mark.filterwarnings("ignore:Full backward hook")  # Opacus's hooks on the first layer
def test_under_dp_sgd_the_simulated_update_is_the_step_opacus_takes() -> None:
    """Without noise, DP-SGD's update is the step Opacus's DPOptimizer takes on the same batch:
    each sample's gradient over backbone and head clipped to C, summed, over the batch."""
    net = tiny_net(3, "arcface")
    x, labels, coefs = faces(torch.arange(4)) * 2 - 1, torch.arange(4)[:, None], torch.ones(4, 1)
    clip = 0.05
    update = simulate_update(
        net, x, labels, coefs, InversionOptions(local_lr=1.0, sample_clip=clip)
    )
    clean = simulate_update(net, x, labels, coefs, InversionOptions(local_lr=1.0))
    assert float(flat(clean).norm()) > 4 * clip  # the batch's update is clipped, not passed
    twin = copy.deepcopy(net)
    t = TrainConfig(batch_size=4, dp_sgd=True, dp_noise_multiplier=0.0, dp_max_grad_norm=clip)
    private = PrivateSGD(twin.backbone, twin.head, torch.optim.SGD(twin.parameters(), lr=1.0), t, 1)
    before = {name: p.detach().clone() for name, p in twin.named_parameters()}
    private.optimizer.zero_grad()
    twin(x, labels, coefs).mean().backward()
    private.optimizer.step()
    for name, p in twin.named_parameters():
        torch.testing.assert_close(update[name], before[name] - p.detach(), rtol=1e-4, atol=1e-7)


def test_the_dp_mechanisms_noise_reaches_the_update_at_its_scale_and_is_seeded() -> None:
    """DP-SGD: noise of std z x C / B on the gradient of one step; local DP: the update clipped
    to C in weights, then noise of std sigma on every weight, sigma / lr in gradient units."""
    net = tiny_net(3, "arcface")
    x, labels, coefs = faces(torch.arange(4)) * 2 - 1, torch.arange(4)[:, None], torch.ones(4, 1)
    lr, clip = 0.5, 0.05
    cases = {  # options without noise, with noise, and the noise's std in gradient units
        "dp_sgd": ({"sample_clip": clip}, {"sample_noise": 3.0}, 3.0 * clip / 4),
        "local_dp": ({"update_clip": 0.01}, {"update_noise": 0.2}, 0.2 / lr),
    }
    for clipped, noised, std in cases.values():
        options = InversionOptions(local_lr=lr, **clipped)
        quiet = flat(simulate_update(net, x, labels, coefs, options))
        loud = InversionOptions(local_lr=lr, **clipped, **noised)
        noisy = flat(simulate_update(net, x, labels, coefs, loud))
        assert float((noisy - quiet).std()) == pytest.approx(std, rel=0.03)
        assert torch.equal(noisy, flat(simulate_update(net, x, labels, coefs, loud)))
    local = simulate_update(net, x, labels, coefs, InversionOptions(local_lr=lr, update_clip=0.01))
    assert float(flat(local).norm()) * lr == pytest.approx(0.01, rel=1e-4)  # clipped, in weights


def test_the_attack_inverts_the_update_as_the_clients_mechanism_sends_it(tmp_path):
    """DP-SGD and local DP reach the attack's options from the config; DP-FedAvg, whose noise is
    added to the aggregate after the server saw each update, adds nothing."""
    private = {"masking.method": "arcface", "model.norm": "group", "train.dp_sgd": True}
    cfg = apply_overrides(AHMConfig(), {**private, "train.dp_noise_multiplier": 2.0})
    assert mechanism(cfg) == {"sample_clip": 1.0, "sample_noise": 2.0}
    local = apply_overrides(AHMConfig(), {"federation.local_dp": True, "federation.screen": False})
    f = local.federation
    std = local_dp_std(f.local_dp_sensitivity, f.local_dp_epsilon, f.local_dp_delta)
    assert mechanism(local) == {"update_clip": 1.0, "update_noise": std}
    assert mechanism(apply_overrides(AHMConfig(), {"federation.dp": "client_fixed"})) == {}
    rec = ATTACKS["gradient_inversion"].run(tiny_case(tmp_path, **private))
    assert rec.summary.endswith("(initial model, as DP-SGD clips and noises it)")


def tiny_case(folder, **overrides):
    """A case of MixUp RGB at a budget of a few steps, on 20 synthetic identities at 32 px."""
    cfg = apply_overrides(
        AHMConfig(),
        {
            "data.num_identities": 20,
            "data.images_per_identity": 6,
            "data.image_size": 32,
            "model.width": 8,
            "masking.method": "mixup_rgb",
            "attack.aux_images": 24,
            "attack.holdout": 8,
            "attack.gallery_per_identity": 3,
            "attack.demix_images": 4,
            "attack.gi_iterations": 2,
            "attack.gi_restarts": 1,
            "attack.cgan_epochs": 1,
            "attack.rungs": 1,
            "attack.ngf": 8,
            "attack.ndf": 8,
            **overrides,
        },
    )
    faces = load_faces(cfg.data)
    split = verification_split(faces.labels, cfg.data)
    return build_case(cfg, faces, split.train, split.pairs, folder, torch.device("cpu"))
