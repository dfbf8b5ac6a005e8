"""The typed schema under every hydra entry point: AHMConfig's sections plus run options.

Registered in hydra's ConfigStore so any schema key can be overridden on the command line
(`mixup.k=4`, `policy.k_set=[2,3,4]`) with no YAML copy of the defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from ahm_core.checks import validate
from ahm_core.config import AHMConfig, ConfigError, collect, from_dict
from ahm_core.data.sources import SOURCES
from server.strategy import check_strategy
from simulations.cells import RayOptions


@dataclass
class RunConfig(AHMConfig):
    """AHMConfig plus what only the entry point reads."""

    resume: bool = True  # continue from the run folder's checkpoint when it is there


@dataclass
class SeededRunConfig(RunConfig):
    """RunConfig plus the seeds a centralized run trains at, and where those runs go."""

    # Training runs: a count (from train.seed on) or a list of seeds; null: train.seed alone
    seeds: Any = None
    ray: RayOptions = field(default_factory=RayOptions)  # where each (row, seed) cell runs


@dataclass
class PaperRunConfig(SeededRunConfig):
    """SeededRunConfig plus which rows `simulations.paper_tables` runs."""

    # Only these rows, by their folder names under rows/ (and ArcFace, whose network judges).
    rows: list[str] | None = None
    attacks: bool = True  # false: train and compare accuracy only (a later run adds the attacks)


@dataclass
class FederatedRunConfig(RunConfig):
    """RunConfig plus how `simulations.federated` launches `flwr run` on the Ray backend."""

    supernodes: int = 4  # simulated clients (SuperNodes), one partition each
    cpus_per_client: int = 1
    gpus_per_client: float = 0.0
    metrics_port: int = 0  # the server's Prometheus exporter; 0: off
    metrics_address: str = "127.0.0.1"
    client_state: bool = True  # clients also keep their state on disk, for an exact resume
    report: bool = False  # afterwards, the privacy report on the final model (CGAN attack)


@dataclass
class ThreatRunConfig(FederatedRunConfig):
    """FederatedRunConfig plus the finished run `simulations.threat_model` attacks."""

    run: str = ""  # a federated run folder; "": make one first, with this config
    # also train and attack these rows (ahm_core.threat.COMPARED): unmasked ArcFace federations
    # with DP-FedAvg, DP-SGD (dp_sgd, dp_sgd_strong), local_dp or secagg
    compare: list[str] = field(default_factory=lambda: ["dp_fedavg"])


def register() -> None:
    """Make the schemas available to `defaults` lists: ahm_schema, ahm_centralized_schema,
    ahm_paper_schema,
    ahm_federated_schema and ahm_threat_schema; and the `data` group, one option per registered
    face source (`data=folder data.root=PATH`)."""
    store = ConfigStore.instance()
    store.store(name="ahm_schema", node=RunConfig)
    store.store(name="ahm_centralized_schema", node=SeededRunConfig)
    store.store(name="ahm_paper_schema", node=PaperRunConfig)
    store.store(name="ahm_federated_schema", node=FederatedRunConfig)
    store.store(name="ahm_threat_schema", node=ThreatRunConfig)
    for name, source in SOURCES.items():  # `data=NAME`: each registered face source
        store.store(
            group="data",
            name=name,
            node={"source": name, "root": "???"} if source.needs_root else {"source": name},
        )


def split_run_config(
    hcfg: DictConfig, check_options: Callable[[AHMConfig, dict[str, Any]], object] | None = None
) -> tuple[AHMConfig, dict[str, Any]]:
    """The validated AHMConfig and the run options of a composed hydra config; bad settings
    raise one ConfigError naming each (`simulations.cli.entry` ends the program with a line
    for each): the config's, a run option the schema lacks, and `check_options`' of the rest."""
    values = OmegaConf.to_container(hcfg, resolve=True, throw_on_missing=True)
    sections = {f.name for f in fields(AHMConfig)}
    options = {key: values.pop(key) for key in list(values) if key not in sections}
    schema = OmegaConf.get_type(hcfg)
    known = {f.name for f in fields(schema)} if is_dataclass(schema) else set(options)
    unknown = [
        f"{key}: unknown option; expected one of {', '.join(sorted(known))}"
        for key in sorted(set(options) - known)
    ]

    def check(cfg: AHMConfig) -> None:
        collect(
            [
                lambda: cfg.train.device == "meta" and _refuse_meta(),
                lambda: validate(cfg),
                lambda: check_strategy(cfg.federation),
                lambda: check_options is not None and check_options(cfg, options),
            ],
            unknown,
        )

    return from_dict(values, check), options


def _refuse_meta() -> None:
    raise ConfigError(
        "train.device: meta holds shapes without values (for the library's tests); expected "
        "auto, cpu, cuda, cuda:N or mps"
    )
