"""The threat report of a federated run: gradient inversion and its chain to faces, demixing,
model inversion, for every defence of `attack.defences` side by side (`threat_report.md`).

python -m simulations.threat_model run=outputs/demo                 # attack a finished run
python -m simulations.threat_model profile=smoke                    # make a tiny run, attack it
python -m simulations.threat_model run=outputs/demo attack.gi_local_steps=3
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ahm_core.threat import run_threat_model
from simulations.federated import run_federation
from simulations.schema import register, split_run_config

PROG = "threat_model"
register()


@hydra.main(version_base=None, config_path="conf", config_name="threat_model")
def main(hcfg: DictConfig) -> None:
    cfg, options = split_run_config(hcfg, PROG)
    logging.getLogger("ahm_core").setLevel(logging.INFO)
    run = Path(options["run"]) if options["run"] else None
    if run is None:
        run = Path(HydraConfig.get().runtime.output_dir) / "run"
        print(f"{PROG}: no run= given: a federated run with {options['supernodes']} clients first")
        run_federation(cfg, options, run, PROG)
    elif not (run / "checkpoint.pt").is_file():
        raise SystemExit(f"{PROG}: run={run}: no checkpoint.pt there; expected a federated run")
    report = run_threat_model(run, cfg, log=lambda line: print(f"{PROG}: {line}"))
    print(f"{PROG}: threat report in {report}")


if __name__ == "__main__":
    main()
