"""The Byzantine study: malicious clients x aggregators, in-process federations at the demo's
scale (profile=federated), each run against the clean run of the same aggregator.

    python benchmarks/byzantine.py                        # 8 clients, 1 attacking, every cell
    python benchmarks/byzantine.py --modes signflip,nan --aggregators fedavg,krum
    python benchmarks/byzantine.py --collusion            # 1-3 colluders x every strategy
    python benchmarks/byzantine.py --collusion --aggregators fedavg \
        --set federation.max_pair_cosine=1 --set federation.median_statistics=false  # ablation
    python benchmarks/byzantine.py --ray-address auto          # the runs on an existing Ray cluster
    python benchmarks/byzantine.py --paper-model-steps 3,10,25   # an IR-SE-50 client's drift

Modes that the reply checks reject whatever the aggregator (`REPLY_MODES`) run against the
default configuration only. For each (mode, aggregator) it prints the final verification
accuracy of the global model, its difference from the clean run, whether the run completed,
and the train replies rejected by reason; then the honest updates' screening figures of the
clean default run (how far they were from each bound). `--collusion` runs the coalition modes
(`ahm_core.faults`, each at the scale in `COLLUSION` that kept it inside the screen's bounds
before collusion was screened; drift also at a scale that keeps two members under the pair
bound; `flip_weights`, each client's own update flipped) with 1, 2 and 3 of the clients
colluding, under every strategy, and prints one table per coalition mode. `fedavg` is the default
configuration (Flower's FedAvg with this project's screen); the robust aggregators of
`AGGREGATORS` (FedMedian, FedTrimmedAvg, Krum, Bulyan) run without the screen
(`federation.screen=false`, the reply checks stay), so their rows show what each holds by
itself; every other strategy (MultiKrum among them) runs with the screen, as a user runs it.
Deterministic on CPU for a given seed: each run is seeded end to end. Each run is a Ray
task of one CPU (`simulations.cells`, the paper tables' runner), as many at once as the cores
(or the cluster) allow.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

UPDATE_MODES = ("signflip", "scale", "noise", "zeros", "stale", "explode", "huge_examples")
# Replies the checks reject whatever the aggregator: run against the default configuration only.
REPLY_MODES = (
    "nan",
    "int_tensors",
    "zero_examples",
    "negative_examples",
    "missing_metrics",
    "false_partition",
)
COLLUSION = (  # (coalition mode, federation.fault_scale)
    ("collude_signflip", 2.9),  # x 2.9: inside update_norm_spread (3) x the round's median norm
    ("collude_scale", 2.9),
    ("collude_drift", 1.0),  # a shared direction as long as the member's own update
    ("collude_drift", 0.8),  # shorter: two members' cosine stays under max_pair_cosine (0.5)
    ("collude_statistics", 1.0),
    ("flip_weights", 2.9),  # each its own update flipped: no two agree, so no duplicate
)
AGGREGATORS = {  # name -> overrides
    "fedavg": {"federation.strategy": "fedavg"},
    "fedavg-noscreen": {"federation.strategy": "fedavg", "federation.screen": False},
    "fedmedian": {"federation.strategy": "fedmedian", "federation.screen": False},
    "fedtrimmedavg": {"federation.strategy": "fedtrimmedavg", "federation.screen": False},
    "krum": {"federation.strategy": "krum", "federation.screen": False},
    "bulyan": {"federation.strategy": "bulyan", "federation.screen": False},
}


def demo_config(overrides: dict):
    """profile=federated (the demo) with `overrides`."""
    from hydra import compose, initialize_config_dir

    from ahm_core.config import apply_overrides
    from simulations import schema

    schema.register()
    with initialize_config_dir(config_dir=str(ROOT / "simulations/conf"), version_base=None):
        cfg, _ = schema.split_run_config(compose("federated"))
    return apply_overrides(cfg, overrides)


def one_run(job: tuple[str, str, int, int, int, float, tuple[tuple[str, str], ...]]) -> dict:
    """One federation: `mode` ("clean" for none) on `attackers` of the clients under
    `aggregator`, with `extra` overrides; its figures."""
    mode, aggregator, clients, attackers, rounds, scale, extra = job
    import logging

    import torch

    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    from simulations.local import run_local

    overrides = {
        **AGGREGATORS.get(aggregator, {"federation.strategy": aggregator}),
        "federation.num_clients": clients,
        "federation.min_clients": clients,
        "federation.rounds": rounds,
        "federation.capture_clients": 0,
        "federation.fault_scale": scale,
        **dict(extra),
    }
    if mode != "clean":
        overrides |= {
            "federation.fault_fraction": attackers / clients,
            "federation.fault_mode": mode,
        }
    cfg = demo_config(overrides)
    cell = {"mode": mode, "aggregator": aggregator, "attackers": attackers, "scale": scale}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        try:
            summary = run_local(cfg, out, clients, resume=False)
        except Exception as err:  # a crash is a finding of the study, not the end of it
            error = f"{type(err).__name__}: {err}"
            return {**cell, "error": error}
    rounds_ = summary["rounds"][1:]
    rejected: dict[str, int] = {}
    for r in rounds_:
        for reason, count in r["rejected"].items():
            rejected[reason] = rejected.get(reason, 0) + count
    return {
        **cell,
        "accuracy": summary["final_accuracy"],
        "std": summary["rounds"][-1]["verification"]["accuracy_std"],
        "rejected": rejected,
        "seconds": time.perf_counter() - start,
        "updates": [r["updates"] for r in rounds_],
    }


def paper_model_drift(steps: list[int]) -> None:
    """How far one honest IR-SE-50 client (112 px synthetic faces, batch 16, lr 0.1) moves its
    weights and its BatchNorm statistics from the global model, after each of `steps`: what the
    screen's model bound must leave room for."""

    from ahm_core.config import AHMConfig, apply_overrides
    from ahm_core.federated import (
        client_data,
        federated_data,
        initial_state,
        load_shared,
        run_masking,
        shared_state,
    )
    from ahm_core.screening import STATISTICS, floating_keys, norm
    from ahm_core.train import Trainer

    overrides = {
        "data.image_size": 112,
        "data.num_identities": 30,
        "data.num_pairs": 200,
        "model.backbone": "ir_se_50",
        "train.batch_size": 16,
        "train.epochs": 10,
        "train.progress": False,
        "policy.net": "small",
        "federation.num_clients": 2,
    }
    cfg = apply_overrides(AHMConfig(), overrides)
    data = federated_data(cfg)
    masking = run_masking(cfg, data)
    client = client_data(cfg, data, 0, 2)
    start = initial_state(cfg, masking, data)
    floats = floating_keys(start)
    statistics = [k for k in floats if k.endswith(STATISTICS)]
    weights = [k for k in floats if k not in statistics]
    trainer = Trainer(cfg, masking, client.num_classes, len(client.items) // 16)
    load_shared(trainer, start)
    done = 0
    while done < max(steps):
        for images, labels in trainer.loader(data.faces, client.items, client.labels):
            trainer.train_step(images, labels)
            done += 1
            if done in steps:
                now = shared_state(trainer, False)
                delta = {k: now[k] - start[k] for k in floats}
                print(
                    f"IR-SE-50, {done} local steps: weights moved "
                    f"{norm(delta, weights) / norm(start, weights):.4f} x their norm, running "
                    f"statistics {norm(delta, statistics) / norm(start, statistics):.3f} x theirs",
                    flush=True,
                )
            if done >= max(steps):
                break
        trainer.epoch += 1


def brief(r: dict) -> str:
    """One finished run on one line."""
    head = f"{r['mode']} x{r['scale']:g} on {r['attackers']}, {r['aggregator']}:"
    if "error" in r:
        return f"{head} failed: {r['error'][:80]}"
    return f"{head} {r['accuracy']:.4f} in {r['seconds']:.0f} s, rejected {rejections(r)}"


def rejections(r: dict) -> str:
    """The train replies rejected over the run, by reason."""
    return ", ".join(f"{k} {v}" for k, v in sorted(r.get("rejected", {}).items())) or "none"


def cell_text(r: dict, clean: dict) -> str:
    """A run's accuracy (10-fold std) and its change from its aggregator's clean run."""
    if "error" in r:
        return f"failed: {r['error'][:60]} | -"
    diff = r["accuracy"] - clean[r["aggregator"]].get("accuracy", float("nan"))
    return f"{r['accuracy']:.3f} ({r['std']:.3f}) | {diff:+.3f}"


def collusion_tables(results: list[dict], clean: dict, sizes: list[int]) -> None:
    """One table per coalition mode: a row per aggregator, its clean run and the change with
    each coalition size, the rejections in brackets."""
    runs = {(r["mode"], r["scale"], r["aggregator"], r["attackers"]): r for r in results}
    for mode, scale in dict.fromkeys((r["mode"], r["scale"]) for r in results if r["attackers"]):
        print(f"\n{mode} x{scale:g}")
        print("| aggregator | clean | " + " | ".join(f"{n} of 8" for n in sizes) + " |")
        print("|---|---|" + "---|" * len(sizes))
        for agg, base in clean.items():
            row = [f"{base['accuracy']:.3f}" if "accuracy" in base else "failed"]
            for n in sizes:
                r = runs.get((mode, scale, agg, n))
                if r is None or "error" in r or "accuracy" not in base:
                    row.append("-" if r is None else "failed")
                    continue
                row.append(f"{r['accuracy'] - base['accuracy']:+.3f} ({rejections(r)})")
            print(f"| {agg} | " + " | ".join(row) + " |")


def write_json(path: Path, results: list[dict]) -> None:
    from ahm_core.io import atomic_write

    text = json.dumps(results, indent=1)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=10.0, help="federation.fault_scale")
    parser.add_argument("--modes", help="default: every single-client mode, or COLLUSION's")
    parser.add_argument("--aggregators", help="default: AGGREGATORS, or every strategy")
    parser.add_argument("--collusion", action="store_true", help="coalitions of 1-3 clients")
    parser.add_argument("--colluders", default="1,2,3", help="coalition sizes (--collusion)")
    parser.add_argument("--set", action="append", default=[], help="an override for every run")
    parser.add_argument("--ray-address", help="an existing Ray cluster ('auto' or host:port)")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument("--paper-model-steps", help="only an IR-SE-50 client's drift, e.g. 3,10")
    args = parser.parse_args()
    if args.paper_model_steps:
        paper_model_drift([int(n) for n in args.paper_model_steps.split(",")])
        return
    extra = tuple(tuple(item.split("=", 1)) for item in args.set)
    if args.collusion:
        from server.strategy import STRATEGIES

        chosen = args.modes.split(",") if args.modes else [m for m, _ in COLLUSION]
        aggregators = args.aggregators.split(",") if args.aggregators else list(STRATEGIES)
        sizes = [int(n) for n in args.colluders.split(",")]
        cells = [("clean", 0, args.scale)] + [
            (mode, n, scale) for mode, scale in COLLUSION if mode in chosen for n in sizes
        ]
    else:
        modes = args.modes.split(",") if args.modes else [*UPDATE_MODES, *REPLY_MODES]
        aggregators = args.aggregators.split(",") if args.aggregators else list(AGGREGATORS)
        cells = [("clean", 0, args.scale)] + [(mode, 1, args.scale) for mode in modes]
    jobs = [
        (mode, agg, args.clients, n, args.rounds, scale, extra)
        for agg in aggregators
        for mode, n, scale in cells
        if args.collusion or agg == "fedavg" or mode not in REPLY_MODES
    ]
    print(f"{len(jobs)} runs: {args.clients} clients, {args.rounds} rounds, {dict(extra)}")
    from simulations.cells import RayOptions, ray_runner, ray_session

    ray = RayOptions(address=args.ray_address)
    done: dict = {}
    with ray_session(ray):
        for job, result in ray_runner(ray)(one_run, jobs):
            done[job] = result
            print(f"[{len(done)}/{len(jobs)}] {brief(result)}", flush=True)
            if args.json:  # every finished run kept, should the study be stopped
                write_json(args.json, [done[j] for j in jobs if j in done])
    results = [done[job] for job in jobs]
    clean = {r["aggregator"]: r for r in results if r["mode"] == "clean"}
    if args.collusion:
        collusion_tables(results, clean, sizes)
    else:
        print("| mode | aggregator | accuracy (10-fold std) | vs clean | rejected |")
        print("|---|---|---|---|---|")
        for r in results:
            print(f"| {r['mode']} | {r['aggregator']} | {cell_text(r, clean)} | {rejections(r)} |")
    by_round = clean.get("fedavg", {}).get("updates", [])
    honest = [u for updates in by_round for u in updates]
    if honest:
        ratios = [u["ratio"] for u in honest]
        cosines = [u["cosine"] for u in honest if u["cosine"] is not None]
        statistics = [u["statistics_cosine"] for u in honest if u["statistics_cosine"] is not None]
        pairs = [u["pair_cosine"] for u in honest]
        clips = [u["clip"] for u in honest]
        spread = max(max(u["norm"] for u in r) / min(u["norm"] for u in r) for r in by_round)
        print(
            f"honest updates (clean fedavg, {len(honest)}): |d|/|w| {min(ratios):.3f}.."
            f"{max(ratios):.3f}; cos with the median update {min(cosines):.3f}..{max(cosines):.3f}"
            f" (running statistics {min(statistics):.3f}..{max(statistics):.3f}); largest cos "
            f"with another update {min(pairs):.3f}..{max(pairs):.3f}; norm max/min within a "
            f"round <= {spread:.2f}; clipped to {min(clips):.3f}..{max(clips):.3f} of their norm"
        )
    worst = [
        r
        for r in results
        if r["aggregator"] == "fedavg" and r["attackers"] <= 2 and "accuracy" in r
    ]
    if worst and "accuracy" in clean.get("fedavg", {}):
        drop = min(r["accuracy"] - clean["fedavg"]["accuracy"] for r in worst)
        print(
            f"default configuration, at most 2 attackers: worst accuracy change {drop:+.4f} "
            f"(target >= -0.03)"
        )


if __name__ == "__main__":
    main()
