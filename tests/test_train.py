import collections
import contextlib
import copy
import itertools
import json
import math
from collections.abc import Iterator

import pytest
import torch
from scales import TRAIN, config
from torch.utils._python_dispatch import TorchDispatchMode

from ahm_core.config import AHMConfig, apply_overrides
from ahm_core.data.sources import load_faces, relabel, verification_split
from ahm_core.experiment import run_centralized
from ahm_core.masking import build_masking
from ahm_core.masking.methods import METHODS
from ahm_core.train import Trainer, _poly_with_warmup, lookahead_mode


def tiny(method: str, **extra) -> AHMConfig:
    return config(TRAIN, **{"masking.method": method, **extra})


def setup(cfg: AHMConfig):
    faces = load_faces(cfg.data)
    split = verification_split(faces.labels, cfg.data)
    labels, n = relabel(faces.labels[split.train])
    trainer = Trainer(cfg, build_masking(cfg), n, len(split.train) // cfg.train.batch_size)
    return faces, split, labels, trainer


def weights(trainer: Trainer) -> list[torch.Tensor]:
    return [
        p.detach().clone() for p in [*trainer.backbone.parameters(), *trainer.head.parameters()]
    ]


def test_adaptive_training_logs_k_and_updates_the_policy():
    faces, split, labels, trainer = setup(tiny("masking_adamixup"))
    metrics = trainer.train_epoch(faces, split.train, labels)
    steps = len(split.train) // 16
    assert sum(metrics["k_histogram"].values()) == steps * 16  # one k per sample
    assert set(metrics["k_histogram"]) <= {"2", "3", "4"}
    assert set(metrics["policy"]) >= {"loss", "entropy", "baseline"}
    # One PMF per policy update (interval 2), each a distribution over k_set.
    assert len(metrics["pmfs"]) == math.ceil(steps / 2)
    for pmf in metrics["pmfs"]:
        assert len(pmf) == 3 and sum(pmf) == pytest.approx(1.0, abs=1e-4)
    report = trainer.verify(faces, split.pairs)
    assert 0.0 <= report["accuracy"] <= 1.0 and report["pairs"] == len(split.pairs)


def test_a_per_face_policy_under_a_loss_budget_trains_and_logs_its_multiplier():
    cfg = tiny(
        "masking_adamixup",
        **{"policy.context": "sample", "policy.loss_budget": 0.0, "policy.reward": "kl"},
    )
    faces, split, labels, trainer = setup(cfg)
    drawn, mixes, budgeted = [], [], []
    sample, mix, budget = trainer.policy.sample, trainer.masking.mix, trainer.policy.budgeted_reward
    trainer.policy.sample = lambda x, g=None, pmf=None: drawn.append(pmf) or sample(x, g, pmf)
    trainer.masking.mix = lambda x, y, ks, g: mixes.append(ks.clone()) or mix(x, y, ks, g)
    trainer.policy.budgeted_reward = lambda *a: budgeted.append(a) or budget(*a)
    metrics = trainer.train_epoch(faces, split.train, labels)
    steps = len(split.train) // 16
    assert all(pmf.shape == (16, 3) for pmf in drawn) and len(drawn) == steps  # every batch
    # Each update adds the reference: the same faces mixed at the smallest k, 2.
    updates = math.ceil(steps / 2)
    assert len(mixes) == steps + updates
    assert sum(bool((ks == 2).all()) for ks in mixes) >= updates
    assert metrics["policy_updates"] == updates
    assert len(metrics["pmfs"]) == len(metrics["multipliers"]) == updates
    for pmf in metrics["pmfs"]:  # the mean of the batch's per-face PMFs
        assert sum(pmf) == pytest.approx(1.0, abs=1e-4)
    assert all(m >= 0 for m in metrics["multipliers"])
    assert metrics["policy"]["multiplier"] == metrics["multipliers"][-1]
    # The budget's reward: each mixed label's entropy (at most log 4 for k <= 4, 0 for one
    # identity), against FRNet1's loss on the policy's mix and on the k = 2 reference.
    for mixing, loss, reference in budgeted:
        assert mixing.shape == loss.shape == reference.shape == (16,)
        assert bool((mixing >= 0).all()) and bool((mixing <= math.log(4) + 1e-5).all())
        assert not torch.equal(loss, reference)


def test_resume_gives_the_same_model_as_an_uninterrupted_run(tmp_path):
    cfg = tiny("masking_adamixup")
    faces, split, labels, straight = setup(cfg)
    straight.fit(faces, split.train, labels)
    _, _, _, first = setup(cfg)
    first.train_epoch(faces, split.train, labels)
    first.save(tmp_path / "ckpt.pt")
    _, _, _, second = setup(cfg)
    torch.manual_seed(1234)  # whatever happens in between must not matter
    second.restore(tmp_path / "ckpt.pt")
    second.fit(faces, split.train, labels)
    assert second.epoch == straight.epoch == 2
    for a, b in zip(weights(straight), weights(second), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert straight.policy.proportions() == second.policy.proportions()


def test_training_reduces_the_loss():
    faces, split, labels, trainer = setup(tiny("ppfr_fd", **{"train.epochs": 4}))
    history = trainer.fit(faces, split.train, labels)
    assert history[-1]["loss"] < 0.8 * history[0]["loss"]


def test_lookahead_mode_freezes_batchnorm_statistics_and_drops_no_units():
    net = torch.nn.Sequential(torch.nn.BatchNorm1d(3), torch.nn.Dropout(0.5)).train()
    bn = net[0]
    x = torch.randn(8, 3) + 5
    with lookahead_mode(net):
        out, again = net(x), net(x)
    assert torch.equal(out, again)  # no dropout mask: the same reward twice
    # The batch's own statistics normalised it, as in training: mean 0 per feature.
    torch.testing.assert_close(out.mean(dim=0), torch.zeros(3), atol=1e-5, rtol=0)
    assert torch.equal(bn.running_mean, torch.zeros(3)) and bn.momentum == 0.1
    assert net.training and net[1].training
    bn(x)
    assert bn.running_mean.abs().sum() > 0
    assert not torch.equal(net(x), net(x))  # dropout is back


@pytest.mark.parametrize("reward", ["loss", "margin_free", "kl"])
def test_the_policy_is_rewarded_with_the_configured_loss_of_both_networks(reward, faces_and_labels):
    faces, train, (labels, classes) = faces_and_labels
    cfg = tiny("masking_adamixup", **{"policy.reward": reward, "policy.interval": 1})
    trainer = Trainer(cfg, build_masking(cfg), classes, steps_per_epoch=10)
    seen = {}

    def head_losses(embeddings, mixed_labels, coefs):
        pair = type(trainer.head).losses(trainer.head, embeddings, mixed_labels, coefs)
        seen.setdefault("losses", []).append(tuple(p.detach() for p in pair))
        return pair

    def combine(reward1, reward2):
        seen["rewards"] = (reward1, reward2)
        return reward1 + reward2

    trainer.head.losses = head_losses
    trainer.policy.reward = combine
    trainer.train_step(faces.images_uint8(train[:16]), labels[:16])
    (step_margin, step_free, step_kl), (ahead_margin, ahead_free, ahead_kl) = seen["losses"]
    which = {
        "loss": (step_margin, ahead_margin),
        "margin_free": (step_free, ahead_free),
        "kl": (step_kl, ahead_kl),
    }
    for got, expected in zip(seen["rewards"], which[reward], strict=True):
        torch.testing.assert_close(got, expected.float())
    assert bool((step_free < step_margin).all())  # the margin only ever raises the loss
    # kl is the margin-free loss less its floor, the mixed label's entropy (0 where every
    # component is of one identity): at least 0, and below margin_free wherever labels differ.
    assert bool((step_kl >= 0).all()) and bool((step_kl <= step_free).all())
    assert bool((step_kl < step_free).any())


def test_each_update_takes_log_probabilities_from_the_pmf_its_k_were_drawn_from(faces_and_labels):
    faces, train, (labels, classes) = faces_and_labels
    cfg = tiny("masking_adamixup", **{"policy.interval": 3, "policy.lr": 0.05})
    trainer = Trainer(cfg, build_masking(cfg), classes, steps_per_epoch=10)
    update, checked = trainer.policy.update, []

    def checked_update(x, ks, rewards):
        # The PMF of the batch being learnt from, with the network as it drew: the cached one.
        torch.testing.assert_close(trainer.policy.pmf(x).cpu(), trainer._pmf)
        checked.append(len(trainer.pmfs))
        return update(x, ks, rewards)

    trainer.policy.update = checked_update
    for step in range(7):  # a new batch every step
        rows = slice(16 * (step % 6), 16 * (step % 6) + 16)
        trainer.train_step(faces.images_uint8(train[rows]), labels[rows])
    assert checked == [1, 2, 3]  # updates at steps 0, 3, 6, each on a PMF of its own step
    assert len(trainer.pmfs) == 3 and not torch.equal(trainer.pmfs[0], trainer.pmfs[2])


def test_schedule_warms_up_then_decays():
    values = [_poly_with_warmup(s, 4, 20) for s in range(20)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a > b for a, b in itertools.pairwise(values[4:]))
    assert values[-1] == pytest.approx((1 / 16) ** 2)


def test_centralized_run_writes_metrics_and_resumes(tmp_path):
    cfg = tiny("masking_adamixup", **{"train.epochs": 1})
    metrics = run_centralized(cfg, tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["verification_accuracy"] == metrics["verification_accuracy"]
    assert set(saved["k_proportions"]) <= {"2", "3", "4"}
    assert saved["k_proportions_final_epoch"] == saved["k_proportions"]  # one epoch so far
    assert (tmp_path / "k_dynamics.png").stat().st_size > 1000
    assert saved["checkpoint"] == str(tmp_path / "checkpoint.pt")
    more = run_centralized(apply_overrides(cfg, {"train.epochs": 2}), tmp_path)
    assert more["epochs"] == 2 and len(more["history"]) == 2
    last = json.loads(json.dumps(more["history"][-1]["k_histogram"]))
    total = sum(last.values())
    assert more["k_proportions_final_epoch"] == {k: round(v / total, 4) for k, v in last.items()}


def test_dp_run_fits_its_eigenfaces_on_training_images(tmp_path):
    metrics = run_centralized(
        tiny("dp", **{"train.epochs": 1, "masking.dp_components": 16}), tmp_path
    )
    assert 0.0 <= metrics["verification_accuracy"] <= 1.0


class MetaStalls(TorchDispatchMode):
    """Fails on what would stall a CUDA stream, done to tensors on the meta device (which have
    no values): reading a value to the host, a copy to the CPU, or a copy to the device without
    non_blocking (CUDA's pageable copy waits for the stream). So it runs anywhere."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default and args[0].is_meta:
            raise AssertionError(f"reads a device value to the host: {func}")
        copies = {
            torch.ops.aten._to_copy.default: lambda: (args[0], kwargs.get("device")),
            torch.ops.aten.copy_.default: lambda: (args[1], args[0].device),
        }
        if func in copies:
            src, dst = copies[func]()
            dst = torch.device(dst) if dst is not None else src.device
            blocking = not kwargs.get("non_blocking", args[2] if len(args) > 2 else False)
            if src.is_meta and dst.type == "cpu":
                raise AssertionError(f"copies a device tensor {tuple(src.shape)} to the host")
            if src.device.type == "cpu" and dst.type == "meta" and blocking:
                raise AssertionError(f"blocking host-to-device copy of {tuple(src.shape)}")
        return func(*args, **kwargs)


@contextlib.contextmanager
def no_stream_stalls(device: str) -> Iterator[None]:
    """CUDA's own sync check on a GPU; `MetaStalls` on the meta device."""
    if device == "meta":
        with MetaStalls():
            yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.fixture(scope="module")
def faces_and_labels():
    cfg = tiny("arcface")
    faces = load_faces(cfg.data)
    train = verification_split(faces.labels, cfg.data).train
    return faces, train, relabel(faces.labels[train])


DEVICES = [
    "meta",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_step_between_policy_updates_never_waits_for_the_device(device, method, faces_and_labels):
    faces, train, (labels, classes) = faces_and_labels
    cfg = tiny(method, **{"train.device": device, "policy.interval": 4, "masking.dp_components": 8})
    fit = faces.images_uint8(train).float() / 255 if method == "dp" else None
    trainer = Trainer(cfg, build_masking(cfg, fit), classes, steps_per_epoch=10)
    images, batch_labels = faces.images_uint8(train[:16]), labels[:16]
    if device == "meta":  # no values to read: start past the policy update and its PMF read
        trainer.step, trainer._pmf = 1, torch.full((len(cfg.policy.k_set),), 1 / 3)
    else:
        trainer.train_step(images, batch_labels)  # step 0: a policy update, which drops the PMF
    trainer.train_step(images, batch_labels)  # the PMF is refreshed (one read), caches filled
    with no_stream_stalls(device):
        losses = trainer.train_step(images, batch_labels)  # ks drawn and mixed on the CPU
    assert losses.shape == (16,) and losses.device.type == device


def test_a_compiled_backbone_trains_as_the_eager_one(faces_and_labels):
    faces, train, (labels, classes) = faces_and_labels
    images, batch_labels = faces.images_uint8(train[:16]), labels[:16]
    losses, names = [], []
    for compiled in (False, True):  # without dropout, which draws differently when compiled
        cfg = tiny("masking_adamixup", **{"model.dropout": 0.0, "train.compile": compiled})
        trainer = Trainer(cfg, build_masking(cfg), classes, steps_per_epoch=10)
        losses.append(torch.stack([trainer.train_step(images, batch_labels) for _ in range(3)]))
        names.append(list(trainer.state_dict()["backbone"]))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-3, atol=1e-3)
    assert names[1] == names[0]  # checkpoints load into either


def test_a_policy_interval_adds_one_backbone_forward_and_two_policy_forwards(faces_and_labels):
    faces, train, (labels, classes) = faces_and_labels
    cfg = tiny("masking_adamixup", **{"policy.interval": 4})
    trainer = Trainer(cfg, build_masking(cfg), classes, steps_per_epoch=10)
    calls = collections.Counter()
    trainer.backbone.register_forward_hook(lambda *_: calls.update(["backbone"]))
    trainer.policy.net.register_forward_hook(lambda *_: calls.update(["policy"]))
    for _ in range(8):  # policy updates at steps 0 and 4, each on a PMF of its own batch
        trainer.train_step(faces.images_uint8(train[:16]), labels[:16])
    # The reward of the step's own loss reuses its forward; the lookahead is the updated network.
    assert calls == {"backbone": 8 + 2, "policy": 2 + 2}


def test_a_trained_first_stage_learns_with_the_network_and_resumes_exactly(faces_and_labels):
    faces, train, (labels, classes) = faces_and_labels
    cfg = tiny("dctdp_adamixup", **{"masking.dctdp_epsilon": 10.0})
    trainer = Trainer(cfg, build_masking(cfg), classes, steps_per_epoch=10)
    images, batch_labels = faces.images_uint8(train[:16]), labels[:16]
    start = trainer.masking.first_stage.allocation().detach().clone()
    for _ in range(3):
        trainer.train_step(images, batch_labels)
    moved = trainer.masking.first_stage.allocation().detach()
    assert not torch.allclose(moved, start)  # the recognition loss moved the budget
    assert float(moved.sum()) == pytest.approx(10.0, rel=1e-5)  # still the whole epsilon
    saved = copy.deepcopy(trainer.state_dict())
    expected = trainer.train_step(images, batch_labels)
    again = Trainer(cfg, build_masking(cfg), classes, steps_per_epoch=10)
    again.load_state_dict(saved)
    torch.testing.assert_close(again.train_step(images, batch_labels), expected, rtol=0, atol=0)
    torch.testing.assert_close(
        again.masking.first_stage.allocation(), trainer.masking.first_stage.allocation()
    )


def test_a_trained_first_stage_anneals_with_the_network(faces_and_labels):
    faces, train, (labels, classes) = faces_and_labels
    cfg = tiny("dctdp", **{"train.epochs": 2, "train.warmup_epochs": 0})
    trainer = Trainer(cfg, build_masking(cfg), classes, steps_per_epoch=2)
    base = cfg.masking.dctdp_lr
    rates = []
    for _ in range(4):
        rates.append(trainer.stage_optimizer.param_groups[0]["lr"] / base)
        trainer.train_step(faces.images_uint8(train[:16]), labels[:16])
    expected = [trainer.schedule(step) for step in range(4)]
    assert rates == pytest.approx(expected) and rates[-1] < rates[0]
    trainer.seek(1)  # a federated client joining at round 2: both schedules at its step
    assert trainer.stage_optimizer.param_groups[0]["lr"] == pytest.approx(
        base * trainer.schedule(2)
    )
