"""TFRecord files of ``tf.train.Example`` records, read without TensorFlow.

A TFRecord file is a sequence of records, each::

    uint64 length (little-endian) | uint32 masked CRC-32C of the 8 length bytes | payload | uint32 masked CRC-32C of the payload

with ``mask(c) = ((c >> 15) | (c << 17)) + 0xa282ead8 (mod 2³²)``. Both CRCs are checked (the
payload CRCs of a file in one vectorised pass). CRC-32C comes from ``google_crc32c`` or ``crc32c``
when one is installed, else from the table implementation here (same values; the tests check it
against the published check value CRC-32C("123456789") = 0xE3069283).

The payload of a ``tf.train.Example`` is decoded by a small protobuf wire-format parser::

    Example  { Features features = 1; }
    Features { map<string, Feature> feature = 1; }          (entries: key = 1, value = 2)
    Feature  { oneof { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
    *List    { repeated <type> value = 1; }                  (packed or not)

A truncated or corrupt record, a CRC mismatch or an undecodable message is a
:class:`~sharewise.errors.DataError` naming the file and the record's byte offset.
"""

from __future__ import annotations

import glob as _glob
import struct
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError

_POLY = 0x82F63B78  # CRC-32C (Castagnoli), reflected
_MASK_DELTA = 0xA282EAD8


def _make_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table[i] = c
    return table


_TABLE = _make_table()
_TABLE_LIST = [int(v) for v in _TABLE]


