"""A federated simulation: `flwr run` on the Ray backend with a composed config, then optionally
the privacy report on its final model.

python -m simulations.federated                          # profile=federated, 4 SuperNodes
python -m simulations.federated supernodes=8 federation.rounds=5 report=true
python -m simulations.federated -m masking.method=ppfr_fd,masking_adamixup
python -m simulations.federated -v                       # DEBUG logs, Flower's too
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig

from ahm_core.config import AHMConfig, collect
from ahm_core.train import resolve_device
from simulations.cli import entry
from simulations.flower import LaunchInterrupted, ServerAppError, bind_error, launch
from simulations.schema import register

PROG = "federated"
register()


def check_launch(cfg: AHMConfig, options: dict[str, Any]) -> None:
    """Raise one ConfigError naming every launch option of FederatedRunConfig that cannot give
    a federation: a device this machine lacks, too few SuperNodes for `federation.min_clients`
    (Flower would wait for the missing ones forever), clients' resources below one CPU or not a
    GPU count, a metrics port out of range, or one that cannot be served."""
    supernodes, minimum = options["supernodes"], cfg.federation.min_clients
    port, address, gpus = (
        options["metrics_port"],
        options["metrics_address"],
        options["gpus_per_client"],
    )
    problems = []
    if supernodes < 1:
        problems.append(f"supernodes={supernodes}: expected at least 1 SuperNode")
    elif supernodes < minimum:
        problems.append(
            f"supernodes={supernodes}: below federation.min_clients={minimum}; expected "
            f"supernodes>={minimum} (or a lower federation.min_clients)"
        )
    if options["cpus_per_client"] < 1:
        problems.append(f"cpus_per_client={options['cpus_per_client']}: expected at least 1 CPU")
    if not (math.isfinite(gpus) and gpus >= 0):
        problems.append(f"gpus_per_client={gpus}: expected a number >= 0")
    if not 0 <= port <= 65535:
        problems.append(f"metrics_port={port}: expected 0 (off) or a TCP port 1..65535")
    elif port and (error := bind_error(address, port)) is not None:
        problems.append(
            f"metrics_port={port}: cannot serve on metrics_address={address} "
            f"({error.strerror or error}); expected a free port, or 0 (off)"
        )
    # the simulation runs here: a missing GPU ends it now
    collect([lambda: resolve_device(cfg.train.device)], problems)


def run_federation(cfg: AHMConfig, options: dict[str, Any], out: Path, prog: str) -> dict:
    """`flwr run` of cfg with the launch options of FederatedRunConfig, writing under `out`;
    bad options, a failed run, a failed ServerApp or SIGINT/SIGTERM end the program with one
    line."""
    check_launch(cfg, options)
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
    except ServerAppError as err:
        raise SystemExit(f"{prog}: {err}") from None
    except LaunchInterrupted as err:
        raise SystemExit(f"{prog}: interrupted ({err.signal}); stopped the SuperLink") from None


@entry("federated", PROG, check_launch)
def main(cfg: AHMConfig, options: dict[str, Any]) -> None:
    out = Path(HydraConfig.get().runtime.output_dir)
    summary = run_federation(cfg, options, out, PROG)
    print(f"{PROG}: final verification accuracy {summary['final_accuracy']:.4f}")
    print(f"{PROG}: per-round results in {out / 'rounds.json'}")
    if options["report"]:
        from ahm_core.report import federated_report  # torchvision, scipy: only when asked

        report = federated_report(cfg, summary, out, log=lambda line: print(f"{PROG}: {line}"))
        print(f"{PROG}: privacy/accuracy report in {report}")


if __name__ == "__main__":
    main()
