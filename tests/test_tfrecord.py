import pathlib

import numpy as np
import pytest

from jaxloop.data import tfrecord
from jaxloop.data.errors import DataError
from jaxloop.data.tfrecord import TFRecordError, read_records, write_records

EXAMPLE = "womd/motion_data_one_example.tfrecord"


def test_crc32c_check_value_and_numpy_fallback_agree():
    # The CRC-32C "check" value of the ASCII digits 123456789 is 0xE3069283 (RFC 3720, B.4).
    assert tfrecord.crc32c(b"123456789") == 0xE3069283
    assert tfrecord.crc32c_numpy(b"123456789") == 0xE3069283
    rng = np.random.default_rng(0)
    for size in (0, 1, 7, 8, 9, 1000, 4099, 100_003):  # >= 4096: the block-parallel path
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert tfrecord.crc32c_numpy(data) == tfrecord.crc32c(data), size


def test_reading_with_numpy_crc(shared_data, monkeypatch):
    monkeypatch.setattr(tfrecord, "crc32c", tfrecord.crc32c_numpy)
    assert len(next(read_records(shared_data / EXAMPLE))) == (shared_data / EXAMPLE).stat().st_size - 16


def test_masked_crc_formula():
    crc = tfrecord.crc32c(b"abc")
    expected = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    assert tfrecord.masked_crc(b"abc") == expected


def test_write_read_round_trip(tmp_path):
    records = [b"", b"x", bytes(range(256)) * 5]
    path = tmp_path / "r.tfrecord"
    assert write_records(path, records) == 3
    assert list(read_records(path)) == records
    # Framing: 8 + 4 + len + 4 bytes per record.
    assert path.stat().st_size == sum(16 + len(r) for r in records)
    assert tfrecord.is_tfrecord(path)


def test_fixture_reads_one_record(shared_data):
    recs = list(read_records(shared_data / EXAMPLE))
    assert len(recs) == 1
    assert len(recs[0]) + 16 == (shared_data / EXAMPLE).stat().st_size


def _copy(shared_data, tmp_path) -> tuple[pathlib.Path, bytearray]:
    raw = bytearray((shared_data / EXAMPLE).read_bytes())
    return tmp_path / "copy.tfrecord", raw


def test_corrupt_payload_crc(shared_data, tmp_path):
    path, raw = _copy(shared_data, tmp_path)
    raw[1000] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(TFRecordError, match=r"copy\.tfrecord: record 0: field 'data_crc': .*payload CRC mismatch"
                                            r".*byte offset 0") as e:
        list(read_records(path))
    assert isinstance(e.value, DataError) and isinstance(e.value, ValueError)


def test_corrupt_length_crc(shared_data, tmp_path):
    path, raw = _copy(shared_data, tmp_path)
    raw[9] ^= 0x01  # inside the masked CRC of the length
    path.write_bytes(bytes(raw))
    with pytest.raises(TFRecordError, match="length CRC mismatch"):
        list(read_records(path))


def test_truncated_file(shared_data, tmp_path):
    path, raw = _copy(shared_data, tmp_path)
    path.write_bytes(bytes(raw[: len(raw) // 2]))
    n = len(raw) - 16
    with pytest.raises(TFRecordError, match=rf"record 0: truncated record: payload has {len(raw) // 2 - 12} of {n}"):
        list(read_records(path))
    path.write_bytes(bytes(raw[:-2]))  # payload complete, CRC cut
    with pytest.raises(TFRecordError, match="payload CRC missing"):
        list(read_records(path))
    path.write_bytes(bytes(raw[:5]))
    with pytest.raises(TFRecordError, match="truncated record header: 5 of 12"):
        list(read_records(path))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.tfrecord"
    path.write_bytes(b"")
    with pytest.raises(TFRecordError, match=r"empty\.tfrecord: record 0: empty file"):
        list(read_records(path))


def test_error_names_second_record_and_offset(tmp_path):
    path = tmp_path / "two.tfrecord"
    write_records(path, [b"a" * 10, b"b" * 20])
    raw = bytearray(path.read_bytes())
    raw[26 + 12 + 3] ^= 0xFF  # a payload byte of record 1, which starts at 16 + 10 = 26
    path.write_bytes(bytes(raw))
    it = read_records(path)
    assert next(it) == b"a" * 10  # lazy: the good first record comes out before the error
    with pytest.raises(TFRecordError, match="record 1: .*byte offset 26") as e:
        next(it)
    assert e.value.record == 1 and e.value.offset == 26