def _crc32c_python(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _TABLE_LIST
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _native_crc32c():
    try:
        import google_crc32c

        return lambda data: int(google_crc32c.value(bytes(data)))
    except ImportError:
        pass
    try:
        import crc32c

        return lambda data: int(crc32c.crc32c(bytes(data)))
    except ImportError:
        return None


_NATIVE = _native_crc32c()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data`` (init and final xor 0xFFFFFFFF, reflected)."""
    return _NATIVE(data) if _NATIVE is not None else _crc32c_python(data)


def crc32c_many(messages: Sequence[bytes]) -> np.ndarray:
    """CRC-32C of every message, as a (n,) uint32 array.

    Without a native library the messages are processed together, one byte column at a time over
    a zero-padded matrix (messages right-aligned: leading zero bytes leave a CRC register at 0
    unchanged, and the initial value 0xFFFFFFFF equals complementing the first four bytes from a
    zero register), in groups of similar length.
    """
    n = len(messages)
    out = np.zeros(n, dtype=np.uint32)
    if _NATIVE is not None:
        for i, m in enumerate(messages):
            out[i] = _NATIVE(m)
        return out
    lengths = np.array([len(m) for m in messages], dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    group = 256
    for start in range(0, n, group):
        rows = order[start:start + group]
        short = [i for i in rows if lengths[i] < 4]
        for i in short:
            out[i] = _crc32c_python(messages[i])
        rows = np.array([i for i in rows if lengths[i] >= 4], dtype=np.int64)
        if not len(rows):
            continue
        width = int(lengths[rows].max())
        mat = np.zeros((len(rows), width), dtype=np.uint8)
        for r, i in enumerate(rows):
            m = np.frombuffer(messages[i], dtype=np.uint8)
            mat[r, width - len(m):] = m
            mat[r, width - len(m):width - len(m) + 4] ^= 0xFF
        reg = np.zeros(len(rows), dtype=np.uint32)
        for j in range(width):
            reg = _TABLE[(reg ^ mat[:, j]) & 0xFF] ^ (reg >> np.uint32(8))
        out[rows] = reg ^ np.uint32(0xFFFFFFFF)
    return out


def masked_crc(crc: int | np.ndarray):
    """The TFRecord mask of a CRC: ``((crc >> 15) | (crc << 17)) + 0xa282ead8`` mod 2³²."""
    if isinstance(crc, np.ndarray):
        c = crc.astype(np.uint64)
        return ((((c >> np.uint64(15)) | (c << np.uint64(17))) + np.uint64(_MASK_DELTA)) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    crc = int(crc) & 0xFFFFFFFF
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


# ----------------------------------------------------------------- files and framing


def expand_paths(patterns: str | Path | Iterable[str | Path], key: str = "data.path") -> list[Path]:
    """Files named by paths and globs (``*``, ``?``, ``[..]``), each glob sorted; a missing file or a
    glob matching nothing is a :class:`DataError` naming it."""
    if isinstance(patterns, (str, Path)):
        patterns = [patterns]
    out: list[Path] = []
    for pattern in patterns:
        text = str(pattern)
        if any(ch in text for ch in "*?["):
            hits = sorted(Path(p) for p in _glob.glob(text) if Path(p).is_file())
            if not hits:
                raise DataError(f"{key}: no file matches {text!r}")
            out.extend(hits)
        else:
            p = Path(text)
            if not p.exists():
                raise DataError(f"{key}: file not found: {p}")
            if p.is_dir():
                raise DataError(f"{key}: {p} is a directory; give TFRecord files or a glob such as {str(p / '*.tfrecord')!r}")
            out.append(p)
    if not out:
        raise DataError(f"{key}: no TFRecord files given")
    return out


def read_records(path: str | Path, *, verify: bool = True) -> list[tuple[int, bytes]]:
    """Every record of one TFRecord file as ``(byte offset, payload)``, CRCs checked when ``verify``."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise DataError(f"TFRecord file not found: {p}") from None
    except OSError as err:
        raise DataError(f"{p}: cannot read the file: {err.strerror or err}") from None
    view = memoryview(raw)
    records: list[tuple[int, bytes]] = []
    data_crcs: list[int] = []
    pos, size = 0, len(raw)
    while pos < size:
        if size - pos < 12:
            raise DataError(f"{p}: truncated TFRecord header at byte {pos} ({size - pos} bytes left, 12 needed)")
        length_bytes = raw[pos:pos + 8]
        (length,) = struct.unpack_from("<Q", raw, pos)
        (length_crc,) = struct.unpack_from("<I", raw, pos + 8)
        if verify and masked_crc(crc32c(length_bytes)) != length_crc:
            raise DataError(f"{p}: corrupt TFRecord length at byte {pos} (CRC-32C of the length does not match)")
        end = pos + 12 + length + 4
        if end > size:
            raise DataError(f"{p}: truncated TFRecord at byte {pos}: the record needs {length + 16} bytes, "
                            f"{size - pos} are left")
        records.append((pos, bytes(view[pos + 12:pos + 12 + length])))
        (crc,) = struct.unpack_from("<I", raw, pos + 12 + length)
        data_crcs.append(crc)
        pos = end
    if verify and records:
        got = masked_crc(crc32c_many([r[1] for r in records]))
        bad = np.flatnonzero(got != np.asarray(data_crcs, dtype=np.uint32))
        if len(bad):
            raise DataError(f"{p}: corrupt TFRecord at byte {records[bad[0]][0]} (CRC-32C of the payload does not "
                            f"match{f'; {len(bad)} records affected' if len(bad) > 1 else ''})")
    return records


def iter_records(paths: Iterable[str | Path], *, verify: bool = True) -> Iterator[tuple[Path, int, bytes]]:
    """``(file, byte offset, payload)`` of every record of every file, file after file."""
    for path in paths:
        for offset, payload in read_records(path, verify=verify):
            yield Path(path), offset, payload


def write_record(payload: bytes) -> bytes:
    """One framed TFRecord record (used by tests and tools that write small files)."""
    head = struct.pack("<Q", len(payload))
    return (head + struct.pack("<I", masked_crc(crc32c(head))) + payload
            + struct.pack("<I", masked_crc(crc32c(payload))))


# ----------------------------------------------------------------- protobuf wire format


class _WireError(ValueError):
    pass


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= end:
            raise _WireError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _WireError("varint longer than 10 bytes")


def _fields(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, object]]:
    """``(field number, wire type, value)``: an int (varint), ``(start, stop)`` (length-delimited)
    or the raw bytes (fixed32/fixed64)."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _WireError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise _WireError("length-delimited field past the end of its message")
            value, pos = (pos, pos + length), pos + length
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > end:
                raise _WireError("truncated fixed-width field")
            value, pos = buf[pos:pos + width], pos + width
        else:
            raise _WireError(f"unsupported wire type {wire}")
        yield number, wire, value


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _decode_feature(buf: bytes, start: int, end: int) -> tuple[str, object]:
    kind, value = "empty", None
    for number, wire, v in _fields(buf, start, end):
        if wire != 2 or number not in (1, 2, 3):
            continue
        s, e = v  # type: ignore[misc]
        if number == 1:
            kind, value = "bytes", [bytes(buf[a:b]) for n, w, (a, b) in _fields(buf, s, e) if n == 1 and w == 2]
        elif number == 2:
            parts: list[np.ndarray] = []
            for n, w, item in _fields(buf, s, e):
                if n != 1:
                    continue
                if w == 2:
                    a, b = item  # type: ignore[misc]
                    if (b - a) % 4:
                        raise _WireError("packed float list of a length not divisible by 4")
                    parts.append(np.frombuffer(buf, dtype="<f4", count=(b - a) // 4, offset=a))
                elif w == 5:
                    parts.append(np.frombuffer(item, dtype="<f4"))  # type: ignore[arg-type]
                else:
                    raise _WireError(f"float list value with wire type {w}")
            kind, value = "float", np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
        else:
            ints: list[int] = []
            for n, w, item in _fields(buf, s, e):
                if n != 1:
                    continue
                if w == 2:
                    a, b = item  # type: ignore[misc]
                    while a < b:
                        x, a = _varint(buf, a, b)
                        ints.append(_signed64(x))
                elif w == 0:
                    ints.append(_signed64(item))  # type: ignore[arg-type]
                else:
                    raise _WireError(f"int64 list value with wire type {w}")
            kind, value = "int64", np.asarray(ints, dtype=np.int64)
    return kind, value


def parse_example(payload: bytes) -> dict[str, tuple[str, object]]:
    """The features of one serialised ``tf.train.Example``: ``{name: (kind, value)}`` with kind
    ``bytes`` (list of bytes), ``float`` (float32 array), ``int64`` (int64 array) or ``empty``.
    Raises ``ValueError`` on a malformed message."""
    out: dict[str, tuple[str, object]] = {}
    n = len(payload)
    for number, wire, v in _fields(payload, 0, n):
        if number != 1 or wire != 2:
            continue
        fs, fe = v  # type: ignore[misc]
        for num2, wire2, entry in _fields(payload, fs, fe):
            if num2 != 1 or wire2 != 2:
                continue
            es, ee = entry  # type: ignore[misc]
            key, feature = None, ("empty", None)
            for num3, wire3, item in _fields(payload, es, ee):
                if wire3 != 2:
                    continue
                a, b = item  # type: ignore[misc]
                if num3 == 1:
                    try:
                        key = bytes(payload[a:b]).decode("utf-8")
                    except UnicodeDecodeError:
                        raise _WireError("feature name is not UTF-8") from None
                elif num3 == 2:
                    feature = _decode_feature(payload, a, b)
            if key is None:
                raise _WireError("feature map entry without a name")
            out[key] = feature
    return out


def read_examples(paths: Iterable[str | Path], *, verify: bool = True
                  ) -> Iterator[tuple[Path, int, dict[str, tuple[str, object]]]]:
    """``(file, byte offset, features)`` of every ``tf.train.Example`` in ``paths``."""
    for path, offset, payload in iter_records(paths, verify=verify):
        try:
            features = parse_example(payload)
        except _WireError as err:
            raise DataError(f"{path}: corrupt tf.train.Example in the record at byte {offset}: {err}") from None
        yield path, offset, features


# ----------------------------------------------------------------- writing (tests, tools)


def _put_varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(number: int, data: bytes) -> bytes:
    return _put_varint(number << 3 | 2) + _put_varint(len(data)) + data


def encode_example(features: dict[str, object]) -> bytes:
    """Serialise ``{name: value}`` as a ``tf.train.Example``: bytes / list of bytes → bytes_list,
    a float array → packed float_list, an int array or list of ints → packed int64_list."""
    entries = b""
    for name, value in features.items():
        if isinstance(value, bytes) or (isinstance(value, list) and value and isinstance(value[0], bytes)):
            items = [value] if isinstance(value, bytes) else value
            feature = _len_field(1, b"".join(_len_field(1, x) for x in items))
        else:
            arr = np.asarray(value)
            if arr.dtype.kind == "f":
                feature = _len_field(2, _len_field(1, arr.astype("<f4").tobytes()))
            else:
                feature = _len_field(3, _len_field(1, b"".join(_put_varint(int(x)) for x in arr.ravel())))
        entries += _len_field(1, _len_field(1, name.encode()) + _len_field(2, feature))
    return _len_field(1, entries)


def write_tfrecord(path: str | Path, examples: Iterable[dict[str, object]]) -> Path:
    """Write examples (see :func:`encode_example`) as one TFRecord file."""
    p = Path(path)
    p.write_bytes(b"".join(write_record(encode_example(e)) for e in examples))
    return p
