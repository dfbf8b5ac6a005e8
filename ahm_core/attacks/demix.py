"""White-box demixing of MixUp and InstaHide, then PPFR-FD inversion with known keys
(docs/design.md 4.3).

After Carlini et al. 2020, "An attack on InstaHide": encodings that share a private component are
similar (`similarity_graph`: correlation of the encodings, or of their squares for InstaHide, where
Carlini trained a network); each private component is a clique of that graph (`cluster_components`:
greedy clique cover); with every encoding's components known, the components follow by least
squares (`recover_components`: alternating with the mixing coefficients when those are unknown).
For InstaHide that least squares on the magnitudes is the naive attack; it starts a fit of the
sign-robust residual || |A X| - |E| ||^2 by sign synchronisation and error reduction.

Attacker's knowledge. `demix` sees only the encodings and k (white box: the pipeline and its k are
public). Stronger attackers call `recover_components` with the true `assignment` (who was mixed
with whom) and optionally the true coefficients. `invert_ppfr` also holds the data owner's keys.

Limits. Mixing is linear and its coefficients sum to 1, so MixUp components come back whole.
InstaHide's signs erase, for every element, the sign shared by all components: they come back up
to that sign, so compare magnitudes. Self-normalisation erases each image's affine intensity and a
plane (a linear ramp only shifts each channel's mean, up to border effects): `invert_ppfr` returns
images without them. Demixed components go to `invert_ppfr` with the fixed key (the default): with
per-image keys the attacker would also have to tell which key belongs to which component.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ahm_core.attacks.base import SHOWN, Attack, Reconstructions, register
from ahm_core.cases import attack_ks
from ahm_core.freq import check_images, check_upsample, fused_kernel
from ahm_core.masking.first_stage import to_gray
from ahm_core.masking.mixup import instahide, mixup
from ahm_core.masking.ppfr_fd import PPFRFD, Keys, self_normalise

if TYPE_CHECKING:
    from ahm_core.cases import Case

MODES = ("mixup", "instahide")
MAD_TO_STD = 1.4826  # the standard deviation of a normal sample is 1.4826 times its MAD
SYNC_BUDGET = 1 << 22  # entries of the sign-vote matrices held at once


@dataclass(frozen=True)
class DemixOptions:
    """Settings of the demixing attack; the defaults suit a few hundred encodings."""

    edge_z: float = 3.0  # an edge: a pair this many robust stds above the median pair's similarity
    min_link: float = 0.6  # a cluster member is linked to at least this share of the others
    als_rounds: int = 30  # alternating least-squares rounds when the coefficients are unknown
    sign_rounds: int = 4  # InstaHide: rounds of sign synchronisation ...
    reduction_steps: int = 10  # ... each followed by this many error-reduction steps

    def __post_init__(self) -> None:
        if self.edge_z <= 0 or not 0 < self.min_link <= 1:
            raise ValueError(
                f"need edge_z > 0, 0 < min_link <= 1; got {self.edge_z}, {self.min_link}"
            )
        counts = (self.als_rounds, self.sign_rounds, self.reduction_steps)
        if self.als_rounds < 1 or min(counts) < 0:
            raise ValueError(f"need als_rounds >= 1, other counts >= 0; got {counts}")


class DemixResult(NamedTuple):
    """Recovered components [P, ...]; each encoding's components and coefficients [M, k]."""

    components: Tensor
    assignment: Tensor
    coefs: Tensor


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")


def _standardise(rows: Tensor) -> Tensor:
    """Each row to zero mean and unit norm, so that dot products are Pearson correlations."""
    rows = rows - rows.mean(dim=1, keepdim=True)
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)


def similarity_graph(encodings: Tensor, mode: str = "mixup") -> Tensor:
    """[M, M] correlations between encodings, diagonal zero: high where they share a component.

    InstaHide correlates the squares (for Gaussian content: the square of the signed correlation,
    which the signs hide). The mean encoding, content that every encoding shares, goes first.
    """
    _check_mode(mode)
    flat = encodings.flatten(1).double()
    flat = flat.square() if mode == "instahide" else flat
    rows = _standardise(flat - flat.mean(dim=0))
    return (rows @ rows.T).fill_diagonal_(0.0)


