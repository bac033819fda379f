"""TFRecord reading without TensorFlow: CRC-32C, the record framing, the Example wire format."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from sharewise.data import tfrecord as tr
from sharewise.errors import DataError

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "yt8m"
if not SAMPLE.is_dir():
    SAMPLE = Path("/work/shared/data/yt8m")


# RFC 3720 (iSCSI) appendix B.4 vectors and the CRC catalogue's check value
VECTORS = [
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (b"", 0x0),
]


@pytest.mark.parametrize("data,expected", VECTORS)
def test_crc32c_known_vectors(data, expected):
    assert tr._crc32c_python(data) == expected
    assert tr.crc32c(data) == expected


def test_crc32c_many_matches_scalar_for_mixed_lengths(monkeypatch):
    # the numpy path (no native library): 16 bytes a step, messages right-aligned in groups of
    # similar length; every length mod 16 and several groups
    monkeypatch.setattr(tr, "_NATIVE", None)
    rng = np.random.default_rng(0)
    sizes = [*range(0, 40), 300, 299, 1000, 4695, 4700, 9001]
    msgs = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]
    msgs += [d for d, _ in VECTORS]
    got = tr.crc32c_many(msgs)
    assert got.dtype == np.uint32
    assert [int(v) for v in got] == [tr._crc32c_python(m) for m in msgs]


def test_masked_crc_formula():
    crc = 0xE3069283
    expected = ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) % 2**32
    assert tr.masked_crc(crc) == expected
    assert int(tr.masked_crc(np.array([crc], dtype=np.uint32))[0]) == expected


def _examples(n=5):
    rng = np.random.default_rng(1)
    return [{"id": f"v{i:03d}".encode(), "labels": np.array([i, 3 * i + 1, 2**40], dtype=np.int64),
             "mean_rgb": rng.normal(size=1024).astype(np.float32),
             "mean_audio": rng.normal(size=128).astype(np.float32)} for i in range(n)]


def test_round_trip(tmp_path):
    ex = _examples()
    path = tr.write_tfrecord(tmp_path / "a.tfrecord", ex)
    got = list(tr.read_examples([path]))
    assert len(got) == len(ex)
    offset = 0
    for (p, off, f), e in zip(got, ex):
        assert p == path and off == offset
        offset += 16 + len(tr.encode_example(e))
        assert f["id"] == ("bytes", [e["id"]])
        assert f["labels"][0] == "int64" and f["labels"][1].tolist() == e["labels"].tolist()
        np.testing.assert_array_equal(f["mean_rgb"][1], e["mean_rgb"])
        np.testing.assert_array_equal(f["mean_audio"][1], e["mean_audio"])


def test_unpacked_and_negative_values_decode():
    # an int64 list written unpacked (wire type 0), with a negative value; floats unpacked (wire type 5)
    ints = b"".join(tr._put_varint(1 << 3 | 0) + tr._put_varint(v) for v in (5, -2))
    floats = b"".join(tr._put_varint(1 << 3 | 5) + struct.pack("<f", v) for v in (1.5, -2.0))
    feat_i = tr._len_field(3, ints)
    feat_f = tr._len_field(2, floats)
    entries = (tr._len_field(1, tr._len_field(1, b"labels") + tr._len_field(2, feat_i))
               + tr._len_field(1, tr._len_field(1, b"x") + tr._len_field(2, feat_f)))
    f = tr.parse_example(tr._len_field(1, entries))
    assert f["labels"][1].tolist() == [5, -2]
    assert f["x"][1].tolist() == [1.5, -2.0]


def test_flipped_payload_byte_names_file_and_offset(tmp_path):
    ex = _examples(3)
    path = tr.write_tfrecord(tmp_path / "b.tfrecord", ex)
    raw = bytearray(path.read_bytes())
    second = 16 + len(tr.encode_example(ex[0]))
    raw[second + 12 + 40] ^= 0x01  # one bit inside the second record's payload
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=rf"b\.tfrecord: corrupt TFRecord at byte {second} \(CRC-32C of the payload"):
        list(tr.read_examples([path]))
    # without verification the damaged record is still framed correctly
    assert len(list(tr.iter_records([path], verify=False))) == 3


def test_corrupt_length_and_truncation(tmp_path):
    path = tr.write_tfrecord(tmp_path / "c.tfrecord", _examples(2))
    raw = bytearray(path.read_bytes())
    bad = bytearray(raw)
    bad[1] ^= 0x10  # the first record's length
    (tmp_path / "len.tfrecord").write_bytes(bytes(bad))
    with pytest.raises(DataError, match=r"len\.tfrecord: corrupt TFRecord length at byte 0"):
        tr.read_records(tmp_path / "len.tfrecord")
    (tmp_path / "cut.tfrecord").write_bytes(bytes(raw[:-10]))
    first = 16 + len(tr.encode_example(_examples(2)[0]))
    with pytest.raises(DataError, match=rf"cut\.tfrecord: truncated TFRecord at byte {first}"):
        tr.read_records(tmp_path / "cut.tfrecord")


def test_corrupt_message_is_an_error(tmp_path):
    payload = b"\x0a\xff\x01"  # field 1, length 255, but only 1 byte follows
    (tmp_path / "m.tfrecord").write_bytes(tr.write_record(payload))
    with pytest.raises(DataError, match=r"m\.tfrecord: corrupt tf\.train\.Example in the record at byte 0"):
        list(tr.read_examples([tmp_path / "m.tfrecord"]))


def test_paths_and_globs(tmp_path):
    for name in ("s1.tfrecord", "s0.tfrecord"):
        tr.write_tfrecord(tmp_path / name, _examples(1))
    assert [p.name for p in tr.expand_paths(str(tmp_path / "s*.tfrecord"))] == ["s0.tfrecord", "s1.tfrecord"]
    with pytest.raises(DataError, match="no file matches"):
        tr.expand_paths(str(tmp_path / "none*.tfrecord"))
    with pytest.raises(DataError, match="file not found"):
        tr.expand_paths([tmp_path / "missing.tfrecord"])


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="shared Youtube-8M sample not present")
def test_shipped_sample_reads_2950_videos():
    paths = tr.expand_paths(str(SAMPLE / "validate*.tfrecord"))
    assert len(paths) == 10
    n, labels = 0, 0
    for _, _, f in tr.read_examples(paths):
        n += 1
        labels += len(f["labels"][1])
        assert f["mean_rgb"][1].shape == (1024,) and f["mean_audio"][1].shape == (128,)
        assert len(f["id"][1]) == 1
    assert (n, labels) == (2950, 8906)


def _example_class():
    """``tf.train.Example`` built from its schema with the protobuf runtime (an independent decoder)."""
    pytest.importorskip("google.protobuf")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FileDescriptorProto(name="sharewise_test_example.proto", package="swtest", syntax="proto3")
    lab = descriptor_pb2.FieldDescriptorProto
    for name, type_, packed in (("BytesList", lab.TYPE_BYTES, False), ("FloatList", lab.TYPE_FLOAT, True),
                                ("Int64List", lab.TYPE_INT64, True)):
        m = f.message_type.add(name=name)
        fld = m.field.add(name="value", number=1, label=lab.LABEL_REPEATED, type=type_)
        if packed:
            fld.options.packed = True
    feat = f.message_type.add(name="Feature")
    feat.oneof_decl.add(name="kind")
    for i, (name, tname) in enumerate((("bytes_list", "BytesList"), ("float_list", "FloatList"),
                                       ("int64_list", "Int64List")), 1):
        feat.field.add(name=name, number=i, label=lab.LABEL_OPTIONAL, type=lab.TYPE_MESSAGE,
                       type_name=f".swtest.{tname}", oneof_index=0)
    feats = f.message_type.add(name="Features")
    entry = feats.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, label=lab.LABEL_OPTIONAL, type=lab.TYPE_STRING)
    entry.field.add(name="value", number=2, label=lab.LABEL_OPTIONAL, type=lab.TYPE_MESSAGE, type_name=".swtest.Feature")
    feats.field.add(name="feature", number=1, label=lab.LABEL_REPEATED, type=lab.TYPE_MESSAGE,
                    type_name=".swtest.Features.FeatureEntry")
    ex = f.message_type.add(name="Example")
    ex.field.add(name="features", number=1, label=lab.LABEL_OPTIONAL, type=lab.TYPE_MESSAGE, type_name=".swtest.Features")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("swtest.Example"))


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="shared Youtube-8M sample not present")
def test_parser_agrees_with_the_protobuf_runtime_on_the_sample():
    Example = _example_class()
    records = tr.read_records(SAMPLE / "validate0000.tfrecord")
    for _, payload in records[:20]:
        ref = Example.FromString(payload).features.feature
        got = tr.parse_example(payload)
        assert got["id"][1] == list(ref["id"].bytes_list.value)
        assert got["labels"][1].tolist() == list(ref["labels"].int64_list.value)
        np.testing.assert_array_equal(got["mean_rgb"][1], np.array(ref["mean_rgb"].float_list.value, np.float32))
        np.testing.assert_array_equal(got["mean_audio"][1], np.array(ref["mean_audio"].float_list.value, np.float32))
    # and what the test writer produces is a valid Example for the runtime too
    e = _examples(1)[0]
    ref = Example.FromString(tr.encode_example(e)).features.feature
    assert list(ref["labels"].int64_list.value) == e["labels"].tolist()


def _mutations(payloads, n, seed):
    """Payloads with random byte changes, cuts, insertions and deletions."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        p = bytearray(payloads[rng.integers(len(payloads))])
        kind = rng.integers(4)
        j = int(rng.integers(len(p)))
        if kind == 0:
            for _ in range(int(rng.integers(1, 4))):
                p[int(rng.integers(min(len(p), 80)))] = int(rng.integers(256))
        elif kind == 1:
            del p[j:]
        elif kind == 2:
            p[j:j] = rng.integers(0, 256, int(rng.integers(1, 4)), dtype=np.uint8).tobytes()
        else:
            del p[j:j + int(rng.integers(1, 4))]
        yield bytes(p)


