"""The cells of a study: one training run of a table row at one seed, then its attacks, cached in
its own folder (`rows/<row>/seed_<seed>/row.json`) under the config that made it.

A cell is plain data, so a scheduler can ship it to another process or machine (the study's Ray
tasks, `simulations.cells`); `run_cell` does its work there and writes its result atomically, and
`cached` gives the finished result of this very config, if there is one. A cached result of
another config is never reused: the cell runs again, and its training, resumed from the
checkpoint, refuses a changed training option with one line (`refuse_changed_config`) unless
`resume` is off, when it retrains. A `Runner` maps work over items (cells, or any other study's
runs) to their results as they finish; `sequential` runs them here, one after another.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ahm_core.config import AHMConfig, ConfigError, apply_overrides, to_flat
from ahm_core.evaluate import identity_interval
from ahm_core.experiment import run_centralized
from ahm_core.io import atomic_write, load_checkpoint, read_record
from ahm_core.judges import judges
from ahm_core.masking.methods import Row
from ahm_core.scoring import measure_privacy
from ahm_core.train import resolve_device

ROW_VERSION = 7  # a cached row of another version lacks what the report now prints, or differs
# What an adaptive row keeps of its run's metrics (None for the other rows): Table 3 and dynamics.
POLICY_KEYS = ("k_proportions", "k_proportions_final_epoch", "policy_updates", "k_dynamics")
SHOWN = frozenset({"train.progress", "train.workers"})  # how a run shows and loads, not what it is


@dataclass(frozen=True)
class Cell:
    """One training run of `row` with seed `seed`: `cfg` is the row's config at that seed, `judge`
    the checkpoint of the ArcFace network that judges its attacks (None: not attacked)."""

    row: Row
    seed: int
    cfg: AHMConfig
    folder: Path
    judge: Path | None = None
    resume: bool = True

    @property
    def label(self) -> str:
        return f"{self.row.name}, seed {self.seed}"


Item = TypeVar("Item")
Runner = Callable[[Callable[[Item], dict], Sequence[Item]], Iterator[tuple[Item, dict]]]


def sequential(work: Callable[[Item], dict], items: Sequence[Item]) -> Iterator[tuple[Item, dict]]:
    """Run `work` on each item here, in order, yielding the item with its result."""
    for item in items:
        yield item, work(item)


def seed_list(cfg: AHMConfig, seeds: int | Sequence[int] | None) -> list[int]:
    """The seeds of a study: `train.seed` alone (None), that many from `train.seed` on (a count),
    or the list given; every row runs at every seed, so rows compare paired by seed."""
    if seeds is None:
        return [cfg.train.seed]
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ConfigError(f"seeds: expected a count of at least 1, got {seeds}")
        return list(range(cfg.train.seed, cfg.train.seed + seeds))
    if (
        isinstance(seeds, str | bytes)
        or not isinstance(seeds, Sequence)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ConfigError(
            f"seeds: expected a count or a list of distinct non-negative integers, got {seeds!r}"
        )
    return list(seeds)


def seeded(cfg: AHMConfig, seed: int) -> AHMConfig:
    """`cfg` at `seed`: the training seed (weights, data order, masking noise, k draws, the
    attacks' draws) set to it, and the masking key's seed shifted with it, so the first seed of
    the default list is the configured run itself."""
    shift = seed - cfg.train.seed
    return apply_overrides(
        cfg, {"train.seed": seed, "masking.key_seed": cfg.masking.key_seed + shift}
    )


def cell_config(cfg: AHMConfig, row: Row, seed: int) -> AHMConfig:
    """The config of `row` at `seed`: its method and overrides on `cfg` at that seed."""
    return apply_overrides(seeded(cfg, seed), {"masking.method": row.method, **row.overrides})


def _key(cfg: AHMConfig) -> dict[str, Any]:
    """What identifies a cell's result: every option but those of how it is shown."""
    return {k: v for k, v in to_flat(cfg).items() if k not in SHOWN}


def cached(cell: Cell) -> dict | None:
    """The cell's finished result when it was made by this version under this config (and this
    judge), else None."""
    path = cell.folder / "row.json"
    if not path.exists():
        return None
    result = read_record(path)
    same = result.get("config") == _key(cell.cfg) and result.get("judge") == _judge(cell)
    return result if result.get("version") == ROW_VERSION and same else None


def run_cells(cells: Sequence[Cell], runner: Runner) -> Iterator[tuple[Cell, dict, bool]]:
    """Each cell with its result and whether it came from its cache: the cached ones first,
    then the rest as `runner` finishes them."""
    todo = []
    for cell in cells:
        hit = cached(cell)
        if hit is None:
            todo.append(cell)
        else:
            yield cell, hit, True
    for cell, result in runner(run_cell, todo):
        yield cell, result, False


def _judge(cell: Cell) -> str | None:
    """The judge's checkpoint as seen from the cell's folder, so a moved study stays cached."""
    return None if cell.judge is None else os.path.relpath(cell.judge, cell.folder)


def run_cell(cell: Cell, log: Callable[[str], None] = print) -> dict:
    """Train the cell's row (a centralized run, resumable), then, with a judge, measure its
    masking and run every attack; write row.json atomically and return what it holds, so a
    fresh result and a cached one are the same (JSON's string keys included)."""
    cfg = cell.cfg
    metrics = run_centralized(cfg, cell.folder / "train", cell.resume)
    correct = metrics["verification"]["correct"]  # per pair: what the clustered intervals redraw
    result = {
        "version": ROW_VERSION,
        "config": _key(cfg),
        "judge": _judge(cell),
        "seed": cell.seed,
        "method": cfg.masking.method,
        "accuracy": metrics["verification_accuracy"],
        "accuracy_ci95": metrics["verification"]["accuracy_ci95"],
        "accuracy_cluster_ci95": identity_interval(cfg.data, correct),
        "correct": correct,
        **{key: metrics.get(key) for key in POLICY_KEYS},
        "first_stage": metrics.get("first_stage"),  # what a trained first stage learnt
    }
    if "dp_sgd" in metrics:  # what DP-SGD spent (`privacy.spent_notes`)
        result["dp_sgd"] = metrics["dp_sgd"]
    if cell.judge is not None:
        judged = judges(cell.judge, cfg, resolve_device(cfg.train.device))
        stage = None
        if metrics.get("first_stage"):  # a trained first stage is attacked as it was trained
            saved = load_checkpoint(metrics["checkpoint"], ("first_stage",))
            stage = saved["first_stage"]["module"]
        result |= measure_privacy(cfg, result["k_proportions"], judged, cell.folder, log, stage)
        result["absent_judges"] = judged.absent
    result["checkpoint"] = metrics["checkpoint"]
    text = json.dumps(result, indent=2)
    atomic_write(cell.folder / "row.json", lambda tmp: tmp.write_text(text))
    return json.loads(text)
