"""TFRecord files of ``tf.train.Example`` records, read without TensorFlow.

A TFRecord file is a sequence of records, each::

    uint64 length (little-endian) | uint32 masked CRC-32C of the 8 length bytes | payload | uint32 masked CRC-32C of the payload

with ``mask(c) = ((c >> 15) | (c << 17)) + 0xa282ead8 (mod 2³²)``. Both CRCs are checked, those of
a file's lengths and those of its payloads each in one pass after framing it. CRC-32C comes from
``google_crc32c`` or ``crc32c`` when one is installed, else from numpy (sixteen bytes a step over
all messages of a file at once, :func:`crc32c_many`; same values: the tests check it against the
published check value CRC-32C("123456789") = 0xE3069283 and a byte-at-a-time implementation).

The payload of a ``tf.train.Example`` is decoded by a small protobuf wire-format parser::

    Example  { Features features = 1; }
    Features { map<string, Feature> feature = 1; }          (entries: key = 1, value = 2)
    Feature  { oneof { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
    *List    { repeated <type> value = 1; }                  (packed or not)

Records in the layout TensorFlow writes (every list one packed field) take a straight-line path
that checks each span and views a float list in place (``np.frombuffer``, no copy); any other
layout, and every malformed message, goes through the general parser, which decides. Decoding
with the protobuf runtime (upb) was measured and is slower: its parse is fast, but turning a
repeated float field into an array costs more than this whole parser (docs/benchmarks.md).

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
_STEP_WORDS = 4  # 16 bytes per step of the vectorised CRC
_TABLES16: list[np.ndarray] | None = None


def _tables16() -> list[np.ndarray]:
    """Slicing-by-16 with 16-bit lookups. ``T₀`` is the byte table and ``T_{k+1}[i] = (T_k[i] >> 8)
    ^ T₀[T_k[i] & 0xFF]`` (byte i followed by k zero bytes). A 16-byte block b₀..b₁₅ moves a
    register r to ``⊕_j T_{15−j}[b_j]`` after ``r`` is xored into its first four bytes; in 16-bit
    halves, word i of the block (bytes 4i..4i+3, little-endian) adds ``L_i[w & 0xFFFF] ^ H_i[w >> 16]``
    with ``L_i[x] = T_{15−4i}[x & 0xFF] ^ T_{14−4i}[x >> 8]``, ``H_i[x] = T_{13−4i}[x & 0xFF] ^
    T_{12−4i}[x >> 8]``. Returns ``[L₀, H₀, L₁, H₁, …]``."""
    global _TABLES16
    if _TABLES16 is None:
        t = [_TABLE]
        for _ in range(4 * _STEP_WORDS - 1):
            t.append((t[-1] >> np.uint32(8)) ^ _TABLE[t[-1] & 0xFF])
        x = np.arange(1 << 16)
        lo, hi = x & 0xFF, x >> 8
        last = 4 * _STEP_WORDS - 1
        _TABLES16 = [pair for i in range(_STEP_WORDS)
                     for pair in (t[last - 4 * i][lo] ^ t[last - 1 - 4 * i][hi],
                                  t[last - 2 - 4 * i][lo] ^ t[last - 3 - 4 * i][hi])]
    return _TABLES16


def _crc32c_python(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _TABLE_LIST
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _native_crc32c():
    try:
        import google_crc32c

        return google_crc32c.value
    except ImportError:
        pass
    try:
        import crc32c

        return crc32c.crc32c
    except ImportError:
        return None


# the native CRC-32C function (bytes -> int) when a library provides one, else None
_NATIVE = _native_crc32c()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data`` (init and final xor 0xFFFFFFFF, reflected)."""
    return int(_NATIVE(bytes(data))) if _NATIVE is not None else _crc32c_python(data)


