"""Train one method of the paper's Table 2 without federation; metrics.json in the run folder.

python -m simulations.centralized masking.method=ppfr_fd
python -m simulations.centralized data=folder data.root=../shared/data/orl_faces profile=smoke
python -m simulations.centralized -m masking.method=arcface,ppfr_fd profile=smoke
python -m simulations.centralized masking.method=ppfr_fd profile=smoke seeds=3   # seed_<s>/ each

With `seeds`, each seed is a cell (`ahm_core.cells`) run as a Ray task (`simulations.cells`), a
finished one reused; it prints a line per run and the accuracy's mean and run-to-run std.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig

from ahm_core.cells import Cell, run_cells, seed_list, seeded
from ahm_core.config import AHMConfig
from ahm_core.experiment import run_centralized
from ahm_core.masking.methods import Row
from ahm_core.metrics.uncertainty import over_seeds
from simulations.cells import RayOptions, check_seeded, ray_runner, ray_session
from simulations.cli import entry
from simulations.schema import register

register()


@entry("centralized", "centralized", check_seeded)
def main(cfg: AHMConfig, options: dict[str, Any]) -> None:
    out = Path(HydraConfig.get().runtime.output_dir)
    ray = RayOptions(**options["ray"])
    if options["seeds"] is None:
        metrics = run_centralized(cfg, out, options["resume"])
        keys = ("method", "verification_accuracy", "k_proportions", "checkpoint")
        print(json.dumps({k: metrics[k] for k in keys if k in metrics}))
        return
    row = Row(cfg.masking.method, cfg.masking.method)
    cells = [
        Cell(row, s, seeded(cfg, s), out / f"seed_{s}", None, options["resume"])
        for s in seed_list(cfg, options["seeds"])
    ]
    results = {}
    with ray_session(ray):
        for cell, result, hit in run_cells(cells, ray_runner(ray)):
            results[cell.seed] = result
            line = {"seed": cell.seed, "verification_accuracy": result["accuracy"]}
            print(json.dumps(line | ({"cached": True} if hit else {})))
    accuracy = over_seeds([results[c.seed]["accuracy"] for c in cells])
    print(json.dumps({"method": cfg.masking.method, "seeds": [c.seed for c in cells], **accuracy}))


if __name__ == "__main__":
    main()
