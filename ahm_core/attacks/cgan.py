"""Black-box CGAN reconstruction attack (docs/design.md section 4.1, the paper's Fig. 3).

A pix2pix conditional GAN (Isola et al. 2017, with the structure and options of
pytorch-CycleGAN-and-pix2pix) learns to map masked tensors back to faces. It trains on auxiliary
pairs (original, mask(original)) of identities disjoint from the victim's, then reconstructs the
victim's masked data (the attack effect of the paper's section 4.2.2). On MixUp/InstaHide data, k
follows the policy's measured proportions and the target of a mixed sample is its source of largest
coefficient (section 5.1).

Changes from pix2pix, because the input is a masked tensor rather than an image: the tensor is
standardised per channel (statistics of the auxiliary set) and resized to the face's size; one
noise channel is appended; the number of U-Net levels follows the face's size; reconstruction runs
in eval mode (no dropout, BatchNorm running statistics), a deterministic function of the weights,
the input and a seed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ahm_core.attacks.base import SHOWN, Attack, Reconstructions, register
from ahm_core.attacks.ladder import Budget, Climb, climb, doubling
from ahm_core.cases import AttackSet, Case, mask_for_attack
from ahm_core.config import AttackConfig
from ahm_core.io import atomic_write, load_checkpoint
from ahm_core.masking.pipeline import MaskingPipeline
from ahm_core.metrics.privacy import feature_distance, psnr
from ahm_core.train import resolve_device

NORMS = ("batch", "instance")
GAN_MODES = ("vanilla", "lsgan")
LOSS_NAMES = ("G_GAN", "G_L1", "D_real", "D_fake")
INIT_GAIN = 0.02  # pix2pix's init_type='normal'
STATS_CHUNK = 256  # rows per step when computing the input statistics


@dataclass(frozen=True)
class CGANOptions:
    """pix2pix's options, snake-cased: lambda_L1 -> lambda_l1, n_layers_D -> n_layers_d."""

    ngf: int = 64
    ndf: int = 64
    n_layers_d: int = 3
    norm: str = "batch"
    gan_mode: str = "vanilla"
    lambda_l1: float = 100.0
    lr: float = 2e-4
    beta1: float = 0.5
    use_dropout: bool = True
    max_downs: int = 8  # cap on the U-Net's levels (pix2pix's unet_256 has 8)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm: expected one of {NORMS}, got {self.norm!r}")
        if self.gan_mode not in GAN_MODES:
            raise ValueError(f"gan_mode: expected one of {GAN_MODES}, got {self.gan_mode!r}")
        for name in ("ngf", "ndf", "n_layers_d", "max_downs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.lambda_l1 < 0 or self.lr <= 0 or not 0 <= self.beta1 < 1:
            raise ValueError(
                f"need lambda_l1 >= 0, lr > 0, 0 <= beta1 < 1; got {self.lambda_l1}, "
                f"{self.lr}, {self.beta1}"
            )

    @classmethod
    def from_config(cls, attack: AttackConfig, seed: int = 0) -> CGANOptions:
        """The options an `AttackConfig` sets; the rest keep pix2pix's defaults."""
        return cls(ngf=attack.ngf, ndf=attack.ndf, lambda_l1=attack.cgan_lambda_l1, seed=seed)


def _norm_layer(norm: str) -> Callable[[int], nn.Module]:
    if norm == "batch":
        return nn.BatchNorm2d
    return lambda channels: nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


def unet_levels(height: int, width: int, max_downs: int = 8) -> int:
    """Down-sampling levels of the U-Net: as many as keep the bottleneck >= 2 px, capped."""
    levels = 0
    while levels < max_downs and min(height, width) // 2 ** (levels + 1) >= 2:
        levels += 1
    if levels < 2:
        raise ValueError(
            f"image size {height}x{width} (max_downs={max_downs}): the U-Net needs >= 2 levels"
        )
    return levels


def _patch_size(size: int, n_layers: int) -> int:
    """Side of the PatchGAN's output map: n_layers stride-2 convs, then two 4x4 stride-1 convs."""
    return size // 2**n_layers - 2


class UnetSkipBlock(nn.Module):
    """One U-Net level: down-sample, the inner levels, up-sample to the input's size, skip."""

    def __init__(
        self,
        outer_nc: int,
        inner_nc: int,
        input_nc: int | None = None,
        submodule: UnetSkipBlock | None = None,
        outermost: bool = False,
        norm: str = "batch",
        use_dropout: bool = False,
    ) -> None:
        super().__init__()
        innermost = submodule is None
        norm_layer, use_bias = _norm_layer(norm), norm == "instance"
        down: list[nn.Module] = [
            nn.Conv2d(outer_nc if input_nc is None else input_nc, inner_nc, 4, 2, 1, bias=use_bias)
        ]
        if not outermost:
            down.insert(0, nn.LeakyReLU(0.2))
            if not innermost:
                down.append(norm_layer(inner_nc))
        self.down = nn.Sequential(*down)
        self.submodule = submodule
        self.up_relu = nn.ReLU()
        up_in = inner_nc if innermost else inner_nc * 2
        self.up_conv = nn.ConvTranspose2d(up_in, outer_nc, 4, 2, 1, bias=use_bias or outermost)
        if outermost:
            self.up_tail = nn.Sequential(nn.Tanh())
        else:
            tail = [norm_layer(outer_nc)] + ([nn.Dropout(0.5)] if use_dropout else [])
            self.up_tail = nn.Sequential(*tail)
        self.outermost = outermost

    def forward(self, x: Tensor) -> Tensor:
        y = self.down(x)
        if self.submodule is not None:
            y = self.submodule(y)
        # output_size picks the transposed conv's padding so odd sizes (7 -> 3 -> 7) come back.
        y = self.up_tail(self.up_conv(self.up_relu(y), output_size=x.shape[-2:]))
        return y if self.outermost else torch.cat([x, y], dim=1)


class UnetGenerator(nn.Module):
    """pix2pix's U-Net: `num_downs` levels of widths ngf * (1, 2, 4, 8, 8, ...), tanh output."""

    def __init__(
        self,
        input_nc: int,
        output_nc: int,
        num_downs: int,
        ngf: int = 64,
        norm: str = "batch",
        use_dropout: bool = True,
    ) -> None:
        super().__init__()
        if num_downs < 2:
            raise ValueError(f"num_downs: the U-Net needs >= 2 levels, got {num_downs}")
        widths = [ngf * min(2**i, 8) for i in range(num_downs)]
        # pix2pix drops out in the 3 decoder levels above the innermost (8 levels: 4, 5, 6).
        dropout_from = max(1, num_downs - 4)
        block = None
        for i in reversed(range(1, num_downs)):
            dropout = use_dropout and dropout_from <= i < num_downs - 1
            block = UnetSkipBlock(
                widths[i - 1], widths[i], submodule=block, norm=norm, use_dropout=dropout
            )
        self.model = UnetSkipBlock(
            output_nc, widths[0], input_nc, submodule=block, outermost=True, norm=norm
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class PatchDiscriminator(nn.Module):
    """pix2pix's NLayerDiscriminator (PatchGAN): one real/fake logit per overlapping patch."""

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3, norm: str = "batch"):
        super().__init__()
        norm_layer, use_bias = _norm_layer(norm), norm == "instance"
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=use_bias),
                norm_layer(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def _init_weights(net: nn.Module, generator: torch.Generator) -> None:
    """pix2pix's 'normal' init (gain 0.02), drawn from `generator` so a seed fixes it."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, INIT_GAIN, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, INIT_GAIN, generator=generator)
            nn.init.zeros_(m.bias)


class MaskedInput(nn.Module):
    """Masked tensor -> the networks' condition: standardised per channel, resized to the face."""

    def __init__(self, channels: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    @torch.no_grad()
    def fit(self, masked: Tensor) -> None:
        """Per-channel mean and std over the auxiliary set (float64 sums, chunked)."""
        total = torch.zeros(masked.shape[1], dtype=torch.float64)
        squares = torch.zeros_like(total)
        for start in range(0, len(masked), STATS_CHUNK):
            part = masked[start : start + STATS_CHUNK].detach().double().cpu()
            total += part.sum(dim=(0, 2, 3))
            squares += part.square().sum(dim=(0, 2, 3))
        count = masked.shape[0] * masked.shape[2] * masked.shape[3]
        mean = total / count
        std = (squares / count - mean.square()).clamp_min(0).sqrt().clamp_min(1e-6)
        self.mean.copy_(mean)
        self.std.copy_(std)

    def forward(self, masked: Tensor) -> Tensor:
        x = (masked - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)
        if x.shape[-2:] != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return x


class CGANAttack:
    """The black-box attacker: pix2pix generator and discriminator, their optimisers, its RNG."""

    def __init__(
        self,
        in_channels: int,
        image_size: int | tuple[int, int],
        out_channels: int = 3,
        options: CGANOptions | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        o = self.options = options or CGANOptions()
        self.in_channels, self.out_channels = in_channels, out_channels
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.image_size: tuple[int, int] = size
        self.device = resolve_device(str(device))
        self.levels = unet_levels(*size, o.max_downs)
        if _patch_size(min(size), o.n_layers_d) < 1:
            raise ValueError(
                f"n_layers_d={o.n_layers_d}: too many discriminator layers for {size[0]}x{size[1]}"
            )
        self.rng = torch.Generator().manual_seed(o.seed)
        with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG as it was
            self.condition = MaskedInput(in_channels, size)
            self.generator = UnetGenerator(
                in_channels + 1, out_channels, self.levels, o.ngf, o.norm, o.use_dropout
            )
            self.discriminator = PatchDiscriminator(
                in_channels + out_channels, o.ndf, o.n_layers_d, o.norm
            )
        _init_weights(self.generator, self.rng)
        _init_weights(self.discriminator, self.rng)
        for net in (self.condition, self.generator, self.discriminator):
            net.to(self.device)
        betas = (o.beta1, 0.999)
        self.optimizer_g = torch.optim.Adam(self.generator.parameters(), lr=o.lr, betas=betas)
        self.optimizer_d = torch.optim.Adam(self.discriminator.parameters(), lr=o.lr, betas=betas)
        self.steps = 0

    def _check(self, masked: Tensor, targets: Tensor | None = None) -> None:
        if masked.dim() != 4 or masked.shape[1] != self.in_channels:
            raise ValueError(
                f"masked: expected [N, {self.in_channels}, h, w], got {tuple(masked.shape)}"
            )
        if targets is not None:
            expected = (len(masked), self.out_channels, *self.image_size)
            if tuple(targets.shape) != expected:
                raise ValueError(f"targets: expected {expected}, got {tuple(targets.shape)}")

    def _noise(self, n: int, generator: torch.Generator) -> Tensor:
        noise = torch.randn(n, 1, *self.image_size, generator=generator)
        return noise.to(self.device, non_blocking=True)

    def _gan_loss(self, prediction: Tensor, real: bool) -> Tensor:
        target = torch.full_like(prediction, 1.0 if real else 0.0)
        if self.options.gan_mode == "vanilla":
            return F.binary_cross_entropy_with_logits(prediction, target)
        return F.mse_loss(prediction, target)

    def _step(self, masked: Tensor, targets: Tensor) -> Tensor:
        """One pix2pix iteration: a discriminator step, then a generator step (L1 + GAN).

        Returns the losses of LOSS_NAMES as one tensor on the device: no read per step.
        """
        cond = self.condition(masked.to(self.device, torch.float32, non_blocking=True))
        real = targets.to(self.device, torch.float32, non_blocking=True) * 2.0 - 1.0
        fake = self.generator(torch.cat([cond, self._noise(len(cond), self.rng)], dim=1))

        self.discriminator.requires_grad_(True)
        self.optimizer_d.zero_grad(set_to_none=True)
        d_fake = self._gan_loss(self.discriminator(torch.cat([cond, fake.detach()], 1)), False)
        d_real = self._gan_loss(self.discriminator(torch.cat([cond, real], 1)), True)
        (0.5 * (d_fake + d_real)).backward()
        self.optimizer_d.step()

        self.discriminator.requires_grad_(False)
        self.optimizer_g.zero_grad(set_to_none=True)
        g_gan = self._gan_loss(self.discriminator(torch.cat([cond, fake], 1)), True)
        g_l1 = F.l1_loss(fake, real) * self.options.lambda_l1
        (g_gan + g_l1).backward()
        self.optimizer_g.step()
        self.steps += 1
        return torch.stack([g_gan, g_l1, d_real, d_fake]).detach()

    def fit(
        self,
        masked: Tensor,
        targets: Tensor,
        epochs: int = 5,
        batch_size: int = 16,
        progress: bool = False,
    ) -> list[dict[str, float]]:
        """Train on auxiliary pairs (masked [N, C, h, w], faces [N, 3|1, H, W] in [0, 1]).

        Returns each epoch's mean losses. The first call also fits the input standardisation.
        """
        self._check(masked, targets)
        if epochs < 1 or batch_size < 1 or len(masked) == 0:
            raise ValueError(
                f"fit: need epochs, batch_size and N >= 1, got {epochs}, {batch_size}, "
                f"{len(masked)}"
            )
        if self.steps == 0:
            self.condition.fit(masked)
        self.generator.train()
        self.discriminator.train()
        # Dropout draws from the global RNG: fork it and seed it from the attack's own RNG.
        dropout_seed = int(torch.randint(2**62, (1,), generator=self.rng))
        history = []
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(dropout_seed)
            for epoch in range(epochs):
                order = torch.randperm(len(masked), generator=self.rng)
                sums = torch.zeros(len(LOSS_NAMES), device=self.device)
                batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
                bar = tqdm(batches, desc=f"CGAN epoch {epoch + 1}", disable=not progress)
                for idx in bar:
                    losses = self._step(masked[idx], targets[idx])
                    sums += losses * len(idx)
                    if progress:
                        shown = dict(zip(LOSS_NAMES, losses.tolist(), strict=True))
                        bar.set_postfix(shown, refresh=False)
                means = (sums / len(masked)).tolist()  # the epoch's one read from the device
                history.append(dict(zip(LOSS_NAMES, means, strict=True)))
        return history

    @torch.no_grad()
    def reconstruct(self, masked: Tensor, batch_size: int = 64, seed: int = 0) -> Tensor:
        """Faces [N, 3|1, H, W] in [0, 1] on the CPU; `seed` draws the noise channel."""
        self._check(masked)
        self.generator.eval()
        noise_rng = torch.Generator().manual_seed(seed)
        out = [torch.empty(0, self.out_channels, *self.image_size)]
        for start in range(0, len(masked), batch_size):
            part = masked[start : start + batch_size].to(self.device, torch.float32)
            cond = self.condition(part)
            fake = self.generator(torch.cat([cond, self._noise(len(part), noise_rng)], dim=1))
            out.append(((fake + 1.0) / 2.0).clamp(0.0, 1.0).cpu())
        return torch.cat(out)

    def state_dict(self) -> dict[str, Any]:
        """Architecture, weights, optimiser states, RNG and step count: all `save` writes."""
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "image_size": list(self.image_size),
            "options": dataclasses.asdict(self.options),
            "condition": self.condition.state_dict(),
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "optimizer_g": self.optimizer_g.state_dict(),
            "optimizer_d": self.optimizer_d.state_dict(),
            "rng": self.rng.get_state(),
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned, for an attack of the same architecture."""
        mine = (self.in_channels, self.out_channels, list(self.image_size))
        theirs = (state["in_channels"], state["out_channels"], list(state["image_size"]))
        if mine != theirs or dataclasses.asdict(self.options) != state["options"]:
            raise ValueError(
                f"checkpoint is for (in, out, size) {theirs} with {state['options']}; "
                f"this attack is {mine} with {dataclasses.asdict(self.options)}"
            )
        self.condition.load_state_dict(state["condition"])
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer_g.load_state_dict(state["optimizer_g"])
        self.optimizer_d.load_state_dict(state["optimizer_d"])
        self.rng.set_state(state["rng"])
        self.steps = state["steps"]

    def save(self, path: str | os.PathLike) -> Path:
        """Write a checkpoint atomically: a crash mid-write leaves the previous one intact."""
        state = self.state_dict()
        return atomic_write(path, lambda tmp: torch.save(state, tmp))

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> CGANAttack:
        """An attack rebuilt from a `save` checkpoint (tensors and plain data: weights_only)."""
        state = load_checkpoint(path, required=("in_channels", "generator"))
        attack = cls(
            state["in_channels"],
            tuple(state["image_size"]),
            state["out_channels"],
            CGANOptions(**state["options"]),
            device,
        )
        attack.load_state_dict(state)
        return attack


def attack_data(
    pipeline: MaskingPipeline,
    aux_images: Tensor,
    victim_images: Tensor,
    victim_labels: Tensor,
    k_proportions: Mapping[int, float] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[AttackSet, AttackSet]:
    """(auxiliary, victim) sets of the black-box attack: train on the first, score on the second.

    The auxiliary faces must come from identities disjoint from the victim's.
    """
    aux = mask_for_attack(pipeline, aux_images, None, k_proportions, generator)
    victim = mask_for_attack(pipeline, victim_images, victim_labels, k_proportions, generator)
    return aux, victim


def _holdout_leakage(case: Case, keep: Tensor | None) -> tuple[Callable[[CGANAttack], Tensor], str]:
    """Leakage of a trained CGAN on the attacker's held-out auxiliary faces, per face: the
    cosine of the case's judge between reconstruction and face, or PSNR without a judge."""
    g = torch.Generator().manual_seed(case.cfg.train.seed + 1)
    held = mask_for_attack(case.pipeline, case.holdout_images, None, case.proportions, g)
    masked = held.masked if keep is None else held.masked[:, keep]

    def leakage(attack: CGANAttack) -> Tensor:
        originals, faces = case.seen(held.targets, attack.reconstruct(masked))
        if case.judge is None:
            return psnr(faces, originals).clamp(max=100.0)
        return 1.0 - feature_distance(originals, faces, case.judge)

    return leakage, "PSNR (dB)" if case.judge is None else "judge cosine"


def cgan_for(case: Case, keep: Tensor | None = None) -> Climb[CGANAttack]:
    """The case's black-box CGAN climbed up its budget ladder (`attack.rungs` budgets doubling
    epochs and auxiliary pairs up to `attack.cgan_epochs` and `attack.aux_images`), trained on
    the attacker's auxiliary pairs (masked and mixed as the defence trains, of the channels `keep`
    when given); shared by the attacks of the case that chain to faces."""
    key = "cgan" if keep is None else ("cgan", tuple(keep.tolist()))
    if key not in case.cache:
        cfg, a = case.cfg, case.cfg.attack
        g = torch.Generator().manual_seed(cfg.train.seed)
        aux = mask_for_attack(case.pipeline, case.aux_images, None, case.proportions, g)
        masked = aux.masked if keep is None else aux.masked[:, keep]

        def train(budget: Budget) -> CGANAttack:
            attack = CGANAttack(
                masked.shape[1],
                cfg.data.image_size,
                options=CGANOptions.from_config(a, cfg.train.seed),
                device=case.device,
            )
            n = budget["aux"]
            attack.fit(masked[:n], aux.targets[:n], budget["epochs"], a.cgan_batch_size)
            return attack

        leakage, measure = _holdout_leakage(case, keep)
        budgets = doubling({"epochs": a.cgan_epochs, "aux": len(masked)}, a.rungs)
        case.cache[key] = climb(budgets, train, leakage, measure, cfg.train.seed)
    return case.cache[key]


@register
class BlackBoxCGAN(Attack):
    """The paper's attack (section 3): a pix2pix CGAN maps masked training tensors to faces."""

    name = "cgan"
    holds = "the victims' masked training tensors; (face, masked) pairs of other people"

    def kept(self, case: Case) -> Tensor | None:
        """The channels of the masked tensors it reconstructs from (None: all of them)."""
        return None

    def run(self, case: Case) -> Reconstructions:
        g = torch.Generator().manual_seed(case.cfg.train.seed)
        items = case.victims(case.cfg.attack.victims)
        victims = mask_for_attack(
            case.pipeline, case.images(items), case.labels(items), case.proportions, g
        )
        keep = self.kept(case)
        masked = victims.masked if keep is None else victims.masked[:, keep]
        climbed = cgan_for(case, keep)
        faces = climbed.trained.reconstruct(masked)
        shown = slice(0, SHOWN)
        return Reconstructions(
            faces,
            victims.labels,
            victims.targets,
            figures=climbed.figures(),
            summary=climbed.summary(),
            panels={
                "original": victims.targets[shown],
                "masked": case.pipeline.render(victims.masked[shown]),
                "reconstruction": faces[shown],
            },
        )