def crc32c_many(messages: Sequence[bytes]) -> np.ndarray:
    """CRC-32C of every message, as a (n,) uint32 array.

    Without a native library the messages are processed together over a zero-padded matrix,
    sixteen bytes a step (:func:`_tables16`), in groups of similar length: messages right-aligned
    (leading zero bytes leave a CRC register at 0 unchanged) with their first four bytes
    complemented (the same as starting from 0xFFFFFFFF).
    """
    n = len(messages)
    native = _NATIVE
    if native is not None:
        return np.fromiter((native(bytes(m)) for m in messages), dtype=np.uint32, count=n)
    out = np.zeros(n, dtype=np.uint32)
    lengths = np.fromiter((len(m) for m in messages), dtype=np.int64, count=n)
    for i in np.flatnonzero(lengths < 4):
        out[i] = _crc32c_python(messages[i])
    order = np.flatnonzero(lengths >= 4)
    order = order[np.argsort(lengths[order], kind="stable")]
    tables = _tables16()
    block = 4 * _STEP_WORDS
    start = 0
    while start < len(order):
        # a group: messages at most 25 % (+ 64 bytes) longer than its shortest, 16 MiB at most
        limit = lengths[order[start]] * 5 // 4 + 64
        count = max(1, (16 << 20) // int(limit))
        stop = min(len(order), start + count, start + int(np.searchsorted(lengths[order[start:]], limit, "right")))
        rows = order[start:stop]
        start = stop
        size = lengths[rows]
        width = -(-int(size.max()) // block) * block
        mat = np.zeros((len(rows), width), dtype=np.uint8)
        for r, i in enumerate(rows):
            mat[r, width - size[r]:] = np.frombuffer(messages[i], dtype=np.uint8)
        first = (width - size)[:, None] + np.arange(4)
        mat[np.arange(len(rows))[:, None], first] ^= 0xFF
        # (steps, words of a step, rows): word 0 of each step meets the register, the others are
        # looked up for every step at once
        words = np.ascontiguousarray(mat.view("<u4").reshape(len(rows), -1, _STEP_WORDS).transpose(1, 2, 0))
        words = words.astype(np.uint32, copy=False)
        rest = np.zeros((words.shape[0], len(rows)), dtype=np.uint32)
        for i in range(1, _STEP_WORDS):
            w = words[:, i]
            rest ^= tables[2 * i].take(w & 0xFFFF)
            rest ^= tables[2 * i + 1].take(w >> 16)
        lo_table, hi_table = tables[0], tables[1]
        reg = np.zeros(len(rows), dtype=np.uint32)
        low = np.empty(len(rows), dtype=np.uint32)
        for word, other in zip(words[:, 0], rest):
            np.bitwise_xor(reg, word, out=reg)
            np.bitwise_and(reg, 0xFFFF, out=low)
            np.right_shift(reg, 16, out=reg)
            reg = hi_table.take(reg)
            reg ^= lo_table.take(low)
            reg ^= other
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


_HEADER = struct.Struct("<QI")
_U32 = struct.Struct("<I")


def read_records(path: str | Path, *, verify: bool = True) -> list[tuple[int, bytes]]:
    """Every record of one TFRecord file as ``(byte offset, payload)``, CRCs checked when ``verify``.

    The file is framed first and the CRCs of all its lengths, then of all its payloads, are checked
    together afterwards (one vectorised pass each without a native CRC-32C); a corrupt length is
    reported before any truncation it causes, as a record-by-record check would."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise DataError(f"TFRecord file not found: {p}") from None
    except OSError as err:
        raise DataError(f"{p}: cannot read the file: {err.strerror or err}") from None
    header, u32 = _HEADER.unpack_from, _U32.unpack_from
    records: list[tuple[int, bytes]] = []
    heads: list[int] = []  # offsets of the headers read (those of records and a last truncated one)
    length_crcs: list[int] = []
    data_crcs: list[int] = []
    failure = None
    pos, size = 0, len(raw)
    while pos < size:
        if size - pos < 12:
            failure = f"{p}: truncated TFRecord header at byte {pos} ({size - pos} bytes left, 12 needed)"
            break
        length, length_crc = header(raw, pos)
        heads.append(pos)
        length_crcs.append(length_crc)
        start = pos + 12
        end = start + length + 4
        if end > size:
            failure = f"{p}: truncated TFRecord at byte {pos}: the record needs {length + 16} bytes, {size - pos} are left"
            break
        records.append((pos, raw[start:start + length]))
        data_crcs.append(u32(raw, start + length)[0])
        pos = end
    if verify and heads:
        got = masked_crc(crc32c_many([raw[h:h + 8] for h in heads]))
        bad = np.flatnonzero(got != np.asarray(length_crcs, dtype=np.uint32))
        if len(bad):
            raise DataError(f"{p}: corrupt TFRecord length at byte {heads[bad[0]]} (CRC-32C of the length does not match)")
    if failure is not None:
        raise DataError(failure)
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
        p = Path(path)
        for offset, payload in read_records(p, verify=verify):
            yield p, offset, payload


def write_record(payload: bytes) -> bytes:
    """One framed TFRecord record (used by tests and tools that write small files)."""
    head = struct.pack("<Q", len(payload))
    return (head + struct.pack("<I", masked_crc(crc32c(head))) + payload
            + struct.pack("<I", masked_crc(crc32c(payload))))


# ----------------------------------------------------------------- protobuf wire format
#
# One pass over the message with the positions kept as ints (no per-field tuples or generators):
# a key or length of one byte (the common case) is read inline, a longer one by _varint; a packed
# float list that fills its list message (how TensorFlow writes them) is one np.frombuffer.


class _WireError(ValueError):
    pass


_EMPTY = ("empty", None)
_NAMES: dict[bytes, str] = {}  # feature names seen (decoded once; a file has a handful)


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= end:
            raise _WireError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
        if shift >= 70:
            raise _WireError("varint longer than 10 bytes")


def _key(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """A field's key ``number << 3 | wire`` at ``pos`` (< end) and the position after it."""
    k = buf[pos]
    if k < 0x80:
        pos += 1
    else:
        k, pos = _varint(buf, pos, end)
    if k < 8:
        raise _WireError("field number 0")
    return k, pos


def _length(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """The length of a length-delimited field at ``pos`` and where its content starts."""
    if pos < end and buf[pos] < 0x80:
        length, pos = buf[pos], pos + 1
    else:
        length, pos = _varint(buf, pos, end)
    if pos + length > end:
        raise _WireError("length-delimited field past the end of its message")
    return length, pos


def _skip(buf: bytes, pos: int, end: int, wire: int) -> int:
    """The position after the value (wire type ``wire``) of a field not read."""
    if wire == 0:
        return _varint(buf, pos, end)[1]
    if wire == 2:
        length, pos = _length(buf, pos, end)
        return pos + length
    if wire == 1 or wire == 5:
        pos += 8 if wire == 1 else 4
        if pos > end:
            raise _WireError("truncated fixed-width field")
        return pos
    raise _WireError(f"unsupported wire type {wire}")


def _packed_floats(buf: bytes, pos: int, length: int) -> np.ndarray:
    if length % 4:
        raise _WireError("packed float list of a length not divisible by 4")
    if not length:
        return np.zeros(0, np.float32)
    return np.frombuffer(buf, dtype="<f4", count=length // 4, offset=pos)


def _float_list(buf: bytes, pos: int, end: int) -> np.ndarray:
    if pos < end and buf[pos] == 0x0A:  # one packed field filling the list
        length, start = _length(buf, pos + 1, end)
        if start + length == end:
            return _packed_floats(buf, start, length).astype(np.float32)
    parts: list[np.ndarray] = []
    while pos < end:
        k, pos = _key(buf, pos, end)
        wire = k & 7
        if k >> 3 != 1:
            pos = _skip(buf, pos, end, wire)
        elif wire == 2:
            length, pos = _length(buf, pos, end)
            parts.append(_packed_floats(buf, pos, length))
            pos += length
        elif wire == 5:
            if pos + 4 > end:
                raise _WireError("truncated fixed-width field")
            parts.append(np.frombuffer(buf, dtype="<f4", count=1, offset=pos))
            pos += 4
        else:
            _skip(buf, pos, end, wire)
            raise _WireError(f"float list value with wire type {wire}")
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def _varints(buf: bytes, pos: int, end: int, out: list[int]) -> None:
    """Append the packed varints of ``buf[pos:end]`` to ``out`` as signed 64-bit values."""
    while pos < end:
        x = buf[pos]
        if x < 0x80:
            pos += 1
        else:
            x, pos = _varint(buf, pos, end)
            if x >= 1 << 63:
                x -= 1 << 64
        out.append(x)


def _int64_list(buf: bytes, pos: int, end: int) -> np.ndarray:
    ints: list[int] = []
    while pos < end:
        k, pos = _key(buf, pos, end)
        wire = k & 7
        if k >> 3 != 1:
            pos = _skip(buf, pos, end, wire)
        elif wire == 2:
            length, pos = _length(buf, pos, end)
            _varints(buf, pos, pos + length, ints)
            pos += length
        elif wire == 0:
            x, pos = _varint(buf, pos, end)
            ints.append(x - (1 << 64) if x >= 1 << 63 else x)
        else:
            _skip(buf, pos, end, wire)
            raise _WireError(f"int64 list value with wire type {wire}")
    return np.array(ints, dtype=np.int64)


def _bytes_list(buf: bytes, pos: int, end: int) -> list[bytes]:
    items: list[bytes] = []
    while pos < end:
        k, pos = _key(buf, pos, end)
        if k == 0x0A:
            length, pos = _length(buf, pos, end)
            items.append(buf[pos:pos + length])
            pos += length
        else:
            pos = _skip(buf, pos, end, k & 7)
    return items


def _feature(buf: bytes, pos: int, end: int) -> tuple[str, object]:
    """``Feature { oneof { BytesList = 1; FloatList = 2; Int64List = 3 } }``: the last one set wins."""
    out: tuple[str, object] = _EMPTY
    while pos < end:
        k, pos = _key(buf, pos, end)
        if k == 0x12:
            length, pos = _length(buf, pos, end)
            out = ("float", _float_list(buf, pos, pos + length))
        elif k == 0x1A:
            length, pos = _length(buf, pos, end)
            out = ("int64", _int64_list(buf, pos, pos + length))
        elif k == 0x0A:
            length, pos = _length(buf, pos, end)
            out = ("bytes", _bytes_list(buf, pos, pos + length))
        else:
            pos = _skip(buf, pos, end, k & 7)
            continue
        pos += length
    return out


def _features(buf: bytes, pos: int, end: int, out: dict[str, tuple[str, object]]) -> None:
    """``Features { map<string, Feature> feature = 1; }`` into ``out``."""
    while pos < end:
        k, pos = _key(buf, pos, end)
        if k != 0x0A:
            pos = _skip(buf, pos, end, k & 7)
            continue
        length, pos = _length(buf, pos, end)
        stop = pos + length
        name, feature = None, _EMPTY
        while pos < stop:
            k, pos = _key(buf, pos, stop)
            if k == 0x0A:
                length, pos = _length(buf, pos, stop)
                raw = buf[pos:pos + length]
                name = _NAMES.get(raw)
                if name is None:
                    try:
                        name = raw.decode("utf-8")
                    except UnicodeDecodeError:
                        raise _WireError("feature name is not UTF-8") from None
                    if len(_NAMES) < 4096:
                        _NAMES[raw] = name
            elif k == 0x12:
                length, pos = _length(buf, pos, stop)
                feature = _feature(buf, pos, pos + length)
            else:
                pos = _skip(buf, pos, stop, k & 7)
                continue
            pos += length
        if name is None:
            raise _WireError("feature map entry without a name")
        out[name] = feature


_F4 = np.dtype("<f4")
_EMPTY_LISTS = {0x0A: "bytes", 0x12: "float", 0x1A: "int64"}


def _canonical_example(buf: bytes, end: int) -> dict[str, tuple[str, object]] | None:
    """The features of an Example in the layout TensorFlow writes (each map entry ``key, value``;
    each list one packed field, a bytes list one item), or None for anything else, which
    :func:`_general_example` then decodes or rejects. Lengths of one or two bytes are read inline;
    every span is checked to end exactly where its parent says, so a result is never wrong."""
    out: dict[str, tuple[str, object]] = {}
    pos = 0
    while pos < end:  # Example's fields: features (1), others skipped (video-level files end in an empty 2)
        k, pos = _key(buf, pos, end)
        if k != 0x0A:
            pos = _skip(buf, pos, end, k & 7)
            continue
        flen, pos = _length(buf, pos, end)
        if not _canonical_features(buf, pos, pos + flen, out):
            return None
        pos += flen
    return out


def _canonical_features(buf: bytes, pos: int, end: int, out: dict[str, tuple[str, object]]) -> bool:
    # each length: one byte, two bytes (c) or longer (_varint); a byte read past a span's end
    # only gives positions past it, which the equality checks after each length reject
    names = _NAMES
    while pos < end:
        if buf[pos] != 0x0A:  # a map entry
            return False
        b = buf[pos + 1]
        if b < 0x80:
            pos += 2
        elif (c := buf[pos + 2]) < 0x80:
            b, pos = (b & 0x7F) | c << 7, pos + 3
        else:
            b, pos = _varint(buf, pos + 1, end)
        stop = pos + b
        if stop > end or pos + 2 > stop or buf[pos] != 0x0A:  # its key first
            return False
        kend = pos + 2 + buf[pos + 1]
        if buf[pos + 1] >= 0x80 or kend + 2 > stop or buf[kend] != 0x12:  # then its value, a Feature
            return False
        name = names.get(buf[pos + 2:kend])
        if name is None:
            return False  # decoded (and remembered) by the general parser
        b = buf[kend + 1]
        if b < 0x80:
            p = kend + 2
        elif (c := buf[kend + 2]) < 0x80:
            b, p = (b & 0x7F) | c << 7, kend + 3
        else:
            b, p = _varint(buf, kend + 1, stop)
        if p + b != stop or b < 2:
            return False
        tag = buf[p]  # the list's field in the Feature
        b = buf[p + 1]
        if b < 0x80:
            q = p + 2
        elif (c := buf[p + 2]) < 0x80:
            b, q = (b & 0x7F) | c << 7, p + 3
        else:
            b, q = _varint(buf, p + 1, stop)
        if q + b != stop:
            return False
        if q == stop:
            kind = _EMPTY_LISTS.get(tag)
            if kind is None:
                return False
            out[name] = (kind, np.zeros(0, np.float32) if kind == "float" else
                         np.zeros(0, np.int64) if kind == "int64" else [])
            pos = stop
            continue
        if buf[q] != 0x0A or q + 2 > stop:  # one field 1 (packed values or the bytes item)
            return False
        b = buf[q + 1]
        if b < 0x80:
            r = q + 2
        elif (c := buf[q + 2]) < 0x80:
            b, r = (b & 0x7F) | c << 7, q + 3
        else:
            b, r = _varint(buf, q + 1, stop)
        if r + b != stop:
            return False
        if tag == 0x12:
            if b & 3:
                return False
            out[name] = ("float", np.frombuffer(buf, _F4, b >> 2, r) if b else np.zeros(0, np.float32))
        elif tag == 0x1A:
            ints: list[int] = []
            _varints(buf, r, stop, ints)
            out[name] = ("int64", np.array(ints, dtype=np.int64))
        elif tag == 0x0A:
            out[name] = ("bytes", [buf[r:stop]])
        else:
            return False
        pos = stop
    return True


def parse_example(payload: bytes) -> dict[str, tuple[str, object]]:
    """The features of one serialised ``tf.train.Example``: ``{name: (kind, value)}`` with kind
    ``bytes`` (list of bytes), ``float`` (float32 array, a read-only view into ``payload`` when
    the list is one packed field), ``int64`` (int64 array) or ``empty``.
    Raises ``ValueError`` on a malformed message."""
    buf = payload if type(payload) is bytes else bytes(payload)
    try:
        out = _canonical_example(buf, len(buf))
    except (_WireError, IndexError):
        out = None
    return out if out is not None else _general_example(buf)


def _general_example(buf: bytes) -> dict[str, tuple[str, object]]:
    """Any wire-format layout of an Example (unpacked lists, other field orders, unknown fields)."""
    out: dict[str, tuple[str, object]] = {}
    pos, end = 0, len(buf)
    while pos < end:
        k, pos = _key(buf, pos, end)
        if k == 0x0A:
            length, pos = _length(buf, pos, end)
            _features(buf, pos, pos + length, out)
            pos += length
        else:
            pos = _skip(buf, pos, end, k & 7)
    return out


def read_examples(paths: Iterable[str | Path], *, verify: bool = True
                  ) -> Iterator[tuple[Path, int, dict[str, tuple[str, object]]]]:
    """``(file, byte offset, features)`` of every ``tf.train.Example`` in ``paths``."""
    for path in paths:
        p = Path(path)
        for offset, payload in read_records(p, verify=verify):
            try:
                features = parse_example(payload)
            except _WireError as err:
                raise DataError(f"{p}: corrupt tf.train.Example in the record at byte {offset}: {err}") from None
            yield p, offset, features


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
