"""White-box model inversion of the trained network (docs/design.md section 4.4): GMI, Zhang et
al. 2020.

"The Secret Revealer": the attacker trains a GAN on auxiliary faces of identities disjoint from
the victims', then, for a target identity c, searches the generator's latent space for faces that
the target network, fed through the known masking pipeline, assigns to c, while the discriminator
keeps them face-like:

    min_z  prior(G(z)) + lambda * CE(target_logits(G(z)), c),    z clamped to [-1, 1].

An independent evaluation classifier (a plain CNN, not the IR-SE target) trained on the private,
unmasked faces judges the reconstructions: top-1 / top-5 attack accuracy, and the distance of their
evaluation features to the target identity's private faces (GMI's feature and KNN distances).

Changes from GMI, for CPU-sized runs: the prior is a non-saturating DCGAN trained with the
two-timescale rule (one discriminator step per generator step, the discriminator's learning rate
4x the generator's) rather than WGAN-GP with five critic steps, so the prior loss is
softplus(-D(G(z))), the generator's own loss; the losses of the latents are summed, so each
latent's search does not depend on how many run together.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ahm_core.attacks.base import SHOWN, Attack, Reconstructions, register
from ahm_core.io import atomic_write, load_checkpoint
from ahm_core.masking.pipeline import MaskingPipeline
from ahm_core.models import build_backbone, load_travelled
from ahm_core.models.heads import MixUpArcFace

if TYPE_CHECKING:
    from ahm_core.cases import Case

LogitsFn = Callable[[Tensor], Tensor]  # faces [N, 3, S, S] in [0, 1] -> identity logits [N, C]
BASE = 4  # side of the generator's first feature map and of the discriminator's last


@dataclass(frozen=True)
class GMIOptions:
    """GAN prior, latent search and evaluation classifier; defaults follow GMI where it has one."""

    image_size: int = 64
    latent_dim: int = 100
    ngf: int = 64
    ndf: int = 64
    gan_epochs: int = 100
    batch_size: int = 64
    g_lr: float = 1e-4
    d_lr: float = 4e-4
    beta1: float = 0.5
    iterations: int = 1500
    restarts: int = 5
    lr: float = 0.02
    momentum: float = 0.9
    lambda_id: float = 100.0
    eval_epochs: int = 30
    eval_lr: float = 1e-3
    eval_width: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        _doublings(self.image_size)
        counts = ("latent_dim", "ngf", "ndf", "gan_epochs", "batch_size", "iterations", "restarts")
        for name in (*counts, "eval_epochs", "eval_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if min(self.g_lr, self.d_lr, self.lr, self.eval_lr) <= 0 or self.lambda_id < 0:
            raise ValueError("learning rates must be > 0 and lambda_id >= 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.momentum < 1):
            raise ValueError(f"need 0 <= beta1, momentum < 1; got {self.beta1}, {self.momentum}")


def _doublings(image_size: int) -> int:
    """How many times a 4x4 map doubles to reach `image_size` (which must be 4 * 2**k, k >= 1)."""
    doublings = (image_size // BASE).bit_length() - 1
    if doublings < 1 or BASE * 2**doublings != image_size:
        raise ValueError(
            f"image_size: expected 4 * 2**k, k >= 1 (8, 16, 32, ...), got {image_size}"
        )
    return doublings


class Generator(nn.Module):
    """DCGAN-like generator: latents [N, d] -> faces [N, 3, S, S] in [0, 1] (sigmoid, as GMI's).

    It doubles the map by nearest upsampling and a 3x3 convolution, which avoids the checkerboard
    of transposed convolutions that a short training leaves visible.
    """

    def __init__(self, latent_dim: int, image_size: int, ngf: int) -> None:
        super().__init__()
        doublings = _doublings(image_size)
        width = ngf * 2 ** (doublings - 1)
        layers: list[nn.Module] = [
            nn.Linear(latent_dim, width * BASE * BASE, bias=False),
            nn.Unflatten(1, (width, BASE, BASE)),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        ]
        for _ in range(doublings):
            layers += [
                nn.Upsample(scale_factor=2),
                nn.Conv2d(width, max(width // 2, ngf), 3, padding=1, bias=False),
                nn.BatchNorm2d(max(width // 2, ngf)),
                nn.ReLU(),
            ]
            width = max(width // 2, ngf)
        layers += [nn.Conv2d(width, 3, 3, padding=1), nn.Sigmoid()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.body(z)


class Discriminator(nn.Module):
    """DCGAN discriminator without normalisation: faces [N, 3, S, S] in [0, 1] -> logits [N]."""

    def __init__(self, image_size: int, ndf: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = ndf
        for _ in range(_doublings(image_size) - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1), nn.LeakyReLU(0.2)]
            width *= 2
        layers.append(nn.Conv2d(width, 1, BASE))
        self.body = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        return self.body(images * 2.0 - 1.0).flatten()


@dataclass
class GANPrior:
    """The attacker's GAN trained on auxiliary faces, with each epoch's mean losses."""

    generator: Generator
    discriminator: Discriminator
    options: GMIOptions
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> Tensor:
        """n faces [n, 3, S, S] from latents drawn as the inversion starts them (clamped normal)."""
        self.generator.eval()
        device = next(self.generator.parameters()).device
        return self.generator(_initial_latents(n, self.options.latent_dim, seed).to(device))

    def save(self, path: str | os.PathLike) -> Path:
        """Write options, weights and history atomically."""
        state = {
            "options": dataclasses.asdict(self.options),
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "history": self.history,
        }
        return atomic_write(path, lambda tmp: torch.save(state, tmp))

    @classmethod
    def load(cls, path: str | os.PathLike) -> GANPrior:
        """A prior rebuilt from a `save` file (tensors and plain data: weights_only)."""
        state = load_checkpoint(path, required=("options", "generator"))
        prior = _build_prior(GMIOptions(**state["options"]))
        prior.generator.load_state_dict(state["generator"])
        prior.discriminator.load_state_dict(state["discriminator"])
        prior.history = state["history"]
        return prior


def _build_prior(options: GMIOptions) -> GANPrior:
    with torch.random.fork_rng(devices=[]):  # seeded initialisation, caller's RNG untouched
        torch.manual_seed(options.seed)
        generator = Generator(options.latent_dim, options.image_size, options.ngf)
        discriminator = Discriminator(options.image_size, options.ndf)
    return GANPrior(generator, discriminator, options)


def _initial_latents(n: int, latent_dim: int, seed: int) -> Tensor:
    return torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)


def _check_faces(images: Tensor, size: int, name: str) -> None:
    if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
        raise ValueError(f"{name}: expected [N, 3, {size}, {size}], got {tuple(images.shape)}")


def train_prior(aux_images: Tensor, options: GMIOptions) -> GANPrior:
    """GMI's first stage: a GAN on auxiliary faces [N, 3, S, S] in [0, 1] (their device)."""
    o = options
    _check_faces(aux_images, o.image_size, "aux_images")
    if len(aux_images) < o.batch_size:
        raise ValueError(f"aux_images: need >= batch_size={o.batch_size}, got {len(aux_images)}")
    device = aux_images.device
    prior = _build_prior(o)
    gen, disc = prior.generator.to(device).train(), prior.discriminator.to(device).train()
    betas = (o.beta1, 0.999)
    opt_g = torch.optim.Adam(gen.parameters(), lr=o.g_lr, betas=betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=o.d_lr, betas=betas)
    rng = torch.Generator().manual_seed(o.seed)
    batches = len(aux_images) // o.batch_size  # whole batches only: BatchNorm needs two rows
    for _ in range(o.gan_epochs):
        order = torch.randperm(len(aux_images), generator=rng)[: batches * o.batch_size]
        sums = {"d_loss": 0.0, "g_loss": 0.0, "d_real": 0.0, "d_fake": 0.0}
        for idx in order.view(batches, o.batch_size):
            real = aux_images[idx.to(device)]
            fake = gen(torch.randn(o.batch_size, o.latent_dim, generator=rng).to(device))
            d_real, d_fake = disc(real), disc(fake.detach())
            d_loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            g_loss = F.softplus(-disc(fake)).mean()
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()  # also fills the discriminator's grads, cleared before its next step
            opt_g.step()
            values = (d_loss, g_loss, d_real.mean(), d_fake.mean())
            for name, value in zip(sums, values, strict=True):
                sums[name] += value.item() / batches
        prior.history.append(sums)
    gen.eval()
    disc.eval()
    return prior


def white_box_logits(
    backbone: nn.Module,
    head: MixUpArcFace,
    pipeline: MaskingPipeline,
    generator: torch.Generator | None = None,
) -> LogitsFn:
    """The target's identity logits of faces: scaled cosines of backbone(mask(faces)), eval mode."""
    backbone.eval()

    def logits(images: Tensor) -> Tensor:
        embeddings = backbone(pipeline.differentiable_encode(images, generator))
        return head.cosine(embeddings) * head.scale

    return logits


def invert_identities(
    prior: GANPrior, target_logits: LogitsFn, classes: Tensor, options: GMIOptions
) -> tuple[Tensor, Tensor]:
    """GMI's second stage: `options.restarts` faces per class; (faces [M, 3, S, S], labels [M])."""
    o = options
    device = next(prior.generator.parameters()).device
    labels = classes.to(device).repeat_interleave(o.restarts)
    z = _initial_latents(len(labels), prior.options.latent_dim, o.seed).to(device)
    z.requires_grad_(True)
    optimizer = torch.optim.SGD([z], lr=o.lr, momentum=o.momentum, nesterov=o.momentum > 0)
    prior.generator.eval()
    prior.discriminator.eval()
    for _ in range(o.iterations):
        faces = prior.generator(z)
        prior_loss = F.softplus(-prior.discriminator(faces))
        identity_loss = F.cross_entropy(target_logits(faces), labels, reduction="none")
        loss = (prior_loss + o.lambda_id * identity_loss).sum()
        (z.grad,) = torch.autograd.grad(loss, z)  # no gradients accumulate in the networks
        optimizer.step()
        with torch.no_grad():
            z.clamp_(-1.0, 1.0)
    with torch.no_grad():
        return prior.generator(z), labels


class Evaluator(nn.Module):
    """GMI's evaluation classifier, a plain CNN unlike the IR-SE target: faces -> logits."""

    def __init__(self, num_classes: int, width: int = 32, stages: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for stage in range(stages):
            out = width * 2**stage
            layers += [
                nn.Conv2d(channels, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            channels = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(channels, num_classes)

    def embed(self, images: Tensor) -> Tensor:
        """Features [N, D] of faces in [0, 1]: the space of the feature and KNN distances."""
        return self.features(images * 2.0 - 1.0)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.embed(images))


def train_evaluator(images: Tensor, labels: Tensor, options: GMIOptions) -> Evaluator:
    """An evaluation classifier trained on the private, unmasked faces (labels 0..C-1), flips on."""
    o = options
    _check_faces(images, o.image_size, "images")
    device, labels = images.device, labels.to(images.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(o.seed)
        model = Evaluator(int(labels.max()) + 1, o.eval_width).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=o.eval_lr)
    rng = torch.Generator().manual_seed(o.seed)
    model.train()
    for _ in range(o.eval_epochs):
        for idx in torch.randperm(len(images), generator=rng).split(o.batch_size):
            if len(idx) < 2:  # BatchNorm needs two rows
                continue
            idx = idx.to(device)
            flip = (torch.rand(len(idx), generator=rng) < 0.5).to(device)
            batch = torch.where(flip[:, None, None, None], images[idx].flip(-1), images[idx])
            loss = F.cross_entropy(model(batch), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def attack_report(
    reconstructions: Tensor,
    target_classes: Tensor,
    evaluator: Evaluator,
    private_images: Tensor,
    private_labels: Tensor,
) -> dict[str, float]:
    """GMI's scores: top-1/top-5 accuracy of the evaluator, feature and KNN distances (L2).

    feature_distance: to the centroid of the target's private features; knn_distance: to the
    nearest private face of the target. Top-5 becomes top-C with fewer than 5 classes.
    """
    evaluator.eval()
    device = next(evaluator.parameters()).device
    targets = target_classes.to(device)
    features = evaluator.embed(reconstructions.to(device))
    ranked = evaluator.classifier(features).topk(min(5, evaluator.classifier.out_features)).indices
    private = evaluator.embed(private_images.to(device))
    private_labels = private_labels.to(device)
    centroids = torch.stack([private[private_labels == c].mean(dim=0) for c in targets.tolist()])
    distances = torch.cdist(features, private)
    distances[private_labels[None, :] != targets[:, None]] = float("inf")
    return {
        "top1": (ranked[:, 0] == targets).float().mean().item(),
        "top5": (ranked == targets[:, None]).any(dim=1).float().mean().item(),
        "feature_distance": (features - centroids).norm(dim=1).mean().item(),
        "knn_distance": distances.min(dim=1).values.mean().item(),
        "count": len(targets),
    }


@register
class ModelInversion(Attack):
    """GMI against the released model (the global backbone with one client's head): faces of
    `attack.gmi_targets` of that client's identities, judged by GMI's own classifier trained on
    the client's faces and, like every attack, by re-identification against the gallery."""

    name = "model_inversion"
    holds = "the released model (global backbone, a client's head); auxiliary faces"

    def skip(self, case: Case) -> str | None:
        if case.released is None:
            return "no released model (a client's head and data) in this case"
        return None

    def run(self, case: Case) -> Reconstructions:
        cfg, a, released = case.cfg, case.cfg.attack, case.released
        torch.manual_seed(cfg.train.seed)
        backbone = build_backbone(cfg.model, case.pipeline.in_channels, cfg.data.image_size)
        load_travelled(backbone, released.backbone)
        options = GMIOptions(
            image_size=cfg.data.image_size,
            gan_epochs=a.gmi_gan_epochs,
            iterations=a.gmi_iterations,
            restarts=a.gmi_restarts,
            ngf=a.ngf,
            ndf=a.ndf,
            seed=cfg.train.seed,
        )
        # The prior (auxiliary faces) and the judge (the client's faces) depend on no trained
        # model: every case of one report shares them.
        key = (options, tuple(released.items.tolist()))
        if key not in case.shared:
            private = case.images(released.items).to(case.device)
            case.shared[key] = (
                train_prior(case.aux_images.to(case.device), options),
                train_evaluator(private, released.labels.to(case.device), options),
                private,
            )
        prior, evaluator, private = case.shared[key]
        head = released.head.to(case.device)
        logits = white_box_logits(backbone.to(case.device), head, case.pipeline)
        classes = int(released.labels.max()) + 1
        targets = torch.arange(min(a.gmi_targets, classes))
        faces, labels = invert_identities(prior, logits, targets, options)
        figures = attack_report(faces, labels, evaluator, private, released.labels)
        # Each target class of the client's head back to the dataset's identity.
        first = [int((released.labels == c).nonzero()[0]) for c in targets.tolist()]
        found = case.labels(released.items[first]).tolist()
        identity = dict(zip(targets.tolist(), found, strict=True))
        faces = faces.detach().cpu().clamp(0.0, 1.0)
        return Reconstructions(
            faces,
            torch.tensor([identity[c] for c in labels.tolist()]),
            None,
            figures={**figures, "chance": 1.0 / classes},
            summary=f"GMI classifier top-1 {figures['top1']:.3f} / top-5 {figures['top5']:.3f} "
            f"(chance {1.0 / classes:.3f})",
            panels={"inverted": faces[:SHOWN]},
        )
