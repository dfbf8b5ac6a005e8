"""InsightFace files: RecordIO round trips, MXNet record splitting, errors, safe .bin unpickling."""

import copy
import io
import multiprocessing as mp
import os
import pickle
import pickletools
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ahm_core.data.base import TooManyPixelsError, UnreadableImageError
from ahm_core.data.insightface import (
    MAGIC,
    InsightFaceFormatError,
    RecordIOFaces,
    load_bin,
    load_bin_pairs,
    write_recordio,
)

MAGIC_BYTES = struct.pack("<I", MAGIC)


def _images(n: int, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)


def _png(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def _index(rec: Path) -> dict[int, int]:
    lines = rec.with_suffix(".idx").read_text().splitlines()
    return {int(k): int(o) for k, o in (line.split("\t") for line in lines)}


def _frame(cflag: int, length: int) -> bytes:
    return struct.pack("<II", MAGIC, cflag << 29 | length)


def _write_plain(rec: Path, payloads: dict[int, bytes]) -> None:
    """A RecordIO file of whole records (no magic inside), as a generic im2rec would write it."""
    offsets, blob = {}, bytearray()
    for key, payload in payloads.items():
        offsets[key] = len(blob)
        blob += _frame(0, len(payload)) + payload + bytes(-len(payload) % 4)
    rec.write_bytes(bytes(blob))
    rec.with_suffix(".idx").write_text("".join(f"{k}\t{o}\n" for k, o in offsets.items()))


def _payload(labels: list[float], image: bytes = b"") -> bytes:
    if len(labels) == 1:
        return struct.pack("<IfQQ", 0, labels[0], 0, 0) + image
    extra = np.asarray(labels, dtype="<f4").tobytes()
    return struct.pack("<IfQQ", len(labels), 0.0, 0, 0) + extra + image


def _py2_pickle(images: list[bytes], flags: list[bool]) -> bytes:
    """(images, flags) as Python 2's pickle protocol 2 writes them: str as (SHORT_)BINSTRING."""
    out = bytearray(b"\x80\x02]q\x00(")
    for image in images:
        short = len(image) < 256
        out += b"U" + bytes([len(image)]) if short else b"T" + struct.pack("<I", len(image))
        out += image
    out += b"e]q\x01(" + b"".join(b"\x88" if f else b"\x89" for f in flags) + b"e\x86q\x02."
    return bytes(out)


@pytest.fixture
def faces(tmp_path: Path) -> tuple[Path, torch.Tensor]:
    images = _images(7)
    write_recordio(tmp_path, images, [5, 5, 9, 9, 9, 2, 2])
    return tmp_path, images


def test_round_trip_images_labels_and_summary(faces):
    root, images = faces
    ds = RecordIOFaces(root, size=16)
    assert ds.labels.dtype == torch.long
    assert ds.labels.tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert len(ds) == 7 and ds.num_identities == 3
    assert torch.equal(ds.images_uint8(range(7)), images)
    image, label = ds[3]
    assert label == 1 and torch.equal(image, images[3].float() / 255)
    assert ds.summary() == {
        "format": "recordio",
        "identities": 3,
        "images": 7,
        "skipped": {},
        "sizes": [[16, 16]],
    }


def test_labels_already_contiguous_are_kept(tmp_path):
    rec = write_recordio(tmp_path / "set.rec", _images(5), torch.tensor([1, 1, 0, 0, 2]))
    assert rec == tmp_path / "set.rec" and rec.with_suffix(".idx").is_file()
    assert RecordIOFaces(rec, size=16).labels.tolist() == [1, 1, 0, 0, 2]


def test_random_access_out_of_order(faces):
    root, images = faces
    ds = RecordIOFaces(root, size=16)
    order = [4, 0, 6, 2, 2]
    assert torch.equal(ds.images_uint8(order), images[order])
    assert torch.equal(ds.images_uint8(torch.tensor([5])), images[[5]])
    with pytest.raises(IndexError, match="out of range"):
        ds.images_uint8([7])


def test_split_record_matches_mxnet_framing_and_reads_back(tmp_path):
    png = _png(_images(1)[0])
    head = png + bytes(-len(png) % 4)  # the IRHeader is 24 bytes: `head` ends 4-aligned
    rest = b"ab" + MAGIC_BYTES + b"c!!"  # this magic is not 4-aligned: no split there
    stored = head + MAGIC_BYTES + MAGIC_BYTES + rest
    images = [_png(_images(1, seed=1)[0]), stored, _png(_images(1, seed=2)[0])]
    rec = write_recordio(tmp_path, images, [0, 1, 1])

    payload = struct.pack("<IfQQ", 0, 1.0, 2, 0) + stored
    first = 24 + len(head)
    expected = (
        _frame(1, first)
        + payload[:first]
        + _frame(2, 0)
        + _frame(3, len(rest))
        + rest
        + bytes(-len(rest) % 4)
    )
    offsets = _index(rec)
    data = rec.read_bytes()
    assert data[offsets[2] : offsets[2] + len(expected)] == expected
    assert offsets[3] == offsets[2] + len(expected)

    ds = RecordIOFaces(tmp_path, size=16)
    assert ds.image_bytes(1) == stored
    assert ds.labels.tolist() == [0, 1, 1]
    assert torch.equal(ds.images_uint8([2, 1]), torch.cat([_images(1, seed=2), _images(1)]))


def test_labels_from_image_headers_without_identity_records(tmp_path):
    pngs = [_png(img) for img in _images(4)]
    labels = [[7.0, 0.5], [7.0, 0.5], [3.0, 0.5], [9.0, 0.5]]  # label arrays: the first counts
    _write_plain(tmp_path / "train.rec", {k: _payload(labels[k], pngs[k]) for k in range(4)})
    ds = RecordIOFaces(tmp_path, size=16)
    assert ds.labels.tolist() == [0, 0, 1, 2]
    assert torch.equal(ds.images_uint8([3]), _images(4)[[3]])


def test_identity_records_that_overlap_fall_back_to_image_headers(tmp_path):
    pngs = [_png(img) for img in _images(3)]
    records = {0: _payload([4.0, 6.0])}
    records |= {k: _payload([[2.0, 2.0, 0.0][k - 1]], pngs[k - 1]) for k in (1, 2, 3)}
    records |= {4: _payload([1.0, 3.0]), 5: _payload([2.0, 4.0])}  # key 2 claimed twice
    _write_plain(tmp_path / "train.rec", records)
    assert RecordIOFaces(tmp_path, size=16).labels.tolist() == [0, 0, 1]


def test_missing_index_or_records_is_one_clear_error(faces):
    root, _ = faces
    (root / "train.idx").unlink()
    with pytest.raises(FileNotFoundError, match=r"train\.idx: RecordIO index not found"):
        RecordIOFaces(root)
    with pytest.raises(FileNotFoundError, match=r"nope\.rec: RecordIO file not found"):
        RecordIOFaces(root / "nope.rec")


def test_bad_magic_names_file_and_record(faces):
    root, _ = faces
    rec, offsets = root / "train.rec", _index(root / "train.rec")
    data = bytearray(rec.read_bytes())
    data[offsets[3]] ^= 0xFF
    rec.write_bytes(bytes(data))
    ds = RecordIOFaces(root, size=16)  # labels come from the identity records, not record 3
    assert torch.equal(ds.images_uint8([1]), faces[1][[1]])
    with pytest.raises(InsightFaceFormatError, match=r"train\.rec: record 3: bad magic") as err:
        ds.images_uint8([2])
    assert "\n" not in str(err.value)
    data[offsets[0]] ^= 0xFF
    rec.write_bytes(bytes(data))
    with pytest.raises(InsightFaceFormatError, match=r"train\.rec: record 0: bad magic"):
        RecordIOFaces(root)


def test_undecodable_image_names_file_and_record(tmp_path):
    write_recordio(tmp_path, [_png(_images(1)[0]), b"not an image"], [0, 1])
    ds = RecordIOFaces(tmp_path, size=16)
    with pytest.raises(UnreadableImageError, match=r"train\.rec: record 2: not a readable") as err:
        ds.images_uint8([0, 1])
    assert "\n" not in str(err.value)
    with pytest.raises(UnreadableImageError, match=r"train\.rec: record 2"):
        ds.summary()


def test_dataloader_workers_read_their_own_handle(faces):
    root, images = faces
    ds = RecordIOFaces(root, size=16)
    ds.images_uint8([6])  # the parent's handle is open, and moved, before the workers fork
    loader = DataLoader(ds, batch_size=2, num_workers=2, multiprocessing_context="fork")
    batches = list(loader)
    assert torch.equal(torch.cat([b[0] for b in batches]), images.float() / 255)
    assert torch.cat([b[1] for b in batches]).tolist() == ds.labels.tolist()
    clone = copy.deepcopy(ds)  # as a spawned worker gets it: without the open handle
    assert torch.equal(clone.images_uint8([0]), images[[0]])
    ds.close()
    assert torch.equal(ds.images_uint8([5]), images[[5]])


def _read_after_fork(ds: RecordIOFaces, inherited: int, expected: torch.Tensor) -> None:
    assert torch.equal(ds.images_uint8([2]), expected)
    assert id(ds._handle) != inherited, "the forked child reused its parent's file handle"


def test_a_forked_process_opens_its_own_handle(faces):
    root, images = faces
    ds = RecordIOFaces(root, size=16)
    ds.images_uint8([0])
    child = mp.get_context("fork").Process(
        target=_read_after_fork, args=(ds, id(ds._handle), images[[2]])
    )
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0


def test_writer_size_and_checks(tmp_path):
    images = _images(3, h=20, w=24)
    write_recordio(tmp_path / "as_is", images, [0, 0, 1])
    assert RecordIOFaces(tmp_path / "as_is").summary()["sizes"] == [[24, 20]]
    write_recordio(tmp_path / "fitted", images, [0, 0, 1], size=12)
    assert RecordIOFaces(tmp_path / "fitted").summary()["sizes"] == [[12, 12]]
    with pytest.raises(ValueError, match="consecutive"):
        write_recordio(tmp_path / "bad", images, [0, 1, 0])
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        write_recordio(tmp_path / "bad", images, [0, 1])


def test_load_bin_reads_python2_protocol_2(tmp_path):
    images = [b"a" * 10, b"b" * 300, b"", b"\x00\xff" * 5]  # short and long BINSTRING
    data = _py2_pickle(images, [True, False])
    assert {op.name for op, _, _ in pickletools.genops(data)} >= {"SHORT_BINSTRING", "BINSTRING"}
    path = tmp_path / "lfw.bin"
    path.write_bytes(data)
    assert load_bin(path) == (images, [True, False])


def test_load_bin_pairs_decodes_python3_pickles(tmp_path):
    images = _images(4)
    path = tmp_path / "cfp.bin"
    path.write_bytes(pickle.dumps(([_png(i) for i in images], [False, True]), protocol=4))
    pairs, issame = load_bin_pairs(path, size=16)
    assert pairs.dtype == torch.uint8 and torch.equal(pairs, images)
    assert issame.dtype == torch.bool and issame.tolist() == [False, True]


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_load_bin_refuses_a_pickle_that_runs_code(tmp_path, protocol):
    marker = tmp_path / "ran"
    data = pickle.dumps(([_RunsCode(marker), b"x"], [True]), protocol=protocol)
    assert {"GLOBAL", "STACK_GLOBAL"} & {op.name for op, _, _ in pickletools.genops(data)}
    path = tmp_path / "evil.bin"
    path.write_bytes(data)
    with pytest.raises(InsightFaceFormatError, match=r"evil\.bin: refused: .*system") as err:
        load_bin(path)
    assert "\n" not in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (pickle.dumps(([b"a"], [True]), protocol=4), "1 images for 1 pairs"),
        (pickle.dumps(([b"a", "b"], [True]), protocol=4), "image 1 is str"),
        (pickle.dumps(([b"a", b"b"], [1]), protocol=4), "issame 0 is int"),
        (pickle.dumps(([b"a", b"b"],), protocol=4), "expected a pair"),
        (pickle.dumps({"images": []}, protocol=4), "expected a pair"),
        (pickle.dumps(([b"a", b"b"], [True]), protocol=2), "refused: .*encode"),
        (pickle.dumps(([b"a", b"b"], [True]), protocol=4)[:-5], "not a verification"),
        (b"\x89PNG not a pickle", "not a verification"),
    ],
)
def test_load_bin_refuses_a_wrong_structure(tmp_path, data, message):
    path = tmp_path / "wrong.bin"
    path.write_bytes(data)
    with pytest.raises(InsightFaceFormatError, match=rf"wrong\.bin: .*{message}") as err:
        load_bin(path)
    assert "\n" not in str(err.value)


