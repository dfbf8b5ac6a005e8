"""The Byzantine study: malicious clients x aggregators, in-process federations at the demo's
scale (profile=federated), each run against the clean run of the same aggregator.

    python benchmarks/byzantine.py                        # 8 clients, 1 attacking, every cell
    python benchmarks/byzantine.py --modes signflip,nan --aggregators fedavg,krum
    python benchmarks/byzantine.py --ray-address auto          # the runs on an existing Ray cluster
    python benchmarks/byzantine.py --paper-model-steps 3,10,25   # an IR-SE-50 client's drift

Modes that the reply checks reject whatever the aggregator (`REPLY_MODES`) run against the
default configuration only. For each (mode, aggregator) it prints the final verification
accuracy of the global model, its difference from the clean run, whether the run completed,
and the train replies rejected by reason; then the honest updates' screening figures of the
clean default run (how far they were from each bound). `fedavg` is the default configuration
(Flower's FedAvg with this project's screen); the robust aggregators run without the screen
(`federation.screen=false`, the reply checks stay), so the table shows what each holds by
itself. Deterministic on CPU for a given seed: each run is seeded end to end. Each run is a Ray
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


def one_run(job: tuple[str, str, int, int, float]) -> dict:
    """One federation: `mode` ("clean" for none) under `aggregator`; its figures."""
    mode, aggregator, clients, rounds, scale = job
    import logging

    import torch

    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    from simulations.local import run_local

    overrides = {
        **AGGREGATORS[aggregator],
        "federation.num_clients": clients,
        "federation.min_clients": clients,
        "federation.rounds": rounds,
        "federation.capture_clients": 0,
        "federation.fault_scale": scale,
    }
    if mode != "clean":
        overrides |= {"federation.fault_fraction": 1 / clients, "federation.fault_mode": mode}
    cfg = demo_config(overrides)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        try:
            summary = run_local(cfg, out, clients, resume=False)
        except Exception as err:  # a crash is a finding of the study, not the end of it
            return {"mode": mode, "aggregator": aggregator, "error": f"{type(err).__name__}: {err}"}
    rounds_ = summary["rounds"][1:]
    rejected: dict[str, int] = {}
    for r in rounds_:
        for reason, count in r["rejected"].items():
            rejected[reason] = rejected.get(reason, 0) + count
    return {
        "mode": mode,
        "aggregator": aggregator,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=10.0, help="federation.fault_scale")
    parser.add_argument("--modes", default=",".join(UPDATE_MODES + REPLY_MODES))
    parser.add_argument("--aggregators", default=",".join(AGGREGATORS))
    parser.add_argument("--ray-address", help="an existing Ray cluster ('auto' or host:port)")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument("--paper-model-steps", help="only an IR-SE-50 client's drift, e.g. 3,10")
    args = parser.parse_args()
    if args.paper_model_steps:
        paper_model_drift([int(n) for n in args.paper_model_steps.split(",")])
        return
    modes, aggregators = args.modes.split(","), args.aggregators.split(",")
    jobs = [
        (mode, agg, args.clients, args.rounds, args.scale)
        for agg in aggregators
        for mode in ("clean", *modes)
        if agg == "fedavg" or mode not in REPLY_MODES
    ]
    print(f"{len(jobs)} runs: {args.clients} clients, 1 attacking, {args.rounds} rounds")
    from simulations.cells import RayOptions, ray_runner, ray_session

    ray = RayOptions(address=args.ray_address)
    with ray_session(ray):
        done = dict(ray_runner(ray)(one_run, jobs))
    results = [done[job] for job in jobs]
    if args.json:
        from ahm_core.io import atomic_write

        text = json.dumps(results, indent=1)
        atomic_write(args.json, lambda tmp: tmp.write_text(text))
    clean = {r["aggregator"]: r for r in results if r["mode"] == "clean"}
    print("| mode | aggregator | accuracy (10-fold std) | vs clean | completed | rejected |")
    print("|---|---|---|---|---|---|")
    for r in results:
        base = clean[r["aggregator"]]
        if "error" in r:
            print(f"| {r['mode']} | {r['aggregator']} | - | - | no: {r['error'][:60]} | - |")
            continue
        diff = r["accuracy"] - base.get("accuracy", float("nan"))
        rejected = ", ".join(f"{k} {v}" for k, v in sorted(r["rejected"].items())) or "none"
        print(
            f"| {r['mode']} | {r['aggregator']} | {r['accuracy']:.4f} ({r['std']:.4f}) | "
            f"{diff:+.4f} | yes | "
            f"{rejected} |"
        )
    by_round = clean.get("fedavg", {}).get("updates", [])
    honest = [u for updates in by_round for u in updates]
    if honest:
        ratios = [u["ratio"] for u in honest]
        cosines = [u["cosine"] for u in honest if u["cosine"] is not None]
        statistics = [u["statistics_cosine"] for u in honest if u["statistics_cosine"] is not None]
        spread = max(max(u["norm"] for u in r) / min(u["norm"] for u in r) for r in by_round)
        print(
            f"honest updates (clean fedavg, {len(honest)}): |d|/|w| {min(ratios):.3f}.."
            f"{max(ratios):.3f}; cos with the median update {min(cosines):.3f}..{max(cosines):.3f}"
            f" (running statistics {min(statistics):.3f}..{max(statistics):.3f}); norm max/min "
            f"within a round <= {spread:.2f}"
        )
    worst = [r for r in results if r.get("aggregator") == "fedavg" and "accuracy" in r]
    if worst and "accuracy" in clean.get("fedavg", {}):
        drop = min(r["accuracy"] - clean["fedavg"]["accuracy"] for r in worst)
        print(f"default configuration: worst accuracy change {drop:+.4f} (target >= -0.03)")


if __name__ == "__main__":
    main()
