"""Train one method of the paper's Table 2 without federation; metrics.json in the run folder.

python -m simulations.centralized masking.method=ppfr_fd
python -m simulations.centralized data=folder data.root=../shared/data/orl_faces profile=smoke
python -m simulations.centralized -m masking.method=arcface,ppfr_fd profile=smoke
"""

from __future__ import annotations

import json
import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ahm_core.config import ConfigError, from_dict
from ahm_core.experiment import run_centralized


@hydra.main(version_base=None, config_path="conf", config_name="centralized")
def main(hcfg: DictConfig) -> None:
    values = OmegaConf.to_container(hcfg, resolve=True, throw_on_missing=True)
    resume = values.pop("resume", True)
    try:
        cfg = from_dict(values)
    except ConfigError as err:
        raise SystemExit(f"centralized: {err}") from None
    logging.getLogger("ahm_core").setLevel(logging.INFO)
    metrics = run_centralized(cfg, HydraConfig.get().runtime.output_dir, resume=resume)
    summary = {k: metrics[k] for k in ("method", "verification_accuracy", "checkpoint")}
    print(json.dumps(summary | {k: metrics[k] for k in ("k_proportions",) if k in metrics}))


if __name__ == "__main__":
    main()
