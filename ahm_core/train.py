"""The local training loop, shared by centralized runs and Flower clients (docs/design.md D4-D6).

One step: uint8 images -> masking pipeline (PPFR-FD, DP, block DCT or RGB) -> (adaptive) MixUp ->
FRNet + (MixUp-)ArcFace head -> per-sample loss -> SGD. For `masking_adamixup` the strategy
network picks each sample's k first, and every `policy.interval` steps it is updated by REINFORCE
with R = alpha * reward1 + beta * reward2: reward1 is the per-sample loss of the step's own
forward pass (no recomputation), reward2 the loss of the network after its SGD step on the same
batch, which is the one-step lookahead FRNet1 of D6 without a copy (that extra forward leaves the
BatchNorm statistics untouched and drops no units). The loss is `policy.reward`'s: Algorithm 1's
the margin-free one or its excess over the mixed label's entropy (`kl`), all from the same forward.
With `policy.loss_budget`, one more forward of the updated network on the same images mixed at the
smallest k gives the budget's reference loss. The batch's PMF (`policy.context=batch`) is computed
on each update step's batch, so that update's k come from it, and reused until the next update:
the strategy network costs one forward and one forward-backward per `policy.interval` steps; per-
face PMFs (`sample`) are computed on every batch. Every update's PMF (per face: their mean) is
kept: the epoch's metrics list them (`pmfs`), the policy's dynamics, with the budget's multiplier
at every update (`multipliers`).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ahm_core.checkpoints import conform, distribution, in_range, optimiser, sections
from ahm_core.config import AHMConfig, ConfigError, refuse_changed_config, to_dict
from ahm_core.data.base import FaceSet, ItemView, collate_batch
from ahm_core.data.pairs import Pairs
from ahm_core.evaluate import evaluate_verification
from ahm_core.io import CheckpointError, atomic_write, load_checkpoint
from ahm_core.masking.methods import mixing_ks
from ahm_core.masking.pipeline import MaskingPipeline
from ahm_core.models import build_backbone, build_head
from ahm_core.models.heads import label_entropy
from ahm_core.policy import REWARDS, build_policy
from ahm_core.privacy import dp_sgd_spent

PROGRESS_EVERY = 10  # batches between progress-bar updates (each reads back from the device)


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA when available, else CPU; a device this machine lacks is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ConfigError(
                f"train.device: {name} requested, but this machine has {count} CUDA device(s); "
                "expected auto or cpu"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device: {name} requested, but MPS is not available here")
    return device


@contextlib.contextmanager
def lookahead_mode(model: nn.Module) -> Iterator[None]:
    """Forward passes inside drop no units (dropout in eval mode) and leave BatchNorm running
    statistics unchanged (momentum 0; the batch's own statistics still normalise it)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    dropouts = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    momenta, training = [m.momentum for m in norms], [m.training for m in dropouts]
    for m in norms:
        m.momentum = 0.0
    for m in dropouts:
        m.eval()
    try:
        yield
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        for m, mode in zip(dropouts, training, strict=True):
            m.train(mode)


STATE_KEYS = (
    "config",
    "num_classes",
    "step",
    "epoch",
    "backbone",
    "head",
    "optimizer",
    "scheduler",
    "policy",
    "policy_pmf",
    "first_stage",
    "rng",
)  # what `Trainer.state_dict` holds


class Trainer:
    """FRNet, head, optimiser, schedule and (for the adaptive method) the strategy network."""

    def __init__(
        self, cfg: AHMConfig, masking: MaskingPipeline, num_classes: int, steps_per_epoch: int
    ) -> None:
        self.cfg, self.masking, self.num_classes = cfg, masking, num_classes
        self.device = resolve_device(cfg.train.device)
        torch.manual_seed(cfg.train.seed)
        self.backbone = build_backbone(cfg.model, masking.in_channels, cfg.data.image_size)
        self.head = build_head(cfg.model, num_classes)
        self.backbone.to(self.device)
        self.head.to(self.device)
        if self.device.type == "cuda":
            self.backbone.to(memory_format=torch.channels_last)
        if cfg.train.compile:
            self.backbone.compile()  # in place: the state_dict keeps its names
        self.policy = None
        if masking.batch_mix == "adaptive":
            self.policy = build_policy(cfg.policy, masking.in_channels).to(self.device)
        self._reward = REWARDS.index(cfg.policy.reward)  # in `MixUpArcFace.losses`' order
        # A trained first stage (DCTDP's budget) learns with the network, by its own optimiser.
        self.first_stage = masking.first_stage.module
        self.stage_optimizer = None
        if self.first_stage is not None:
            self.first_stage.to(self.device).train()
            self.stage_optimizer = masking.first_stage.optimizer()
        t = cfg.train
        self.optimizer = torch.optim.SGD(
            [*self.backbone.parameters(), *self.head.parameters()],
            lr=t.lr,
            momentum=t.momentum,
            weight_decay=t.weight_decay,
        )
        self.private = None  # DP-SGD's hooks and optimiser (`ahm_core.dp_sgd`)
        if t.dp_sgd:
            from ahm_core.dp_sgd import PrivateSGD  # Opacus, imported only when asked for

            smallest = max(mixing_ks(cfg), default=1)  # the fewest images a batch can mix
            self.private = PrivateSGD(self.backbone, self.head, self.optimizer, t, smallest)
            self.optimizer = self.private.optimizer
        self.steps_per_epoch = steps_per_epoch
        total, warmup = max(1, t.epochs * steps_per_epoch), t.warmup_epochs * steps_per_epoch
        self.schedule = lambda step: _poly_with_warmup(step, warmup, total)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        # The first stage anneals with the network (as TFace steps both down): a budget still
        # moving at full rate when the network's rate reaches 0 leaves it no steps to follow.
        self.schedulers = [(self.optimizer, self.scheduler)]
        self.stage_scheduler = None
        if self.stage_optimizer is not None:
            self.stage_scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.stage_optimizer, self.schedule
            )
            self.schedulers.append((self.stage_optimizer, self.stage_scheduler))
        self.generator = torch.Generator().manual_seed(cfg.train.seed)  # masking and mixing
        self.step = self.epoch = 0
        self.last_policy_update: dict[str, Tensor] = {}
        # Extra terms added to the mean FR loss of every step, e.g. FedProx's proximal term.
        self.loss_terms: list[Callable[[Trainer], Tensor]] = []
        self._pmf: Tensor | None = None  # the policy's PMF, reused until its next update
        self.pmfs: list[Tensor] = []  # every update's PMF this epoch, on the CPU
        self.multipliers: list[Tensor] = []  # the loss budget's multiplier after every update
        self.updates = 0  # policy updates this epoch

    @property
    def amp(self) -> bool:
        return self.cfg.train.amp and self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast when `amp` is on, else nothing (any device type, meta included)."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def layout(self, x: Tensor) -> Tensor:
        """x in the backbone's memory format (channels-last on CUDA)."""
        fmt = torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        return x.contiguous(memory_format=fmt)

    def train_step(self, images: Tensor, labels: Tensor) -> Tensor:
        """One SGD step on uint8 or [0, 1] images [B, 3, H, W]; returns per-sample losses."""
        images = images.to(self.device, non_blocking=True)
        images = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
        labels = labels.to(self.device, non_blocking=True)
        if self.cfg.train.flip:
            flip = torch.rand(len(images), generator=self.generator) < 0.5
            flip = flip.to(self.device, non_blocking=True)[:, None, None, None]
            images = torch.where(flip, images.flip(-1), images)
        x = self.masking.encode(images, self.generator)
        ks = None
        update = self.policy is not None and self.step % self.cfg.policy.interval == 0
        if self.policy is not None:
            # One PMF per batch, and batches differ little: computed on each update step's batch,
            # reused until the next, and kept on the CPU, where the ks are drawn and the mixing
            # coefficients made. Per-face PMFs are of this batch's faces.
            if self.policy.per_image:
                pmf = self.policy.pmf(x.detach()).cpu()
                if update:
                    self.pmfs.append(pmf.mean(dim=0))
            else:
                if update or self._pmf is None:
                    self._pmf = self.policy.pmf(x.detach()).cpu()
                    self.pmfs.append(self._pmf)
                pmf = self._pmf
            ks = self.policy.sample(x.detach(), pmf=pmf)
        mixed = self.masking.mix(x, labels, ks, self.generator)
        inputs = self.layout(mixed.x)
        with self.autocast():
            embeddings = self.backbone(inputs)
            if update:  # the policy's reward needs both losses of this forward
                both = self.head.losses(embeddings, mixed.labels, mixed.coefs)
                losses = both[0]
            else:
                losses = self.head(embeddings, mixed.labels, mixed.coefs)
        self.optimizer.zero_grad(set_to_none=True)
        if self.stage_optimizer is not None:
            self.stage_optimizer.zero_grad(set_to_none=True)
        loss = losses.mean()
        for term in self.loss_terms:
            loss = loss + term(self)
        loss.backward()
        if self.cfg.train.grad_clip > 0 and self.private is None:  # DP-SGD clips per sample
            params = [*self.backbone.parameters(), *self.head.parameters()]
            nn.utils.clip_grad_norm_(params, self.cfg.train.grad_clip)
        self.optimizer.step()
        if self.stage_optimizer is not None:
            self.stage_optimizer.step()
        for _, scheduler in self.schedulers:
            scheduler.step()
        if update:
            with torch.no_grad(), lookahead_mode(self.backbone), self.autocast():
                ahead = self.head.losses(self.backbone(inputs), mixed.labels, mixed.coefs)
            later = ahead[self._reward].float()
            if self.policy.budgeted:
                reference = self._reference_loss(x.detach(), labels)
                mixing = label_entropy(mixed.labels, mixed.coefs)
                rewards = self.policy.budgeted_reward(mixing, later, reference)
            else:
                rewards = self.policy.reward(both[self._reward].detach().float(), later)
            self.last_policy_update = self.policy.update(x.detach(), ks, rewards)
            self.multipliers.append(self.last_policy_update["multiplier"])
            self.updates += 1
        self.step += 1
        return losses.detach()

    @torch.no_grad()
    def _reference_loss(self, x: Tensor, labels: Tensor) -> Tensor:
        """The updated network's loss [N] on the batch mixed at the smallest k of the policy's
        set: what the loss budget is measured from."""
        ks = torch.full((len(x),), min(self.cfg.policy.k_set), dtype=torch.long)
        mixed = self.masking.mix(x, labels, ks, self.generator)
        with lookahead_mode(self.backbone), self.autocast():
            embeddings = self.backbone(self.layout(mixed.x))
            return self.head.losses(embeddings, mixed.labels, mixed.coefs)[self._reward].float()

    def seek(self, epoch: int) -> None:
        """Continue from the start of `epoch`: its learning rate and its shuffle (a federated
        client joins the schedule at the server's round, however often it was sampled)."""
        self.epoch = epoch
        step = epoch * self.steps_per_epoch
        for optimizer, scheduler in self.schedulers:
            scheduler.last_epoch = step
            for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
                group["lr"] = base * self.schedule(step)

    def loader(self, faces: FaceSet, items: Tensor, labels: Tensor) -> DataLoader:
        """Shuffled, whole-batch loader over `items`; the order depends on seed and epoch only."""
        order = torch.Generator().manual_seed(self.cfg.train.seed * 100_003 + self.epoch)
        batching: dict[str, Any] = {
            "batch_size": self.cfg.train.batch_size,
            "shuffle": True,
            "drop_last": True,
            "generator": order,
        }
        if self.private is not None:  # DP-SGD: Poisson sampling, batches of varying size
            batching = {"batch_sampler": self.private.sampler(len(items), order)}
        return DataLoader(
            ItemView(faces, items, labels),
            **batching,
            collate_fn=collate_batch,
            num_workers=self.cfg.train.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def train_epoch(self, faces: FaceSet, items: Tensor, labels: Tensor) -> dict:
        """One pass over `items` (labels 0..num_classes-1); returns the epoch's metrics."""
        self.backbone.train()
        self.head.train()
        if self.policy is not None:
            self.policy.reset_histogram()
            self.pmfs, self.multipliers, self.updates = [], [], 0
        batches = self.loader(faces, items, labels)
        bar = tqdm(
            batches,
            desc=f"epoch {self.epoch + 1}",
            disable=not self.cfg.train.progress,
            leave=False,
            dynamic_ncols=True,
        )
        total, count, start = torch.zeros((), device=self.device), 0, time.perf_counter()
        for batch, (images, batch_labels) in enumerate(bar, 1):
            if self.private is not None and len(batch_labels) < self.private.smallest_batch:
                continue  # a draw too small to mix: nothing released (the accountant counts it)
            losses = self.train_step(images, batch_labels)
            total += losses.sum().float()  # on the device: no host sync per step
            count += len(losses)
            if self.cfg.train.progress and batch % PROGRESS_EVERY == 0:
                rate = count / (time.perf_counter() - start)
                postfix = {"loss": f"{float(total) / count:.3f}", "img/s": f"{rate:.0f}"}
                if self.policy is not None:
                    postfix["k"] = _histogram_text(self.policy.histogram())
                bar.set_postfix(postfix)
        total = float(total)
        self.epoch += 1
        if count == 0:
            raise ValueError(
                f"train.batch_size={self.cfg.train.batch_size} exceeds the {len(items)} "
                "training images: no full batch"
            )
        metrics = {
            "epoch": self.epoch,
            "loss": total / count,
            "images_per_s": count / (time.perf_counter() - start),
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        if self.private is not None:
            metrics["dp_sgd"] = dp_sgd_spent(self.cfg.train, len(items), self.epoch)
        if self.policy is not None:
            metrics["k_histogram"] = {str(k): v for k, v in self.policy.histogram().items()}
            metrics["pmfs"] = [[round(p, 5) for p in pmf.tolist()] for pmf in self.pmfs]
            metrics["policy_updates"] = self.updates
            if self.policy.budgeted:
                metrics["multipliers"] = [round(float(m), 5) for m in self.multipliers]
            metrics["policy"] = {k: float(v) for k, v in self.last_policy_update.items()}
        return metrics

    def verify(self, faces: FaceSet, pairs: Pairs) -> dict:
        """Verification report of the current backbone on `pairs` (test images: no MixUp)."""
        with self.autocast():
            return evaluate_verification(
                self.backbone, faces, pairs, self.masking.encode, device=self.device
            )

    def fit(
        self,
        faces: FaceSet,
        items: Tensor,
        labels: Tensor,
        pairs: Pairs | None = None,
        checkpoint: str | os.PathLike | None = None,
    ) -> list[dict]:
        """Train until `train.epochs`, verifying after each epoch and checkpointing when asked."""
        history = []
        while self.epoch < self.cfg.train.epochs:
            metrics = self.train_epoch(faces, items, labels)
            if pairs is not None:
                metrics["verification"] = self.verify(faces, pairs)
            history.append(metrics)
            if checkpoint is not None:
                self.save(checkpoint, history=history)
        return history

    def state_dict(self) -> dict:
        """Everything a restart needs to continue exactly: weights, optimiser, schedule, RNGs."""
        return {
            "config": to_dict(self.cfg),
            "num_classes": self.num_classes,
            "step": self.step,
            "epoch": self.epoch,
            "backbone": self.backbone.state_dict(),
            "head": self.head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "policy": self.policy.state_dict() if self.policy is not None else None,
            "policy_pmf": self._pmf,
            "first_stage": None
            if self.first_stage is None
            else {
                "module": self.first_stage.state_dict(),
                "optimizer": self.stage_optimizer.state_dict(),
                "scheduler": self.stage_scheduler.state_dict(),
            },
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "generator": self.generator.get_state(),
                **({"noise": self.private.noise.get_state()} if self.private is not None else {}),
            },
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved (same config and classes)."""
        if state["num_classes"] != self.num_classes:
            raise ValueError(
                f"checkpoint has {state['num_classes']} classes, this run {self.num_classes}"
            )
        self.backbone.load_state_dict(state["backbone"])
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.policy is not None:
            self.policy.load_state_dict(state["policy"])
        if self.first_stage is not None:
            self.first_stage.load_state_dict(state["first_stage"]["module"])
            self.stage_optimizer.load_state_dict(state["first_stage"]["optimizer"])
            self.stage_scheduler.load_state_dict(state["first_stage"]["scheduler"])
        self.step, self.epoch = state["step"], state["epoch"]
        self._pmf = None if state["policy_pmf"] is None else state["policy_pmf"].cpu()
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.generator.set_state(state["rng"]["generator"])
        if self.private is not None:
            self.private.noise.set_state(state["rng"]["noise"])

    def save(self, path: str | os.PathLike, **extra: Any) -> Path:
        """Write a checkpoint, with `extra` entries beside the state, atomically and durably: a
        crash mid-write leaves the previous one intact."""
        state = {**self.state_dict(), **extra}
        return atomic_write(path, lambda tmp: torch.save(state, tmp))

    def restore(self, path: str | os.PathLike, required: tuple[str, ...] = ()) -> dict:
        """Load a checkpoint written by `save` under this config (tensors and plain data only:
        weights_only) that holds the `required` extra entries; returns it, extras included."""
        state = load_checkpoint(path, (*STATE_KEYS, *required), map_location=self.device)
        refuse_changed_config(path, sections(str(path), state["config"]), self.cfg)
        self.check_state(str(path), state)
        self.load_state_dict(state)
        return state

    def check_state(self, label: str, state: dict) -> None:
        """Raise CheckpointError naming `label` and the field unless `state` is what this
        trainer's `state_dict` could be at some step: the same weights' shapes and dtypes, all
        finite, optimiser buffers of the parameters' shapes, a step and an epoch in range."""
        like = self.state_dict()
        for key in ("num_classes", "backbone", "head", "scheduler", "rng"):
            conform(label, state[key], like[key], key)
        if self.policy is None:
            conform(label, state["policy"], None, "policy")
        else:
            policy = state["policy"]
            if not isinstance(policy, dict):
                raise CheckpointError(f"{label}: policy: expected the policy's state (a mapping)")
            # a checkpoint from before the loss budget has no multiplier (`ADDED_AS_BEFORE`)
            kept = {
                k for k in like["policy"] if k != "optimizer" and (k != "multiplier" or k in policy)
            }
            rest = {k: v for k, v in policy.items() if k != "optimizer"}
            conform(label, rest, {k: like["policy"][k] for k in kept}, "policy")
            optimiser(label, "policy.optimizer", policy.get("optimizer"), self.policy.optimizer)
        epochs = state["config"].get("train", {}).get("epochs")
        in_range(label, "epoch", state["epoch"], epochs if isinstance(epochs, int) else 0)
        in_range(label, "step", state["step"], 2**62)
        optimiser(label, "optimizer", state["optimizer"], self.optimizer)
        if self.first_stage is None:
            conform(label, state["first_stage"], None, "first_stage")
        else:
            stage = state["first_stage"]
            conform(label, stage, dict.fromkeys(like["first_stage"]), "first_stage")
            conform(label, stage["module"], like["first_stage"]["module"], "first_stage.module")
            conform(
                label, stage["scheduler"], like["first_stage"]["scheduler"], "first_stage.scheduler"
            )
            optimiser(label, "first_stage.optimizer", stage["optimizer"], self.stage_optimizer)
        if state["policy_pmf"] is not None or self.policy is None:
            distribution(
                label, "policy_pmf", state["policy_pmf"], self.policy and self.cfg.policy.k_set
            )


def _poly_with_warmup(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then polynomial (power 2) decay to 0, as InsightFace's PolyScheduler."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 1.0 - progress) ** 2


def _histogram_text(histogram: dict[int, int]) -> str:
    total = sum(histogram.values()) or 1
    return " ".join(f"{k}:{math.floor(100 * v / total)}%" for k, v in sorted(histogram.items()))
