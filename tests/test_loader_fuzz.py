"""Bounded loaders: odd but valid images load everywhere, and no file (junk, bomb, crafted header,
link, FIFO, bad RecordIO or .bin) makes a loader allocate more than a small multiple of its size.

Every loader call here runs under `bounded()`: an address-space limit of the current size + 1 GiB
(a 2 GiB allocation fails inside it) and an alarm, since a FIFO read would block forever. A file
must then end as one clear error, or inside an image folder as one counted skip.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import resource
import signal
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ahm_core.data.base import TooManyPixelsError, UnreadableImageError, decode_image
from ahm_core.data.folders import FolderFaces
from ahm_core.data.insightface import (
    MAGIC,
    InsightFaceFormatError,
    RecordIOFaces,
    load_bin,
    load_bin_pairs,
    write_recordio,
)
from simulations.data_summary import main as data_summary

SIZE = 24
HEADROOM = 1 << 30
SECONDS = 30


@contextmanager
def bounded() -> Iterator[None]:
    """Soft RLIMIT_AS at VmSize + 1 GiB and a SECONDS alarm, both restored afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    status = Path("/proc/self/status").read_text()
    vm_size = int(
        next(line for line in status.splitlines() if line.startswith("VmSize:")).split()[1]
    )
    limit = vm_size * 1024 + HEADROOM
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)

    def timeout(signum: int, frame: object) -> None:
        raise TimeoutError(f"a loader ran over {SECONDS} s (blocked on a FIFO?)")

    previous = signal.signal(signal.SIGALRM, timeout)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    signal.alarm(SECONDS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        signal.alarm(0)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.signal(signal.SIGALRM, previous)


def test_the_memory_limit_bites_and_is_lifted():
    before = resource.getrlimit(resource.RLIMIT_AS)
    with bounded(), pytest.raises(MemoryError):
        bytearray(2 * HEADROOM)
    assert resource.getrlimit(resource.RLIMIT_AS) == before


# --- images ---------------------------------------------------------------------------------


def _encode(img: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **options)
    return buffer.getvalue()


def _picture(mode: str, width: int = 40, height: int = 30) -> Image.Image:
    """A colour gradient with a diagonal, in `mode`."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    rgb = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y) % 256], -1)
    return Image.fromarray(rgb.astype(np.uint8)).convert(mode)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header(width: int, height: int, idat: bytes = b"") -> bytes:
    """An 8-bit gray PNG of the given sides: IHDR, one IDAT (if any), IEND."""
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return (
        b"\x89PNG\r\n\x1a\n"
        + ihdr
        + (_chunk(b"IDAT", idat) if idat else b"")
        + _chunk(b"IEND", b"")
    )


def _bomb(side: int = 10_000) -> bytes:
    """A real side x side black PNG (~100 KB that decodes to side**2 bytes)."""
    packer, row = zlib.compressobj(9), bytes(side + 1)
    return _png_header(
        side, side, b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    )


def _jpeg_sides(width: int, height: int) -> bytes:
    """A small JPEG whose SOF0 header claims width x height."""
    data = bytearray(_encode(_picture("RGB"), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _i16() -> Image.Image:
    return Image.fromarray(np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50)


def _p_transparent() -> Image.Image:
    img = _picture("P")
    img.info["transparency"] = 0
    return img


def _frames(fmt: str) -> bytes:
    first, second = _picture("RGB"), _picture("RGB").rotate(90)
    return _encode(first, fmt, save_all=True, append_images=[second])


VALID: dict[str, Callable[[], bytes]] = {
    "rgb_1x1.png": lambda: _encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"),
    "l_1xN.png": lambda: _encode(_picture("L", 1, 300), "PNG"),
    "aspect_4000x2.png": lambda: _encode(_picture("RGB", 4000, 2), "PNG"),
    "l.png": lambda: _encode(_picture("L"), "PNG"),
    "la.png": lambda: _encode(_picture("LA"), "PNG"),
    "p_transparent.png": lambda: _encode(_p_transparent(), "PNG"),
    "rgba.png": lambda: _encode(_picture("RGBA"), "PNG"),
    "i16.png": lambda: _encode(_i16(), "PNG"),
    "bilevel.png": lambda: _encode(_picture("1"), "PNG"),
    "animated.png": lambda: _frames("PNG"),
    "animated_gif_named.png": lambda: _frames("GIF"),
    "webp_named.png": lambda: _encode(_picture("RGB"), "WEBP"),
    "rgb.jpg": lambda: _encode(_picture("RGB"), "JPEG"),
    "gray.jpg": lambda: _encode(_picture("L"), "JPEG"),
    "cmyk.jpg": lambda: _encode(_picture("CMYK"), "JPEG"),
    "progressive.jpg": lambda: _encode(_picture("RGB"), "JPEG", progressive=True),
    "large_drafted.jpg": lambda: _encode(_picture("RGB", 400, 300), "JPEG"),
    "i16.pgm": lambda: _encode(_i16(), "PPM"),
    "plain.pgm": lambda: b"P2\n3 2\n255\n0 128 255\n255 128 0\n",
    "rgb.ppm": lambda: _encode(_picture("RGB"), "PPM"),
    "rgb.bmp": lambda: _encode(_picture("RGB"), "BMP"),
    "p.bmp": lambda: _encode(_picture("P"), "BMP"),
}

# name -> (content, the folder scan's skip reason, the decode error, a phrase of its message)
JUNK: dict[str, tuple[Callable[[], bytes], str, type[Exception], str]] = {
    "empty.jpg": (lambda: b"", "empty_file", UnreadableImageError, "not a readable image"),
    "random.jpg": (
        lambda: np.random.default_rng(0).bytes(2000),
        "unreadable",
        UnreadableImageError,
        "not a readable image",
    ),
    "random.png": (
        lambda: b"\x89PNG\r\n\x1a\n" + np.random.default_rng(1).bytes(500),
        "unreadable",
        UnreadableImageError,
        "not a readable image",
    ),
    "text.jpg": (lambda: b"not a picture\n", "unreadable", UnreadableImageError, "not a readable"),
    "cut.jpg": (
        lambda: _half(_encode(_picture("RGB", 200, 150), "JPEG")),
        "truncated",
        UnreadableImageError,
        "truncated",
    ),
    "cut.png": (
        lambda: _half(_encode(_picture("RGB", 200, 150), "PNG")),
        "truncated",
        UnreadableImageError,
        "not a readable image",
    ),
    "header_20000x20000.png": (
        lambda: _png_header(20_000, 20_000),
        "too_many_pixels",
        TooManyPixelsError,
        "400000000 pixels is more than data.max_pixels=25000000",
    ),
    "bomb_10000x10000.png": (
        _bomb,
        "too_many_pixels",
        TooManyPixelsError,
        "10000x10000 pixels is more than data.max_pixels=25000000",
    ),
    "sof_65500x65500.jpg": (
        lambda: _jpeg_sides(65_500, 65_500),
        "too_many_pixels",
        TooManyPixelsError,
        "pixels is more than data.max_pixels",
    ),
    "header_20000x20000.ppm": (
        lambda: b"P6\n20000 20000\n255\n" + bytes(64),
        "too_many_pixels",
        TooManyPixelsError,
        "pixels is more than data.max_pixels",
    ),
    "header_6000x5000.bmp": (
        lambda: _encode(Image.new("RGB", (6000, 5000)), "BMP")[:4096],
        "too_many_pixels",
        TooManyPixelsError,
        "6000x5000 pixels is more than data.max_pixels=25000000",
    ),
    "eps_named.jpg": (
        lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
        "unreadable",
        UnreadableImageError,
        "not a readable image (not JPEG",
    ),
    "tiff_named.png": (
        lambda: _encode(_picture("RGB"), "TIFF"),
        "unreadable",
        UnreadableImageError,
        "not a readable image (not JPEG",
    ),
}


@pytest.fixture(scope="module")
def valid() -> dict[str, bytes]:
    return {name: make() for name, make in VALID.items()}


@pytest.fixture(scope="module")
def junk() -> dict[str, bytes]:
    return {name: case[0]() for name, case in JUNK.items()}


def _summary(capsys, path: Path, *options: str) -> dict:
    """simulations.data_summary's JSON line for `path`."""
    data_summary([str(path), *options])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def _summary_error(path: Path, phrase: str) -> None:
    """simulations.data_summary ends with one line that names `path`'s folder and the problem."""
    with pytest.raises(SystemExit) as exit_:
        data_summary([str(path)])
    message = str(exit_.value.code)
    assert message.startswith("data_summary: ") and "\n" not in message
    assert str(path.parent) in message and phrase in message, message


def test_valid_images_load_through_every_loader(tmp_path, valid, capsys):
    """Each odd but valid image decodes to uint8 [3, SIZE, SIZE] alike in a folder, a RecordIO
    set and a .bin, and the summaries count them all."""
    person = tmp_path / "folder" / "p1"
    person.mkdir(parents=True)
    for name, data in valid.items():
        (person / name).write_bytes(data)
    (person / "link_to_l.png").symlink_to(person / "l.png")
    names = sorted(valid)
    rec = write_recordio(tmp_path / "rec", [valid[n] for n in names], [0] * len(names))
    path = tmp_path / "pairs.bin"
    path.write_bytes(pickle.dumps(([valid[n] for n in names], [True] * (len(names) // 2))))
    with bounded():
        faces = FolderFaces(tmp_path / "folder", SIZE)
        folder_images = faces.images_uint8(range(len(faces)))
        records = RecordIOFaces(rec, SIZE)
        record_images = records.images_uint8(range(len(records)))
        pairs, issame = load_bin_pairs(path, SIZE)
        summaries = [_summary(capsys, p) for p in (tmp_path / "folder", rec, path)]
    assert faces.skipped == {} and len(faces) == len(valid) + 1 and not faces.load_failures
    for images in (folder_images, record_images, pairs):
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, SIZE, SIZE)
    by_name = dict(zip([f.name for f in faces.files], folder_images, strict=True))
    assert torch.equal(by_name["link_to_l.png"], by_name["l.png"])
    for row, name in enumerate(names):
        assert torch.equal(record_images[row], by_name[name]), name
        assert torch.equal(pairs[row], by_name[name]), name
    red = torch.tensor([200, 10, 10], dtype=torch.uint8)[:, None, None].expand(3, SIZE, SIZE)
    assert torch.equal(by_name["rgb_1x1.png"], red)
    assert issame.tolist() == [True] * (len(names) // 2)
    assert [s["images"] for s in summaries] == [len(valid) + 1, len(valid), len(names)]
    assert all(s["skipped"] == {} for s in summaries)


@pytest.mark.parametrize("name", list(JUNK))
def test_junk_is_a_counted_skip_or_one_clear_error(tmp_path, junk, name, capsys):
    """In a folder a junk file is one counted skip beside a good image; as a RecordIO record or
    a .bin image it is one UnreadableImageError naming the file and the record (the summaries,
    which read headers only, count it or fail on it unless only its end is missing)."""
    _, reason, error, phrase = JUNK[name]
    header_only_ok = reason == "truncated"  # summaries read headers only: those pass
    good = _encode(_picture("RGB"), "PNG")
    person = tmp_path / "folder" / "p1"
    person.mkdir(parents=True)
    (person / "good.png").write_bytes(good)
    (person / name).write_bytes(junk[name])
    rec = write_recordio(tmp_path / "rec", [good, junk[name]], [0, 1])
    path = tmp_path / "pairs.bin"
    path.write_bytes(pickle.dumps(([good, junk[name]], [True]), protocol=4))
    with bounded():
        faces = FolderFaces(tmp_path / "folder", SIZE)
        loaded = faces.images_uint8([0])
        folder_summary = _summary(capsys, tmp_path / "folder")
        with pytest.raises(error, match=re.escape(phrase)):
            decode_image(junk[name], SIZE)
        with pytest.raises(error, match=rf"{re.escape(name)}: .*{re.escape(phrase)}"):
            decode_image(person / name, SIZE)
        records = RecordIOFaces(rec, SIZE)
        assert records.images_uint8([0]).shape == (1, 3, SIZE, SIZE)
        with pytest.raises(error, match=rf"train\.rec: record 2: .*{re.escape(phrase)}") as rec_err:
            records.images_uint8([1])
        if header_only_ok:
            assert records.summary()["images"] == 2 and _summary(capsys, rec)["images"] == 2
        else:
            with pytest.raises(error, match=r"train\.rec: record 2: "):
                records.summary()
            _summary_error(rec, "record 2: ")
        assert load_bin(path)[0][0] == good
        with pytest.raises(error, match=rf"pairs\.bin: image 1: .*{re.escape(phrase)}") as bin_err:
            load_bin_pairs(path, SIZE)
        bin_summary = _summary(capsys, path)
    assert faces.skipped == {reason: 1} and len(faces) == 1 and faces.files[0].name == "good.png"
    assert loaded.shape == (1, 3, SIZE, SIZE)
    assert folder_summary["skipped"] == {reason: 1}
    assert "\n" not in str(rec_err.value) and "\n" not in str(bin_err.value)
    unreadable = "too_many_pixels" if error is TooManyPixelsError else "unreadable"
    assert bin_summary["skipped"] == ({} if header_only_ok else {unreadable: 1})
    assert bin_summary["images"] == 2


def _make_special(kind: str, where: Path) -> None:
    """Create a filesystem oddity named `where`."""
    if kind == "loop":
        where.symlink_to(where.name)
    elif kind == "dangling":
        where.symlink_to(where.parent / "nowhere")
    elif kind == "fifo":
        os.mkfifo(where)
    elif kind == "folder":
        where.mkdir()
        (where / "inside.png").write_bytes(_encode(_picture("RGB"), "PNG"))
    elif kind == "file":
        where.write_text("a readme")


@pytest.mark.parametrize(
    ("kind", "level", "reason"),
    [
        ("loop", "image", "symlink_loop"),
        ("dangling", "image", "dangling_link"),
        ("fifo", "image", "not_a_file"),
        ("folder", "image", "nested_folder"),
        ("loop", "identity", "symlink_loop"),
        ("dangling", "identity", "dangling_link"),
        ("fifo", "identity", "loose_file"),
        ("file", "identity", "loose_file"),
    ],
)
def test_links_fifos_and_folders_are_counted_skips(tmp_path, capsys, kind, level, reason):
    """Links in circles or to nowhere, FIFOs (never opened: that would block) and folders named
    like images are skips, at the image and at the identity level."""
    root = tmp_path / "folder"
    (root / "p1").mkdir(parents=True)
    (root / "p1" / "good.png").write_bytes(_encode(_picture("RGB"), "PNG"))
    _make_special(kind, root / "p1" / "odd.jpg" if level == "image" else root / "p0.jpg")
    with bounded():
        faces = FolderFaces(root, SIZE)
        loaded = faces.images_uint8([0])
        summary = _summary(capsys, root)
        if kind in ("loop", "dangling", "fifo") and level == "image":
            with pytest.raises(UnreadableImageError, match=r"odd\.jpg: ") as err:
                decode_image(root / "p1" / "odd.jpg", SIZE)
            assert "\n" not in str(err.value)
    assert faces.skipped == {reason: 1} and len(faces) == 1 and loaded.shape == (1, 3, SIZE, SIZE)
    assert summary["skipped"] == {reason: 1}


def test_unlistable_folders_are_counted_or_one_clear_error(tmp_path, monkeypatch):
    """An identity folder that cannot be listed is a skip; an unlistable root is one error."""
    root = tmp_path / "folder"
    for person in ("p1", "locked"):
        (root / person).mkdir(parents=True)
        (root / person / "good.png").write_bytes(_encode(_picture("RGB"), "PNG"))
    iterdir = Path.iterdir

    def refusing(self: Path) -> Iterator[Path]:
        if self.name in ("locked", "folder_locked"):
            raise PermissionError(13, "Permission denied", str(self))
        return iterdir(self)

    monkeypatch.setattr(Path, "iterdir", refusing)
    with bounded():
        faces = FolderFaces(root, SIZE)
        assert faces.skipped == {"unreadable_folder": 1} and faces.identity_names == ["p1"]
        root.rename(tmp_path / "folder_locked")
        with pytest.raises(ValueError, match=r"data\.root: cannot list .*Permission denied"):
            FolderFaces(tmp_path / "folder_locked", SIZE)


def test_a_folder_image_over_max_pixels_is_skipped_and_still_replaced_at_load(tmp_path):
    """`max_pixels` reaches the scan and the load; an image swapped for a bomb after the scan is
    replaced by another image of the same identity."""
    person = tmp_path / "folder" / "p1"
    person.mkdir(parents=True)
    for name in ("a.png", "b.png"):
        (person / name).write_bytes(_encode(_picture("RGB", 60, 50), "PNG"))
    with bounded():
        with pytest.raises(ValueError, match=r"readable images \(.*2 too_many_pixels\)"):
            FolderFaces(tmp_path / "folder", SIZE, max_pixels=2999)
        faces = FolderFaces(tmp_path / "folder", SIZE, max_pixels=3000)
        (person / "a.png").write_bytes(_bomb(2_000))
        images = faces.images_uint8([0, 1])
    assert torch.equal(images[0], images[1])
    assert faces.load_failures == {str(person / "a.png"): 1}


def test_a_png_chunk_announcing_2_gib_is_read_within_the_file(tmp_path):
    """PIL reads a PNG's IDAT by the length the chunk announces; from a file, read(n) would
    allocate the 2 GiB first (MemoryError here), so our reader asks for at most what is left."""
    png = bytearray(_encode(_picture("RGB"), "PNG"))
    idat = png.index(b"IDAT")
    png[idat - 4 : idat] = struct.pack(">I", 2**31 - 1)
    person = tmp_path / "folder" / "p1"
    person.mkdir(parents=True)
    (person / "long_idat.png").write_bytes(bytes(png))
    with bounded():
        faces = FolderFaces(tmp_path / "folder", SIZE)
        images = faces.images_uint8([0])
    assert faces.skipped == {} and not faces.load_failures
    assert torch.equal(images[0], decode_image(_encode(_picture("RGB"), "PNG"), SIZE))


# --- RecordIO -------------------------------------------------------------------------------


def _frame(cflag: int, length: int, magic: int = MAGIC) -> bytes:
    return struct.pack("<II", magic, cflag << 29 | length)


def _payload(labels: list[float], image: bytes = b"", flag: int | None = None) -> bytes:
    if len(labels) == 1 and flag is None:
        return struct.pack("<IfQQ", 0, labels[0], 0, 0) + image
    extra = np.asarray(labels, dtype="<f4").tobytes()
    return struct.pack("<IfQQ", len(labels) if flag is None else flag, 0.0, 0, 0) + extra + image


def _record(payload: bytes, cflag: int = 0, length: int | None = None, magic: int = MAGIC) -> bytes:
    size = len(payload) if length is None else length
    return _frame(cflag, size, magic) + payload + bytes(-len(payload) % 4)


def _rec_set(root: Path, records: list[bytes], index: str | None = None) -> Path:
    """train.rec of the framed `records` and an index of their offsets (keys 0..) or `index`."""
    root.mkdir(parents=True, exist_ok=True)
    offsets = np.cumsum([0] + [len(r) for r in records[:-1]]).tolist()
    (root / "train.rec").write_bytes(b"".join(records))
    lines = "".join(f"{key}\t{offset}\n" for key, offset in enumerate(offsets))
    (root / "train.idx").write_text(lines if index is None else index)
    return root / "train.rec"


def _good_set(root: Path) -> Path:
    """A valid 2-identity set written by write_recordio."""
    images = [_encode(_picture("RGB", 20 + i, 20), "PNG") for i in range(4)]
    return write_recordio(root, images, [0, 0, 1, 1])


def _index(rec: Path) -> dict[int, int]:
    lines = rec.with_suffix(".idx").read_text().splitlines()
    return {int(k): int(o) for k, o in (line.split("\t") for line in lines)}


def _with_index_line(rec: Path, key: int, text: str) -> Path:
    lines = rec.with_suffix(".idx").read_text().splitlines()
    lines[key] = text
    rec.with_suffix(".idx").write_text("\n".join(lines) + "\n")
    return rec


def _cut(rec: Path, keep: int) -> Path:
    rec.write_bytes(rec.read_bytes()[:keep])
    return rec


def _with_length(rec: Path, key: int, length: int) -> Path:
    """`rec` with the frame of record `key` announcing `length` bytes."""
    offset = _index(rec)[key]
    data = bytearray(rec.read_bytes())
    data[offset + 4 : offset + 8] = struct.pack("<I", length)
    rec.write_bytes(bytes(data))
    return rec


def _fifo_set(root: Path) -> Path:
    """A train.rec that is a FIFO, beside a plain index."""
    root.mkdir()
    os.mkfifo(root / "train.rec")
    (root / "train.idx").write_text("0\t0\n")
    return root / "train.rec"


def _image_records(*labels: float) -> list[bytes]:
    png = _encode(_picture("RGB"), "PNG")
    return [_record(_payload([label], png)) for label in labels]


PNG_ONE = _encode(Image.new("RGB", (4, 4)), "PNG")
RECORDIO_CASES: dict[str, tuple[Callable[[Path], Path], str | None]] = {
    # 40 bytes whose record 0 announces images 1..2e9-1: the reader once made np.arange of them
    "header_range_2e9": (
        lambda d: _rec_set(d, [_record(_payload([2e9, 2e9]))]),
        "record 0 announces 1999999999 image and 0 identity records (keys up to 1999999999), "
        "but train.idx holds 1 keys",
    ),
    "header_identities_1e9": (
        lambda d: _rec_set(d, [_record(_payload([1.0, 1e9]))]),
        "record 0 announces 0 image and 999999999 identity records",
    ),
    "header_span_1e30": (
        lambda d: _rec_set(d, [_record(_payload([1e30, 1e30]))]),
        "identity records (keys up to 1000000015047466219876688855039), but train.idx holds 1",
    ),
    "identity_span_1e30_falls_back": (
        lambda d: _rec_set(
            d,
            [
                _record(_payload([2.0, 3.0])),
                _record(_payload([0.0], PNG_ONE)),
                _record(_payload([1.0, 1e30])),
            ],
        ),
        None,
    ),
    "lrec_2**29-1": (
        lambda d: _rec_set(d, [_record(_payload([1.0, 2.0]), length=2**29 - 1)]),
        "record 0: announces 536870911 bytes but only 32 remain",
    ),
    "flag_2**32-1": (
        lambda d: _rec_set(d, [_record(_payload([1.0, 2.0], flag=2**32 - 1))]),
        "record 0: announces 4294967295 labels (17179869180 bytes) but only 8 remain",
    ),
    "offset_-1": (
        lambda d: _with_index_line(_good_set(d), 1, "1\t-1"),
        "key 1: offset -1 is not the start of a record",
    ),
    "offset_2**63-1": (
        lambda d: _with_index_line(_good_set(d), 1, f"1\t{2**63 - 1}"),
        f"key 1: offset {2**63 - 1} is not the start",
    ),
    "offset_past_end": (
        lambda d: _with_index_line(_good_set(d), 2, "2\t100000"),
        "key 2: offset 100000 is not the start",
    ),
    "offset_2**63": (
        lambda d: _with_index_line(_good_set(d), 1, f"1\t{2**63}"),
        "not a RecordIO index",
    ),
    "key_1e30": (lambda d: _with_index_line(_good_set(d), 1, "1e30\t0"), "not a RecordIO index"),
    "label_1e30": (lambda d: _rec_set(d, _image_records(1.0, 1e30)), "record 1: label 1.00"),
    "label_2.5": (lambda d: _rec_set(d, _image_records(2.5)), "label 2.5 is not a whole number"),
    "label_nan": (lambda d: _rec_set(d, _image_records(float("nan"))), "label nan is not"),
    "label_-1": (lambda d: _rec_set(d, _image_records(-1.0)), "label -1.0 is not"),
    "truncated_record": (
        lambda d: _cut(_rec_set(d, _image_records(0.0, 1.0)), len(_image_records(0.0)[0]) + 99),
        "record 1: announces",
    ),
    "image_lrec_2**29-1": (
        lambda d: _with_length(_good_set(d), 2, 2**29 - 1),
        "record 2: announces 536870911 bytes but only",
    ),
    "bad_magic": (
        lambda d: _rec_set(d, [_record(_payload([1.0, 2.0]), magic=0xDEADBEEF)]),
        "record 0: bad magic number 0xdeadbeef",
    ),
    "first_part_flag_2": (
        lambda d: _rec_set(d, [_record(_payload([1.0, 2.0]), cflag=2)]),
        "broken split record (part flag 2)",
    ),
    "part_flag_5": (
        lambda d: _rec_set(d, [_record(_payload([1.0, 2.0]), cflag=5)]),
        "broken split record (part flag 5)",
    ),
    "split_then_whole": (
        lambda d: _rec_set(d, [_record(_payload([1.0, 2.0])[:16], cflag=1) + _record(b"abcd")]),
        "broken split record (part flag 0)",
    ),
    "split_without_end": (
        lambda d: _rec_set(d, [_record(_payload([1.0, 2.0])[:16], cflag=1)]),
        "record 0: truncated at offset 24",
    ),
    "missing_image_record": (
        lambda d: _rec_set(
            d,
            [_record(_payload([3.0, 3.0])), *_image_records(0.0, 0.0)],
            index="0\t0\n1\t40\n5\t40\n",
        ),
        "record 2 is not in the index",
    ),
    "empty_rec": (lambda d: _rec_set(d, [b""], index="0\t0\n"), "offset 0 is not the start"),
    "empty_idx": (lambda d: _rec_set(d, _image_records(0.0), index=""), "not a RecordIO index"),
    "text_idx": (
        lambda d: _rec_set(d, _image_records(0.0), index="hello\tworld\n"),
        "not a RecordIO index",
    ),
    "fifo_rec": (_fifo_set, "train.rec: RecordIO file is not a regular file"),
}


@pytest.mark.parametrize("case", list(RECORDIO_CASES))
def test_bad_recordio_is_one_clear_error(tmp_path, capsys, case):
    """Each crafted RecordIO set fails (construction, a decode or the summary) with one
    InsightFaceFormatError naming the file and the numbers, never a MemoryError or OSError."""
    make, phrase = RECORDIO_CASES[case]
    rec = make(tmp_path / "set")
    with bounded():
        if phrase is None:
            faces = RecordIOFaces(rec, SIZE)
            assert faces.images_uint8(range(len(faces))).shape == (len(faces), 3, SIZE, SIZE)
            assert faces.summary()["images"] == len(faces)
            _summary(capsys, rec)
            return
        with pytest.raises(InsightFaceFormatError) as err:
            faces = RecordIOFaces(rec, SIZE)
            faces.images_uint8(range(len(faces)))
            faces.summary()
        _summary_error(rec, phrase)
    message = str(err.value)
    assert phrase in message and "\n" not in message and str(rec.parent) in message, message


# --- verification .bin ----------------------------------------------------------------------


def _py2_memo_bin(image: bytes, refs: int) -> bytes:
    """A Python 2 protocol-2 .bin whose one BINSTRING is memoised and referenced `refs` times."""
    out = bytearray(b"\x80\x02]q\x00(T" + struct.pack("<I", len(image)) + image + b"q\x01")
    out += b"h\x01" * (refs - 1) + b"e]q\x02(" + b"\x88" * (refs // 2) + b"e\x86q\x03."
    return bytes(out)


BIN_CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "memo_bytearray_x4000": (
        lambda: pickle.dumps(([bytearray(1 << 20)] * 4000, [True] * 2000), protocol=5),
        "images reference 4194304000 bytes, more than the file's",
    ),
    "memo_py2_binstring_x4000": (
        lambda: _py2_memo_bin(bytes(1 << 20), 4000),
        "images reference 4194304000 bytes",
    ),
    "binbytes8_2**34": (
        lambda: b"\x80\x04\x8e" + (2**34).to_bytes(8, "little") + b"abc",
        "expected 17179869184 bytes in a bytes8, but only 3 remain",
    ),
    "long_binput_2**32-1": (lambda: b"\x80\x04Nr\xff\xff\xff\xff.", "memo index 4294967295"),
    "frame_2**40": (lambda: b"\x80\x04\x95" + (2**40).to_bytes(8, "little") + b"N.", "truncated"),
    "many_sets": (lambda: b"\x80\x04](" + b"\x8f" * 100 + b"e.", "more than 8 lists"),
    "opcode_flood": (  # 1 MiB of NEWTRUE: ~26 MiB of stack and list slots once unpickled
        lambda: b"\x80\x04](" + b"\x88" * (1 << 20) + b"e]\x86.",
        "(over 65600 opcodes in 1048584 bytes)",
    ),
    "no_stop": (lambda: b"\x80\x04N", "exhausted before seeing STOP"),
    "empty": (lambda: b"", "exhausted before seeing STOP"),
    "not_a_pair": (lambda: pickle.dumps({"images": []}, protocol=4), "expected a pair"),
    "int_flags": (lambda: pickle.dumps(([b"a", b"b"], [1]), protocol=4), "issame 0 is int"),
    "str_image": (lambda: pickle.dumps(([b"a", "b"], [True]), protocol=4), "image 1 is str"),
    "odd_images": (lambda: pickle.dumps(([b"a"], [True]), protocol=4), "1 images for 1 pairs"),
    "global": (
        lambda: b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.",
        "refused: the pickle asks for os.system",
    ),
    "stack_global": (
        lambda: b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x93\x94.",
        "refused: the pickle asks for os.system",
    ),
    "py3_bytes_at_protocol_2": (
        lambda: pickle.dumps(([bytes([i]) * 100 for i in range(20)], [True] * 10), protocol=2),
        "refused: the pickle asks for _codecs.encode",
    ),
}


@pytest.mark.parametrize("case", [*BIN_CASES, "fifo"])
def test_bad_bin_is_one_clear_error(tmp_path, case):
    """Each crafted .bin fails in load_bin, load_bin_pairs and the summary with one
    InsightFaceFormatError, before any big allocation."""
    path = tmp_path / "set" / "evil.bin"
    path.parent.mkdir()
    if case == "fifo":
        os.mkfifo(path)
        phrase = "evil.bin: not a regular file"
    else:
        path.write_bytes(BIN_CASES[case][0]())
        phrase = BIN_CASES[case][1]
    with bounded():
        for load in (load_bin, load_bin_pairs):
            with pytest.raises(InsightFaceFormatError, match=r"evil\.bin: ") as err:
                load(path)
            assert phrase in str(err.value) and "\n" not in str(err.value), str(err.value)
        _summary_error(path, phrase)
