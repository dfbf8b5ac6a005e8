"""Gradient inversion of a client's shared update (docs/design.md section 4.2; Geiping et al. 2020).

"Inverting Gradients" with breaching's split into who shares what (`simulate_update`), the
attack (`invert_gradients`) and the analysis (`match_and_score`). The attacker holds the model and
the update and optimises a batch whose update has the smallest cosine distance to the observed
one, plus a total variation prior: Adam on signed gradients, step decay, the batch boxed to the
valid input range after every step, random restarts, the best iterate of each kept.

The defaults were tuned against breaching's invertinggradients attacker on the same gradient at
the same budget, for 1, 4 and 8 images (benchmarks/gradient_inversion.py; figures in
docs/performance.md): the distance is the mean of two cosine distances (`blend`), the one global
cosine of Geiping et al. and breaching, where the ArcFace head's large gradient dominates, and
the mean of per-tensor cosines, where every layer counts alike (alone, the first was the weaker
on one image, the second on batches); total variation 0.5; a cosine step decay.

The model is `TrainingLoss`, or any module with forward(x, labels, coefs) -> per-sample loss [B]
(labels and coefs [B, k], as `MixUpArcFace` takes them). On masked data the attack recovers the
masked (mixed) batch, what the network saw, not the faces.

Cases: FedSGD shares the gradient of the batch's mean loss; FedAvg shares w_before - w_after
after E plain SGD steps on the same batch (no momentum or weight decay), which the attacker unrolls
differentiably, like breaching's multi-step user. Updates are kept in gradient-equivalent form,
(w_before - w_after) / local_lr: the gradient itself when E = 1. A client under DP-SGD or local DP
sends the update its mechanism made (`mechanism`): the attacker's model of the client applies the
mechanism's clipping, which is public, and matches the noised update it observes.

Batch norm: both functions run `net` in the mode it is in. In train mode, as the client trained,
each forward uses the batch's own statistics, so the attacker reproduces the client's forward
exactly; running statistics are copied per forward, so neither function changes the model, and
they are not part of the matched update. Dropout draws cannot be reproduced: attack without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.func import functional_call

from ahm_core.attacks.base import SHOWN, Attack, Reconstructions, register
from ahm_core.attacks.cgan import cgan_for
from ahm_core.cases import AttackSet, mask_for_attack
from ahm_core.data.sources import relabel
from ahm_core.models import build_backbone, build_head, load_travelled
from ahm_core.privacy import local_dp_std

if TYPE_CHECKING:
    from ahm_core.cases import Case
    from ahm_core.config import AHMConfig
    from ahm_core.masking import MaskingPipeline

Update = dict[str, Tensor]  # parameter name -> gradient-equivalent update


def cosine_distance(update: list[Tensor], target: list[Tensor]) -> Tensor:
    """1 - the cosine between the two updates as single vectors (Geiping et al., breaching's
    `cosine-similarity`)."""
    dot = sum((u * t).sum() for u, t in zip(update, target, strict=True))
    norms = sum(u.pow(2).sum() for u in update).sqrt() * sum(t.pow(2).sum() for t in target).sqrt()
    return 1.0 - dot / norms.clamp_min(1e-12)


def layer_cosine_distance(update: list[Tensor], target: list[Tensor]) -> Tensor:
    """Mean over parameters of 1 - cosine, the default: no tensor's scale drowns the others'
    (ArcFace's head gradient dwarfs the first layer's), at the price of weighting a bias like a
    weight."""
    distances = [
        1.0 - F.cosine_similarity(u.flatten(), t.flatten(), dim=0)
        for u, t in zip(update, target, strict=True)
    ]
    return torch.stack(distances).mean()


def blend_cosine_distance(update: list[Tensor], target: list[Tensor]) -> Tensor:
    """The mean of the global and the per-layer cosine distances, the default: the head's
    gradient, which carries the batch's features, and every layer's, which carry the input."""
    return (cosine_distance(update, target) + layer_cosine_distance(update, target)) / 2


OBJECTIVES = {
    "blend": blend_cosine_distance,
    "global": cosine_distance,
    "per_layer": layer_cosine_distance,
}
SCHEDULES = ("cosine", "step")  # cosine annealing to lr / 1000; breaching's x0.1 at 3/8, 5/8, 7/8


@dataclass(frozen=True)
class InversionOptions:
    """The attack's budget and prior, and the client's local training it simulates. The
    defaults (blend, tv 0.5, cosine) are one rule for every batch size, tuned on 1, 4 and 8."""

    iterations: int = 300
    lr: float = 0.1
    restarts: int = 2
    tv: float = 0.5  # weight of the total variation prior
    seed: int = 0
    local_steps: int = 1  # E: 1 is FedSGD
    local_lr: float = 0.1
    objective: str = "blend"  # a key of OBJECTIVES
    schedule: str = "cosine"  # one of SCHEDULES: how the step size decays over the iterations
    bounds: tuple[float, float] | None = None  # the valid input range the batch is boxed to
    clients: int = 1  # the update is the mean of this many clients', each on its share of the batch
    # The client's DP mechanism (`mechanism`): DP-SGD clips each sample's gradient to
    # sample_clip (0: off) and adds Gaussian noise of sample_noise x sample_clip to their sum at
    # every step; local DP clips the update, in weights, to update_clip (0: off) and adds noise
    # of std update_noise to every weight it sends.
    sample_clip: float = 0.0
    sample_noise: float = 0.0
    update_clip: float = 0.0
    update_noise: float = 0.0

    def __post_init__(self) -> None:
        if min(self.iterations, self.restarts, self.local_steps, self.clients) < 1:
            raise ValueError("iterations, restarts, local_steps and clients must be >= 1")
        if self.lr <= 0 or self.local_lr <= 0 or self.tv < 0:
            raise ValueError(f"need lr > 0, local_lr > 0, tv >= 0; got {self}")
        mechanism = (self.sample_clip, self.sample_noise, self.update_clip, self.update_noise)
        if min(mechanism) < 0:
            raise ValueError(f"the DP mechanism's clipping and noise must be >= 0; got {self}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective: expected one of {', '.join(OBJECTIVES)}, got {self}")
        if self.bounds is not None and not self.bounds[0] < self.bounds[1]:
            raise ValueError(f"bounds: expected (low, high) with low < high, got {self.bounds}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {', '.join(SCHEDULES)}, got {self}")


class InversionResult(NamedTuple):
    """A reconstructed batch x, the labels and coefs it was fitted with, its loss and the trace."""

    x: Tensor
    labels: Tensor
    coefs: Tensor
    loss: float
    trace: list[float]


class TrainingLoss(nn.Module):
    """Backbone and head as one module: per-sample loss of inputs with labels and coefs [B, k]."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: Tensor, labels: Tensor, coefs: Tensor) -> Tensor:
        """Per-sample loss [B], as the AHM client trains on it."""
        return self.head(self.backbone(x), labels, coefs)