def _same(a, b):
    assert list(a) == list(b)
    for name in a:
        assert a[name][0] == b[name][0]
        if isinstance(a[name][1], np.ndarray):
            assert a[name][1].dtype == b[name][1].dtype
            np.testing.assert_array_equal(a[name][1], b[name][1])
        else:
            assert a[name][1] == b[name][1]


def test_straight_line_parser_agrees_with_the_general_one():
    # the fast path either declines (None) or gives exactly what the general parser gives, on
    # well-formed records and on damaged ones (where the general parser decides: value or error)
    payloads = [tr.encode_example(e) for e in _examples(4)]
    payloads.append(tr.encode_example({"empty_f": np.zeros(0, np.float32), "ids": [b"a", b"bc"], "i": np.array([-1, 300])}))
    tr.parse_example(payloads[0])  # names known: the fast path's precondition
    # a map entry running past the end of its Features (whose length is 2 short), the 2 bytes
    # after it a valid empty field: the general parser rejects it
    whole = tr.encode_example({"mean_rgb": np.ones(3, np.float32), "id": b"ab\x12\x00"})
    entries = whole[tr._length(whole, 1, len(whole))[1]:]
    assert entries.endswith(b"\x12\x00")
    overrun = tr._len_field(1, entries[:-2]) + b"\x12\x00"
    with pytest.raises(tr._WireError, match="past the end"):
        tr._general_example(overrun)
    payloads.append(overrun)
    taken = 0
    for i, p in enumerate([*payloads, *_mutations(payloads, 1500, 0)]):
        try:
            fast = tr._canonical_example(p, len(p))
        except (tr._WireError, IndexError):
            fast = None
        try:
            general = tr._general_example(p)
        except tr._WireError:
            assert fast is None
            continue
        assert fast is not None or i >= 4  # the writer's own records are in TensorFlow's layout
        if fast is not None:
            taken += 1
            _same(fast, general)
    assert taken > 50


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="shared Youtube-8M sample not present")
def test_sample_records_take_the_straight_line_path():
    # the sample's layout (each list one packed field; an empty field 2 after the features)
    records = tr.read_records(SAMPLE / "validate0001.tfrecord")
    tr.parse_example(records[0][1])
    for _, payload in records[:50]:
        fast = tr._canonical_example(payload, len(payload))
        assert fast is not None
        _same(fast, tr._general_example(payload))
        assert not fast["mean_rgb"][1].flags.writeable  # a view into the record, not a copy


def test_corrupt_length_is_reported_before_the_truncation_it_causes(tmp_path):
    path = tr.write_tfrecord(tmp_path / "d.tfrecord", _examples(3))
    raw = bytearray(path.read_bytes())
    second = 16 + len(tr.encode_example(_examples(3)[0]))
    raw[second + 3] ^= 0x01  # the second length becomes 2^24 larger: framing runs past the end
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=rf"d\.tfrecord: corrupt TFRecord length at byte {second} "):
        tr.read_records(path)
    with pytest.raises(DataError, match=rf"d\.tfrecord: truncated TFRecord at byte {second}"):
        tr.read_records(path, verify=False)
