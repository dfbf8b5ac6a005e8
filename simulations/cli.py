"""What every hydra entry point shares: its log level, and how it ends on bad input.

Logs: the project's loggers (`ahm_core`) at INFO, and Flower's at its default, INFO. `-v` or
`--verbose` anywhere on the command line (taken out before hydra reads it) turns on DEBUG for
both: `ahm_core` here, Flower's through FLWR_LOG_LEVEL in the environment `flwr run` inherits.

Bad input: one line `prog: what` for each bad setting, exit status 1.

Hydra prints a bad override over several lines and a task's exception with a traceback. `entry`
runs hydra with HYDRA_FULL_ERROR set, so both reach it, and ends the program with one line for
each problem of bad input: every override hydra cannot apply and every bad setting of the
others (so one rerun fixes them all), and in the task a ConfigError, a data or checkpoint
error. Any other exception of the task is a bug and keeps its traceback; so does everything
when the user set HYDRA_FULL_ERROR themselves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from ahm_core.config import AHMConfig, ConfigError
from ahm_core.errors import input_errors
from simulations.schema import split_run_config

CONF = Path(__file__).resolve().parent / "conf"
FULL_ERROR = "HYDRA_FULL_ERROR"
COMPOSE_ERRORS = (HydraException, OmegaConfBaseException)  # hydra's, in the task too
VERBOSE_FLAGS = ("-v", "--verbose")
VERBOSE_HELP = "-v, --verbose: DEBUG logs (this project's and Flower's); INFO without it"
FLWR_LOG_LEVEL = "FLWR_LOG_LEVEL"  # read by Flower's logger when a Flower process starts


Task = Callable[[AHMConfig, dict[str, Any]], None]
CheckOptions = Callable[[AHMConfig, dict[str, Any]], object]


def entry(
    config_name: str, prog: str, check_options: CheckOptions | None = None
) -> Callable[[Task], Callable[[], None]]:
    """`hydra.main` over simulations/conf/`config_name`.yaml, calling the task with the
    validated config and run options (`split_run_config` with `check_options`); `-v` for
    DEBUG logs, and bad input ending in one line per problem."""

    def wrap(task: Task) -> Callable[[], None]:
        in_task = False
        verbose = False

        @functools.wraps(task)
        def guarded(hcfg: DictConfig) -> None:
            nonlocal in_task
            in_task = True
            logging.getLogger("ahm_core").setLevel(logging.DEBUG if verbose else logging.INFO)
            try:
                task(*split_run_config(hcfg, check_options))
            except (*input_errors(), *COMPOSE_ERRORS) as err:
                raise SystemExit(error_text(prog, err)) from None

        run = hydra.main(version_base=None, config_path=str(CONF), config_name=config_name)(guarded)

        @functools.wraps(task)
        def main() -> None:
            nonlocal in_task, verbose
            in_task = False
            verbose = take_verbose(sys.argv)
            if {"-h", "--help"} & set(sys.argv):
                print(VERBOSE_HELP)
            with _flower_debug(verbose):
                if os.environ.get(FULL_ERROR):
                    return run()
                os.environ[FULL_ERROR] = "1"  # hydra raises instead of printing
                try:
                    return run()
                except Exception as err:
                    if in_task:  # a bug of the task, not bad input: keep its traceback
                        raise
                    problems = every_problem(config_name, sys.argv[1:], check_options)
                    lines = problems or [error_line(err)]
                    raise SystemExit("\n".join(f"{prog}: {line}" for line in lines)) from None
                finally:
                    os.environ.pop(FULL_ERROR, None)

        return main

    return wrap


def take_verbose(argv: list[str]) -> bool:
    """Whether `argv` asks for DEBUG logs (`-v`, `--verbose`); the flags are removed from it."""
    found = [arg for arg in argv[1:] if arg in VERBOSE_FLAGS]
    argv[1:] = [arg for arg in argv[1:] if arg not in VERBOSE_FLAGS]
    return bool(found)


@contextlib.contextmanager
def _flower_debug(verbose: bool) -> Iterator[None]:
    """Inside, the Flower processes this one starts log at DEBUG when `verbose` (unless the
    user set FLWR_LOG_LEVEL)."""
    if not verbose or FLWR_LOG_LEVEL in os.environ:
        yield
        return
    os.environ[FLWR_LOG_LEVEL] = "DEBUG"
    try:
        yield
    finally:
        os.environ.pop(FLWR_LOG_LEVEL, None)


def every_problem(
    config_name: str, overrides: list[str], check_options: CheckOptions | None
) -> list[str]:
    """Every problem of a command line that hydra refused: each override that does not compose
    on its own, then each bad setting of the config the others compose (hydra's own options
    are left to hydra). Empty when the command line holds flags (a sweep, `--cfg`)."""
    if any(o.startswith("-") for o in overrides):
        return []
    problems, good = [], []
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        for override in overrides:
            if override.lstrip("+~").startswith(("hydra.", "hydra/")):
                continue
            try:
                compose(config_name, [override])
                good.append(override)
            except COMPOSE_ERRORS as err:
                problems.append(error_line(err))
        try:
            split_run_config(compose(config_name, good), check_options)
        except COMPOSE_ERRORS as err:
            problems.append(error_line(err))
        except ConfigError as err:
            problems.extend(_one_line(p) for p in err.problems)
    return problems


def error_text(prog: str, err: BaseException) -> str:
    """`prog: what` for an error of bad input, one line per problem it names."""
    lines = err.problems if isinstance(err, ConfigError) else [error_line(err)]
    return "\n".join(f"{prog}: {_one_line(line)}" for line in lines)


def error_line(err: BaseException) -> str:
    """An error of bad input as one line: an override hydra refused keeps the override and
    OmegaConf's reason ("train.lr=abc: Value 'abc' of type 'str' could not be converted to
    Float"), a missing config group option lists the available ones."""
    if isinstance(err, OmegaConfBaseException):
        return f"{err.full_key}: {_one_line(err.msg)}" if err.full_key else _one_line(err.msg)
    line = _one_line(str(err)).removeprefix("Error merging override ")
    cause = err.__cause__
    if isinstance(cause, ConfigAttributeError | ConfigKeyError) and dataclasses.is_dataclass(
        cause.object_type
    ):
        names = ", ".join(sorted(f.name for f in dataclasses.fields(cause.object_type)))
        return f"{cause.full_key}: unknown option; expected one of {names}"
    if isinstance(err, HydraException) and isinstance(cause, OmegaConfBaseException):
        line = f"{line}: {_one_line(cause.msg)}"
    return line or type(err).__name__


def _one_line(text: str) -> str:
    """A multi-line message in one line: tab-indented lines become a comma-separated list of
    the line before; OmegaConf's key details and hydra's search path and links are left out."""
    lines: list[str] = []
    for raw in str(text).splitlines():
        line = raw.strip()
        if line.startswith(("Config search path", "See https", "full_key:", "reference_type=")):
            break
        if not line:
            continue
        if raw.startswith("\t") and lines:
            lines[-1] += (" " if lines[-1].endswith(":") else ", ") + line
        else:
            lines.append(line.rstrip("."))
    return "; ".join(lines)