def cluster_components(similarity: Tensor, k: int, options: DemixOptions | None = None) -> Tensor:
    """[M, k] component ids per encoding: a greedy cover of the similarity graph by cliques.

    Each clique, grown from the strongest edge it does not yet cover, is one private component.
    An encoding keeps the k cliques it is most similar to; encodings in fewer than k get new
    components of their own (still solvable: the rest of the encoding is known).
    """
    options = options or DemixOptions()
    m = len(similarity)
    if k < 1 or similarity.shape != (m, m):
        raise ValueError(f"need k >= 1 and a square similarity; got {k}, {tuple(similarity.shape)}")
    off = similarity[~torch.eye(m, dtype=torch.bool)]
    median = off.median()
    spread = MAD_TO_STD * (off - median).abs().median()
    adj = (similarity > median + options.edge_z * spread).fill_diagonal_(False)
    covered = torch.zeros_like(adj)
    cliques: list[Tensor] = []
    rows, cols = torch.nonzero(torch.triu(adj), as_tuple=True)
    for a, b in torch.stack([rows, cols], 1)[similarity[rows, cols].argsort(descending=True)]:
        if covered[a, b]:
            continue
        members = _prune(adj, torch.nonzero(adj[a] & adj[b]).flatten(), a, b, options.min_link)
        covered[members[:, None], members[None, :]] = True
        cliques.append(members)
    member = torch.zeros(m, len(cliques), dtype=torch.bool)
    for c, members in enumerate(cliques):
        member[members, c] = True
    # An encoding's affinity to a clique: its mean similarity to the clique's other members.
    affinity = (similarity.double() @ member.double()) / (member.sum(0) - 1).clamp_min(1)
    affinity[~member] = -torch.inf
    top = affinity.topk(min(k, len(cliques)), dim=1)
    assignment = torch.full((m, k), -1, dtype=torch.long)
    assignment[:, : len(top.indices.T)] = torch.where(torch.isfinite(top.values), top.indices, -1)
    missing = assignment < 0
    assignment[missing] = len(cliques) + torch.arange(int(missing.sum()))
    return _relabel(assignment)


def _prune(adj: Tensor, common: Tensor, a: Tensor, b: Tensor, min_link: float) -> Tensor:
    """Edge (a, b) and their common neighbours, least linked first dropped until a near-clique."""
    members = torch.cat([a[None], b[None], common])
    while len(members) > 2:
        links = adj[members][:, members].sum(dim=1)
        links[:2] = len(members)  # the seed edge stays
        worst = int(links.argmin())
        if links[worst] >= min_link * (len(members) - 1):
            break
        members = torch.cat([members[:worst], members[worst + 1 :]])
    return members


def _relabel(assignment: Tensor) -> Tensor:
    """Component ids renumbered 0..P-1, unused ids dropped."""
    _, inverse = torch.unique(assignment, return_inverse=True)
    return inverse


def _mixing_matrix(assignment: Tensor, coefs: Tensor, count: int) -> Tensor:
    """[M, P] matrix A with encodings = A @ components."""
    rows = torch.arange(len(assignment))[:, None].expand_as(assignment)
    a = coefs.new_zeros(len(assignment), count)
    return a.index_put_((rows, assignment), coefs, accumulate=True)


def _fit_coefs(flat: Tensor, components: Tensor, assignment: Tensor) -> Tensor:
    """Per encoding, the least-squares coefficients of its k components under sum = 1."""
    m, k = assignment.shape
    parts = components[assignment]  # [M, k, D]
    kkt = flat.new_zeros(m, k + 1, k + 1)
    kkt[:, :k, :k] = parts @ parts.transpose(1, 2)
    kkt[:, :k, k] = kkt[:, k, :k] = 1.0
    rhs = torch.cat([parts @ flat[:, :, None], flat.new_ones(m, 1, 1)], dim=1)
    # pinv: a component drawn twice for one encoding makes the system singular.
    return (torch.linalg.pinv(kkt) @ rhs)[:, :k, 0]


def _least_squares(
    flat: Tensor, assignment: Tensor, coefs: Tensor | None, rounds: int
) -> tuple[Tensor, Tensor]:
    """Components [P, D] and coefficients [M, k] with flat ~ A X, alternating if coefs unknown."""
    count = int(assignment.max()) + 1
    fixed = coefs is not None
    coefs = coefs.to(flat) if fixed else flat.new_full(assignment.shape, 1 / assignment.shape[1])
    for _ in range(1 if fixed else rounds):
        a = _mixing_matrix(assignment, coefs, count)
        components = torch.linalg.pinv(a) @ flat
        if not fixed:
            coefs = _fit_coefs(flat, components, assignment)
    return components, coefs


