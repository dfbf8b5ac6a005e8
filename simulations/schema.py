"""The typed schema under every hydra entry point: AHMConfig's sections plus run options.

Registered in hydra's ConfigStore so any schema key can be overridden on the command line
(`mixup.k=4`, `policy.k_set=[2,3,4]`) with no YAML copy of the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from ahm_core.config import AHMConfig, ConfigError, from_dict


@dataclass
class RunConfig(AHMConfig):
    """AHMConfig plus what only the entry point reads."""

    resume: bool = True  # continue from the run folder's checkpoint when it is there


def register() -> None:
    """Make the schema available to `defaults` lists as `ahm_schema`."""
    ConfigStore.instance().store(name="ahm_schema", node=RunConfig)


def split_run_config(hcfg: DictConfig, prog: str) -> tuple[AHMConfig, dict[str, Any]]:
    """The validated AHMConfig and the run options of a composed hydra config; a bad option
    ends the program with one line naming it."""
    values = OmegaConf.to_container(hcfg, resolve=True, throw_on_missing=True)
    options = {"resume": values.pop("resume")}
    try:
        return from_dict(values), options
    except ConfigError as err:
        raise SystemExit(f"{prog}: {err}") from None
