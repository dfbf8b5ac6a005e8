"""The methods of the paper's tables, each a registered first stage composed with a batch mix, and
the rows they make there: one table that the paper tables, the masking grid and the tests read, so
a new first stage's module adds its method and rows with one `add_method` call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from ahm_core.config import AHMConfig


class MethodSpec(NamedTuple):
    """A method of the paper's tables: a first stage composed with a mix of images in a batch."""

    first_stage: str  # a key of ahm_core.masking.FIRST_STAGES
    batch_mix: str | None  # None | "mixup" | "instahide" | "adaptive" (k per sample, the policy)


class Row(NamedTuple):
    """A row of the paper's tables: its name (its folder is the name's slug), its method and the
    options that make it, the table it is a line of (2, or 1: Table 1's RGB domain only), and
    its label in the masking grid (None: not drawn there)."""

    name: str
    method: str
    overrides: Mapping[str, Any] = {}
    table: int = 2
    grid: str | None = None


# In the order the masking grid draws their rows (a method's rows in the order of ROWS).
METHODS: dict[str, MethodSpec] = {
    "arcface": MethodSpec("rgb", None),
    "ppfr_fd": MethodSpec("ppfr_fd", None),
    "mixup_fd": MethodSpec("bdct", "mixup"),
    "instahide_fd": MethodSpec("bdct", "instahide"),
    "mixup_rgb": MethodSpec("rgb", "mixup"),
    "instahide_rgb": MethodSpec("rgb", "instahide"),
    "dp": MethodSpec("dp", None),
    "dctdp": MethodSpec("dctdp", None),
    "masking_mixup": MethodSpec("ppfr_fd", "mixup"),
    "masking_adamixup": MethodSpec("ppfr_fd", "adaptive"),
    "dctdp_adamixup": MethodSpec("dctdp", "adaptive"),
}
# DP-SGD as its rows train it: Opacus's per-sample clipping needs GroupNorm (ahm_core.dp_sgd).
DP_SGD = {"train.dp_sgd": True, "model.norm": "group"}
# The rows in the order the paper tables run and print them (ArcFace first: its network judges).
ROWS: list[Row] = [
    Row("ArcFace", "arcface"),
    *[
        Row(
            f"Masking+AdaMixUp (k:2-{k})",
            "masking_adamixup",
            {"policy.k_set": tuple(range(2, k + 1))},
            grid="AdaMixUp k~{2..5}" if k == 5 else None,
        )
        for k in (6, 5, 4)
    ],
    *[
        Row(f"Masking+MixUp (k={k})", "masking_mixup", {"mixup.k": k}, grid=f"Masking+MixUp k={k}")
        for k in range(2, 7)
    ],
    Row("MixUp-FD (k=2)", "mixup_fd", {"mixup.k": 2}, grid="MixUp-FD k=2"),
    Row("PPFR-FD", "ppfr_fd", grid="PPFR-FD"),
    Row("DP", "dp", grid="DP eps=3"),
    Row("InstaHide-FD (k=2)", "instahide_fd", {"mixup.k": 2}, grid="InstaHide-FD k=2"),
    Row("DCTDP", "dctdp", grid="DCTDP eps=252"),
    Row("DCTDP+AdaMixUp (k:2-6)", "dctdp_adamixup", {"policy.k_set": (2, 3, 4, 5, 6)}),
    *[  # sample-level DP on unmasked faces (`train.dp_sgd`): what the field compares against
        Row(f"ArcFace+DP-SGD (z={z:g})", "arcface", {**DP_SGD, "train.dp_noise_multiplier": z})
        for z in (1.0, 4.0)
    ],
    Row("MixUp RGB (k=2)", "mixup_rgb", {"mixup.k": 2}, table=1, grid="MixUp RGB k=2"),
    Row("InstaHide RGB (k=2)", "instahide_rgb", {"mixup.k": 2}, table=1, grid="InstaHide RGB k=2"),
]
# The comparisons the paper's claims rest on (row names), each tested over the same pairs.
PAIRED: list[tuple[str, str]] = [
    ("MixUp-FD (k=2)", "MixUp RGB (k=2)"),
    ("InstaHide-FD (k=2)", "InstaHide RGB (k=2)"),
    ("Masking+MixUp (k=2)", "Masking+MixUp (k=4)"),
    ("Masking+MixUp (k=2)", "Masking+MixUp (k=6)"),
    ("Masking+AdaMixUp (k:2-6)", "Masking+MixUp (k=2)"),
    ("Masking+AdaMixUp (k:2-6)", "Masking+MixUp (k=6)"),
    ("Masking+AdaMixUp (k:2-6)", "PPFR-FD"),  # what mixing adds to the first stage
    ("PPFR-FD", "ArcFace"),
    ("DCTDP", "PPFR-FD"),
    ("DCTDP+AdaMixUp (k:2-6)", "Masking+AdaMixUp (k:2-6)"),
    ("ArcFace+DP-SGD (z=1)", "ArcFace"),  # what sample-level DP costs
    ("Masking+AdaMixUp (k:2-6)", "ArcFace+DP-SGD (z=1)"),
]
# Table 1: each mix (its label) in the RGB and in the frequency domain (row names).
TABLE1: list[tuple[str, str, str]] = [
    ("MixUp (k=2)", "MixUp RGB (k=2)", "MixUp-FD (k=2)"),
    ("InstaHide (k=2)", "InstaHide RGB (k=2)", "InstaHide-FD (k=2)"),
]


def add_method(
    name: str,
    spec: MethodSpec,
    rows: Sequence[Row] = (),
    paired: Sequence[tuple[str, str]] = (),
) -> MethodSpec:
    """Register method `name` with its rows of the paper's tables (after the others) and the
    paired tests of their accuracy against other rows: what a first stage's module calls."""
    if name in METHODS:
        raise ValueError(f"method {name!r} is registered twice")
    if any(row.method != name for row in rows):
        raise ValueError(f"method {name!r}: its rows must be of it, got {[r.method for r in rows]}")
    METHODS[name] = spec
    ROWS.extend(rows)
    PAIRED.extend(paired)
    return spec


def table_rows(table: int) -> list[Row]:
    """The rows that are lines of Table `table` (2: accuracy and privacy; 1: the RGB domain)."""
    return [row for row in ROWS if row.table == table]


def grid_rows() -> list[Row]:
    """The rows the masking grid draws: by method in METHODS order, a method's in ROWS order."""
    order = {method: i for i, method in enumerate(METHODS)}
    return sorted((row for row in ROWS if row.grid is not None), key=lambda r: order[r.method])


def mixing_ks(cfg: AHMConfig) -> tuple[int, ...]:
    """The k values the configured method can mix with (empty when it does not mix)."""
    batch_mix = METHODS[cfg.masking.method].batch_mix
    if batch_mix is None:
        return ()
    return tuple(cfg.policy.k_set) if batch_mix == "adaptive" else (cfg.mixup.k,)
