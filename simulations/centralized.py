"""Train one method of the paper's Table 2 without federation; metrics.json in the run folder.

python -m simulations.centralized masking.method=ppfr_fd
python -m simulations.centralized data=folder data.root=../shared/data/orl_faces profile=smoke
python -m simulations.centralized -m masking.method=arcface,ppfr_fd profile=smoke
"""

from __future__ import annotations

import json

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ahm_core.experiment import run_centralized
from simulations.cli import entry
from simulations.schema import register, split_run_config

register()


@entry("centralized", "centralized")
def main(hcfg: DictConfig) -> None:
    cfg, options = split_run_config(hcfg)
    metrics = run_centralized(cfg, HydraConfig.get().runtime.output_dir, options["resume"])
    keys = ("method", "verification_accuracy", "k_proportions", "checkpoint")
    print(json.dumps({k: metrics[k] for k in keys if k in metrics}))


if __name__ == "__main__":
    main()
