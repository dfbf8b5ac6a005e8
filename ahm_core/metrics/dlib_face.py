"""dlib's pretrained face descriptor: an independent face-recognition evaluator.

`DlibDescriptor` embeds faces with dlib's ResNet-29 metric-learning network
(`dlib_face_recognition_resnet_model_v1`, 99.38% on LFW according to dlib), after dlib's HOG
frontal-face detector and 5-point landmark alignment. It is a face recogniser that neither the
defence nor the attacker trained, so re-identification measured with it is not flattered by a
model that shares their data or their blind spots.

The weights come with the `face_recognition_models` package and dlib with the `dlib-bin` wheel;
nothing is downloaded at run time. Where either is missing the evaluator is absent, never a
silent zero: `dlib_unavailable()` says why and `DlibDescriptor()` raises `RuntimeError`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

INSTALL = "pip install dlib-bin face-recognition-models"
CHIP_SIZE, CHIP_PADDING = 150, 0.25  # dlib's aligned chip for its ResNet descriptor
MIN_SIDE = 150  # smaller images are upsampled (bilinear) to this shorter side before detection
RESNET_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
SHAPE_MODEL = "shape_predictor_5_face_landmarks.dat"


def _models_dir() -> Path | None:
    """The bundled `face_recognition_models/models` folder, found without importing the package
    (its `__init__` needs `pkg_resources`, which recent setuptools no longer ships)."""
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / "models"
        if (folder / RESNET_MODEL).is_file() and (folder / SHAPE_MODEL).is_file():
            return folder
    return None


def dlib_unavailable() -> str | None:
    """None when dlib and the face_recognition_models weights are there, else one line saying
    what is missing and how to install it. Checks afresh on every call; never raises."""
    missing = []
    try:
        importlib.import_module("dlib")
    except ImportError:  # also a wheel whose shared library does not load
        missing.append("dlib (the dlib-bin wheel)")
    if _models_dir() is None:
        missing.append(f"face_recognition_models (with {RESNET_MODEL} and {SHAPE_MODEL})")
    if not missing:
        return None
    return f"dlib face descriptor unavailable: missing {' and '.join(missing)}; run `{INSTALL}`"


def _to_rgb_uint8(image: Tensor) -> np.ndarray:
    """[C, H, W] float in [0, 1], C = 1 or 3, to a contiguous H x W x 3 uint8 RGB array."""
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"DlibDescriptor: need images [N, 1 or 3, H, W], got {tuple(image.shape)}")
    array = (image.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    array = array.expand(3, -1, -1).permute(1, 2, 0)
    return np.ascontiguousarray(array.numpy())


def _resize(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear PIL resize of an H x W x 3 uint8 array."""
    return np.asarray(Image.fromarray(array).resize((width, height), Image.BILINEAR))


class DlibDescriptor:
    """Images [N, C, H, W] in [0, 1] to dlib's [N, 128] face descriptors (float32, CPU)."""

    def __init__(self) -> None:
        reason = dlib_unavailable()
        if reason is not None:
            raise RuntimeError(reason)
        import dlib

        folder = _models_dir()
        assert folder is not None  # dlib_unavailable() checked it
        self._dlib: Any = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.shape_predictor = dlib.shape_predictor(str(folder / SHAPE_MODEL))
        self.recogniser = dlib.face_recognition_model_v1(str(folder / RESNET_MODEL))
        self.last_detected = 0  # images of the last call in which the HOG detector found a face
        self._memo: dict[bytes, tuple[np.ndarray, bool]] = {}  # picture -> (descriptor, found)

    def chip(self, image: np.ndarray) -> tuple[np.ndarray, bool]:
        """The aligned 150 x 150 chip of the largest detected face of an H x W x 3 uint8 image,
        or the whole image resized to 150 x 150 where none is found; and whether one was."""
        height, width = image.shape[:2]
        scale = max(1.0, MIN_SIDE / min(height, width))
        if scale > 1.0:
            image = _resize(image, round(width * scale), round(height * scale))
        faces = self.detector(image, 0)
        if len(faces):
            face = max(faces, key=lambda rect: rect.area())
            shape = self.shape_predictor(image, face)
            chip = self._dlib.get_face_chip(image, shape, size=CHIP_SIZE, padding=CHIP_PADDING)
            return np.ascontiguousarray(chip), True
        return _resize(image, CHIP_SIZE, CHIP_SIZE), False

    def __call__(self, images: Tensor) -> Tensor:
        """[N, 128] float32 CPU descriptors (dlib's, not re-normalised); sets `last_detected`.
        A picture met before (a gallery, the mean face) is not embedded again: this build of dlib
        takes about 0.1 s a face on one core."""
        if images.dim() != 4:
            raise ValueError(f"DlibDescriptor: need images [N, C, H, W], got {tuple(images.shape)}")
        arrays = [_to_rgb_uint8(image) for image in images.detach().cpu()]
        keys = [
            hashlib.blake2b(a.tobytes(), digest_size=16).digest() + bytes(a.shape) for a in arrays
        ]
        new = {key: array for key, array in zip(keys, arrays, strict=True) if key not in self._memo}
        if new:
            chips = [self.chip(array) for array in new.values()]
            descriptors = self.recogniser.compute_face_descriptor([chip for chip, _ in chips])
            for key, (_, found), d in zip(new, chips, descriptors, strict=True):
                self._memo[key] = (np.asarray(d, dtype=np.float32), found)
        self.last_detected = sum(self._memo[key][1] for key in keys)
        if not keys:
            return torch.empty(0, 128, dtype=torch.float32)
        return torch.from_numpy(np.stack([self._memo[key][0] for key in keys]))
