"""A study's cells as Ray tasks: one task per (row, seed) with its resources, on this machine
(`ray.address=null`, Ray started here) or on an existing cluster (`auto`, or `host:port` of its
head). The tasks read and write the study folder, so on a cluster it must be on a filesystem
every node shares (as Ray's own storage path), and the nodes need this project installed.

Two machines (the study folder on a shared mount at the same path on both):

    head$   ray start --head --port=6379 --num-cpus=16
    other$  ray start --address=HEAD_IP:6379 --num-cpus=16
    head$   python -m simulations.paper_tables profile=study seeds=3 ray.address=auto
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ahm_core.cells import Item, Runner, seed_list
from ahm_core.config import AHMConfig, ConfigError, collect


@dataclass
class RayOptions:
    """Where and with what each cell runs."""

    address: str | None = None  # None: a local Ray; "auto" or "host:port": an existing cluster
    cpus_per_cell: float = 1.0  # also the cell's torch threads (Ray sets OMP_NUM_THREADS)
    gpus_per_cell: float = 0.0  # a fraction shares one GPU between cells

    def __post_init__(self) -> None:
        if not self.cpus_per_cell > 0:
            raise ConfigError(
                f"ray.cpus_per_cell: expected a number above 0, got {self.cpus_per_cell}"
            )
        if not self.gpus_per_cell >= 0:
            raise ConfigError(
                f"ray.gpus_per_cell: expected a number from 0, got {self.gpus_per_cell}"
            )
        if self.address is not None and not self.address.strip():
            raise ConfigError(
                "ray.address: expected null, 'auto' or host:port of a Ray head, got ''"
            )


def check_seeded(cfg: AHMConfig, options: dict[str, Any]) -> None:
    """The run options of a study over seeds (`seeds`, `ray`), checked with the config, before
    Ray starts."""
    collect([lambda: seed_list(cfg, options["seeds"]), lambda: RayOptions(**options["ray"])])


@contextlib.contextmanager
def ray_session(options: RayOptions) -> Iterator[None]:
    """Ray started here, or joined at `options.address`, for the block; disconnected after."""
    import ray

    ray.init(address=options.address, include_dashboard=False, logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()


def ray_runner(options: RayOptions) -> Runner:
    """A runner, inside `ray_session`, that submits every item (a study's cell, or one run of
    another study) at once as a Ray task and yields each as it finishes; a task's error is raised
    as itself (a bad config stays one line), and the items still pending are cancelled."""

    def run(work: Callable[[Item], dict], items: Sequence[Item]) -> Iterator[tuple[Item, dict]]:
        import ray
        from ray.exceptions import RayTaskError

        task = ray.remote(num_cpus=options.cpus_per_cell, num_gpus=options.gpus_per_cell)(work)
        pending = {task.remote(item): item for item in items}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                item = pending.pop(done[0])
                try:
                    result = ray.get(done[0])
                except RayTaskError as err:
                    raise err.cause from None
                yield item, result
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    return run
