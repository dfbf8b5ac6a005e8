"""The strategy network choosing MixUp's k, trained with REINFORCE to maximise the FR loss (D6).

How the pieces fit in one FR training step of `masking_adamixup` (the trainer owns the FR side):

1. `x` = the PPFR-FD-masked batch [N, C, H, W]; `ks = policy.sample(x)` draws k_i from the
   batch's PMF (one PMF per batch: the features are averaged over the batch before the FC).
2. `mixed = mixup(x, labels, ks, max_coef)`; the FR step minimises the MixUp-ArcFace loss (eq. 6).
3. Every `PolicyConfig.interval` FR steps, on that same mixed batch: reward1_i = per-sample loss of
   the current FRNet; FRNet1 = the network after one SGD step on the batch; reward2_i = its
   per-sample loss. Which loss is `PolicyConfig.reward`: Algorithm 1's (`loss`) or the MixUp loss
   at margin 0 (`margin_free`). `policy.update(x, ks, policy.reward(reward1, reward2))` then
   raises the probability of the k that made the loss large (eq. 7): more images mixed, more
   privacy, and the two networks play against each other. On an update step the PMF is computed
   on that step's batch, so the log-probabilities are those of the PMF the k were drawn from.
4. Every epoch the trainer logs `policy.proportions()` (the paper's Table 3), then
   `reset_histogram()`.

The policy never sees the FR model, only the masked batch, the chosen k and the rewards.
Its BatchNorm layers always normalise with the statistics of the batch they are given (no running
statistics), so the PMF is a function of the batch alone and sampling and update agree; a batch
whose deepest feature map is 1x1 therefore needs N >= 2.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models import resnet18

from ahm_core.config import PolicyConfig

NETS = ("resnet18", "small")  # the strategy network: the paper's ResNet-18, or CPU scale
# What the reward measures: Algorithm 1's loss, or the MixUp loss at margin 0
# (docs/design.md D6), in the order of `MixUpArcFace.losses`.
REWARDS = ("loss", "margin_free")
# REINFORCE's baseline: a moving average over updates, or the mean of the batch's other samples.
BASELINES = ("moving_average", "batch_mean")


def _small_net(in_channels: int, norm: Callable[[int], nn.Module]) -> nn.Sequential:
    """Three strided 3x3 conv layers (16, 32, 64 channels): a strategy network for CPU scale."""
    layers: list[nn.Module] = []
    for out in (16, 32, 64):
        layers += [nn.Conv2d(in_channels, out, 3, 2, 1, bias=False), norm(out), nn.ReLU()]
        in_channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


class StrategyNet(nn.Module):
    """A CNN over masked channels (ResNet-18 as in the paper, or `small`) whose batch-averaged
    features give one logit per k."""

    def __init__(self, in_channels: int, num_actions: int, arch: str = "resnet18") -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1 (masked channel count), got {in_channels}")
        if arch not in NETS:
            raise ValueError(f"arch: expected one of {NETS}, got {arch!r}")
        norm = functools.partial(nn.BatchNorm2d, track_running_stats=False)
        if arch == "resnet18":
            net = resnet18(weights=None, norm_layer=norm)
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            features, net.fc = net.fc.in_features, nn.Identity()
        else:
            net, features = _small_net(in_channels, norm), 64
        self.backbone = net
        self.fc = nn.Linear(features, num_actions)

    def features(self, x: Tensor) -> Tensor:
        """Per-sample features after the global average pool, [N, F]."""
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits [K] of the whole batch x [N, C, H, W] (the paper's "batch of size 1")."""
        return self.fc(self.features(x).mean(dim=0))


def combine_rewards(reward1: Tensor, reward2: Tensor, alpha: float, beta: float) -> Tensor:
    """R_i = alpha * reward1_i + beta * reward2_i, detached: rewards carry no gradient (eq. 5)."""
    if reward1.shape != reward2.shape:
        raise ValueError(
            f"reward1 and reward2 must have one shape, got {tuple(reward1.shape)} "
            f"and {tuple(reward2.shape)}"
        )
    return (alpha * reward1 + beta * reward2).detach()


