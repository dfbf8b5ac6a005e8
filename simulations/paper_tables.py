"""Run the paper's Tables 1-3 on one data set and write report.md, table2.csv, the scatter and
the reconstruction grids in the run folder; rows already finished there are skipped.

    python -m simulations.paper_tables profile=small
    python -m simulations.paper_tables profile=small data=folder data.root=../shared/data/orl_faces
    python -m simulations.paper_tables profile=study 'rows=[ppfr_fd,dctdp]'   # those, and ArcFace
"""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ahm_core.paper import run_tables
from simulations.cli import entry
from simulations.schema import register, split_run_config

register()


@entry("paper_tables", "paper_tables")
def main(hcfg: DictConfig) -> None:
    cfg, options = split_run_config(hcfg)
    out = HydraConfig.get().runtime.output_dir
    run_tables(cfg, out, log=lambda line: print(line, flush=True), only=options["rows"])
    print(f"report: {out}/report.md")


if __name__ == "__main__":
    main()
