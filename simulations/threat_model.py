"""The threat report of a federated run: gradient inversion and its chain to faces, demixing,
model inversion, for every defence of `attack.defences` side by side (`threat_report.md`).

python -m simulations.threat_model run=outputs/demo                 # attack a finished run
python -m simulations.threat_model profile=smoke                    # make a tiny run, attack it
python -m simulations.threat_model run=outputs/demo attack.gi_local_steps=3
python -m simulations.threat_model run=outputs/demo federation.dp_noise_multiplier=0.3

With dp_fedavg=true (the default) the report has a DP-FedAvg row: an unmasked ArcFace federation
with this config's DP settings (`ahm_core.threat.dp_fedavg_config`), trained in the run's
`dp_fedavg/` folder first (resumed when it is there) and attacked the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig

from ahm_core.config import AHMConfig
from ahm_core.threat import DP_FEDAVG, dp_fedavg_config, run_threat_model
from simulations.cli import entry
from simulations.federated import check_launch, run_federation
from simulations.schema import register

PROG = "threat_model"
register()


@entry("threat_model", PROG, check_launch)
def main(cfg: AHMConfig, options: dict[str, Any]) -> None:
    run = Path(options["run"]) if options["run"] else None
    if run is None:
        run = Path(HydraConfig.get().runtime.output_dir) / "run"
        print(f"{PROG}: no run= given: a federated run with {options['supernodes']} clients first")
        run_federation(cfg, options, run, PROG)
    elif not (run / "checkpoint.pt").is_file():
        raise SystemExit(f"{PROG}: run={run}: no checkpoint.pt there; expected a federated run")
    compared = {}
    if options["dp_fedavg"]:
        dp_cfg = dp_fedavg_config(run, cfg)
        f = dp_cfg.federation
        print(
            f"{PROG}: the DP-FedAvg row: ArcFace with {f.dp}, noise multiplier "
            f"{f.dp_noise_multiplier}, clipping norm {f.dp_clipping_norm}"
        )
        compared[DP_FEDAVG] = run / DP_FEDAVG
        run_federation(dp_cfg, options, compared[DP_FEDAVG], PROG)
    report = run_threat_model(run, cfg, log=_log, compared=compared)
    print(f"{PROG}: threat report in {report}")


def _log(line: str) -> None:
    print(f"{PROG}: {line}")


if __name__ == "__main__":
    main()