class AdaptivePolicy:
    """StrategyNet + Adam + REINFORCE baseline + histogram of the k it chose (docs/design.md D6).

    baseline `moving_average`: b moves towards each batch's mean reward with `baseline_momentum`;
    `batch_mean`: sample i's b is the mean reward of the batch's other samples (leave-one-out, so
    b carries no part of R_i and the estimate stays unbiased), which follows a falling loss at
    once. It needs per-sample k: with one k per batch every advantage would cancel.
    """

    def __init__(
        self,
        net: StrategyNet,
        k_set: Sequence[int],
        *,
        lr: float,
        per_sample: bool = True,
        entropy_weight: float = 0.0,
        baseline_momentum: float = 0.9,
        baseline: str = "moving_average",
        alpha: float = 1.0,
        beta: float = 1.0,
    ) -> None:
        if net.fc.out_features != len(k_set):
            raise ValueError(f"net has {net.fc.out_features} outputs for {len(k_set)} values of k")
        if baseline not in BASELINES:
            raise ValueError(f"baseline: expected one of {BASELINES}, got {baseline!r}")
        if baseline == "batch_mean" and not per_sample:
            raise ValueError("baseline batch_mean needs per-sample k")
        self.leave_one_out = baseline == "batch_mean"
        self.net = net
        self.k_set = tuple(int(k) for k in k_set)
        self.per_sample = per_sample
        self.entropy_weight = entropy_weight
        self.baseline_momentum = baseline_momentum
        self.alpha, self.beta = alpha, beta
        self.optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        device = self.device
        self._k_values = torch.tensor(self.k_set, dtype=torch.long)  # on the CPU, where k is drawn
        self._baseline = torch.tensor(float("nan"), device=device)  # NaN: no batch seen yet
        self._counts = torch.zeros(len(self.k_set), dtype=torch.long, device=device)

    @property
    def device(self) -> torch.device:
        """Where the strategy network (and the policy's bookkeeping) lives."""
        return next(self.net.parameters()).device

    @property
    def baseline(self) -> float:
        """The moving-average reward (NaN before the first update; the b of `moving_average`)."""
        return float(self._baseline)

    def to(self, device: torch.device | str) -> AdaptivePolicy:
        """Move the network, its optimiser state and the bookkeeping to `device`; returns self."""
        self.net.to(device)
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, Tensor) and key != "step":  # Adam keeps `step` on the CPU
                    state[key] = value.to(device)
        self._baseline = self._baseline.to(device)
        self._counts = self._counts.to(device)
        return self

    @torch.no_grad()
    def pmf(self, x: Tensor) -> Tensor:
        """The batch's probability of each k of `k_set`, [K] summing to 1."""
        return torch.softmax(self.net(x), dim=0)

    def sample(
        self, x: Tensor, generator: torch.Generator | None = None, pmf: Tensor | None = None
    ) -> Tensor:
        """k for every sample of x, LongTensor [N] drawn from the batch's PMF.

        per_sample: N independent draws (eq. 8); otherwise one draw repeated N times. The draw
        runs, and the ks are returned, on the generator's device, else on the PMF's: a `pmf`
        given on the CPU (one computed on a recent batch) saves the network's forward pass and
        keeps the draw off the accelerator, so mixing needs no device-to-host read per step.
        The draw is recorded in the histogram.
        """
        n = x.shape[0]
        probs = self.pmf(x) if pmf is None else pmf
        if generator is not None:
            probs = probs.to(generator.device)
        draws = n if self.per_sample else 1
        index = torch.multinomial(probs, draws, replacement=True, generator=generator).expand(n)
        # index_add, unlike bincount on CUDA, needs no device-to-host read of the largest index.
        counted = index.to(self.device, non_blocking=True)
        self._counts = self._counts.index_add(0, counted, torch.ones_like(counted))
        return self._k_values.to(index.device, non_blocking=True)[index]

    def reward(self, reward1: Tensor, reward2: Tensor) -> Tensor:
        """The configured combination alpha * reward1 + beta * reward2 (see `combine_rewards`)."""
        return combine_rewards(reward1, reward2, self.alpha, self.beta)

    def update(self, x: Tensor, ks: Tensor, rewards: Tensor) -> dict[str, Tensor]:
        """One REINFORCE step (eq. 8) making the k with above-baseline reward likelier.

        x must be the batch whose PMF the ks were drawn from. loss = -mean_i((R_i - b_i)
        log p(k_i)) - entropy_weight * H(p); the moving average then moves towards the batch's
        mean reward (the first call starts it there). Returns 0-d tensors on the policy's device,
        to read when logging (no device-to-host read here): loss, entropy and expected_k (of the
        PMF before the step), the mean baseline used, the mean reward. ks on the CPU are checked
        there, also without a read from the device.
        """
        if ks.shape != (x.shape[0],) or rewards.shape != ks.shape:
            raise ValueError(
                f"ks and rewards must both have shape [{x.shape[0]}], got {tuple(ks.shape)} "
                f"and {tuple(rewards.shape)}"
            )
        if self.leave_one_out and len(ks) < 2:
            raise ValueError("baseline batch_mean needs a batch of at least 2 samples")
        match = ks.long()[:, None] == self._k_values.to(ks.device)[None, :]
        if not bool(match.any(dim=1).all()):
            raise ValueError(f"ks: every k must be one of {self.k_set}, got {ks.unique().tolist()}")
        index = match.long().argmax(dim=1).to(self.device)
        rewards = rewards.detach().to(self.device, torch.float32)
        mean_reward = rewards.mean()
        moving = torch.where(self._baseline.isnan(), mean_reward, self._baseline)
        if self.leave_one_out:
            baseline = (rewards.sum() - rewards) / (len(rewards) - 1)
        else:
            baseline = moving.expand_as(rewards)

        log_probs = torch.log_softmax(self.net(x), dim=0)
        entropy = -(log_probs.exp() * log_probs).sum()
        loss = -((rewards - baseline) * log_probs[index]).mean() - self.entropy_weight * entropy
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

        # b + (1 - m)(mean - b) rather than m b + (1 - m) mean: a constant reward stays exact,
        # and Adam would blow a rounding residue in R - b up to a full-sized step.
        self._baseline = torch.lerp(moving, mean_reward, 1.0 - self.baseline_momentum)
        k_values = self._k_values.to(self.device, torch.float32, non_blocking=True)
        expected_k = log_probs.exp() @ k_values
        names = ("loss", "entropy", "baseline", "reward", "expected_k")
        values = torch.stack([loss, entropy, baseline.mean(), mean_reward, expected_k]).detach()
        return dict(zip(names, values.unbind(), strict=True))

    def histogram(self) -> dict[int, int]:
        """How many samples were given each k since the last reset."""
        return dict(zip(self.k_set, self._counts.tolist(), strict=True))

    def proportions(self) -> dict[int, float]:
        """Share of samples given each k since the last reset (all 0.0 when none were drawn)."""
        counts = self.histogram()
        total = sum(counts.values())
        return {k: c / total if total else 0.0 for k, c in counts.items()}

    def reset_histogram(self) -> None:
        """Start a new count (the trainer calls it after logging each epoch)."""
        self._counts = torch.zeros_like(self._counts)

    def state_dict(self) -> dict[str, Any]:
        """Network, optimiser, baseline, histogram and k_set, for checkpoints.

        Like nn.Module's, the network's tensors are live references: save or deepcopy it.
        """
        return {
            "k_set": list(self.k_set),
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "baseline": self._baseline,
            "counts": self._counts,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict` exactly; raises if it was saved for another candidate set."""
        if tuple(state["k_set"]) != self.k_set:
            raise ValueError(f"state is for k_set {tuple(state['k_set'])}, policy has {self.k_set}")
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._baseline = state["baseline"].to(self.device, torch.float32).clone()
        self._counts = state["counts"].to(self.device, torch.long).clone()


def build_policy(cfg: PolicyConfig, in_channels: int) -> AdaptivePolicy:
    """A fresh policy for inputs of `in_channels` masked channels, configured by `cfg`."""
    net = StrategyNet(in_channels, len(cfg.k_set), cfg.net)
    return AdaptivePolicy(
        net,
        cfg.k_set,
        lr=cfg.lr,
        per_sample=cfg.per_sample,
        entropy_weight=cfg.entropy,
        baseline_momentum=cfg.baseline_momentum,
        baseline=cfg.baseline,
        alpha=cfg.alpha,
        beta=cfg.beta,
    )
