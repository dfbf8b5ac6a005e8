"""SynthFaces: procedural faces, a real recognition task that needs no download
(docs/design.md section 3).

An identity is a set of seeded parameters (face shape and jaw, skin tone and texture, hair colour
and style, ears, eyes and iris colour, brows, nose, mouth, beard, moles). Each image of it varies
pose (roll, yaw, scale, shift), expression (smile, open mouth, blink, brow raise), illumination
(direction, strength, brightness, colour temperature), background (colour, gradient, a blob) and
sensor noise. Every parameter comes from a counter-based hash of (seed, identity, image), so an
image is the same whatever the set's size, batch or order; rendering is vectorised over a batch.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ahm_core.config import ConfigError, DataConfig
from ahm_core.data.base import FaceSet
from ahm_core.data.sources import Source, register
from ahm_core.io import atomic_write

SIZES = (32, 112)
log = logging.getLogger(__name__)
RENDER_CHUNK = 32  # images rendered together: small enough for each temporary to stay in cache
NOISE_BANK = 64

_SKIN_LIGHT, _SKIN_DARK = (0.96, 0.80, 0.69), (0.36, 0.23, 0.16)
_HAIR = (
    (0.06, 0.05, 0.05),
    (0.25, 0.15, 0.08),
    (0.45, 0.30, 0.15),
    (0.85, 0.70, 0.40),
    (0.60, 0.22, 0.08),
    (0.62, 0.62, 0.62),
)  # black, dark/mid brown, blond, red, grey
_IRIS = (
    (0.30, 0.18, 0.08),
    (0.10, 0.07, 0.05),
    (0.25, 0.45, 0.70),
    (0.25, 0.50, 0.30),
    (0.45, 0.35, 0.15),
)

# Parameter names, each drawn uniform in [0, 1) and mapped to its range where it is used.
_ID_PARAMS = (
    "face_w face_h jaw tone skin_r skin_b hair hair_jit hairline hair_vol hair_side hair_wave "
    "ear eye_y eye_sep eye_rx eye_ry iris brow_off brow_th brow_slant brow_len nose_len "
    "nose_w mouth_y mouth_w lip lip_red beard beard_on tex_fu tex_fv tex_pu tex_pv "
    "mole_on mole_u mole_v"
).split()
_IMG_PARAMS = (
    "roll yaw scale tx ty smile open open_on blink brow_up light_dir light light_amb temp "
    "bg_r bg_g bg_b bg_gx bg_gy blob_u blob_v blob_r blob_c noise noise_idx gaze"
).split()


def _splitmix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a well-mixed 64-bit hash of each element (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash_uniform(seed: int, stream: int, keys: np.ndarray, count: int) -> np.ndarray:
    """[len(keys), count] uniforms in [0, 1), a pure function of (seed, stream, key, column)."""
    with np.errstate(over="ignore"):
        base = _splitmix(np.array([seed * 1_000_003 + stream], dtype=np.uint64))
        rows = _splitmix(base ^ np.asarray(keys, dtype=np.int64).astype(np.uint64)[:, None])
        cols = np.arange(1, count + 1, dtype=np.uint64) * np.uint64(0xD1B54A32D192ED03)
        bits = _splitmix(rows ^ cols[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _params(seed: int, stream: int, keys: np.ndarray, names: list[str]) -> dict[str, Tensor]:
    u = torch.from_numpy(hash_uniform(seed, stream, keys, len(names))).float()
    return {name: u[:, i].view(-1, 1, 1) for i, name in enumerate(names)}


def _lerp(lo: float, hi: float, t: Tensor) -> Tensor:
    return lo + (hi - lo) * t


def _palette(colors: Sequence[tuple[float, float, float]], t: Tensor) -> Tensor:
    """Pick a colour per image: t in [0, 1) -> [B, 3, 1, 1]."""
    table = torch.tensor(colors)
    return table[(t.view(-1) * len(colors)).long().clamp(max=len(colors) - 1)].view(-1, 3, 1, 1)


def _ellipse(
    u: Tensor,
    v: Tensor,
    cx: Tensor | float,
    cy: Tensor | float,
    rx: Tensor | float,
    ry: Tensor | float,
    soft: float,
) -> Tensor:
    """Anti-aliased ellipse coverage in [0, 1]: a linear ramp of about one pixel at the rim."""
    a = (u - cx).div_(rx).square_()
    b = (v - cy).div_(ry).square_()
    edge = 2.0 * soft / torch.minimum(torch.as_tensor(rx), torch.as_tensor(ry))
    return (a + b).neg_().add_(1.0).div_(edge).add_(0.5).clamp_(0.0, 1.0)


@functools.lru_cache(maxsize=8)
def _noise_bank(seed: int, size: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(NOISE_BANK, 3, size, size, generator=g)


def render_faces(identities: Tensor, images: Tensor, size: int = 112, seed: int = 0) -> Tensor:
    """[B, 3, size, size] faces in [0, 1] for the pairs (identity, image index), vectorised."""
    if not SIZES[0] <= size <= SIZES[1]:
        raise ValueError(f"size: synthetic faces take {SIZES[0]}..{SIZES[1]} pixels, got {size}")
    out = torch.empty(len(identities), 3, size, size)
    for start in range(0, len(identities), RENDER_CHUNK):
        part = slice(start, start + RENDER_CHUNK)
        out[part] = _render(identities[part].numpy(), images[part].numpy(), size, seed)
    return out


def _render(ids: np.ndarray, imgs: np.ndarray, size: int, seed: int) -> Tensor:
    p = _params(seed, 1, ids, _ID_PARAMS)  # identity: the same for every image of the person
    q = _params(seed, 2, ids.astype(np.int64) * 1_000_003 + imgs, _IMG_PARAMS)
    b, px = len(ids), 2.0 / size
    soft = 1.5 * px
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) * px - 1.0
    y, x = coords.view(1, -1, 1), coords.view(1, 1, -1)

    # Pose: image coordinates (x, y) -> face coordinates (u, v), v pointing down.
    roll = _lerp(-0.21, 0.21, q["roll"])
    scale = _lerp(0.88, 1.08, q["scale"])
    dx, dy = x - _lerp(-0.06, 0.06, q["tx"]), y - _lerp(0.0, 0.12, q["ty"])
    cos, sin = torch.cos(roll) / scale, torch.sin(roll) / scale
    u = dx * cos + dy * sin
    v = dy * cos - dx * sin
    yaw = _lerp(-0.22, 0.22, q["yaw"])

    # Background: colour, linear gradient, one soft blob.
    bg = torch.cat([_lerp(0.1, 0.9, q[c]) for c in ("bg_r", "bg_g", "bg_b")], 1).unsqueeze(1)
    img = bg.view(b, 3, 1, 1) + (
        _lerp(-0.25, 0.25, q["bg_gx"]) * x + _lerp(-0.25, 0.25, q["bg_gy"]) * y
    ).unsqueeze(1)
    blob = _ellipse(
        x,
        y,
        _lerp(-1, 1, q["blob_u"]),
        _lerp(-1, 1, q["blob_v"]),
        _lerp(0.2, 0.6, q["blob_r"]),
        _lerp(0.2, 0.6, q["blob_r"]),
        soft * 8,
    )
    blob_colour = _palette(
        ((0.9, 0.9, 0.85), (0.2, 0.3, 0.5), (0.5, 0.6, 0.3), (0.3, 0.2, 0.2)), q["blob_c"]
    )
    img.lerp_(blob_colour.expand_as(img), (0.7 * blob).unsqueeze(1))

    # Colours of the person.
    tone = p["tone"].view(b, 1, 1, 1)
    skin = (
        torch.tensor(_SKIN_LIGHT).view(1, 3, 1, 1) * (1 - tone)
        + torch.tensor(_SKIN_DARK).view(1, 3, 1, 1) * tone
    )
    skin = skin * torch.cat(
        [
            1 + _lerp(-0.05, 0.05, p["skin_r"]),
            torch.ones_like(p["skin_r"]),
            1 + _lerp(-0.05, 0.05, p["skin_b"]),
        ],
        1,
    ).view(b, 3, 1, 1)
    hair = _palette(_HAIR, p["hair"]) * _lerp(0.85, 1.15, p["hair_jit"]).view(b, 1, 1, 1)

    face_w, face_h = _lerp(0.44, 0.58, p["face_w"]), _lerp(0.58, 0.70, p["face_h"])
    face_x = 0.25 * yaw
    # Hair behind the head, cut at the sides at a per-person length.
    vol = _lerp(0.04, 0.22, p["hair_vol"])
    back = _ellipse(u, v, face_x, -0.08, face_w + vol, face_h + vol, soft)
    side = _lerp(-0.2, 0.75, p["hair_side"])
    back.mul_((side - v).div_(soft * 2).add_(0.5).clamp_(0, 1))
    img.lerp_(hair.expand_as(img), back.unsqueeze(1))
    # Neck, then head (ears merged in), with an identity skin texture and a narrowing jaw.
    neck = _ellipse(u, v, face_x * 0.5, face_h * 1.05, face_w * 0.55, face_h * 0.6, soft)
    img.lerp_((skin * 0.8).expand_as(img), neck.unsqueeze(1))
    jaw = 1.0 - _lerp(0.0, 0.35, p["jaw"]) * (v / face_h).clamp(min=0.0)
    head = _ellipse(u, v, face_x, 0.0, face_w * jaw * (1 - 0.25 * yaw.abs()), face_h, soft)
    ears = _ellipse(
        (u - face_x).abs_(), v, face_w * 0.98, -0.05, _lerp(0.07, 0.11, p["ear"]), 0.16, soft
    )
    head = torch.maximum(head, ears)
    tex = torch.sin(u * _lerp(4, 14, p["tex_fu"]) + 6.3 * p["tex_pu"]) * torch.sin(
        v * _lerp(4, 14, p["tex_fv"]) + 6.3 * p["tex_pv"]
    )
    img.lerp_(skin * (1 + 0.06 * tex).unsqueeze(1), head.unsqueeze(1))

    eye_y = _lerp(-0.20, -0.06, p["eye_y"])
    mouth_y = _lerp(0.28, 0.40, p["mouth_y"])
    # Beard for some people: darkens the lower face towards the hair colour.
    beard_on = (p["beard_on"] < 0.25).float() * _lerp(0.25, 0.6, p["beard"])
    beard = head * ((v - mouth_y + 0.1).div_(0.12).add_(0.5).clamp_(0, 1)) * beard_on
    img.lerp_((hair * 0.9).expand_as(img), beard.unsqueeze(1))
    # Fringe: hair inside the head above a wavy hairline.
    wave = _lerp(0.0, 0.08, p["hair_wave"]) * torch.sin(u * 9.0)
    hairline = _lerp(-0.66, -0.36, p["hairline"]) + wave
    fringe = head * (hairline - v).div_(soft * 2).add_(0.5).clamp_(0, 1)
    img.lerp_(hair.expand_as(img), fringe.unsqueeze(1))
    # Mole: a small dark dot at a per-person place, for half of the people.
    mole = (
        _ellipse(
            u,
            v,
            face_x + _lerp(-0.35, 0.35, p["mole_u"]),
            _lerp(-0.1, 0.45, p["mole_v"]),
            0.025,
            0.025,
            soft,
        )
        * (p["mole_on"] < 0.5).float()
    )
    img.lerp_((skin * 0.45).expand_as(img), mole.unsqueeze(1))

    # Eyes (mirrored about the face's yawed centre): white, iris, pupil; blinks close them.
    eyes_x = 0.45 * yaw
    ue = (u - eyes_x).abs_()
    sep, rx = _lerp(0.17, 0.25, p["eye_sep"]), _lerp(0.07, 0.10, p["eye_rx"])
    ry = _lerp(0.035, 0.06, p["eye_ry"]) * torch.where(q["blink"] < 0.1, 0.25, 1.0)
    white = _ellipse(ue, v, sep, eye_y, rx, ry, soft)
    img.lerp_(torch.full((b, 3, 1, 1), 0.93), white.unsqueeze(1))
    gaze = sep + _lerp(-0.3, 0.3, q["gaze"]) * rx
    iris = _ellipse(ue, v, gaze, eye_y, ry * 1.1, ry * 1.1, soft) * white
    img.lerp_(_palette(_IRIS, p["iris"]).expand_as(img), iris.unsqueeze(1))
    pupil = _ellipse(ue, v, gaze, eye_y, ry * 0.45, ry * 0.45, soft) * white
    img.lerp_(torch.full((b, 3, 1, 1), 0.03), pupil.unsqueeze(1))
    # Brows: slanted bars above the eyes, raised by expression.
    brow_y = eye_y - _lerp(0.09, 0.15, p["brow_off"]) - _lerp(-0.02, 0.05, q["brow_up"])
    vb = v - _lerp(-0.35, 0.35, p["brow_slant"]) * (ue - sep)
    brow = _ellipse(
        ue,
        vb,
        sep,
        brow_y,
        _lerp(0.09, 0.15, p["brow_len"]),
        _lerp(0.018, 0.04, p["brow_th"]),
        soft,
    )
    img.lerp_((hair * 0.8).expand_as(img), brow.unsqueeze(1))
    # Nose: a soft shadow along its length and two nostrils.
    nose_x, nose_len = 0.6 * yaw, _lerp(0.16, 0.28, p["nose_len"])
    nose_w = _lerp(0.05, 0.10, p["nose_w"])
    shade = _ellipse(
        u, v, nose_x + 0.3 * nose_w, eye_y + nose_len * 0.6, nose_w * 0.6, nose_len * 0.55, soft * 3
    )
    img.lerp_((skin * 0.7).expand_as(img), (0.5 * shade).unsqueeze(1))
    nostrils = _ellipse(
        (u - nose_x).abs_(), v, nose_w * 0.6, eye_y + nose_len, nose_w * 0.35, nose_w * 0.2, soft
    )
    img.lerp_((skin * 0.35).expand_as(img), nostrils.unsqueeze(1))
    # Mouth: lips bent by the smile, opened by some expressions.
    mouth_x, half_w = 0.5 * yaw, _lerp(0.12, 0.22, p["mouth_w"])
    bend = _lerp(-0.04, 0.09, q["smile"]) * (1.0 - ((u - mouth_x) / half_w).square_())
    vm = v - bend
    lip = _lerp(0.022, 0.045, p["lip"])
    opened = (q["open_on"] < 0.3).float() * q["open"] * lip * 1.5
    lips = _ellipse(u, vm, mouth_x, mouth_y, half_w, lip + opened, soft)
    lip_colour = (
        skin
        * torch.tensor([0.85, 0.5, 0.5]).view(1, 3, 1, 1)
        * _lerp(0.8, 1.1, p["lip_red"]).view(b, 1, 1, 1)
    )
    img.lerp_(lip_colour.expand_as(img), lips.unsqueeze(1))
    inner = _ellipse(u, vm, mouth_x, mouth_y, half_w * 0.8, opened + 1e-3, soft) * lips
    img.lerp_(torch.full((b, 3, 1, 1), 0.12), inner.unsqueeze(1))

    # Illumination: directional ramp, ambient level, colour temperature; then sensor noise.
    angle = 2 * math.pi * q["light_dir"]
    ramp = _lerp(0.0, 0.4, q["light"]) * (torch.cos(angle) * x + torch.sin(angle) * y)
    img.mul_((_lerp(0.75, 1.15, q["light_amb"]) + ramp).unsqueeze(1))
    temp = _lerp(-0.07, 0.07, q["temp"]).view(b, 1, 1, 1)
    img.mul_(torch.cat([1 + temp, torch.ones_like(temp), 1 - temp], 1))
    bank = _noise_bank(seed, size)
    pick = (q["noise_idx"].view(-1) * NOISE_BANK).long().clamp(max=NOISE_BANK - 1)
    img.add_(bank[pick] * _lerp(0.005, 0.04, q["noise"]).view(b, 1, 1, 1))
    return img.clamp_(0.0, 1.0)


class SynthFaces(FaceSet):
    """N identities x M images of size x size RGB faces; items are (float [3, H, W], label).

    Items are the 8-bit images `write_image_folder` stores (rendered once, then cached when
    `cache`), so training on the dataset or on its folder is the same.
    """

    def __init__(
        self,
        num_identities: int = 100,
        images_per_identity: int = 20,
        size: int = 112,
        seed: int = 0,
        cache: bool = True,
    ) -> None:
        if num_identities < 1 or images_per_identity < 1:
            raise ValueError(
                f"SynthFaces: need >= 1 identity and image, got {num_identities}, "
                f"{images_per_identity}"
            )
        if not SIZES[0] <= size <= SIZES[1]:
            raise ValueError(f"SynthFaces: size must be in {SIZES[0]}..{SIZES[1]}, got {size}")
        self.images_per_identity, self.size, self.seed = images_per_identity, size, seed
        self.labels = torch.arange(num_identities).repeat_interleave(images_per_identity)
        self._cache = torch.empty(len(self), 3, size, size, dtype=torch.uint8) if cache else None
        self._done = torch.zeros(len(self), dtype=torch.bool)

    def images_uint8(self, indices: Sequence[int] | Tensor) -> Tensor:
        """[B, 3, H, W] uint8 images of the given items."""
        idx = self._check_indices(indices)
        if self._cache is not None:
            todo = idx[~self._done[idx]].unique()
            if len(todo):
                self._cache[todo] = self._render_uint8(todo)
                self._done[todo] = True
            return self._cache[idx]
        return self._render_uint8(idx)

    def _render_uint8(self, idx: Tensor) -> Tensor:
        per = self.images_per_identity
        faces = render_faces(idx // per, idx % per, self.size, self.seed)
        return faces.mul_(255.0).round_().to(torch.uint8)


def _save_png(picture: Image.Image, path: Path) -> None:
    picture.save(path, format="PNG")


def write_image_folder(faces: FaceSet, root: str | os.PathLike) -> Path:
    """Write a face set as root/id_00000/000.png, one folder per identity, files atomically."""
    root = Path(root)
    seen: dict[int, int] = {}
    for start in range(0, len(faces), 256):
        idx = torch.arange(start, min(start + 256, len(faces)))
        for label, img in zip(faces.labels[idx].tolist(), faces.images_uint8(idx), strict=True):
            number = seen[label] = seen.get(label, -1) + 1
            picture = Image.fromarray(img.permute(1, 2, 0).numpy())
            path = root / f"id_{label:05d}" / f"{number:03d}.png"
            atomic_write(path, functools.partial(_save_png, picture))
    return root


def _load(cfg: DataConfig) -> SynthFaces:
    faces = SynthFaces(cfg.num_identities, cfg.images_per_identity, cfg.image_size, cfg.seed)
    log.info("synthetic faces: %d identities, %d images", faces.num_identities, len(faces))
    return faces


def _check(cfg: DataConfig) -> None:
    if not SIZES[0] <= cfg.image_size <= SIZES[1]:
        raise ConfigError(f"data.image_size: synthetic faces take {SIZES}, got {cfg.image_size}")


register("synthetic", Source(_load, _check, needs_root=False))
