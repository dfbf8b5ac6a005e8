"""The errors of bad input (a config, a data file, a checkpoint): an entry point ends on one of
them with its one-line message, where any other exception is a bug and keeps its traceback."""

from __future__ import annotations

from ahm_core.config import ConfigError
from ahm_core.data.base import UnreadableImageError
from ahm_core.data.insightface import InsightFaceFormatError
from ahm_core.io import CheckpointError

INPUT_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    CheckpointError,
    InsightFaceFormatError,
    UnreadableImageError,
    FileNotFoundError,
    NotADirectoryError,
    PermissionError,
)
