import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from ahm_core.config import DataConfig
from ahm_core.data.base import TooManyPixelsError, UnreadableImageError, decode_image
from ahm_core.data.folders import FolderFaces
from ahm_core.data.sources import load_faces


def encoded(mode: str, fmt: str, size=(40, 30), value=90) -> bytes:
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = np.full((size[1], size[0], channels), value, dtype=np.uint8)
    pixels[..., 0] = np.arange(size[0], dtype=np.uint8)[None, :]  # a gradient, not a flat image
    buffer = io.BytesIO()
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def messy(shared_data, tmp_path_factory) -> Path:
    """A copy of ORL with the mess real folders have, plus colour formats and a tiny identity."""
    root = tmp_path_factory.mktemp("messy") / "orl"
    shutil.copytree(shared_data / "orl_faces", root)
    (root / "s1" / "empty.jpg").write_bytes(b"")
    jpeg = encoded("RGB", "JPEG", size=(200, 150))
    (root / "s2" / "cut.jpg").write_bytes(jpeg[: len(jpeg) * 3 // 4])  # header intact, end lost
    (root / "s3" / "1.pgm.bad").write_bytes((root / "s3" / "1.pgm").read_bytes())
    (root / "s3" / "notes.info").write_text("x")
    (root / "s4" / "readme.txt").write_text("x")
    (root / "s4" / "capture.LOG").write_text("x")
    (root / "s5" / "junk.png").write_bytes(b"this is not a png")
    pgm = (root / "s6" / "1.pgm").read_bytes()
    (root / "s6" / "short.pgm").write_bytes(pgm[: len(pgm) // 2])
    colour = root / "s41"
    colour.mkdir()
    (colour / "gray.png").write_bytes(encoded("L", "PNG"))
    (colour / "rgba.png").write_bytes(encoded("RGBA", "PNG"))
    (colour / "photo.bmp").write_bytes(encoded("RGB", "BMP"))
    (colour / "photo.jpg").write_bytes(jpeg)
    (root / "s42").mkdir()
    (root / "s42" / "only.png").write_bytes(encoded("RGB", "PNG"))
    return root


def test_messy_folder_is_scanned_and_counted(messy):
    faces = FolderFaces(messy, size=56, min_images=2)
    assert faces.num_identities == 41 and len(faces) == 404
    assert faces.identity_names[:3] == ["s1", "s2", "s3"] and faces.identity_names[-1] == "s41"
    assert faces.skipped == {
        "loose_file": 1,
        "empty_file": 1,
        "truncated": 2,
        "not_an_image": 4,
        "unreadable": 1,
        "identity_below_min_images": 1,
        "image_of_small_identity": 1,
    }
    line = faces.summary_line()
    assert "41 identities, 404 images" in line and "2 truncated" in line and "\n" not in line
    images = faces.images_uint8(torch.nonzero(faces.labels == 40).flatten())
    assert images.shape == (4, 3, 56, 56) and images.dtype == torch.uint8
    gray = images[0]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])  # gray became RGB
    summary = faces.summary()
    assert [92, 112] in summary["sizes"] and [40, 30] in summary["sizes"]


def test_min_images_counts_every_identity(messy):
    faces = FolderFaces(messy, size=32, min_images=1)
    assert faces.num_identities == 42 and len(faces) == 405


def test_items_are_decoded_lazily(messy):
    faces = FolderFaces(messy, size=32)
    assert all(isinstance(f, Path) for f in faces.files)
    image, label = faces[10]
    assert image.shape == (3, 32, 32) and label == 1
    assert image.min() >= 0 and image.max() <= 1


def test_a_file_that_fails_only_at_decode_is_replaced(tmp_path):
    person = tmp_path / "root" / "p1"
    person.mkdir(parents=True)
    good = encoded("RGB", "PNG", value=200)
    broken = bytearray(good)
    broken[60:80] = bytes(20)  # inside the image data: the header and IEND stay intact
    (person / "a.png").write_bytes(bytes(broken))
    (person / "b.png").write_bytes(good)
    faces = FolderFaces(tmp_path / "root", size=32)
    assert len(faces) == 2
    with pytest.raises(UnreadableImageError):
        decode_image(faces.files[0], 32)
    torch.testing.assert_close(faces.images_uint8([0])[0], faces.images_uint8([1])[0])
    faces.images_uint8([0, 0])
    assert faces.load_failures[str(faces.files[0])] == 3


@pytest.mark.parametrize("kind", ["missing", "empty", "only_junk"])
def test_missing_or_empty_root_is_one_clear_error(tmp_path, kind):
    root = tmp_path / "data"
    if kind != "missing":
        root.mkdir()
    if kind == "only_junk":
        (root / "p1").mkdir()
        (root / "p1" / "x.txt").write_text("x")
    with pytest.raises((FileNotFoundError, ValueError)) as err:
        FolderFaces(root)
    assert str(err.value).startswith("data.root:") and "\n" not in str(err.value)


def _full_scale(data: bytes, size: int) -> torch.Tensor:
    """decode_image's resize of an image decoded at full scale (no JPEG draft)."""
    with Image.open(io.BytesIO(data)) as img:
        rgb = ImageOps.fit(img.convert("RGB"), (size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1)


@pytest.mark.parametrize(
    ("sides", "exact"), [((64, 64), True), ((64, 200), True), ((90, 70), False)]
)
def test_a_jpeg_over_twice_the_size_decodes_at_reduced_scale(sides, exact):
    """The JPEG draft leaves images up to 2 x size as they were; larger ones stay close."""
    data = encoded("RGB", "JPEG", size=sides)
    drafted, full = decode_image(data, 32), _full_scale(data, 32)
    if exact:
        assert torch.equal(drafted, full)
    else:
        assert (drafted.float() - full.float()).abs().mean() < 4


def test_max_pixels_reaches_the_scan_the_load_and_load_faces(tmp_path):
    person = tmp_path / "root" / "p1"
    person.mkdir(parents=True)
    (person / "small.png").write_bytes(encoded("RGB", "PNG", size=(40, 30)))
    (person / "large.png").write_bytes(encoded("RGB", "PNG", size=(80, 60)))
    faces = load_faces(
        DataConfig(source="folder", root=str(tmp_path / "root"), min_images=1, max_pixels=1200)
    )
    assert isinstance(faces, FolderFaces) and faces.max_pixels == 1200
    assert len(faces) == 1 and faces.skipped == {"too_many_pixels": 1}
    with pytest.raises(
        TooManyPixelsError, match=r"80x60 pixels is more than data\.max_pixels=1200"
    ):
        decode_image(person / "large.png", 32, max_pixels=1200)
