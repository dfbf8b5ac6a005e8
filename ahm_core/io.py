"""Durable file output and checkpoint input.

`atomic_write`: a reader sees the old file or the whole new one, never a partial write, and the
new one survives a crash of the machine once the call returns (the file is fsynced before the
rename, its folder after). `load_checkpoint`: a torch file read with weights_only, whose errors
name the file. `read_record`: a run's JSON record (rounds.json, row.json) likewise.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A file AHM wrote and reads back (a checkpoint, a run's JSON record) that cannot be read,
    or lacks what the reader needs; the message names it and the field."""


class OutputPathError(OSError):
    """A path AHM writes that something other than a regular file holds (a folder, a device):
    nothing is written there, and the message names it."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) on a temporary file beside `path`, fsync it, rename it over `path` and
    fsync the folder, so the rename itself is on disk. A folder or other non-file at `path`
    raises OutputPathError before anything is written."""
    path = Path(path)
    if path.exists() and not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise OutputPathError(f"{path}: is {kind}; expected a file AHM can write (move it away)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; use the usual mode
        _fsync(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync(path.parent)
    return path


def load_checkpoint(
    source: str | os.PathLike | bytes,
    required: Iterable[str] = (),
    name: str | None = None,
    map_location: Any = "cpu",
) -> dict:
    """A torch checkpoint (a path, or bytes named `name`) read with weights_only=True, holding
    the `required` keys; anything else raises CheckpointError naming the file."""
    label = name or ("<bytes>" if isinstance(source, bytes) else str(source))
    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        state = torch.load(handle, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{label}: no such checkpoint") from None
    except Exception as err:  # a malformed file makes the unpickler raise anything
        raise CheckpointError(f"{label}: {_unreadable(err)}") from None
    return _holding(label, state, required, "checkpoint")


def _holding(label: str, value: Any, required: Iterable[str], kind: str) -> dict:
    """`value` when it is a dict holding the `required` keys, else CheckpointError naming it."""
    if not isinstance(value, dict):
        raise CheckpointError(f"{label}: holds a {type(value).__name__}, not a {kind} dict")
    missing = [key for key in required if key not in value]
    if missing:
        raise CheckpointError(f"{label}: not this kind of {kind} (no {', '.join(missing)})")
    return value


def _unreadable(err: BaseException) -> str:
    """Why torch.load failed, in one sentence, without torch's advice to drop weights_only."""
    text = " ".join(str(err).replace("WeightsUnpickler error:", ". ").split())
    sentences = [
        sentence.strip().rstrip(".")
        for sentence in text.replace("Check the documentation", ". Check the documentation").split(
            ". "
        )
        if sentence.strip(" .")
        and not any(
            advice in sentence
            for advice in ("weights_only", "Weights only", "Check the documentation", "trusted")
        )
    ]
    refusal = next((sentence for sentence in sentences if "GLOBAL" in sentence), None)
    if refusal:
        return f"refused: it holds more than tensors and plain data ({refusal})"
    sentence = sentences[0] if sentences else ""
    if not isinstance(err, pickle.UnpicklingError | RuntimeError | OSError):
        sentence = f"{type(err).__name__}: {sentence}" if sentence else type(err).__name__
    return f"not a readable checkpoint ({sentence or type(err).__name__})"


def read_record(path: str | os.PathLike, required: Iterable[str] = ()) -> dict:
    """A JSON object written by a run (rounds.json, row.json) holding the `required` keys; a
    missing, unreadable, malformed or foreign file raises CheckpointError naming it."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: a folder, expected a JSON file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: cannot read it ({err})") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not JSON ({err.msg}, line {err.lineno})") from None
    return _holding(str(path), record, required, "record")
