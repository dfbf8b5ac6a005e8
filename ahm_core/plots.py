"""Labelled image grids, the pictures of the README and reports."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor
from torchvision.utils import make_grid

from ahm_core.io import atomic_write

LABEL_WIDTH = 150


def save_grid(
    rows: Sequence[Tensor], path: str | os.PathLike, labels: Sequence[str] | None = None
) -> Path:
    """Save rows of images ([n, 1 or 3, H, W] in [0, 1]) as one labelled PNG; rows of another size
    than the first are resized to it, and a shorter row leaves its end blank."""
    size, count = rows[0].shape[-2:], max(len(r) for r in rows)
    rows = [
        torch.cat([r, torch.ones(count - len(r), *r.shape[1:], dtype=r.dtype, device=r.device)])
        for r in (
            r if r.shape[-2:] == size else F.interpolate(r.float(), size=size, mode="bilinear")
            for r in rows
        )
    ]
    strips = [
        make_grid(
            r.detach().float().cpu().expand(-1, 3, -1, -1), nrow=len(r), padding=2, pad_value=1.0
        )
        for r in rows
    ]
    grid = torch.cat(strips, dim=1).clamp(0, 1)
    pixels = grid.mul(255).round().byte().permute(1, 2, 0).numpy()
    picture = Image.fromarray(pixels)
    if labels is not None:
        framed = Image.new("RGB", (picture.width + LABEL_WIDTH, picture.height), "white")
        framed.paste(picture, (LABEL_WIDTH, 0))
        draw = ImageDraw.Draw(framed)
        for i, (label, strip) in enumerate(zip(labels, strips, strict=True)):
            height = strip.shape[1]
            draw.text((6, i * height + height // 2 - 6), label, fill="black")
        picture = framed
    return atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


def save_k_shares(
    path: str | os.PathLike,
    k_values: Sequence[int],
    shares: Sequence[Sequence[float]],
    xlabel: str,
    title: str,
    marks: Sequence[float] = (),
    first: int = 0,
) -> Path:
    """The share of each k over training as stacked areas (one column of `shares` per k, one row
    per point in time, numbered from `first`), with dotted vertical lines at `marks` (epoch
    boundaries)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = list(zip(*shares, strict=True))
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    points = range(first, first + len(shares))
    ax.stackplot(points, columns, labels=[f"k={k}" for k in k_values], alpha=0.85)
    for mark in marks:
        ax.axvline(mark, color="black", linestyle=":", linewidth=0.8)
    ax.set(xlim=(first, max(first + 1, points[-1])), ylim=(0, 1), xlabel=xlabel, ylabel="share")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    written = atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return written


def save_scatter(
    path: str | os.PathLike,
    x: Sequence[float],
    y: Sequence[float],
    xlabel: str,
    ylabel: str,
    title: str,
    bins: int = 10,
) -> Path:
    """One dot per point, with the mean of y in `bins` equal-count bins of x drawn over them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(range(len(x)), key=lambda i: x[i])
    chunks = [
        c
        for c in (order[i * len(order) // bins : (i + 1) * len(order) // bins] for i in range(bins))
        if c
    ]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ax.scatter(x, y, s=6, alpha=0.35, color="tab:blue", label="face")
    means = [(sum(x[i] for i in c) / len(c), sum(y[i] for i in c) / len(c)) for c in chunks]
    ax.plot(*zip(*means, strict=True), color="black", marker="o", label=f"mean over {bins} bins")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    written = atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return written


def save_frequency_grid(path: str | os.PathLike, values: Tensor, title: str) -> Path:
    """A value per block-DCT frequency on the 8x8 grid (64 values, NaN where none, as DC), each
    cell annotated: where a first stage puts its budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = values.detach().double().cpu().view(8, 8).numpy()
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    image = ax.imshow(grid, cmap="viridis")
    cells = torch.cartesian_prod(torch.arange(8), torch.arange(8)).tolist()
    middle = float(values.detach().double().nanmean())
    for (i, j), value in zip(cells, grid.flatten(), strict=True):
        if value != value:  # NaN: nothing at this frequency (DC)
            ax.text(j, i, "DC", ha="center", va="center", fontsize=6, color="black")
            continue
        colour = "white" if value < middle else "black"  # the dark end of viridis
        ax.text(j, i, f"{value:.2g}", ha="center", va="center", fontsize=6, color=colour)
    ax.set(
        xlabel="horizontal frequency", ylabel="vertical frequency", xticks=range(8), yticks=range(8)
    )
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.85)
    fig.tight_layout()
    written = atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return written


def save_ladders(climbs: dict[str, dict], path: str | os.PathLike, defence: str) -> Path:
    """Leakage on the attacker's held-out faces against budget rung, one line per attack (and
    per channel count it tried), with 95% intervals; the scored rung ringed, the line dashed
    where the ladder hit its cap before converging."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = {}
    for name, figures in climbs.items():
        tried = figures.get("tried") or {"": figures}
        for count, climb in tried.items():
            lines[f"{name} ({count} channels)" if count else name] = climb
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for label, climb in lines.items():
        rungs = climb["ladder"]
        x = range(1, len(rungs) + 1)
        y = [r["leakage"] for r in rungs]
        err = [[v - r["ci95"][0] for v, r in zip(y, rungs, strict=True)]]
        err.append([r["ci95"][1] - v for v, r in zip(y, rungs, strict=True)])
        style = "-" if climb["converged"] else "--"
        shown = ax.errorbar(x, y, yerr=err, fmt="o" + style, capsize=3, label=label)
        best = next(i for i, r in enumerate(rungs) if r["budget"] == climb["budget"])
        ax.plot(best + 1, y[best], "o", markersize=12, fillstyle="none", color=shown[0].get_color())
    longest = max(lines.values(), key=lambda c: len(c["ladder"]))["ladder"]
    ax.set_xticks(
        range(1, len(longest) + 1),
        ["\n".join(f"{k} {v}" for k, v in r["budget"].items()) for r in longest],
        fontsize=7,
    )
    measure = next(iter(lines.values()))["leakage_measure"]
    ax.set(xlabel="budget rung", ylabel=f"held-out leakage ({measure})")
    ax.set_title(f"{defence}: leakage against attack budget (dashed: capped)", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    written = atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return written