def _norm(tensors: list[Tensor]) -> Tensor:
    return torch.sqrt(sum(t.pow(2).sum() for t in tensors))


def _step_gradient(
    net: nn.Module,
    state: dict[str, Tensor],
    params: list[Tensor],
    batch: tuple[Tensor, ...],
    options: InversionOptions,
    noise: torch.Generator | None,
    create_graph: bool,
) -> list[Tensor]:
    """The gradient of one local step: of the batch's mean loss, or under DP-SGD the sum of each
    sample's gradient clipped to `sample_clip` (Opacus's factor), plus the mechanism's noise when
    `noise` draws it, over the batch size."""
    if not options.sample_clip:
        loss = functional_call(net, state, batch).mean()
        return list(torch.autograd.grad(loss, params, create_graph=create_graph))
    total = [torch.zeros_like(p) for p in params]
    for sample in zip(*batch, strict=True):
        loss = functional_call(net, state, tuple(t[None] for t in sample)).sum()
        grads = torch.autograd.grad(loss, params, create_graph=create_graph)
        factor = (options.sample_clip / (_norm(list(grads)) + 1e-6)).clamp(max=1.0)
        total = [t + factor * g for t, g in zip(total, grads, strict=True)]
    if noise is not None:
        std = options.sample_noise * options.sample_clip
        total = [t + std * _gaussian(t, noise) for t in total]
    return [t / len(batch[0]) for t in total]


def _gaussian(like: Tensor, noise: torch.Generator) -> Tensor:
    return torch.randn(like.shape, generator=noise, dtype=like.dtype).to(like.device)


