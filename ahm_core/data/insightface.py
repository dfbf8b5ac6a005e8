"""InsightFace files without mxnet: RecordIO face sets (`train.rec` + `train.idx`) and the
pickled verification pairs (`lfw.bin`, `cfp_fp.bin`, ...), the latter read with no code execution.

RecordIO (MXNet): each record is uint32 magic 0xced7230a, uint32 lrec (low 29 bits the length,
high 3 bits cflag: 0 whole, 1 first, 2 middle, 3 last part), the payload, zero padding to 4 bytes.
A payload is split wherever the magic occurs at a 4-aligned offset in it, the magic dropped; the
reader puts it back between the parts. A payload is an IRHeader '<IfQQ' (flag, label, id, id2),
`flag` float32 labels when flag > 0, then the encoded image. In InsightFace sets record 0 holds
(first identity key, end key); image records are keys 1..first-1 and each identity record holds
the (first, end) image keys of one person.

Memory is bounded by the files, never by what they announce. A RecordIO set holds its index
(16 bytes a key) and reads one record at a time: O(index) plus one record (at most the .rec's
size, twice while split parts are joined) plus one decode (17 x max_pixels, see `base`); every
length, offset, key range and label is checked against the files before it is used. A .bin is
read whole and unpickled after an opcode check: its bytes, its byte strings (at most its size,
memo references included) and what the unpickler builds, about 7 x its size at most (5.5 x
measured at worst, 2 x for a genuine .bin); `load_bin_pairs` adds its output n*3*size^2 and one
decode at a time.
"""

from __future__ import annotations

import functools
import io
import os
import pickle
import pickletools
import struct
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, NoReturn

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from ahm_core.config import MAX_PIXELS
from ahm_core.data.base import (
    FaceSet,
    UnreadableImageError,
    decode_image,
    open_image,
    open_regular,
)
from ahm_core.data.sources import Source, register
from ahm_core.io import atomic_write

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_FRAME = struct.Struct("<II")  # magic, lrec
_IR_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2
_LENGTH_BITS = 29
SIZE_PROBE = 8  # images whose stored size `summary()` reports (header reads, no decoding)
MAX_LABEL = 2**31  # labels are whole numbers in [0, MAX_LABEL)


class InsightFaceFormatError(ValueError):
    """A RecordIO, index or verification .bin file whose content is not the InsightFace layout."""


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _contiguous_labels(labels: np.ndarray) -> np.ndarray:
    """Labels as they are when they are 0..n-1, else renumbered in order of first appearance."""
    uniq, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    if len(uniq) == 0 or (uniq[0] == 0 and uniq[-1] == len(uniq) - 1):
        return labels.astype(np.int64)
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(uniq))
    return rank[inverse.reshape(-1)]


def _rec_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(path)
    rec = path / "train.rec" if path.is_dir() else path
    return rec, rec.with_suffix(".idx")


