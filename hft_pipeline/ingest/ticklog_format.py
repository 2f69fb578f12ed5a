"""The tick log's record format: CRC-framed TickBatch records, encoded and decoded.

The layout is below and in docs/ticklog.md; the log (`ingest/ticklog.py`) stores these records and
recovery (`ingest/ticklog_recovery.py`) checks them on open.
"""

from __future__ import annotations

import functools
import struct
import zlib

import numpy as np

from hft_pipeline.market.ticks import TickBatch

# Record = 16-byte header + payload.
# header: magic "HTLG", version u8, flags u8 (0), reserved u16 (0), payload length u32, crc32 u32
# payload: tick count u32, symbol count u16, 2 pad bytes, then per symbol u8 length + utf-8 name,
# zero padding to 8 bytes, then the columns ts, seq, price, volume, bid, ask (8 bytes each per
# tick) and sym (int32), zero padding to 8 bytes. Records are 8-byte multiples, so every column
# of a record read into a buffer at a record boundary is naturally aligned for np.frombuffer.
MAGIC = b"HTLG"
VERSION = 1
HEADER = struct.Struct("<4sBBHII")
HEADER_SIZE = HEADER.size
PAYLOAD_HEAD = struct.Struct("<IH2x")
_WIDE_COLUMNS = ("ts", "seq", "price", "volume", "bid", "ask")
_WIDE_DTYPES = (np.int64, np.int64, np.float64, np.float64, np.float64, np.float64)
BYTES_PER_TICK = 8 * len(_WIDE_COLUMNS) + 4
# A payload length above this cannot have been written by us (u32 framing); it marks garbage.
_MAX_PAYLOAD = 0xFFFFFFFF


class TickLogError(Exception):
    """Base class for tick log failures."""


class OffsetError(TickLogError, ValueError):
    """An offset that is not a retained record boundary of the log."""


class CorruptLogError(TickLogError):
    """A record that recovery did not know as damaged fails its framing or CRC check on read
    (it went bad while the log was open); reopening the log skips and reports it."""


def pad8(n: int) -> int:
    return (n + 7) & ~7


@functools.lru_cache(maxsize=64)
def _symbol_table(symbols: tuple[str, ...]) -> bytes:
    """The length-prefixed UTF-8 names of a batch's symbol table (cached: feeds reuse tables)."""
    names = [s.encode("utf-8") for s in symbols]
    if len(names) > 0xFFFF:
        raise TickLogError(f"a batch may carry at most 65535 symbols, got {len(names)}")
    for raw in names:
        if len(raw) > 0xFF:
            raise TickLogError(f"symbol {raw[:40]!r}... is longer than 255 bytes")
    return b"".join(bytes([len(raw)]) + raw for raw in names)


def encode_record(batch: TickBatch) -> bytearray:
    """One framed record (header + payload) holding every tick and the symbol table of `batch`."""
    n = len(batch)
    table = _symbol_table(batch.symbols)
    n_names = len(batch.symbols)
    columns = [np.asarray(getattr(batch, c)) for c in (*_WIDE_COLUMNS, "sym")]
    for name, col in zip((*_WIDE_COLUMNS, "sym"), columns, strict=True):
        if col.shape != (n,):
            raise TickLogError(f"column {name} has shape {col.shape}, expected ({n},)")
    if n:
        sym = columns[-1]
        # A sym id outside the table would make the record undecodable on replay: refuse it now.
        lo, hi = int(sym.min()), int(sym.max())
        if lo < 0 or hi >= n_names:
            raise TickLogError(f"sym ids span {lo}..{hi} but the batch has {n_names} symbols")
    table_len = pad8(PAYLOAD_HEAD.size + len(table))
    payload_len = pad8(table_len + n * BYTES_PER_TICK)
    if payload_len > _MAX_PAYLOAD:
        raise TickLogError(f"batch of {n} ticks is too large for one record; split it")
    buf = bytearray(HEADER_SIZE + payload_len)
    PAYLOAD_HEAD.pack_into(buf, HEADER_SIZE, n, n_names)
    pos = HEADER_SIZE + PAYLOAD_HEAD.size
    buf[pos : pos + len(table)] = table
    pos = HEADER_SIZE + table_len
    for col, dtype in zip(columns[:-1], _WIDE_DTYPES, strict=True):
        np.frombuffer(buf, dtype=dtype, count=n, offset=pos)[:] = col
        pos += 8 * n
    np.frombuffer(buf, dtype=np.int32, count=n, offset=pos)[:] = columns[-1]
    crc = zlib.crc32(memoryview(buf)[HEADER_SIZE:])
    HEADER.pack_into(buf, 0, MAGIC, VERSION, 0, 0, payload_len, crc)
    return buf


def check_header(buf: bytes | bytearray | memoryview, pos: int) -> int:
    """The payload length of the record header at `pos`, or -1 if it is not a valid header."""
    magic, version, flags, reserved, length, _crc = HEADER.unpack_from(buf, pos)
    # Every header byte is checked (the CRC covers only the payload), so any flipped byte of a
    # record is caught either here or by the CRC.
    if (
        magic != MAGIC
        or version != VERSION
        or flags
        or reserved
        or length < PAYLOAD_HEAD.size
        or length % 8
    ):
        return -1
    return length


def decode_record(buf: bytearray | bytes | memoryview, pos: int = 0) -> tuple[TickBatch, int]:
    """Decode the whole record at `pos` of `buf` (columns are views into `buf`); returns it and
    its size. Raises CorruptLogError if the framing or CRC is wrong or the record is cut short."""
    if len(buf) - pos < HEADER_SIZE:
        raise CorruptLogError(f"record at {pos} is cut short: {len(buf) - pos} bytes")
    length = check_header(buf, pos)
    if length < 0:
        raise CorruptLogError(f"no valid record header at {pos}")
    start = pos + HEADER_SIZE
    if len(buf) - start < length:
        raise CorruptLogError(f"record at {pos} is cut short: payload {length} bytes")
    crc = HEADER.unpack_from(buf, pos)[5]
    view = memoryview(buf)[start : start + length]
    if zlib.crc32(view) != crc:
        raise CorruptLogError(f"record at {pos} fails its CRC check")
    n, nsym = PAYLOAD_HEAD.unpack_from(view, 0)
    p = PAYLOAD_HEAD.size
    symbols = []
    for _ in range(nsym):
        k = view[p]
        symbols.append(bytes(view[p + 1 : p + 1 + k]).decode("utf-8"))
        p += 1 + k
    p = pad8(p)
    if p + n * BYTES_PER_TICK > length:
        raise CorruptLogError(f"record at {pos} declares {n} ticks but holds fewer")
    cols = []
    for dtype in _WIDE_DTYPES:
        cols.append(np.frombuffer(buf, dtype=dtype, count=n, offset=start + p))
        p += 8 * n
    sym = np.frombuffer(buf, dtype=np.int32, count=n, offset=start + p)
    batch = TickBatch(tuple(symbols), sym, *cols)
    return batch, HEADER_SIZE + length