def _client_update(
    net: nn.Module,
    params: Mapping[str, Tensor],
    x: Tensor,
    labels: Tensor,
    coefs: Tensor,
    options: InversionOptions,
    create_graph: bool,
    noise: torch.Generator | None = None,
) -> list[Tensor]:
    """What the server sees, (w_before - w_after) / local_lr after E SGD steps from `params`,
    differentiable if asked: one client's, or with `options.clients` > 1 the mean over that many
    clients, each training on its equal share of the batch (secure aggregation's mean). The DP
    mechanism's clipping applies always (the attacker knows it); its noise only where `noise`
    draws it (the client's, not the attacker's model of it)."""
    buffers = dict(net.named_buffers())
    updates = []
    for share in zip(*(t.chunk(options.clients) for t in (x, labels, coefs)), strict=True):
        current = dict(params)
        for _ in range(options.local_steps):
            state = {**current, **{name: b.clone() for name, b in buffers.items()}}
            grads = _step_gradient(
                net, state, list(current.values()), share, options, noise, create_graph
            )
            current = {
                name: p - options.local_lr * g
                for (name, p), g in zip(current.items(), grads, strict=True)
            }
        moved = [current[name] - params[name] for name in params]  # what LocalDpMod clips
        if options.update_clip:
            factor = (options.update_clip / (_norm(moved) + 1e-12)).clamp(max=1.0)
            moved = [m * factor for m in moved]
        if noise is not None and options.update_noise:
            moved = [m + options.update_noise * _gaussian(m, noise) for m in moved]
        updates.append([-m / options.local_lr for m in moved])
    return [torch.stack(parts).mean(dim=0) for parts in zip(*updates, strict=True)]


def _start(net: nn.Module) -> dict[str, Tensor]:
    """Detached copies of the parameters, to differentiate through without touching the model."""
    return {name: p.detach().requires_grad_() for name, p in net.named_parameters()}


def simulate_update(
    net: nn.Module,
    x: Tensor,
    labels: Tensor,
    coefs: Tensor,
    options: InversionOptions = InversionOptions(),
) -> Update:
    """The update a client shares after training on (x, labels, coefs): what the attacker sees,
    its DP mechanism's noise drawn from `options.seed`."""
    params = _start(net)
    noise = torch.Generator().manual_seed(options.seed * 1_000_003 + 11)
    update = _client_update(net, params, x, labels, coefs, options, False, noise)
    return {name: u.detach() for name, u in zip(params, update, strict=True)}


def recover_labels(head_grad: Tensor, count: int) -> Tensor:
    """The `count` classes whose head-weight gradient rows sum lowest (iDLG), lowest first.

    A class in the batch pulls its row towards the batch's features, so with non-negative
    features (ReLU) its row sums negative. Limits: classes are distinct, so a label repeated in
    the batch shows once; on mixed data the k labels of every sample show up, not which sample
    mixes which, nor the coefficients (`invert_gradients` fits those given the candidates); a
    cosine head (ArcFace) normalises features and weights, which voids the sign argument, so
    there the recovered labels are unreliable: give them.
    """
    return head_grad.sum(dim=1).argsort()[:count]


