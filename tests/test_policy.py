import copy
import io
import math

import pytest
import torch

from ahm_core.config import PolicyConfig
from ahm_core.policy import (
    AdaptivePolicy,
    StrategyNet,
    build_policy,
    combine_rewards,
    mixing_floors,
)

K_SET = (2, 3, 4, 5)
C = 63


def make_policy(seed: int = 0, **cfg) -> AdaptivePolicy:
    torch.manual_seed(seed)
    return build_policy(PolicyConfig(**cfg), C)


def batch(n: int = 8, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, C, size, size, generator=torch.Generator().manual_seed(seed))


def fix_pmf(policy: AdaptivePolicy, probs: list[float]) -> None:
    """Make the PMF exactly `probs` whatever the input: zero FC weights, log-probability biases."""
    with torch.no_grad():
        policy.net.fc.weight.zero_()
        policy.net.fc.bias.copy_(torch.tensor(probs).log())


def expected_k(pmf: torch.Tensor) -> float:
    return float(pmf @ torch.tensor(K_SET, dtype=torch.float32))


def entropy(pmf: torch.Tensor) -> float:
    return float(-(pmf * pmf.log()).sum())


@pytest.mark.parametrize(
    ("n", "size", "arch", "width"),
    [(8, 32, "resnet18", 512), (2, 112, "resnet18", 512), (8, 32, "small", 64)],
)
def test_strategy_net_gives_one_logit_vector_per_batch(n, size, arch, width):
    torch.manual_seed(0)
    net = StrategyNet(C, len(K_SET), arch)
    x = batch(n, size)
    logits = net(x)
    assert logits.shape == (len(K_SET),)
    features = net.features(x)
    assert features.shape == (n, width)
    # The batch is averaged before the FC, not after it (equal here only because FC is affine).
    torch.testing.assert_close(logits, net.fc(features.mean(dim=0)))
    assert not torch.allclose(logits, net.fc(features[0]))
    with pytest.raises(ValueError, match="arch"):
        StrategyNet(C, len(K_SET), "resnet50")


def test_pmf_is_a_distribution_over_the_whole_batch():
    policy = make_policy()
    x = batch()
    pmf = policy.pmf(x)
    assert pmf.shape == (len(K_SET),) and (pmf > 0).all()
    torch.testing.assert_close(pmf.sum(), torch.tensor(1.0))
    torch.testing.assert_close(policy.pmf(x[torch.randperm(8)]), pmf, rtol=0, atol=1e-6)
    part = policy.pmf(x[:3])
    assert part.shape == pmf.shape
    assert (part - pmf).abs().max() > 1e-4  # the PMF depends on every sample of the batch


def test_build_policy_rejects_no_input_channels():
    with pytest.raises(ValueError, match="in_channels"):
        build_policy(PolicyConfig(), 0)


def test_per_sample_draws_follow_the_pmf_and_fill_the_histogram():
    policy = make_policy()
    probs = [0.1, 0.2, 0.3, 0.4]
    fix_pmf(policy, probs)
    x = batch(n=2000, size=8)
    ks = policy.sample(x, torch.Generator().manual_seed(3))
    assert ks.shape == (2000,) and ks.dtype == torch.long
    assert set(ks.unique().tolist()) == set(K_SET)
    counts = torch.bincount(ks, minlength=6)[list(K_SET)]
    assert policy.histogram() == dict(zip(K_SET, counts.tolist(), strict=True))
    for k, p in zip(K_SET, probs, strict=True):
        assert abs(policy.proportions()[k] - p) < 0.04


def test_one_k_per_batch_when_not_per_sample():
    policy = make_policy(per_sample=False)
    fix_pmf(policy, [0.25, 0.25, 0.25, 0.25])
    x = batch(n=4, size=8)
    g = torch.Generator().manual_seed(4)
    chosen = []
    for _ in range(40):
        ks = policy.sample(x, g)
        assert ks.shape == (4,) and (ks == ks[0]).all()
        chosen.append(int(ks[0]))
    assert len(set(chosen)) > 1  # a fresh draw per batch
    assert policy.histogram() == {k: 4 * chosen.count(k) for k in K_SET}


