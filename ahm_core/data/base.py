"""What every face source offers: identity labels and batched access to 8-bit RGB images.

Decoding is bounded: `open_image` reads the header only and refuses an image of more than
`max_pixels` pixels before a pixel is decoded, so one decode allocates at most ~17 bytes a pixel
(measured worst: a progressive CMYK JPEG at full scale, PIL's 4-byte pixels, libjpeg's
coefficients and the RGB copy), 17 x max_pixels in all (425 MB at the default), plus the encoded
source. Only the formats in `FORMATS` are opened, only regular files, and no read of a file asks
for more than it holds (`open_regular`).
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from ahm_core.config import MAX_PIXELS, PIL_MAX_PIXELS

FORMATS = ("JPEG", "PNG", "PPM", "BMP", "GIF", "WEBP")  # no TIFF, EPS (Ghostscript), PSD, ...
# What PIL raises on a damaged file, at open or at load (its plugins are not uniform).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, TypeError)


class UnreadableFileError(ValueError):
    """A path that cannot be opened as a regular file for reading (a symlink loop, a FIFO, a
    device, a folder); the message names it."""


class UnreadableImageError(ValueError):
    """An image file or record that cannot be decoded (empty, truncated, not an image)."""


class TooManyPixelsError(UnreadableImageError):
    """An image whose header announces more pixels than `data.max_pixels` (or PIL's own limit)."""


class _FileReader(io.BufferedReader):
    """A buffered file whose read(n) asks for no more than the bytes left in it: read(n)
    allocates n bytes first, and PIL's plugins read lengths the file announces (a PNG's IDAT)."""

    def __init__(self, raw: io.FileIO, length: int) -> None:
        super().__init__(raw)
        self.length = length

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size > 0:
            size = min(size, max(0, self.length - self.tell()))
        return super().read(size)


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """`path` opened for binary reading, refused (UnreadableFileError) unless a regular file
    that opens (reading a FIFO or a device named like an image would block or never end); no
    read asks for more than the file holds. A missing or forbidden file keeps its own error."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: opening a FIFO cannot hang
    except (FileNotFoundError, PermissionError):
        raise
    except OSError as err:  # a symlink loop, a name too long, ...
        raise UnreadableFileError(f"{path}: cannot open it ({err.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableFileError(f"{path}: not a regular file (a FIFO, device or folder)")
        os.set_blocking(fd, True)
        return _FileReader(io.FileIO(fd, "rb"), info.st_size)
    except BaseException:
        os.close(fd)
        raise


@contextmanager
def open_image(
    source: str | os.PathLike | bytes, max_pixels: int = MAX_PIXELS
) -> Iterator[Image.Image]:
    """The image of a file or encoded bytes, its header read and no pixel decoded yet.

    Raises `TooManyPixelsError` above `max_pixels` (PIL's decompression-bomb refusal counts as
    the same; its warning is silenced, our limit is the policy) and `UnreadableImageError` for
    anything else that is not an image of `FORMATS`.
    """
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    try:
        handle = (
            io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open_regular(source)
        )
    except OSError as err:
        raise UnreadableImageError(f"{name}: cannot open ({err.strerror or err})") from None
    except ValueError as err:
        raise UnreadableImageError(str(err)) from None
    with handle:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(handle, formats=FORMATS)
        except Image.DecompressionBombError as err:  # PIL names the count, not the sides
            count = re.search(r"\((\d+) pixels\)", str(err))
            pixels = f"{count[1]} pixels" if count else f"over {PIL_MAX_PIXELS} pixels"
            raise TooManyPixelsError(
                f"{name}: {pixels} is more than data.max_pixels={max_pixels}"
            ) from None
        except UnidentifiedImageError:
            raise UnreadableImageError(
                f"{name}: not a readable image (not {', '.join(FORMATS)})"
            ) from None
        except DECODE_ERRORS as err:
            raise UnreadableImageError(f"{name}: not a readable image ({err})") from None
        with img:
            width, height = img.size
            if width * height > max_pixels:
                raise TooManyPixelsError(
                    f"{name}: {width}x{height} pixels is more than data.max_pixels={max_pixels}"
                )
            yield img


class FaceSet(Dataset):
    """A labelled face set; items are (float [3, H, W] in [0, 1], identity label).

    Subclasses provide `labels` (one identity per item) and `images_uint8(indices)`; batched
    fetches (`__getitems__`, used by DataLoader) decode a whole batch in one call.
    """

    labels: Tensor
    size: int

    def images_uint8(self, indices: Sequence[int] | Tensor) -> Tensor:
        """[B, 3, size, size] uint8 images of the given items."""
        raise NotImplementedError

    @property
    def num_identities(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images_uint8([index])[0].float() / 255.0, int(self.labels[index])

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, int]]:
        images = self.images_uint8(indices).float() / 255.0
        labels = self.labels[torch.as_tensor(indices, dtype=torch.long)].tolist()
        return list(zip(images, labels, strict=True))

    def _check_indices(self, indices: Sequence[int] | Tensor) -> Tensor:
        idx = torch.as_tensor(indices, dtype=torch.long).view(-1)
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= len(self)):
            raise IndexError(f"{type(self).__name__}: index out of range 0..{len(self) - 1}")
        return idx


def decode_image(
    source: str | os.PathLike | bytes, size: int, max_pixels: int = MAX_PIXELS
) -> Tensor:
    """Decode a file or encoded bytes to uint8 RGB [3, size, size].

    Grayscale and RGBA become RGB; the shorter side is resized to `size` and the centre cropped
    (a JPEG over twice `size` decodes at a reduced scale first, which is faster and smaller).
    Raises `UnreadableImageError` for an empty, truncated or non-image source and its subclass
    `TooManyPixelsError`, before decoding, for one of more than `max_pixels` pixels.
    """
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    with open_image(source, max_pixels) as img:
        try:
            if img.format in ("JPEG", "MPO") and min(img.size) > 2 * size:
                img.draft("RGB", (size, size))
            img.load()
            rgb = img if img.mode == "RGB" else img.convert("RGB")
            if rgb.size != (size, size):
                rgb = ImageOps.fit(rgb, (size, size), Image.Resampling.BILINEAR)
            pixels = np.array(rgb)
        except DECODE_ERRORS as err:
            raise UnreadableImageError(f"{name}: not a readable image ({err})") from None
    return torch.from_numpy(pixels).permute(2, 0, 1)


class ItemView(Dataset):
    """Items of a face set with their own labels (say, remapped to 0..n-1 for a training split).

    Its `__getitems__` returns a whole batch (uint8 images [B, 3, H, W], labels [B]); use it
    with `collate_batch` so a batch is decoded in one call and never split into items.
    """

    def __init__(self, faces: FaceSet, items: Tensor, labels: Tensor) -> None:
        if len(items) != len(labels):
            raise ValueError(f"ItemView: {len(items)} items but {len(labels)} labels")
        self.faces, self.items, self.labels = faces, items, labels

    def __len__(self) -> int:
        return len(self.items)

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.faces.images_uint8(self.items[idx]), self.labels[idx]


def collate_batch(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """The DataLoader collate for `ItemView`: its batch is already whole."""
    return batch