def total_variation(x: Tensor) -> Tensor:
    """Mean absolute difference of neighbouring pixels: the prior that favours smooth images."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return dx + dy


def _scheduler(
    optimizer: torch.optim.Optimizer, options: InversionOptions
) -> torch.optim.lr_scheduler.LRScheduler:
    """The step-size decay of `options.schedule` over `options.iterations` steps."""
    if options.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, options.iterations, eta_min=options.lr / 1000
        )
    milestones = [int(options.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)


def _fit(
    net: nn.Module,
    params: Mapping[str, Tensor],
    target: list[Tensor],
    x: Tensor,
    labels: Tensor,
    coefs: Tensor | None,
    options: InversionOptions,
) -> InversionResult:
    """One restart from x: Adam on signed gradients, its step decayed by `options.schedule`,
    boxed to `options.bounds`; returns the iterate of the lowest objective, not the last."""
    if options.bounds is not None:
        x = x.clamp(*options.bounds)
    logits = torch.zeros(labels.shape, device=x.device, requires_grad=coefs is None)
    free = [x.requires_grad_(), logits] if coefs is None else [x.requires_grad_()]
    optimizer = torch.optim.Adam(free, lr=options.lr)
    scheduler = _scheduler(optimizer, options)
    objective = OBJECTIVES[options.objective]
    trace: list[float] = []
    best = (float("inf"), x.detach().clone(), logits.detach().clone())
    for _ in range(options.iterations):
        weights = logits.softmax(dim=1) if coefs is None else coefs
        fitted = _client_update(net, params, x, labels, weights, options, create_graph=True)
        loss = objective(fitted, target) + options.tv * total_variation(x)
        trace.append(float(loss.detach()))
        if trace[-1] < best[0]:
            best = (trace[-1], x.detach().clone(), logits.detach().clone())
        for tensor, grad in zip(free, torch.autograd.grad(loss, free), strict=True):
            tensor.grad = grad
        x.grad.sign_()  # Geiping et al.'s signed gradients
        optimizer.step()
        scheduler.step()
        if options.bounds is not None:
            with torch.no_grad():
                x.clamp_(*options.bounds)
    loss, x_best, logits_best = best
    weights = logits_best.softmax(dim=1) if coefs is None else coefs
    return InversionResult(x_best, labels, weights.detach(), loss, trace)


def invert_gradients(
    net: nn.Module,
    update: Mapping[str, Tensor],
    input_shape: tuple[int, ...],
    labels: Tensor | None = None,
    coefs: Tensor | None = None,
    options: InversionOptions = InversionOptions(),
) -> InversionResult:
    """Reconstruct the batch of `input_shape` whose update best matches `update`, best restart.

    Labels [B, k] are given (the threat model may let the attacker see them) or, if None,
    recovered from the gradient of the last 2-D parameter (the head's weight), one per sample.
    Coefs [B, k] are given or, if None, fitted jointly with x as softmax(logits) per sample: on
    mixed data with unknown pairing and coefficients, pass every sample the recovered candidates,
    `recover_labels(head_grad, m).expand(B, -1)`.
    """
    target = [update[name] for name, _ in net.named_parameters()]
    if labels is None:
        head = [g for g in target if g.ndim == 2][-1]
        labels = recover_labels(head, input_shape[0])[:, None]
    params = _start(net)
    device = target[0].device
    generator = torch.Generator(device=device).manual_seed(options.seed)
    starts = [
        torch.randn(input_shape, generator=generator, device=device)
        for _ in range(options.restarts)
    ]
    runs = [_fit(net, params, target, x, labels, coefs, options) for x in starts]
    return min(runs, key=lambda run: run.loss)


def match_and_score(reconstructed: Tensor, truth: Tensor) -> dict[str, Tensor]:
    """Per true sample: the matched reconstruction (Hungarian on cosine), its cosine and PSNR.

    A batch is recovered as a set, so samples pair up to maximise the total cosine. PSNR uses
    each true sample's value range as the peak, so it also suits masked tensors of any scale.
    """
    flat_rec, flat_true = reconstructed.flatten(1).double(), truth.flatten(1).double()
    similarity = F.normalize(flat_true, dim=1) @ F.normalize(flat_rec, dim=1).T
    _, order = linear_sum_assignment(similarity.cpu().numpy(), maximize=True)
    order = torch.as_tensor(order, device=truth.device)
    matched = flat_rec[order]
    peak = flat_true.amax(dim=1) - flat_true.amin(dim=1)
    mse = (matched - flat_true).pow(2).mean(dim=1)
    return {
        "order": order,
        "cosine": (F.normalize(matched, dim=1) * F.normalize(flat_true, dim=1)).sum(dim=1).float(),
        "psnr": (10.0 * torch.log10(peak.pow(2) / mse)).float(),
    }


def mask_by_client(
    pipeline: MaskingPipeline,
    images: Tensor,
    labels: Tensor,
    proportions: Mapping[int, float] | None,
    generator: torch.Generator,
    clients: int,
) -> AttackSet:
    """`mask_for_attack` on each client's equal share of the batch, joined in client order: a
    client mixes its own images only."""
    size = len(images) // clients
    parts = []
    for c in range(clients):
        share = slice(c * size, (c + 1) * size)
        part = mask_for_attack(pipeline, images[share], labels[share], proportions, generator)
        parts.append(part._replace(sources=part.sources + c * size, index=part.index + c * size))
    width = max(p.coefs.shape[1] for p in parts)  # shares may mix at different k: pad with 0

    def joined(field: str) -> Tensor:
        tensors = [getattr(p, field) for p in parts]
        if field in ("coefs", "index"):
            tensors = [F.pad(t, (0, width - t.shape[1])) for t in tensors]
        return torch.cat(tensors)

    return AttackSet(*(joined(field) for field in AttackSet._fields))


def mechanism(cfg: AHMConfig) -> dict[str, float]:
    """What the client's DP mechanism does to the update it sends, as `InversionOptions` fields:
    DP-SGD's per-sample clipping and noise, local DP's (Flower's LocalDpMod) clipping and noise.
    DP-FedAvg adds its noise to the aggregate, after a curious server has seen every update, and
    its clipping rescales an update, which the cosine objectives ignore: nothing to add."""
    t, f = cfg.train, cfg.federation
    options = {}
    if t.dp_sgd:
        options |= {"sample_clip": t.dp_max_grad_norm, "sample_noise": t.dp_noise_multiplier}
    if f.local_dp:
        std = local_dp_std(f.local_dp_sensitivity, f.local_dp_epsilon, f.local_dp_delta)
        options |= {"update_clip": f.local_dp_clipping_norm, "update_noise": std}
    return options


def client_network(case: Case, classes: int) -> TrainingLoss:
    """The network a client trains: the backbone state a captured client started from
    (`case.start`), else seeded, and a seeded head; in train mode, dropout off (its draws
    cannot be replayed)."""
    cfg = case.cfg
    torch.manual_seed(cfg.train.seed)
    backbone = build_backbone(cfg.model, case.pipeline.in_channels, cfg.data.image_size)
    if case.start is not None:
        load_travelled(backbone, case.start)
    net = TrainingLoss(backbone, build_head(cfg.model, classes)).train()
    for module in net.modules():
        if isinstance(module, nn.Dropout):
            module.eval()
    return net


@register
class GradientInversion(Attack):
    """Invert a client's update on `attack.gi_batch` masked, mixed faces (k, where a fixed k is
    larger; labels and mixing coefficients known, as the threat model allows), then turn the
    recovered inputs into faces: the pipeline's render where the input is the face (RGB, no
    mixing), else the case's CGAN."""

    name = "gradient_inversion"
    holds = "one client's update and the model it started from; labels and mixing coefficients"

    def run(self, case: Case) -> Reconstructions:
        cfg, a = case.cfg, case.cfg.attack
        g = torch.Generator().manual_seed(cfg.train.seed)
        per_client = max(a.gi_batch, case.pipeline.k or 0)  # a client's batch holds the k it mixes
        batch = per_client * a.gi_clients  # under secure aggregation, every client's batch
        items = case.victims(batch)
        labels, classes = relabel(case.labels(items))
        proportions = case.proportions
        if proportions is not None:  # only the k such a batch can mix
            proportions = {k: v for k, v in proportions.items() if k <= per_client} or {2: 1.0}
        aux = mask_for_attack(case.pipeline, case.aux_images, None, proportions, g)
        victims = mask_by_client(
            case.pipeline, case.images(items), case.labels(items), proportions, g, a.gi_clients
        )
        masked = victims.masked.to(case.device)
        net = client_network(case, classes).to(case.device)
        options = InversionOptions(
            iterations=a.gi_iterations,
            restarts=a.gi_restarts,
            local_steps=a.gi_local_steps,
            local_lr=cfg.train.lr,
            seed=cfg.train.seed,
            objective=a.gi_objective,
            tv=a.gi_tv,
            # The valid range of what the client trains on, as the attacker's own masked faces span
            bounds=(float(aux.masked.min()), float(aux.masked.max())),
            clients=a.gi_clients,
            **mechanism(cfg),
        )
        # The client's batch: the same mix, with the labels and coefficients its loss used.
        mixed_labels, coefs = labels[victims.index], victims.coefs
        update = simulate_update(net, masked, mixed_labels, coefs, options)
        recovered = invert_gradients(net, update, tuple(masked.shape), mixed_labels, coefs, options)
        score = match_and_score(recovered.x, masked)
        matched = recovered.x[score["order"]].detach().cpu()
        if case.pipeline.first_stage.shows_faces and case.pipeline.batch_mix is None:
            faces = case.pipeline.render(matched)
        else:
            faces = cgan_for(case).trained.reconstruct(matched)
        model = "initial model" if case.start is None else "captured global model"
        if a.gi_clients > 1:
            model += f", the mean of {a.gi_clients} clients' updates"
        if cfg.train.dp_sgd or cfg.federation.local_dp:
            model += f", as {'DP-SGD' if cfg.train.dp_sgd else 'local DP'} clips and noises it"
        cosine, psnr_db = float(score["cosine"].mean()), float(score["psnr"].mean())
        shown = slice(0, SHOWN)
        return Reconstructions(
            faces,
            victims.labels,
            victims.targets,
            figures={"input_cosine": cosine, "input_psnr": psnr_db, "model": model},
            summary=f"recovered inputs: cosine {cosine:.3f}, {psnr_db:.1f} dB ({model})",
            panels={
                "original": victims.targets[shown],
                "masked input": case.pipeline.render(victims.masked[shown]),
                "recovered input": case.pipeline.render(matched[shown]),
                "recovered face": faces[shown],
            },
        )