def _sign_votes(magnitudes: Tensor, assignment: Tensor, parts: Tensor, count: int) -> Tensor:
    """Per element, the [P, P] votes of the encodings on their components' relative signs.

    Each encoding picks the sign pattern of its weighted component magnitudes `parts` [M, k, D]
    that best explains its magnitude, and votes with the margin over the runner-up pattern.
    """
    m, k, d = parts.shape
    tails = torch.tensor(list(itertools.product((1.0, -1.0), repeat=k - 1))).to(parts)
    patterns = torch.cat([tails.new_ones(len(tails), 1), tails], dim=1)  # first sign fixed at +1
    fit = (patterns[None, :, :, None] * parts[:, None]).sum(dim=2).abs() - magnitudes[:, None]
    ranked = fit.abs().sort(dim=1)
    margin = ranked.values[:, 1] - ranked.values[:, 0]  # [M, D]
    chosen = patterns[ranked.indices[:, 0]]  # [M, D, k]
    votes = parts.new_zeros(d, count, count)
    element = torch.arange(d)[None, :].expand(m, d)
    for a, b in itertools.permutations(range(k), 2):
        index = (element, assignment[:, a, None].expand(m, d), assignment[:, b, None].expand(m, d))
        votes.index_put_(index, chosen[..., a] * chosen[..., b] * margin, accumulate=True)
    return votes


