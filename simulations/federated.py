"""A federated simulation: `flwr run` on the Ray backend with a composed config, then optionally
the privacy report on its final model.

python -m simulations.federated                          # profile=federated, 4 SuperNodes
python -m simulations.federated supernodes=8 federation.rounds=5 report=true
python -m simulations.federated -m masking.method=ppfr_fd,masking_adamixup
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ahm_core.config import AHMConfig
from ahm_core.report import federated_report
from simulations.flower import launch
from simulations.schema import register, split_run_config

PROG = "federated"
register()


def run_federation(cfg: AHMConfig, options: dict[str, Any], out: Path, prog: str) -> dict:
    """`flwr run` of cfg with the launch options of FederatedRunConfig, writing under `out`;
    a failed run ends the program with one line."""
    try:
        return launch(
            cfg,
            out,
            supernodes=options["supernodes"],
            cpus_per_client=options["cpus_per_client"],
            gpus_per_client=options["gpus_per_client"],
            resume=options["resume"],
            **{
                "metrics-port": options["metrics_port"],
                "metrics-address": options["metrics_address"],
                "client-state-dir": str(out / "client_state") if options["client_state"] else "",
            },
        )
    except subprocess.CalledProcessError as err:
        raise SystemExit(f"{prog}: flwr run failed with exit status {err.returncode}") from None


@hydra.main(version_base=None, config_path="conf", config_name="federated")
def main(hcfg: DictConfig) -> None:
    cfg, options = split_run_config(hcfg, PROG)
    logging.getLogger("ahm_core").setLevel(logging.INFO)
    out = Path(HydraConfig.get().runtime.output_dir)
    summary = run_federation(cfg, options, out, PROG)
    print(f"{PROG}: final verification accuracy {summary['final_accuracy']:.4f}")
    print(f"{PROG}: per-round results in {out / 'rounds.json'}")
    if options["report"]:
        report = federated_report(cfg, summary, out, log=lambda line: print(f"{PROG}: {line}"))
        print(f"{PROG}: privacy/accuracy report in {report}")


if __name__ == "__main__":
    main()