def test_max_pixels_reaches_recordio_and_bin_pairs(tmp_path):
    """A record or .bin image over `max_pixels` is a TooManyPixelsError naming file and item."""
    images = [_png(img) for img in _images(2, h=20, w=30)]
    write_recordio(tmp_path, images, [0, 1])
    assert RecordIOFaces(tmp_path, size=16, max_pixels=600).images_uint8([0, 1]).shape[0] == 2
    ds = RecordIOFaces(tmp_path, size=16, max_pixels=599)
    with pytest.raises(TooManyPixelsError, match=r"train\.rec: record 1: 30x20 pixels is more"):
        ds.images_uint8([0])
    with pytest.raises(TooManyPixelsError, match=r"data\.max_pixels=599"):
        ds.summary()
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps((images, [True]), protocol=4))
    assert load_bin_pairs(path, size=16, max_pixels=600)[0].shape == (2, 3, 16, 16)
    with pytest.raises(TooManyPixelsError, match=r"lfw\.bin: image 0: 30x20 pixels is more"):
        load_bin_pairs(path, size=16, max_pixels=599)


@pytest.mark.parametrize("container", [bytes, bytearray])
def test_load_bin_refuses_one_string_standing_for_many_images(tmp_path, container):
    """The pickle memo lets one stored string be every image; each would be copied or decoded."""
    image = container(_png(_images(1, h=64, w=64)[0]))  # ~12 KB: 16+ bytes per opcode
    path = tmp_path / "memo.bin"
    path.write_bytes(pickle.dumps(([image] * 200, [True] * 100), protocol=5))
    with pytest.raises(InsightFaceFormatError, match=r"memo\.bin: images reference \d+ bytes"):
        load_bin(path)
