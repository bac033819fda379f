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


def test_crc32c_many_matches_scalar_for_mixed_lengths():
    rng = np.random.default_rng(0)
    msgs = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in (0, 1, 3, 4, 5, 17, 300, 299, 1000)]
    msgs += [d for d, _ in VECTORS]
    got = tr.crc32c_many(msgs)
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
