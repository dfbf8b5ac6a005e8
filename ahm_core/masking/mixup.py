"""MixUp and InstaHide inside a batch (docs/design.md D3), in any domain: RGB images or
frequency channels.

Row i of the result mixes k_i rows of the batch: itself (column 0) and rows of k_i - 1 random
permutations, with coefficients |N(0, 1)| normalised to sum 1 and redrawn until none exceeds
`max_coef`. Only the failing rows are redrawn, so a whole batch never waits on its unluckiest row.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

MAX_REDRAWS = 10_000


class Mixed(NamedTuple):
    """A mixed batch: x [N, ...]; labels, coefs and source rows `index`, each [N, k_max].

    Columns at or beyond a row's k have coefficient 0 (their label and index are still valid).
    """

    x: Tensor
    labels: Tensor
    coefs: Tensor
    index: Tensor


def _as_ks(k: int | Tensor, n: int) -> Tensor:
    ks = torch.full((n,), k, dtype=torch.long) if isinstance(k, int) else k.detach().cpu().long()
    if ks.shape != (n,):
        raise ValueError(f"k: expected an int or a tensor of shape [{n}], got {tuple(ks.shape)}")
    if n and (int(ks.min()) < 1 or int(ks.max()) > n):
        raise ValueError(f"k: every k must be in [1, batch size {n}], got {ks.unique().tolist()}")
    return ks


def mix_coefficients(
    ks: Tensor, max_coef: float, generator: torch.Generator | None = None
) -> Tensor:
    """[N, max k] coefficients: row i has ks[i] entries summing to 1, each <= max_coef."""
    n, width = len(ks), int(ks.max()) if len(ks) else 1
    k_min = int(ks.min()) if n else 1
    # k coefficients summing to 1 stay <= max_coef only if max_coef > 1/k (or k = 1, max_coef 1).
    if not (1.0 / k_min < max_coef <= 1.0 or k_min == 1 == max_coef):
        raise ValueError(f"max_coef must be in (1/{k_min}, 1], got {max_coef}")
    device = generator.device if generator is not None else torch.device("cpu")
    active = torch.arange(width)[None, :] < ks[:, None]
    coefs = torch.zeros(n, width, dtype=torch.float64)
    todo = torch.arange(n)
    for _ in range(MAX_REDRAWS):
        if len(todo) == 0:
            return coefs.float()
        draw = torch.randn(len(todo), width, generator=generator, device=device).cpu().double()
        draw = draw.abs() * active[todo]
        draw /= draw.sum(dim=1, keepdim=True)
        ok = draw.max(dim=1).values <= max_coef
        coefs[todo[ok]] = draw[ok]
        todo = todo[~ok]
    raise RuntimeError(f"no coefficients under max_coef={max_coef} after {MAX_REDRAWS} redraws")


def mixup(
    x: Tensor,
    labels: Tensor,
    k: int | Tensor,
    max_coef: float = 0.55,
    generator: torch.Generator | None = None,
) -> Mixed:
    """Mix each row of x with k - 1 others of the batch; k is an int or a LongTensor [N]."""
    n = x.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"labels: expected shape [{n}], got {tuple(labels.shape)}")
    ks = _as_ks(k, n)
    coefs = mix_coefficients(ks, max_coef, generator)
    device = generator.device if generator is not None else torch.device("cpu")
    perms = [torch.arange(n)] + [
        torch.randperm(n, generator=generator, device=device).cpu()
        for _ in range(coefs.shape[1] - 1)
    ]
    index = torch.stack(perms, dim=1).to(x.device, non_blocking=True)  # [N, k_max]
    coefs = coefs.to(x.device, non_blocking=True)
    shape = (n,) + (1,) * (x.dim() - 1)
    out = x * coefs[:, 0].to(x.dtype).view(shape)
    for j in range(1, coefs.shape[1]):
        out += torch.index_select(x, 0, index[:, j]) * coefs[:, j].to(x.dtype).view(shape)
    return Mixed(out, labels.to(x.device, non_blocking=True)[index], coefs, index)


def instahide(
    x: Tensor,
    labels: Tensor,
    k: int | Tensor,
    max_coef: float = 0.55,
    generator: torch.Generator | None = None,
) -> Mixed:
    """InstaHide within the batch: MixUp, then an independent random sign on every element."""
    mixed = mixup(x, labels, k, max_coef, generator)
    device = generator.device if generator is not None else x.device
    flip = torch.randint(0, 2, x.shape, generator=generator, device=device, dtype=torch.bool)
    out = torch.where(flip.to(x.device, non_blocking=True), -mixed.x, mixed.x)
    return mixed._replace(x=out)
