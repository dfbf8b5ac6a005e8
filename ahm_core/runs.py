"""Readers of a run's records, shared by the reports on it: a finished federated run's config,
checkpoint and rounds, its trained figures, the folder and epochs of its reference network, and
the k histograms that runs and rounds count."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ahm_core.checkpoints import in_range, records, sections
from ahm_core.config import AHMConfig, apply_overrides, from_dict, to_flat
from ahm_core.io import load_checkpoint, read_record
from ahm_core.privacy import PRIVACY_RECORDS

REFERENCE = "evaluator"  # the run folder's unmasked ArcFace reference network (the own judge)


def load_run(run_dir: Path, attack_cfg: AHMConfig | None) -> tuple[AHMConfig, dict, dict]:
    """A finished run's config (with `attack_cfg`'s attack budget), checkpoint and rounds.json."""
    checkpoint = run_dir / "checkpoint.pt"
    saved = load_checkpoint(checkpoint, required=("config", "state", "round"))
    cfg = from_dict(sections(str(checkpoint), saved["config"]))
    done = in_range(str(checkpoint), "round", saved["round"], cfg.federation.rounds)
    if attack_cfg is not None:
        budget = {k: v for k, v in to_flat(attack_cfg).items() if k.startswith("attack.")}
        cfg = apply_overrides(cfg, budget)
    path = run_dir / "rounds.json"
    summary = read_record(path, ("rounds", "final_accuracy"))
    records(str(path), "rounds", summary["rounds"], "round", done + 1)
    return cfg, saved, summary


def trained_figures(summary: dict) -> dict[str, Any]:
    """A trained run's figures for its row: final accuracy with its 10-fold std, and what each
    DP mechanism it ran (DP-FedAvg, local DP, DP-SGD) had spent by its last round."""
    last = summary["rounds"][-1]
    figures = {
        "accuracy": summary["final_accuracy"],
        "accuracy_std": last["verification"]["accuracy_std"],
        "correct": last["verification"].get("correct"),
    }
    return figures | {key: last[key] for key in PRIVACY_RECORDS if key in last}


def client_epochs(cfg: AHMConfig) -> int:
    """Epochs a client trains over the whole run: the reference network trains as many."""
    return cfg.federation.rounds * cfg.federation.local_epochs


def count_ks(histograms: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """The sum of k histograms {k: count} (of epochs, or rounds), k in order of first sight."""
    total: dict[str, int] = {}
    for histogram in histograms:
        for k, count in histogram.items():
            total[k] = total.get(k, 0) + count
    return total


def shares(histogram: dict[str, int]) -> dict[str, float]:
    """Each k's share of a histogram {k: count}, rounded to 4 digits, in order of k."""
    n = sum(histogram.values()) or 1
    return {k: round(histogram[k] / n, 4) for k in sorted(histogram, key=int)}


def k_proportions(summary: dict) -> dict[str, float] | None:
    """Share of samples mixed with each k over all rounds (None when the method is not adaptive)."""
    counts = count_ks(record.get("k_histogram", {}) for record in summary["rounds"])
    return shares(counts) if sum(counts.values()) else None