def _sign_sync(magnitudes: Tensor, assignment: Tensor, components: Tensor, coefs: Tensor) -> Tensor:
    """Signs [P, D] of the components, element by element: the leading eigenvector of the votes.

    Sign synchronisation: with consistent votes the vote matrix is s s^T weighted, s the signs.
    """
    count, d = components.shape
    if assignment.shape[1] == 1:
        return torch.ones_like(components)
    parts = coefs[:, :, None] * components.abs()[assignment]
    signs = torch.empty_like(components)
    chunk = max(1, SYNC_BUDGET // (count * count))  # elements whose vote matrices fit in memory
    for start in range(0, d, chunk):
        part = slice(start, start + chunk)
        votes = _sign_votes(magnitudes[:, part], assignment, parts[:, :, part], count)
        lead = torch.linalg.eigh(votes).eigenvectors[..., -1]  # [chunk, P]
        signs[:, part] = torch.where(lead.T >= 0, 1.0, -1.0)
    return signs


def _sign_robust(
    magnitudes: Tensor,
    assignment: Tensor,
    components: Tensor,
    coefs: Tensor,
    learn_coefs: bool,
    options: DemixOptions,
) -> tuple[Tensor, Tensor]:
    """Fit signed components to the magnitudes: minimise || |A X| - |E| ||^2.

    Rounds of sign synchronisation, each followed by error reduction (Gerchberg-Saxton):
    give the magnitudes the signs of the current fit, solve the least squares, repeat.
    """
    count = len(components)
    for _ in range(options.sign_rounds):
        components = _sign_sync(magnitudes, assignment, components, coefs) * components.abs()
        for _ in range(options.reduction_steps):
            a = _mixing_matrix(assignment, coefs, count)
            signed = (a @ components).sign() * magnitudes
            components = torch.linalg.pinv(a) @ signed
            if learn_coefs:
                coefs = _fit_coefs(signed, components, assignment)
    return components, coefs


def recover_components(
    encodings: Tensor,
    assignment: Tensor,
    mode: str = "mixup",
    coefs: Tensor | None = None,
    options: DemixOptions | None = None,
) -> tuple[Tensor, Tensor]:
    """Components [P, ...] and coefficients [M, k] of encodings [M, ...] whose mixing slots hold
    the components `assignment` [M, k] (ids 0..P-1); coefficients are fitted unless given.

    InstaHide: the MixUp solution on the magnitudes (the naive attack) starts the sign-robust
    fit, whose components are right up to one sign per element shared by all of them.
    """
    _check_mode(mode)
    options = options or DemixOptions()
    if assignment.dim() != 2 or len(assignment) != len(encodings):
        raise ValueError(f"assignment: expected [{len(encodings)}, k], got {assignment.shape}")
    flat = encodings.flatten(1).double()
    flat = flat.abs() if mode == "instahide" else flat
    components, fitted = _least_squares(flat, assignment, coefs, options.als_rounds)
    if mode == "instahide":
        components, fitted = _sign_robust(
            flat, assignment, components, fitted, coefs is None, options
        )
    shape = (len(components), *encodings.shape[1:])
    return components.view(shape).to(encodings.dtype), fitted.to(encodings.dtype)


def demix(
    encodings: Tensor, k: int, mode: str = "mixup", options: DemixOptions | None = None
) -> DemixResult:
    """The attack from the encodings and k alone: similarity, cliques, least squares."""
    options = options or DemixOptions()
    assignment = cluster_components(similarity_graph(encodings, mode), k, options)
    components, coefs = recover_components(encodings, assignment, mode, None, options)
    return DemixResult(components, assignment, coefs)


def recovery_report(recovered: Tensor, originals: Tensor, threshold: float = 0.9) -> dict[str, Any]:
    """How many originals come back: one-to-one (Hungarian) matching by correlation.

    Correlation (cosine after removing each item's mean) is blind to the offset and scale that
    self-normalisation and the |.| of InstaHide leave undetermined. An original left unmatched
    (fewer recovered items than originals) scores 0.
    """
    sim = (
        _standardise(originals.flatten(1).double()) @ _standardise(recovered.flatten(1).double()).T
    )
    rows, cols = linear_sum_assignment(sim.numpy(), maximize=True)
    best = torch.zeros(len(originals), dtype=torch.float64)
    match = torch.full((len(originals),), -1, dtype=torch.long)
    best[rows], match[rows] = sim[rows, cols], torch.as_tensor(cols)
    count = int((best >= threshold).sum())
    return {
        "threshold": threshold,
        "recovered": count,
        "total": len(originals),
        "fraction": count / max(len(originals), 1),
        "mean_similarity": float(best.mean()) if len(best) else 0.0,
        "similarity": best.tolist(),
        "match": match.tolist(),
    }


def remove_plane(images: Tensor) -> Tensor:
    """Each image [N, 1, H, W] minus its least-squares plane, scaled to unit std: what is left of
    an image once the offset, scale and plane that PPFR-FD's self-normalisation erases are gone."""
    h, w = images.shape[-2:]
    dtype = torch.float64
    i = torch.linspace(-1, 1, h, dtype=dtype)[:, None].expand(h, w)
    j = torch.linspace(-1, 1, w, dtype=dtype)[None, :].expand(h, w)
    basis = torch.stack([torch.ones(h, w, dtype=dtype), i, j]).flatten(1).T  # [HW, 3]
    flat = images.flatten(1).to(dtype).T
    residual = flat - basis @ torch.linalg.lstsq(basis, flat).solution
    residual = residual / residual.std(dim=0, keepdim=True).clamp_min(1e-12)
    return residual.T.reshape(images.shape).to(images.dtype)


def ppfr_forward(gray: Tensor, ppfr: PPFRFD, keys: Keys) -> Tensor:
    """PPFR-FD masking as a differentiable function of the image: `PPFRFD.mask_explicit`'s
    recipe with the block DCT as `fused_kernel`'s strided convolution."""
    kernel = fused_kernel(ppfr.upsample, gray.device, gray.dtype)[ppfr.channels.to(gray.device)]
    padded = F.pad(gray, (1, 1, 1, 1), mode="replicate")
    x = F.conv2d(padded, kernel, stride=check_upsample(ppfr.upsample))
    x = self_normalise(torch.gather(x, 1, _channel_index(keys.p1, x)), ppfr.eps)
    x = torch.einsum("ij,njhw->nihw", ppfr.mix_matrix.to(x), x)
    return self_normalise(torch.gather(x, 1, _channel_index(keys.p2, x)), ppfr.eps)


def _channel_index(perm: Tensor, x: Tensor) -> Tensor:
    return perm.to(x.device)[:, :, None, None].expand_as(x)


def invert_ppfr(
    masked: Tensor, ppfr: PPFRFD, keys: Keys, steps: int = 100, seed: int = 0
) -> Tensor:
    """Gray images [N, 1, H, W] whose masking with the known keys best matches `masked`.

    L-BFGS on the squared residual through `ppfr_forward`, from a flat image with a little noise.
    The result goes through `remove_plane`: intensity offset, scale and plane are unrecoverable.
    """
    check_images(masked, "masked tensor", channels=ppfr.num_channels)
    n, _, h, w = masked.shape
    stride = check_upsample(ppfr.upsample)
    g = torch.Generator().manual_seed(seed)
    start = 0.5 + 0.01 * torch.randn(n, 1, h * stride, w * stride, generator=g)
    image = start.to(masked).requires_grad_(True)
    optimiser = torch.optim.LBFGS(
        [image], max_iter=steps, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        optimiser.zero_grad()
        loss = (ppfr_forward(image, ppfr, keys) - masked).pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return remove_plane(image.detach())


@register
class Demixing(Attack):
    """`attack.demix_images` private images, each mixed `attack.demix_rounds` times as the defence
    mixes: at its k, or at k drawn from the policy's measured shares for the adaptive method
    (InstaHide's random signs included); the mixes of each k are demixed from the mixes alone,
    the attacker knowing every mix's k. With PPFR-FD's fixed key the components are inverted to
    faces (at the attacker's auxiliary faces' mean brightness and contrast), else rendered."""

    name = "demix"
    holds = "the masked mixes (white box: the pipeline and each mix's k); PPFR-FD's fixed key"
    with_key = True  # PPFR-FD's fixed key inverts the components where the defence has one

    def skip(self, case: Case) -> str | None:
        return None if case.pipeline.batch_mix is not None else "the defence mixes nothing"

    def run(self, case: Case) -> Reconstructions:
        a, pipeline = case.cfg.attack, case.pipeline
        g = torch.Generator().manual_seed(case.cfg.train.seed)
        items = case.victims(a.demix_images)
        originals = case.images(items)
        encoded = pipeline.encode(originals, g)
        ids = torch.arange(len(encoded))
        mode = "instahide" if pipeline.batch_mix == "instahide" else "mixup"
        mix = instahide if mode == "instahide" else mixup
        mixes, ks = [], []
        for _ in range(a.demix_rounds):
            drawn = attack_ks(pipeline, case.proportions, len(encoded), g)
            k = pipeline.k if drawn is None else drawn
            mixes.append(mix(encoded, ids, k, case.cfg.mixup.max_coef, g).x)
            ks.append(torch.full((len(encoded),), k) if drawn is None else drawn)
        encodings, ks = torch.cat(mixes), torch.cat(ks)
        recovered = torch.cat(
            [
                demix(encodings[ks == k], int(k), mode).components.reshape(-1, *encoded.shape[1:])
                for k in ks.unique()
            ]
        )
        components = recovery_report(recovered, encoded)
        figures = {
            "images": len(items),
            "mixes_per_k": {int(k): int((ks == k).sum()) for k in ks.unique()},
            "components_recovered": components["recovered"],
            "mean_similarity": components["mean_similarity"],
        }
        summary = f"components {components['recovered']}/{len(items)}"
        ppfr = pipeline.first_stage
        if self.with_key and _keyed(pipeline):
            inverted = invert_ppfr(recovered, ppfr, ppfr.keys(len(recovered)))
            report = recovery_report(inverted, remove_plane(to_gray(originals)))
            grey = to_gray(case.aux_images).flatten(1)
            faces = inverted * grey.std(dim=1).mean() + grey.mean(dim=1).mean()
            figures["faces_recovered"] = report["recovered"]
            summary += f", faces {report['recovered']}/{len(items)} (with the key)"
        else:
            report, faces = components, pipeline.render(recovered)
        match = torch.as_tensor(report["match"])
        found = match >= 0
        faces = faces[match[found]].clamp(0.0, 1.0)
        return Reconstructions(
            faces,
            case.labels(items)[found],
            originals[found],
            figures=figures,
            summary=summary,
            panels={"original": originals[found][:SHOWN], "demixed": faces[:SHOWN]},
        )


def _keyed(pipeline: Any) -> bool:
    """Whether the defence's first stage is PPFR-FD with its fixed key (the key can invert)."""
    stage = pipeline.first_stage
    return isinstance(stage, PPFRFD) and stage.key_mode == "fixed"


@register
class KeylessDemixing(Demixing):
    """The demixing attack without PPFR-FD's key: the recovered components rendered as the
    masked tensors are (a defence whose key is kept from the attacker)."""

    name = "demix_keyless"
    holds = "the masked mixes (white box: the pipeline and k); no key"
    with_key = False

    def skip(self, case: Case) -> str | None:
        if not _keyed(case.pipeline):
            return "the defence has no key to withhold: demix is this attack"
        return super().skip(case)
