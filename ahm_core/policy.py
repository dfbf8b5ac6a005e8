"""The strategy network choosing MixUp's k, trained with REINFORCE to maximise the FR loss (D6).

How the pieces fit in one FR training step of `masking_adamixup` (the trainer owns the FR side):

1. `x` = the PPFR-FD-masked batch [N, C, H, W]; `ks = policy.sample(x)` draws k_i from the
   batch's PMF (`policy.context=batch`: the features are averaged over the batch before the FC,
   the paper's reading) or from image i's own PMF (`sample`: a PMF per face).
2. `mixed = mixup(x, labels, ks, max_coef)`; the FR step minimises the MixUp-ArcFace loss (eq. 6).
3. Every `PolicyConfig.interval` FR steps, on that same mixed batch: reward1_i = per-sample loss of
   the current FRNet; FRNet1 = the network after one SGD step on the batch; reward2_i = its
   per-sample loss. Which loss is `PolicyConfig.reward` (`REWARDS`): Algorithm 1's (`loss`), the
   MixUp loss at margin 0 (`margin_free`) or that less the mixed label's entropy (`kl`, the
   difficulty beyond the floor every recogniser pays). `policy.update(x, ks, policy.reward(reward1,
   reward2))` then raises the probability of the k that made the loss large (eq. 7): more images
   mixed, more privacy, and the two networks play against each other. With a loss budget
   (`PolicyConfig.loss_budget` >= 0) the policy instead maximises the mixing entropy H(q_i)
   while FRNet1's loss stays within the budget of its loss at the smallest k, by a Lagrange
   multiplier updated online (`budgeted_reward`). On an update step the PMF is computed on that
   step's batch, so the log-probabilities are those of the PMF the k were drawn from.
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
from ahm_core.masking.mixup import mix_coefficients
from ahm_core.models.heads import label_entropy

NETS = ("resnet18", "small")  # the strategy network: the paper's ResNet-18, or CPU scale
# What the reward measures: Algorithm 1's loss, the MixUp loss at margin 0 (docs/design.md D6),
# or that less the mixed label's entropy (its floor), in the order of `MixUpArcFace.losses`.
REWARDS = ("loss", "margin_free", "kl")
# What one PMF is over: the whole batch (the paper's reading), or each image on its own.
CONTEXTS = ("batch", "sample")
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
    """A CNN over masked channels (ResNet-18 as in the paper, or `small`) whose features give one
    logit per k: averaged over the batch first (`context` batch) or image by image (`sample`)."""

    def __init__(
        self, in_channels: int, num_actions: int, arch: str = "resnet18", context: str = "batch"
    ) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1 (masked channel count), got {in_channels}")
        if arch not in NETS:
            raise ValueError(f"arch: expected one of {NETS}, got {arch!r}")
        if context not in CONTEXTS:
            raise ValueError(f"context: expected one of {CONTEXTS}, got {context!r}")
        self.context = context
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
        """Logits of x [N, C, H, W]: [K] for the whole batch (the paper's "batch of size 1"), or
        [N, K], one row per image, with context `sample`."""
        features = self.features(x)
        return self.fc(features if self.context == "sample" else features.mean(dim=0))


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
    loss_budget >= 0: rewards come from `budgeted_reward` (the mixing entropy less the multiplier
    times FRNet1's loss beyond the budget); negative: from `reward`, the paper's game.
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
        loss_budget: float = -1.0,
        multiplier_lr: float = 0.05,
    ) -> None:
        if net.fc.out_features != len(k_set):
            raise ValueError(f"net has {net.fc.out_features} outputs for {len(k_set)} values of k")
        if baseline not in BASELINES:
            raise ValueError(f"baseline: expected one of {BASELINES}, got {baseline!r}")
        if baseline == "batch_mean" and not per_sample:
            raise ValueError("baseline batch_mean needs per-sample k")
        if net.context == "sample" and not per_sample:
            raise ValueError("context sample draws each image's k from its own PMF: per-sample k")
        self.leave_one_out = baseline == "batch_mean"
        self.net = net
        self.k_set = tuple(int(k) for k in k_set)
        self.per_sample = per_sample
        self.entropy_weight = entropy_weight
        self.baseline_momentum = baseline_momentum
        self.alpha, self.beta = alpha, beta
        self.loss_budget, self.multiplier_lr = loss_budget, multiplier_lr
        self.optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        device = self.device
        self._k_values = torch.tensor(self.k_set, dtype=torch.long)  # on the CPU, where k is drawn
        self._baseline = torch.tensor(float("nan"), device=device)  # NaN: no batch seen yet
        self._counts = torch.zeros(len(self.k_set), dtype=torch.long, device=device)
        self._multiplier = torch.zeros((), device=device)  # the budget's Lagrange multiplier
        self._excess = torch.zeros((), device=device)  # the last batch's mean loss over budget

    @property
    def per_image(self) -> bool:
        """Whether each image has its own PMF (`context` sample) rather than the batch one."""
        return self.net.context == "sample"

    @property
    def budgeted(self) -> bool:
        """Whether the policy trades mixing against a loss budget (`budgeted_reward`)."""
        return self.loss_budget >= 0

    @property
    def multiplier(self) -> float:
        """The loss budget's Lagrange multiplier (0 until the budget is first exceeded)."""
        return float(self._multiplier)

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
        self._multiplier = self._multiplier.to(device)
        self._excess = self._excess.to(device)
        return self

    @torch.no_grad()
    def pmf(self, x: Tensor) -> Tensor:
        """The probability of each k of `k_set`: [K] for the batch, or [N, K] per image
        (`per_image`), each row summing to 1."""
        return torch.softmax(self.net(x), dim=-1)

    def sample(
        self, x: Tensor, generator: torch.Generator | None = None, pmf: Tensor | None = None
    ) -> Tensor:
        """k for every sample of x, LongTensor [N] drawn from the batch's PMF, or from each
        image's own PMF when it is [N, K].

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
        if probs.ndim == 2:  # a PMF per image: one draw from each row
            index = torch.multinomial(probs, 1, generator=generator)[:, 0]
        else:
            draws = n if self.per_sample else 1
            index = torch.multinomial(probs, draws, replacement=True, generator=generator)
            index = index.expand(n)
        # index_add, unlike bincount on CUDA, needs no device-to-host read of the largest index.
        counted = index.to(self.device, non_blocking=True)
        self._counts = self._counts.index_add(0, counted, torch.ones_like(counted))
        return self._k_values.to(index.device, non_blocking=True)[index]

    def reward(self, reward1: Tensor, reward2: Tensor) -> Tensor:
        """The configured combination alpha * reward1 + beta * reward2 (see `combine_rewards`)."""
        return combine_rewards(reward1, reward2, self.alpha, self.beta)

    def budgeted_reward(self, mixing: Tensor, loss: Tensor, reference: Tensor) -> Tensor:
        """R_i = mixing_i - lambda * (loss_i - reference - budget), detached; then lambda moves by
        multiplier_lr times the batch's mean excess, kept >= 0 (projected dual ascent).

        mixing [N]: what the policy maximises (the trainer gives each mixed label's entropy);
        loss [N]: FRNet1's loss on the mixed batch; reference [N]: its loss on the same images
        mixed at the smallest k. While the loss is within budget lambda falls to 0 and the policy
        mixes all it can; past it, lambda grows until the extra loss is no longer worth it.
        """
        if not self.budgeted:
            raise ValueError("budgeted_reward needs loss_budget >= 0")
        if not mixing.shape == loss.shape == reference.shape:
            raise ValueError(
                f"mixing, loss and reference must have one shape, got {tuple(mixing.shape)}, "
                f"{tuple(loss.shape)} and {tuple(reference.shape)}"
            )
        excess = (loss - reference.mean() - self.loss_budget).detach().to(self.device)
        rewards = mixing.detach().to(self.device) - self._multiplier * excess
        self._excess = excess.mean()
        self._multiplier = (self._multiplier + self.multiplier_lr * self._excess).clamp_min(0.0)
        return rewards

    def update(self, x: Tensor, ks: Tensor, rewards: Tensor) -> dict[str, Tensor]:
        """One REINFORCE step (eq. 8) making the k with above-baseline reward likelier.

        x must be the batch whose PMF the ks were drawn from. loss = -mean_i((R_i - b_i)
        log p(k_i)) - entropy_weight * H(p); the moving average then moves towards the batch's
        mean reward (the first call starts it there). Returns 0-d tensors on the policy's device,
        to read when logging (no device-to-host read here): loss, entropy and expected_k (of the
        PMF before the step, averaged over images when each has its own), the mean baseline used,
        the mean reward, the budget's multiplier and the last batch's mean loss over budget (both
        0 without a budget). ks on the CPU are checked
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

        log_probs = torch.log_softmax(self.net(x), dim=-1)  # [K], or [N, K] per image
        if log_probs.ndim == 2:
            chosen = log_probs.gather(1, index[:, None])[:, 0]
        else:
            chosen = log_probs[index]
        entropy = -(log_probs.exp() * log_probs).sum(dim=-1).mean()
        loss = -((rewards - baseline) * chosen).mean() - self.entropy_weight * entropy
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

        # b + (1 - m)(mean - b) rather than m b + (1 - m) mean: a constant reward stays exact,
        # and Adam would blow a rounding residue in R - b up to a full-sized step.
        self._baseline = torch.lerp(moving, mean_reward, 1.0 - self.baseline_momentum)
        k_values = self._k_values.to(self.device, torch.float32, non_blocking=True)
        expected_k = (log_probs.exp() @ k_values).mean()
        names = ("loss", "entropy", "baseline", "reward", "expected_k", "multiplier", "excess")
        stats = [loss, entropy, baseline.mean(), mean_reward, expected_k]
        stats += [self._multiplier, self._excess]
        values = torch.stack(stats).detach()
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
        """Network, optimiser, baseline, histogram, multiplier and k_set, for checkpoints.

        Like nn.Module's, the network's tensors are live references: save or deepcopy it.
        """
        return {
            "k_set": list(self.k_set),
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "baseline": self._baseline,
            "counts": self._counts,
            "multiplier": self._multiplier,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict` exactly; raises if it was saved for another candidate set."""
        if tuple(state["k_set"]) != self.k_set:
            raise ValueError(f"state is for k_set {tuple(state['k_set'])}, policy has {self.k_set}")
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._baseline = state["baseline"].to(self.device, torch.float32).clone()
        self._counts = state["counts"].to(self.device, torch.long).clone()
        # Checkpoints from before the loss budget have no multiplier: theirs was 0.
        multiplier = state.get("multiplier", torch.zeros(()))
        self._multiplier = multiplier.to(self.device, torch.float32).clone()


def build_policy(cfg: PolicyConfig, in_channels: int) -> AdaptivePolicy:
    """A fresh policy for inputs of `in_channels` masked channels, configured by `cfg`."""
    net = StrategyNet(in_channels, len(cfg.k_set), cfg.net, cfg.context)
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
        loss_budget=cfg.loss_budget,
        multiplier_lr=cfg.multiplier_lr,
    )


def mixing_floors(
    k_set: Sequence[int], max_coef: float, samples: int = 100_000, seed: int = 0
) -> dict[int, dict[str, float]]:
    """Per k, over `samples` draws of this project's mixing coefficients with k distinct
    identities: `entropy`, the mean entropy of the mixed label in nats (the `margin_free` loss a
    perfect recogniser still pays, which `kl` takes off), and `sum_sq`, the mean sum of squared
    coefficients (what scales the margin bookkeeping of `loss`). Deterministic for a seed."""
    generator = torch.Generator().manual_seed(seed)
    floors = {}
    for k in k_set:
        coefs = mix_coefficients(torch.full((samples,), int(k)), max_coef, generator)
        labels = torch.arange(coefs.shape[1]).expand(samples, -1)
        floors[int(k)] = {
            "entropy": float(label_entropy(labels, coefs).mean()),
            "sum_sq": float(coefs.square().sum(dim=1).mean()),
        }
    return floors