def test_histogram_reset_and_proportions():
    policy = make_policy()
    x = batch(n=6, size=16)
    policy.sample(x)
    policy.sample(x)
    hist = policy.histogram()
    assert sum(hist.values()) == 12
    assert policy.proportions() == {k: c / 12 for k, c in hist.items()}
    policy.reset_histogram()
    assert policy.histogram() == dict.fromkeys(K_SET, 0)
    assert policy.proportions() == dict.fromkeys(K_SET, 0.0)


@pytest.mark.parametrize(("sign", "target"), [(1.0, 5), (-1.0, 2)])
def test_reinforce_moves_the_pmf_towards_the_rewarded_k(sign, target):
    """Reward = sign * k: the policy maximises it, so larger (sign +1) or smaller k win."""
    policy = make_policy(lr=1e-3, entropy=0.0)
    held_out = batch(seed=100)
    before = policy.pmf(held_out)
    g = torch.Generator().manual_seed(2)
    for step in range(6):
        x = batch(seed=200 + step)
        ks = policy.sample(x, g)
        policy.update(x, ks, sign * ks.float())
    after = policy.pmf(held_out)
    # Seen (seed 0): E[k] 3.26 -> 4.87, P(5) 0.22 -> 0.90; reversed: E[k] -> 2.10, P(2) -> 0.92.
    assert sign * (expected_k(after) - expected_k(before)) > 0.8
    assert after[K_SET.index(target)] > 0.75


def test_constant_rewards_carry_no_signal_without_entropy_bonus():
    policy = make_policy(entropy=0.0)
    x = batch()
    before = policy.pmf(x)
    for _ in range(3):
        stats = policy.update(x, policy.sample(x), torch.full((8,), 7.0))
    assert stats["baseline"] == 7.0 and stats["reward"] == 7.0
    torch.testing.assert_close(policy.pmf(x), before, rtol=0, atol=0)


def test_entropy_bonus_alone_spreads_a_peaked_pmf():
    policy = make_policy(lr=1e-3, entropy=1.0)
    fix_pmf(policy, [0.85, 0.05, 0.05, 0.05])
    x = batch()
    entropies = [entropy(policy.pmf(x))]
    for _ in range(3):
        policy.update(x, policy.sample(x), torch.full((8,), 3.0))
        entropies.append(entropy(policy.pmf(x)))
    # Seen: 0.59 -> 0.93 -> 1.26 -> 1.38 (uniform: log 4 = 1.386).
    assert entropies == sorted(entropies) and entropies[-1] > 1.2


def test_baseline_starts_at_the_first_mean_then_moves_with_momentum():
    policy = make_policy(baseline_momentum=0.9)
    assert math.isnan(policy.baseline)
    x = batch(n=4, size=16)
    ks = torch.tensor([2, 3, 4, 5])
    used = []
    for rewards in ([1.0, 3.0, 2.0, 2.0], [4.0, 4.0, 4.0, 4.0], [6.0, 6.0, 6.0, 6.0]):
        used.append(float(policy.update(x, ks, torch.tensor(rewards))["baseline"]))
    assert used == pytest.approx([2.0, 2.0, 2.2])  # each update subtracts the one before it
    assert policy.baseline == pytest.approx(2.58)


