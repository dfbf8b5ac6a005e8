"""The threat report of a federated run: gradient inversion and its chain to faces, demixing,
model inversion, for every defence of `attack.defences` side by side (`threat_report.md`).

python -m simulations.threat_model run=outputs/demo                 # attack a finished run
python -m simulations.threat_model profile=smoke                    # make a tiny run, attack it
python -m simulations.threat_model run=outputs/demo attack.gi_local_steps=3
python -m simulations.threat_model run=outputs/demo federation.dp_noise_multiplier=0.3

Each name of compare=[...] (default [dp_fedavg]; `ahm_core.threat.COMPARED`) adds a row: an
unmasked ArcFace federation with one mechanism of the federated privacy stack, with this config's
settings of it, trained in the run's `<name>/` folder first (resumed when it is there) and
attacked the same way:

python -m simulations.threat_model run=outputs/demo \
    'compare=[dp_fedavg,dp_sgd,dp_sgd_strong,local_dp,secagg]' train.dp_noise_multiplier=0.5
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig

from ahm_core.config import AHMConfig, check_choice, collect, to_flat
from ahm_core.threat import COMPARED, compared_config, run_threat_model
from simulations.cli import entry
from simulations.federated import check_launch, run_federation
from simulations.schema import register

PROG = "threat_model"
register()


def check_threat(cfg: AHMConfig, options: dict[str, Any]) -> None:
    """The launch options, and every row of compare=[...] a known one."""
    collect(
        [lambda: check_launch(cfg, options)]
        + [lambda n=name: check_choice("compare", n, COMPARED) for name in options["compare"]]
    )


@entry("threat_model", PROG, check_threat)
def main(cfg: AHMConfig, options: dict[str, Any]) -> None:
    run = Path(options["run"]) if options["run"] else None
    if run is None:
        run = Path(HydraConfig.get().runtime.output_dir) / "run"
        print(f"{PROG}: no run= given: a federated run with {options['supernodes']} clients first")
        run_federation(cfg, options, run, PROG)
    elif not (run / "checkpoint.pt").is_file():
        raise SystemExit(f"{PROG}: run={run}: no checkpoint.pt there; expected a federated run")
    compared = {}
    for name in options["compare"]:
        row_cfg = compared_config(name, run, cfg)
        changed = {k: v for k, v in to_flat(row_cfg).items() if to_flat(cfg).get(k) != v}
        print(f"{PROG}: the {name} row: ArcFace with {changed}")
        compared[name] = run / name
        run_federation(row_cfg, options, compared[name], PROG)
    report = run_threat_model(run, cfg, log=_log, compared=compared)
    print(f"{PROG}: threat report in {report}")


def _log(line: str) -> None:
    print(f"{PROG}: {line}")


if __name__ == "__main__":
    main()
