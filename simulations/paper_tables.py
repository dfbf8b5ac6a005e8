"""Run the paper's Tables 1-3 on one data set and write report.md, table2.csv, the scatter and
the reconstruction grids in the run folder; rows already finished there are skipped.

    python -m simulations.paper_tables profile=small
    python -m simulations.paper_tables profile=small data=folder data.root=../shared/data/orl_faces
    python -m simulations.paper_tables profile=study 'rows=[ppfr_fd,dctdp]'   # those, and ArcFace
    python -m simulations.paper_tables profile=smoke seeds=2          # 2 training runs per row
    python -m simulations.paper_tables profile=study seeds=3 ray.address=auto   # on a cluster
    python -m simulations.paper_tables profile=study seeds=3 attacks=false      # accuracy only

Each (row, seed) cell is a Ray task (`simulations.cells`), on a local Ray unless `ray.address`
names a cluster; a killed study rerun into the same folder runs only its missing cells.
"""

from __future__ import annotations

from typing import Any

from hydra.core.hydra_config import HydraConfig

from ahm_core.cells import seed_list
from ahm_core.config import AHMConfig
from ahm_core.paper import run_tables
from simulations.cells import RayOptions, check_seeded, ray_runner, ray_session
from simulations.cli import entry
from simulations.schema import register

register()


@entry("paper_tables", "paper_tables", check_seeded)
def main(cfg: AHMConfig, options: dict[str, Any]) -> None:
    out = HydraConfig.get().runtime.output_dir
    seeds = seed_list(cfg, options["seeds"])  # a bad list is refused before Ray starts
    ray = RayOptions(**options["ray"])
    with ray_session(ray):
        run_tables(
            cfg,
            out,
            log=lambda line: print(line, flush=True),
            only=options["rows"],
            seeds=seeds,
            runner=ray_runner(ray),
            resume=options["resume"],
            attack=options["attacks"],
        )
    print(f"report: {out}/report.md")


if __name__ == "__main__":
    main()
