"""Faces in a folder per identity (ORL, Yale, an extracted CASIA-WebFace, your own), read lazily.

Real folders are messy. The scan keeps every file it can vouch for from its header and its end
(JPEG end marker, PNG IEND chunk, PGM/PPM payload length) without decoding pixels, skips the rest
and counts why; an image that still fails to decode at load time is replaced by another image of
the same identity, counted, and logged once, so a long run never dies on one bad file. Links
that lead nowhere or in circles, FIFOs, unlistable folders and images of more than `max_pixels`
pixels are skips too. Memory: one path a file, one header open at a time during the scan, one
image decoded at a time when loading (at most 17 x max_pixels bytes, see `ahm_core.data.base`).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from ahm_core.config import MAX_PIXELS
from ahm_core.data.base import (
    FaceSet,
    TooManyPixelsError,
    UnreadableImageError,
    decode_image,
    open_image,
)
from ahm_core.data.sources import Source, register

EXTENSIONS = (".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp")
log = logging.getLogger(__name__)


class FaceFolderError(ValueError):
    """A data root that holds no usable identity folder, or cannot be listed."""


class FolderFaces(FaceSet):
    """root/<identity>/<image>: one folder per identity; labels follow natural name order
    (s1, s2, ..., s10), images within a folder likewise."""

    def __init__(
        self,
        root: str | os.PathLike,
        size: int = 112,
        min_images: int = 1,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        self.root, self.size, self.min_images = Path(root), size, min_images
        self.max_pixels = max_pixels
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root: {self.root} is not a folder")
        self.skipped: Counter[str] = Counter()
        self.sizes: Counter[tuple[int, int]] = Counter()
        self.load_failures: Counter[str] = Counter()
        try:
            entries = sorted(self.root.iterdir(), key=_natural)
        except OSError as err:
            raise FaceFolderError(f"data.root: cannot list {self.root} ({err.strerror})") from None
        files, labels, names = [], [], []
        for entry in entries:
            reason, info = _follow(entry)
            if not reason and not stat.S_ISDIR(info.st_mode):
                reason = "loose_file"
            if not reason:
                try:
                    images = sorted(entry.iterdir(), key=_natural)
                except OSError:
                    reason = "unreadable_folder"
            if reason:
                self.skipped[reason] += 1
                continue
            kept = [f for f in images if self._keep(f)]
            if len(kept) < min_images:
                self.skipped["identity_below_min_images"] += 1
                self.skipped["image_of_small_identity"] += len(kept)
                continue
            files += kept
            labels += [len(names)] * len(kept)
            names.append(entry.name)
        if not files:
            raise FaceFolderError(
                f"data.root: no identity folder in {self.root} holds >= {min_images} readable "
                f"images ({self._skipped_text()})"
            )
        self.files, self.identity_names = files, names
        self.labels = torch.tensor(labels)
        log.info(self.summary_line())

    def _keep(self, path: Path) -> bool:
        """Whether `path` looks like a whole image; otherwise count the reason it is skipped."""
        reason, info = _follow(path)
        if reason:
            pass
        elif stat.S_ISDIR(info.st_mode):
            reason = "nested_folder"
        elif path.suffix.lower() not in EXTENSIONS:
            reason = "not_an_image"
        elif not stat.S_ISREG(info.st_mode):
            reason = "not_a_file"  # a FIFO or device: opening or reading it could block forever
        elif info.st_size == 0:
            reason = "empty_file"
        else:
            reason = _damage(path, self.sizes, self.max_pixels)
        if reason:
            self.skipped[reason] += 1
        return not reason

    def images_uint8(self, indices: Sequence[int] | Tensor) -> Tensor:
        """[B, 3, size, size] uint8 images, decoded now; an undecodable file is replaced."""
        idx = self._check_indices(indices)
        return (
            torch.stack([self._load(int(i)) for i in idx])
            if len(idx)
            else torch.empty(0, 3, self.size, self.size, dtype=torch.uint8)
        )

    def _load(self, index: int) -> Tensor:
        try:
            return decode_image(self.files[index], self.size, self.max_pixels)
        except UnreadableImageError as err:
            if not self.load_failures[str(self.files[index])]:
                log.warning("%s; using another image of the same identity", err)
            self.load_failures[str(self.files[index])] += 1
        same = torch.nonzero(self.labels == self.labels[index]).flatten().tolist()
        for other in same[same.index(index) + 1 :] + same[: same.index(index)]:
            try:
                return decode_image(self.files[other], self.size, self.max_pixels)
            except UnreadableImageError:
                continue
        raise UnreadableImageError(
            f"{self.root / self.identity_names[int(self.labels[index])]}: no image of this "
            "identity decodes"
        )

    def summary(self) -> dict:
        """Counts for reports and `simulations.data_summary`."""
        return {
            "format": "folder",
            "root": str(self.root),
            "identities": self.num_identities,
            "images": len(self),
            "skipped": dict(sorted(self.skipped.items())),
            "sizes": sorted([w, h] for w, h in self.sizes),
        }

    def summary_line(self) -> str:
        """The one line a run prints about its data."""
        return (
            f"{self.root}: {self.num_identities} identities, {len(self)} images, "
            f"skipped {self._skipped_text()}"
        )

    def _skipped_text(self) -> str:
        if not self.skipped:
            return "nothing"
        return ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items()))


def _natural(path: Path) -> list:
    """Sort key that orders embedded numbers by value: s2 before s10."""
    return [int(part) if part.isdecimal() else part for part in re.split(r"(\d+)", path.name)]


def _follow(path: Path) -> tuple[str, os.stat_result]:
    """('', the status of what `path` leads to), or (why it leads nowhere, a blank status)."""
    try:
        return "", path.stat()
    except FileNotFoundError:
        reason = "dangling_link" if path.is_symlink() else "unreadable"
    except OSError as err:
        reason = "symlink_loop" if err.errno == errno.ELOOP else "unreadable"
    return reason, os.stat_result((0,) * 10)


def _damage(path: Path, sizes: Counter[tuple[int, int]], max_pixels: int) -> str:
    """'' for a file whose header parses, within `max_pixels`, and whose end is intact, else the
    reason it is not."""
    try:
        with open_image(path, max_pixels) as img:
            complete = _complete(img)
            size = img.size
    except TooManyPixelsError:
        return "too_many_pixels"
    except (UnreadableImageError, OSError):
        return "unreadable"
    if not complete:
        return "truncated"
    sizes[size] += 1
    return ""


def _complete(img: Image.Image) -> bool:
    """Cheap end-of-file checks by format (JPEG, PNG, PGM/PPM) on the open file; others pass."""
    length = img.fp.seek(0, os.SEEK_END)
    if img.format in ("JPEG", "PNG"):
        marker, tail = (b"\xff\xd9", 64) if img.format == "JPEG" else (b"IEND", 12)
        img.fp.seek(max(0, length - tail))
        return marker in img.fp.read()
    if img.format == "PPM" and img.tile:  # PGM/PPM: raw pixels follow the header
        offset = img.tile[0][2]
        depth = {"L": 1, "RGB": 3, "I": 2, "I;16": 2, "I;16B": 2}.get(img.mode, 1)
        return length >= offset + img.size[0] * img.size[1] * depth
    return True


register(
    "folder",
    Source(
        lambda cfg: FolderFaces(cfg.root, cfg.image_size, cfg.min_images, cfg.max_pixels),
        errors=(FaceFolderError,),
    ),
)
