"""The errors of bad input (a config, a data file, a checkpoint): an entry point ends on one of
them with its one-line message, where any other exception is a bug and keeps its traceback.
Each data source names its own (`ahm_core.data.sources.Source.errors`)."""

from __future__ import annotations

from ahm_core.config import ConfigError
from ahm_core.data.base import UnreadableFileError, UnreadableImageError
from ahm_core.data.sources import SOURCES
from ahm_core.io import CheckpointError, OutputPathError

GENERAL: tuple[type[Exception], ...] = (
    ConfigError,
    CheckpointError,
    OutputPathError,
    UnreadableImageError,
    UnreadableFileError,
    FileNotFoundError,
    NotADirectoryError,
    PermissionError,
)


def input_errors() -> tuple[type[Exception], ...]:
    """The general errors of bad input and those of every data source registered by now."""
    return (*GENERAL, *(error for source in SOURCES.values() for error in source.errors))
