"""TFRecord framing without TensorFlow: lazy reading with CRC checks, and writing.

A record is

    uint64 length (little endian)
    uint32 masked CRC32C of the 8 length bytes
    bytes  payload[length]
    uint32 masked CRC32C of the payload

with masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2^32). Both CRCs are
verified; a corrupt CRC, a truncated record, a length beyond the end of the file or an
empty file raises `TFRecordError` naming the file, the record index and the byte offset.
A length is checked against the bytes left in the file before anything is allocated, so
a corrupt header whose CRC happens to match cannot ask for terabytes. CRC32C comes from
`google_crc32c` when importable, else from a table-driven numpy implementation.
"""

from __future__ import annotations

import functools
import os
import struct
from typing import Iterable, Iterator

import numpy as np

from jaxloop.data.errors import DataError

_MASK_DELTA = 0xA282EAD8
_LEN = struct.Struct("<Q")
_CRC = struct.Struct("<I")


class TFRecordError(DataError):
    """A TFRecord file that is empty, truncated or fails a CRC check."""

    def __init__(self, message: str, *, file=None, record: int | None = None, offset: int | None = None,
                 field: str | None = None):
        self.offset = offset
        if offset is not None:
            message = f"{message} (at byte offset {offset})"
        super().__init__(message, file=file, record=record, field=field)


# ----------------------------------------------------------------------------- CRC32C


def _make_table() -> np.ndarray:
    poly = 0x82F63B78  # Castagnoli, reflected
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(poly), table >> 1).astype(np.uint32)
    return table


_TABLE = _make_table()
_TABLE_LIST = _TABLE.tolist()


def _update_bytes(crc: int, data) -> int:
    """Raw (no pre/post inversion) table CRC update over a few bytes, in Python."""
    t = _TABLE_LIST
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


@functools.lru_cache(maxsize=8)
def _shift_tables(length: int) -> tuple[list, list, list, list]:
    """Byte tables of the linear map `s -> update(s, zeros(length))` (GF(2)): 4 x 256 entries."""
    basis = (np.uint32(1) << np.arange(32, dtype=np.uint32)).astype(np.uint32)
    for _ in range(length):  # all 32 basis states through `length` zero bytes at once
        basis = _TABLE[basis & 0xFF] ^ (basis >> 8)
    tables = []
    byte = np.arange(256, dtype=np.uint32)
    for j in range(4):
        out = np.zeros(256, np.uint32)
        for k in range(8):
            out ^= np.where((byte >> k) & 1, basis[8 * j + k], np.uint32(0)).astype(np.uint32)
        tables.append(out.tolist())
    return tuple(tables)


def crc32c_numpy(data: bytes) -> int:
    """CRC32C (Castagnoli) in numpy, vectorised across blocks.

    The table CRC without its final inversion is linear over GF(2) in (state, data), so
    update(s, A || B) = shift_len(B)(update(s, A)) ^ update(0, B). The data is cut into
    B blocks of L bytes (B ~ L ~ sqrt(n)); all blocks advance together, one byte column per
    numpy step (L steps), then the block CRCs are chained with the precomputed shift map
    (B cheap steps) and the tail is finished bytewise.
    """
    buf = np.frombuffer(data, np.uint8)
    n = buf.size
    crc = 0xFFFFFFFF
    if n >= 4096:
        length = 1 << max(6, int(np.ceil(np.log2(np.sqrt(n)))))
        blocks = n // length
        cols = buf[:blocks * length].reshape(blocks, length)
        c = np.zeros(blocks, np.uint32)
        for j in range(length):
            c = _TABLE[(c ^ cols[:, j]) & 0xFF] ^ (c >> 8)
        x0, x1, x2, x3 = _shift_tables(length)
        for ci in c.tolist():
            crc = x0[crc & 0xFF] ^ x1[(crc >> 8) & 0xFF] ^ x2[(crc >> 16) & 0xFF] ^ x3[crc >> 24] ^ ci
        rest = buf[blocks * length:].tolist()
    else:
        rest = buf.tolist()
    return _update_bytes(crc, rest) ^ 0xFFFFFFFF


try:
    import google_crc32c as _gcrc

    def crc32c(data: bytes) -> int:
        """CRC32C of `data` (google_crc32c)."""
        return _gcrc.value(bytes(data) if not isinstance(data, bytes) else data)

    CRC_BACKEND = "google_crc32c"
except ImportError:  # pragma: no cover - exercised by forcing the numpy path in tests
    crc32c = crc32c_numpy
    CRC_BACKEND = "numpy"


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


# ----------------------------------------------------------------------------- reading / writing


def read_records(path: str | os.PathLike, verify: bool = True) -> Iterator[bytes]:
    """Yields the payload of each record of a TFRecord file, lazily, in order.

    Raises `TFRecordError` (naming file, record index, byte offset) for an empty file,
    a truncated header or payload, or a length / payload CRC mismatch (when `verify`).
    """
    path = os.fspath(path)
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        index = 0
        offset = 0
        while True:
            header = fh.read(12)
            if not header:
                if index == 0:
                    raise TFRecordError("empty file: no TFRecord records", file=path, record=0, offset=0)
                return
            if len(header) < 12:
                raise TFRecordError(f"truncated record header: {len(header)} of 12 bytes", file=path, record=index,
                                    offset=offset)
            length_bytes, length_crc = header[:8], _CRC.unpack_from(header, 8)[0]
            if verify and masked_crc(length_bytes) != length_crc:
                raise TFRecordError("corrupt record: length CRC mismatch", file=path, record=index, offset=offset,
                                    field="length_crc")
            (length,) = _LEN.unpack(length_bytes)
            left = max(size - offset - 12, 0)
            if length > left:  # checked before reading: a corrupt length must not allocate `length` bytes
                raise TFRecordError(f"truncated record: payload has {left} of {length} bytes (the record length "
                                    "runs past the end of the file)", file=path, record=index, offset=offset)
            payload = fh.read(length)
            if len(payload) < length:
                raise TFRecordError(f"truncated record: payload has {len(payload)} of {length} bytes", file=path,
                                    record=index, offset=offset)
            footer = fh.read(4)
            if len(footer) < 4:
                raise TFRecordError("truncated record: payload CRC missing", file=path, record=index, offset=offset)
            if verify and masked_crc(payload) != _CRC.unpack(footer)[0]:
                raise TFRecordError("corrupt record: payload CRC mismatch", file=path, record=index, offset=offset,
                                    field="data_crc")
            yield payload
            index += 1
            offset += 16 + length


def encode_record(payload: bytes) -> bytes:
    length = _LEN.pack(len(payload))
    return length + _CRC.pack(masked_crc(length)) + payload + _CRC.pack(masked_crc(payload))


def write_records(path: str | os.PathLike, records: Iterable[bytes]) -> int:
    """Writes records to a TFRecord file; returns how many."""
    n = 0
    with open(path, "wb") as fh:
        for rec in records:
            fh.write(encode_record(bytes(rec)))
            n += 1
    return n


def is_tfrecord(path: str | os.PathLike) -> bool:
    """True if the file starts with a TFRecord header whose length CRC checks out."""
    try:
        with open(path, "rb") as fh:
            header = fh.read(12)
    except OSError:
        return False
    return len(header) == 12 and masked_crc(header[:8]) == _CRC.unpack_from(header, 8)[0]