def _read_index(idx: Path, rec: Path, rec_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Keys and offsets of the index lines 'key<TAB>offset', sorted by key; each offset must be
    where a record's 8-byte frame fits in the `rec_size` bytes of `rec`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # numpy warns on an empty file
            table = np.loadtxt(idx, dtype=np.int64, delimiter="\t", ndmin=2)
    except ValueError as err:
        raise InsightFaceFormatError(f"{idx}: not a RecordIO index ({_one_line(err)})") from None
    if table.shape[0] == 0 or table.shape[1] != 2:
        raise InsightFaceFormatError(f"{idx}: not a RecordIO index (no 'key<TAB>offset' lines)")
    outside = np.flatnonzero((table[:, 1] < 0) | (table[:, 1] > rec_size - _FRAME.size))
    if len(outside):
        key, offset = table[outside[0]].tolist()
        raise InsightFaceFormatError(
            f"{idx}: key {key}: offset {offset} is not the start of a record of {rec.name} "
            f"({rec_size} bytes)"
        )
    order = np.argsort(table[:, 0], kind="stable")
    return table[order, 0], table[order, 1]


class RecordIOFaces(FaceSet):
    """An InsightFace RecordIO face set (MS1M, Glint360K, ...); items are (float image, label).

    Records are read through the index, one file handle per process, so DataLoader workers can
    share the set. Labels come from the identity records when record 0 announces them, else from
    every image record's header; they are renumbered 0..n-1 when not already so.
    """

    def __init__(
        self, path: str | os.PathLike, size: int = 112, max_pixels: int = MAX_PIXELS
    ) -> None:
        self.rec_path, self.idx_path = _rec_paths(path)
        for file, what in ((self.rec_path, "RecordIO file"), (self.idx_path, "RecordIO index")):
            if file.exists() and not file.is_file():
                raise InsightFaceFormatError(f"{file}: {what} is not a regular file")
            if not file.is_file():
                raise FileNotFoundError(f"{file}: {what} not found")
        if size < 1:
            raise ValueError(f"RecordIOFaces: size must be >= 1, got {size}")
        self.size, self.max_pixels = size, max_pixels
        self._handle: BinaryIO | None = None
        self._pid = -1
        self._rec_size = self.rec_path.stat().st_size
        self._keys, self._key_offsets = _read_index(self.idx_path, self.rec_path, self._rec_size)
        self._image_keys, self._offsets, labels = self._label_images()
        self.labels = torch.from_numpy(_contiguous_labels(labels))

    def images_uint8(self, indices: Sequence[int] | Tensor) -> Tensor:
        """[B, 3, size, size] uint8 images of the given items, decoded from their records."""
        idx = self._check_indices(indices)
        out = torch.empty(len(idx), 3, self.size, self.size, dtype=torch.uint8)
        for row, i in enumerate(idx.tolist()):
            try:
                out[row] = decode_image(self.image_bytes(i), self.size, self.max_pixels)
            except UnreadableImageError as err:
                self._unreadable(i, err)
        return out

    def image_bytes(self, index: int) -> bytes:
        """The encoded image (JPEG/PNG) stored for item `index`, exactly as written."""
        i = int(self._check_indices([index])[0])
        key = int(self._image_keys[i])
        payload = self._read(key, int(self._offsets[i]))
        return payload[self._unpack(key, payload)[1] :]

    def summary(self) -> dict:
        """Format, counts and the distinct stored sizes [w, h] of the first SIZE_PROBE images."""
        sizes = set()
        for i in range(min(SIZE_PROBE, len(self))):
            try:
                with open_image(self.image_bytes(i), self.max_pixels) as img:
                    sizes.add(img.size)
            except UnreadableImageError as err:
                self._unreadable(i, err)
        return {
            "format": "recordio",
            "identities": self.num_identities,
            "images": len(self),
            "skipped": {},
            "sizes": sorted([w, h] for w, h in sizes),
        }

    def close(self) -> None:
        """Close this process's file handle (it is reopened on the next read)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handle"] = None  # a spawned worker opens its own
        return state

    def _file(self) -> BinaryIO:
        # After a fork the inherited handle shares its file offset with the parent's: reopen.
        if self._handle is None or self._pid != os.getpid():
            self._handle = open(self.rec_path, "rb")  # noqa: SIM115 - kept open across reads
            self._pid = os.getpid()
        return self._handle

    def _error(self, key: int, why: str) -> InsightFaceFormatError:
        return InsightFaceFormatError(f"{self.rec_path}: record {key}: {why}")

    def _unreadable(self, index: int, err: UnreadableImageError) -> NoReturn:
        why = _one_line(err).removeprefix("<bytes>: ")
        raise type(err)(f"{self.rec_path}: record {int(self._image_keys[index])}: {why}") from None

    def _lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Offsets of `keys` and whether each is in the index."""
        pos = np.searchsorted(self._keys, keys).clip(max=len(self._keys) - 1)
        return self._key_offsets[pos], self._keys[pos] == keys

    def _read(self, key: int, offset: int, limit: int | None = None) -> bytes:
        """Payload of the record at `offset`, split parts re-joined; with `limit`, a prefix of at
        least `limit` bytes (or the whole payload when shorter)."""
        f = self._file()
        f.seek(offset)
        parts: list[bytes] = []
        size = 0
        while True:
            frame = f.read(_FRAME.size)
            if len(frame) < _FRAME.size:
                raise self._error(key, f"truncated at offset {f.tell()}")
            magic, lrec = _FRAME.unpack(frame)
            if magic != MAGIC:
                raise self._error(key, f"bad magic number 0x{magic:08x} at offset {f.tell() - 8}")
            cflag, length = lrec >> _LENGTH_BITS, lrec & ((1 << _LENGTH_BITS) - 1)
            if cflag > 3 or (cflag in (0, 1)) != (not parts):
                raise self._error(key, f"broken split record (part flag {cflag})")
            left = self._rec_size - f.tell()
            if length > left:  # checked before reading: read(n) allocates n bytes first
                raise self._error(key, f"announces {length} bytes but only {left} remain")
            want = length if limit is None else max(0, min(length, limit - size))
            data = f.read(want)
            if len(data) < want:
                raise self._error(key, f"truncated at offset {f.tell()}")
            parts.append(data)
            size += want
            if cflag in (0, 3) or (limit is not None and size >= limit):
                return b"".join(parts)
            f.read(-length % 4)
            parts.append(_MAGIC_BYTES)
            size += len(_MAGIC_BYTES)

    def _unpack(self, key: int, payload: bytes) -> tuple[list[float], int]:
        """The labels of an IRHeader payload and where its image bytes start."""
        if len(payload) < _IR_HEADER.size:
            raise self._error(key, "shorter than its IRHeader")
        flag, label, _, _ = _IR_HEADER.unpack_from(payload)
        if flag == 0:
            return [label], _IR_HEADER.size
        end = _IR_HEADER.size + 4 * flag
        if len(payload) < end:
            raise self._error(key, f"shorter than its {flag} labels")
        return np.frombuffer(payload, "<f4", flag, _IR_HEADER.size).tolist(), end

    def _record_labels(self, key: int, offset: int) -> list[float]:
        """Labels of a record, reading its header only."""
        payload = self._read(key, offset, _IR_HEADER.size)
        flag = _IR_HEADER.unpack_from(payload)[0] if len(payload) >= _IR_HEADER.size else 0
        if flag:
            left = self._rec_size - offset - _FRAME.size - _IR_HEADER.size
            if 4 * flag > left:
                raise self._error(
                    key, f"announces {flag} labels ({4 * flag} bytes) but only {left} remain"
                )
            payload = self._read(key, offset, _IR_HEADER.size + 4 * flag)
        return self._unpack(key, payload)[0]

    def _label_images(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image keys, their offsets and raw labels: from the identity records when record 0
        lists them (one read per identity), else from the header of every image record."""
        offsets, found = self._lookup(np.array([0]))
        span = _key_span(self._record_labels(0, int(offsets[0])) if found[0] else [])
        if span is not None and span[1] > len(self._keys):  # before allocating the key range
            raise InsightFaceFormatError(
                f"{self.rec_path}: record 0 announces {span[0] - 1} image and {span[1] - span[0]} "
                f"identity records (keys up to {span[1] - 1}), but {self.idx_path.name} holds "
                f"{len(self._keys)} keys"
            )
        keys = self._keys if span is None else np.arange(1, span[0], dtype=np.int64)
        offsets, found = self._lookup(keys)
        if not found.all():
            missing = int(keys[~found][0])
            raise InsightFaceFormatError(f"{self.idx_path}: record {missing} is not in the index")
        labels = None if span is None else self._labels_from_identities(*span)
        if labels is None:
            labels = np.array(
                [self._image_label(int(k), int(o)) for k, o in zip(keys, offsets, strict=True)]
            )
        return keys, offsets, labels.astype(np.int64)

    def _image_label(self, key: int, offset: int) -> int:
        label = self._record_labels(key, offset)[0]
        if not (label.is_integer() and 0 <= label < MAX_LABEL):
            raise self._error(key, f"label {label} is not a whole number in [0, 2**31)")
        return int(label)

    def _labels_from_identities(self, first: int, end: int) -> np.ndarray | None:
        """Identity ordinal of images 1..first-1, or None unless the ranges partition them (each
        range within 1..first-1, so none allocates beyond the index)."""
        labels = np.full(first - 1, -1, dtype=np.int64)
        id_keys = np.arange(first, end, dtype=np.int64)
        offsets, found = self._lookup(id_keys)
        if not found.all():
            return None
        for ordinal, (key, offset) in enumerate(
            zip(id_keys.tolist(), offsets.tolist(), strict=True)
        ):
            span = _key_span(self._record_labels(key, offset))
            if span is None or span[1] > first or (labels[span[0] - 1 : span[1] - 1] >= 0).any():
                return None
            labels[span[0] - 1 : span[1] - 1] = ordinal
        return labels if (labels >= 0).all() else None


def _key_span(labels: Sequence[float]) -> tuple[int, int] | None:
    """(start, end) record keys held as the first two labels, None unless 1 <= start <= end."""
    if len(labels) < 2 or not all(float(x).is_integer() for x in labels[:2]):
        return None
    start, end = int(labels[0]), int(labels[1])
    return (start, end) if 1 <= start <= end else None


def _encode_record(payload: bytes) -> bytes:
    """MXNet's framing of one payload: split at each 4-aligned magic number, then padded."""
    if len(payload) >= 1 << _LENGTH_BITS:
        raise ValueError(f"RecordIO: a record holds < 2**29 bytes, got {len(payload)}")
    words = np.frombuffer(payload, dtype="<u4", count=len(payload) // 4)
    ends = [*(np.flatnonzero(words == MAGIC) * 4).tolist(), len(payload)]
    out = bytearray()
    start, last = 0, len(ends) - 1
    for part, end in enumerate(ends):
        cflag = 0 if last == 0 else 1 if part == 0 else 3 if part == last else 2
        out += _FRAME.pack(MAGIC, cflag << _LENGTH_BITS | (end - start)) + payload[start:end]
        start = end + len(_MAGIC_BYTES)
    return bytes(out + bytes(-len(payload) % 4))


def _pack(labels: Sequence[float], key: int, image: bytes) -> bytes:
    """An IRHeader payload as mxnet.recordio.pack makes it (one label inline, more after)."""
    if len(labels) == 1:
        return _IR_HEADER.pack(0, labels[0], key, 0) + image
    extra = np.asarray(labels, dtype="<f4").tobytes()
    return _IR_HEADER.pack(len(labels), 0.0, key, 0) + extra + image


def _encode_image(image: Tensor | bytes, size: int | None) -> bytes:
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(
            f"write_recordio: images must be uint8 [3, H, W], got {image.dtype} {list(image.shape)}"
        )
    picture = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
    if size is not None and picture.size != (size, size):
        picture = ImageOps.fit(picture, (size, size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _write_records(
    tmp: Path,
    images: Tensor | Sequence[Tensor | bytes],
    ordinals: np.ndarray,
    spans: list[tuple[int, int]],
    size: int | None,
    offsets: dict[int, int],
) -> None:
    first = len(ordinals) + 1
    with open(tmp, "wb") as f:

        def put(key: int, payload: bytes) -> None:
            offsets[key] = f.tell()
            f.write(_encode_record(payload))

        put(0, _pack([first, first + len(spans)], 0, b""))
        for key, (image, ordinal) in enumerate(
            zip(images, ordinals.tolist(), strict=True), start=1
        ):
            put(key, _pack([ordinal], key, _encode_image(image, size)))
        for ordinal, span in enumerate(spans):
            put(first + ordinal, _pack(span, first + ordinal, b""))


def write_recordio(
    path_prefix_or_dir: str | os.PathLike,
    images: Tensor | Sequence[Tensor | bytes],
    labels: Sequence[int] | Tensor,
    size: int | None = None,
) -> Path:
    """Write an InsightFace RecordIO set (header, image, identity records) and its index.

    `path_prefix_or_dir` is a .rec path (the .idx goes beside it) or a directory that gets
    train.rec and train.idx. Images are uint8 [3, H, W] (fitted to size x size when `size` is
    given, then stored as PNG) or encoded bytes stored as they are. Each identity's images must
    be consecutive; labels are stored renumbered 0..n-1 in order of first appearance unless they
    already are 0..n-1. Each file is written atomically; returns the .rec path.
    """
    rec = Path(path_prefix_or_dir)
    if rec.suffix != ".rec":
        rec = rec / "train.rec"
    raw = torch.as_tensor(labels, dtype=torch.long).view(-1).numpy()
    if len(raw) != len(images):
        raise ValueError(f"write_recordio: {len(images)} images but {len(raw)} labels")
    run_starts = np.flatnonzero(np.diff(raw, prepend=raw[:1] - 1))
    if len(np.unique(raw)) != len(run_starts):
        raise ValueError("write_recordio: each identity's images must be consecutive")
    ordinals = _contiguous_labels(raw)
    spans = [(0, 0)] * len(run_starts)
    for start, stop in zip(run_starts.tolist(), [*run_starts[1:].tolist(), len(raw)], strict=True):
        spans[ordinals[start]] = (start + 1, stop + 1)
    offsets: dict[int, int] = {}
    atomic_write(
        rec,
        functools.partial(
            _write_records,
            images=images,
            ordinals=ordinals,
            spans=spans,
            size=size,
            offsets=offsets,
        ),
    )
    lines = "".join(f"{key}\t{offset}\n" for key, offset in offsets.items())
    atomic_write(rec.with_suffix(".idx"), lambda tmp: tmp.write_text(lines))
    return rec


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickler that resolves no global at all, so a pickle can build plain data but never
    call anything (no os.system through __reduce__), even one `_check_opcodes` let through."""

    def find_class(self, module: str, name: str) -> NoReturn:
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


_GLOBALS = frozenset({"GLOBAL", "STACK_GLOBAL", "INST", "EXT1", "EXT2", "EXT4"})
_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_CONTAINERS = frozenset(
    {"EMPTY_LIST", "LIST", "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3"}
    | {"EMPTY_DICT", "DICT", "EMPTY_SET", "FROZENSET"}
)
MAX_CONTAINERS = 8  # a verification .bin is a tuple of two lists
# A genuine .bin spends hundreds of bytes an opcode (2-3 opcodes an encoded image, one a flag);
# refusing pickles denser than this keeps what the unpickler builds (~26 bytes an opcode: a
# reference on its stack, regrown, then in a list; ~48 more for each bytes object) within ~5 x.
BYTES_PER_OPCODE = 16


def _check_opcodes(path: str | os.PathLike, data: bytes) -> None:
    """Refuse, before unpickling, a global (code to run) and what would make the C unpickler
    allocate beyond the file: a length past the end (it allocates what a length announces, then
    reads), a memo index far ahead (it sizes its memo by the largest), many containers (~200
    bytes from 1 opcode) or more than one opcode per BYTES_PER_OPCODE bytes."""
    containers, most, names = 0, len(data) // BYTES_PER_OPCODE + 64, ["", ""]
    for count, (op, arg, _) in enumerate(_opcodes(path, data)):
        if op.name in _GLOBALS:
            asked = ".".join(names) if op.name == "STACK_GLOBAL" else str(arg).replace(" ", ".")
            raise InsightFaceFormatError(
                f"{path}: refused: the pickle asks for {asked}; a verification .bin holds only "
                "image bytes and bools"
            )
        if isinstance(arg, str):
            names = [names[1], arg]  # STACK_GLOBAL takes its module and name from the stack
        if count > most:
            raise InsightFaceFormatError(
                f"{path}: not a verification .bin pickle (over {most} opcodes in {len(data)} bytes)"
            )
        if op.name in _MEMO_PUTS and arg > count:
            raise InsightFaceFormatError(
                f"{path}: not a verification .bin pickle (memo index {arg} at opcode {count})"
            )
        containers += op.name in _CONTAINERS
        if containers > MAX_CONTAINERS:
            raise InsightFaceFormatError(
                f"{path}: not a verification .bin pickle (more than {MAX_CONTAINERS} lists, "
                "tuples, dicts or sets)"
            )


def _opcodes(path: str | os.PathLike, data: bytes) -> Iterator[tuple]:
    """pickletools.genops of `data`; its errors (a truncated argument, an unknown opcode, no
    STOP) become InsightFaceFormatError."""
    try:
        yield from pickletools.genops(data)
    except ValueError as err:
        raise InsightFaceFormatError(
            f"{path}: not a verification .bin pickle ({_one_line(err)})"
        ) from None


def load_bin(path: str | os.PathLike) -> tuple[list[bytes], list[bool]]:
    """Encoded images (2 per pair) and issame flags of an InsightFace verification .bin.

    Read with a no-globals unpickler (encoding="bytes", for the Python 2 pickles of LFW and co),
    so a crafted file is refused instead of run. Python 3 pickles of bytes at protocol < 3 need
    codecs.encode and are refused too. Memory stays within a small multiple of the file: see the
    module docstring.
    """
    try:
        with open_regular(path) as f:
            data = f.read()
    except ValueError as err:
        raise InsightFaceFormatError(str(err)) from None
    _check_opcodes(path, data)
    try:
        obj = _PlainDataUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as err:  # a malformed pickle raises anything from EOFError to TypeError
        raise InsightFaceFormatError(
            f"{path}: not a verification .bin pickle ({type(err).__name__}: {_one_line(err)})"
        ) from None
    if not (
        isinstance(obj, (tuple, list))
        and len(obj) == 2
        and all(isinstance(part, (tuple, list)) for part in obj)
    ):
        raise InsightFaceFormatError(
            f"{path}: expected a pair (images, issame) of lists, got {type(obj).__name__}"
        )
    images, flags = obj
    for i, image in enumerate(images):
        if not isinstance(image, (bytes, bytearray)):
            raise InsightFaceFormatError(f"{path}: image {i} is {type(image).__name__}, not bytes")
    # The memo lets one stored string stand for many images; each would be copied (bytes() of a
    # bytearray) and decoded. A genuine .bin stores each image once.
    referenced = sum(len(image) for image in images)
    if referenced > len(data):
        raise InsightFaceFormatError(
            f"{path}: images reference {referenced} bytes, more than the file's {len(data)}: "
            "a byte string is used for several images"
        )
    for i, flag in enumerate(flags):
        if not isinstance(flag, bool):
            raise InsightFaceFormatError(f"{path}: issame {i} is {type(flag).__name__}, not bool")
    if len(images) != 2 * len(flags):
        raise InsightFaceFormatError(
            f"{path}: {len(images)} images for {len(flags)} pairs (need 2 per pair)"
        )
    return [bytes(image) for image in images], list(flags)


def load_bin_pairs(
    path: str | os.PathLike, size: int = 112, max_pixels: int = MAX_PIXELS
) -> tuple[Tensor, Tensor]:
    """Decoded verification pairs of a .bin: uint8 images [2n, 3, size, size] (pair k is rows
    2k and 2k+1) and issame BoolTensor [n]; an image of more than `max_pixels` is an error."""
    images, flags = load_bin(path)
    out = torch.empty(len(images), 3, size, size, dtype=torch.uint8)
    for i, image in enumerate(images):
        try:
            out[i] = decode_image(image, size, max_pixels)
        except UnreadableImageError as err:
            why = _one_line(err).removeprefix("<bytes>: ")
            raise type(err)(f"{path}: image {i}: {why}") from None
    return out, torch.tensor(flags, dtype=torch.bool)


register(
    "insightface",
    Source(
        lambda cfg: RecordIOFaces(cfg.root, cfg.image_size, cfg.max_pixels),
        errors=(InsightFaceFormatError,),
    ),
)
