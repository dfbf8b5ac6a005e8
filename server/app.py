"""The Flower ServerApp: FedAvg over the SuperNodes with screening, evaluation, checkpoints and
Prometheus metrics (see `server.run`)."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ahm_core.federated import split_run_config
from server.run import ServerRun

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation the run config describes."""
    cfg, options = split_run_config(context.run_config)
    ServerRun(cfg, options).run(grid)