def test_batch_mean_baseline_is_the_mean_of_the_other_samples():
    policy = make_policy(baseline="batch_mean", entropy=0.0)
    x, ks = batch(n=4, size=16), torch.tensor([2, 3, 4, 5])
    rewards = torch.tensor([1.0, 3.0, 2.0, 6.0])
    log_probs = torch.log_softmax(policy.net(x), dim=0).detach()
    stats = policy.update(x, ks, rewards)
    others = (rewards.sum() - rewards) / 3  # 11/3, 3, 10/3, 2
    expected = -((rewards - others) * log_probs[ks - 2]).mean()
    assert float(stats["loss"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(stats["baseline"]) == pytest.approx(float(rewards.mean()))


def test_batch_mean_baseline_follows_a_falling_reward_that_the_moving_average_trails():
    # Every batch's rewards are equal but fall from batch to batch: no k is better than another.
    moving, loo = make_policy(entropy=0.0), make_policy(baseline="batch_mean", entropy=0.0)
    x, ks = batch(n=4, size=16), torch.tensor([2, 2, 5, 5])
    start = moving.pmf(x)
    for level in (10.0, 8.0, 6.0, 4.0):
        for policy in (moving, loo):
            policy.update(x, ks, torch.full((4,), level))
    torch.testing.assert_close(loo.pmf(x), start)  # nothing learnt from nothing
    assert not torch.allclose(moving.pmf(x), start, atol=1e-4)  # the trailing b taught it


def test_batch_mean_baseline_needs_per_sample_k():
    with pytest.raises(ValueError, match="per-sample"):
        make_policy(baseline="batch_mean", per_sample=False)


def test_update_rejects_unknown_k_and_bad_shapes():
    policy = make_policy()
    x = batch(n=4, size=16)
    with pytest.raises(ValueError, match="one of"):
        policy.update(x, torch.tensor([2, 3, 7, 2]), torch.zeros(4))
    with pytest.raises(ValueError, match="shape"):
        policy.update(x, torch.tensor([2, 3, 4]), torch.zeros(3))


def test_rewards_combine_with_the_configured_weights():
    r1 = torch.tensor([1.0, 2.0], requires_grad=True)
    r2 = torch.tensor([10.0, 20.0])
    combined = combine_rewards(r1, r2, 2.0, 0.5)
    torch.testing.assert_close(combined, torch.tensor([7.0, 14.0]))
    assert not combined.requires_grad
    policy = make_policy(alpha=0.0, beta=3.0)
    torch.testing.assert_close(policy.reward(r1, r2), torch.tensor([30.0, 60.0]))
    with pytest.raises(ValueError, match="shape"):
        combine_rewards(r1, torch.zeros(3), 1.0, 1.0)


def test_state_dict_round_trip_restores_the_policy_exactly():
    original = make_policy(seed=0, lr=1e-3)
    x = batch()
    g = torch.Generator().manual_seed(5)
    for _ in range(2):
        ks = original.sample(x, g)
        original.update(x, ks, ks.float())
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    restored = make_policy(seed=1, lr=1e-3)
    assert not torch.equal(restored.pmf(x), original.pmf(x))
    restored.load_state_dict(torch.load(buffer, weights_only=True))

    assert torch.equal(restored.pmf(x), original.pmf(x))
    assert restored.histogram() == original.histogram()
    assert restored.baseline == original.baseline
    ks = original.sample(x, torch.Generator().manual_seed(6))
    assert torch.equal(restored.sample(x, torch.Generator().manual_seed(6)), ks)
    # The optimiser's moments came back too: one more identical step stays identical.
    original.update(x, ks, ks.float())
    restored.update(x, ks, ks.float())
    assert torch.equal(restored.pmf(x), original.pmf(x))


def test_load_state_dict_refuses_another_candidate_set():
    state = copy.deepcopy(make_policy().state_dict())
    other = make_policy(k_set=(2, 3, 4, 6))
    with pytest.raises(ValueError, match="k_set"):
        other.load_state_dict(state)


def test_a_per_face_policy_gives_each_image_its_own_pmf_and_draw():
    policy = make_policy(net="small", context="sample")
    x = batch(n=6, size=16)
    pmf = policy.pmf(x)
    assert pmf.shape == (6, len(K_SET))
    torch.testing.assert_close(pmf.sum(dim=1), torch.ones(6))
    assert not torch.allclose(pmf[0], pmf[1])  # the images differ, so do their PMFs
    # Row i certain of k = K_SET[i % 4]: each image's k comes from its own row.
    rows = torch.eye(len(K_SET))[[i % len(K_SET) for i in range(6)]]
    ks = policy.sample(x, torch.Generator().manual_seed(0), pmf=rows)
    assert ks.tolist() == [K_SET[i % len(K_SET)] for i in range(6)]
    assert policy.histogram() == {2: 2, 3: 2, 4: 1, 5: 1}


def test_a_per_face_update_takes_each_sample_s_log_probability_from_its_own_row():
    policy = make_policy(net="small", context="sample", entropy=0.0, lr=1e-2)
    x = batch(n=4, size=16)
    ks = torch.tensor([2, 3, 4, 5])
    rewards = torch.tensor([1.0, -1.0, 0.0, 0.0])
    logits = policy.net(x)
    chosen = torch.log_softmax(logits, dim=1)[torch.arange(4), torch.tensor([0, 1, 2, 3])]
    expected = -((rewards - rewards.mean()) * chosen).mean()  # first call: b = mean reward
    stats = policy.update(x, ks, rewards)
    torch.testing.assert_close(stats["loss"], expected.detach())
    after = policy.pmf(x)
    before = torch.softmax(logits.detach(), dim=1)
    assert after[0, 0] > before[0, 0] and after[1, 1] < before[1, 1]


def test_a_per_face_context_needs_per_sample_k():
    with pytest.raises(ValueError, match="per-sample"):
        make_policy(context="sample", per_sample=False)
    with pytest.raises(ValueError, match="context"):
        StrategyNet(C, len(K_SET), "small", "pixel")


def test_the_budget_s_multiplier_rises_past_the_budget_and_falls_back_to_zero_within_it():
    policy = make_policy(loss_budget=0.5, multiplier_lr=0.1)
    assert policy.budgeted and policy.multiplier == 0.0
    mixing, reference = torch.tensor([0.7, 1.5]), torch.tensor([2.0, 2.2])  # mean 2.1
    # Loss 1.0 over budget at both samples: lambda 0 pays the mixing entropy alone, then rises.
    rewards = policy.budgeted_reward(mixing, torch.tensor([3.6, 3.6]), reference)
    torch.testing.assert_close(rewards, mixing)
    assert policy.multiplier == pytest.approx(0.1)
    rewards = policy.budgeted_reward(mixing, torch.tensor([3.6, 2.6]), reference)
    torch.testing.assert_close(rewards, mixing - 0.1 * torch.tensor([1.0, 0.0]))
    assert policy.multiplier == pytest.approx(0.15)
    for _ in range(3):  # 1 nat inside the budget: projected back to 0, never below
        policy.budgeted_reward(mixing, torch.tensor([1.6, 1.6]), reference)
    assert policy.multiplier == 0.0
    stats = policy.update(batch(n=2, size=16), torch.tensor([2, 5]), rewards)
    assert float(stats["multiplier"]) == 0.0 and float(stats["excess"]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="one shape"):
        policy.budgeted_reward(mixing, torch.ones(3), reference)
    with pytest.raises(ValueError, match="loss_budget"):
        make_policy().budgeted_reward(mixing, mixing, reference)


def test_the_multiplier_survives_a_checkpoint():
    policy = make_policy(loss_budget=0.0)
    policy.budgeted_reward(torch.ones(2), torch.full((2,), 5.0), torch.ones(2))
    state = copy.deepcopy(policy.state_dict())
    fresh = make_policy(loss_budget=0.0)
    fresh.load_state_dict(state)
    assert fresh.multiplier == policy.multiplier > 0
    del state["multiplier"]  # a checkpoint from before the budget: its multiplier was 0
    fresh.load_state_dict(state)
    assert fresh.multiplier == 0.0


def test_mixing_floors_are_the_mixed_label_s_entropy_rising_with_k():
    floors = mixing_floors(range(2, 7), 0.55, samples=20_000)
    entropies = [floors[k]["entropy"] for k in range(2, 7)]
    sums = [floors[k]["sum_sq"] for k in range(2, 7)]
    assert entropies == sorted(entropies) and sums == sorted(sums, reverse=True)
    assert entropies[0] < math.log(2) and entropies[-1] < math.log(6)  # below uniform weights
    assert entropies == pytest.approx([0.69, 1.00, 1.21, 1.39, 1.55], abs=0.01)
    assert floors == mixing_floors(range(2, 7), 0.55, samples=20_000)  # deterministic
