"""What every face source offers: identity labels and batched access to 8-bit RGB images."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset


class UnreadableImageError(ValueError):
    """An image file or record that cannot be decoded (empty, truncated, not an image)."""


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


def decode_image(source: str | os.PathLike | bytes, size: int) -> Tensor:
    """Decode a file or encoded bytes to uint8 RGB [3, size, size].

    Grayscale and RGBA become RGB; the shorter side is resized to `size` and the centre cropped.
    Raises `UnreadableImageError` for an empty, truncated or non-image source.
    """
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            img.load()
            rgb = img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as err:
        raise UnreadableImageError(f"{name}: not a readable image ({err})") from None
    if rgb.size != (size, size):
        rgb = ImageOps.fit(rgb, (size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)


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
