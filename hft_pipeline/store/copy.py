"""PostgreSQL binary COPY payloads built and parsed with numpy, whole batches at a time.

Format (PostgreSQL docs, "COPY ... BINARY"): an 11-byte signature, int32 flags, int32 header
extension length; then per row int16 field count and per field int32 length (-1 for NULL) and
the value in network byte order; then int16 -1. A row whose NULL fields are known has a fixed
layout, so a structured big-endian dtype writes every row of that layout in one numpy call.
"""

from __future__ import annotations

import numpy as np

COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
COPY_HEADER = COPY_SIGNATURE + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
COPY_TRAILER = b"\xff\xff"

#: Microseconds from the Unix epoch to the PostgreSQL epoch (2000-01-01 UTC).
PG_EPOCH_OFFSET_US = 946_684_800_000_000

#: Column order of the payload made by `encode_ticks`.
TICK_COPY_COLUMNS = ("symbol_id", "ts", "ts_ns", "seq", "price", "volume", "bid", "ask")

_FIXED_TICK_FIELDS = (
    ("symbol_id", ">i4"),
    ("ts", ">i8"),
    ("ts_ns", ">i8"),
    ("seq", ">i8"),
    ("price", ">f8"),
    ("volume", ">f8"),
)


def _tick_row_dtype(has_bid: bool, has_ask: bool) -> np.dtype:
    fields: list[tuple[str, str]] = [("nfields", ">i2")]
    for name, fmt in _FIXED_TICK_FIELDS:
        fields += [(f"len_{name}", ">i4"), (name, fmt)]
    for name, present in (("bid", has_bid), ("ask", has_ask)):
        fields.append((f"len_{name}", ">i4"))
        if present:
            fields.append((name, ">f8"))
    return np.dtype(fields)


# One fixed row layout per NULL pattern of (bid, ask).
_TICK_DTYPES = {(b, a): _tick_row_dtype(b, a) for b in (True, False) for a in (True, False)}


def ts_ns_to_pg_us(ts_ns: np.ndarray) -> np.ndarray:
    """PostgreSQL timestamptz wire values (µs since 2000-01-01) of ns timestamps, floored."""
    return ts_ns // 1000 - PG_EPOCH_OFFSET_US


def encode_ticks(
    symbol_id: np.ndarray,
    ts_ns: np.ndarray,
    seq: np.ndarray,
    price: np.ndarray,
    volume: np.ndarray,
    bid: np.ndarray,
    ask: np.ndarray,
) -> bytes:
    """A complete binary COPY payload for TICK_COPY_COLUMNS; NaN bid/ask become NULL.

    Rows are grouped by NULL pattern, so their order in the payload differs from the input;
    the table has no order anyway.
    """
    ts_us = ts_ns_to_pg_us(ts_ns)
    bid_ok = ~np.isnan(bid)
    ask_ok = ~np.isnan(ask)
    parts = [COPY_HEADER]
    for (has_bid, has_ask), dtype in _TICK_DTYPES.items():
        mask = (bid_ok if has_bid else ~bid_ok) & (ask_ok if has_ask else ~ask_ok)
        n = int(np.count_nonzero(mask))
        if n == 0:
            continue
        rows = np.empty(n, dtype)
        rows["nfields"] = len(TICK_COPY_COLUMNS)
        rows["len_symbol_id"] = 4
        rows["symbol_id"] = symbol_id[mask]
        for name, values in (
            ("ts", ts_us),
            ("ts_ns", ts_ns),
            ("seq", seq),
            ("price", price),
            ("volume", volume),
        ):
            rows[f"len_{name}"] = 8
            rows[name] = values[mask]
        for name, present, values in (("bid", has_bid, bid), ("ask", has_ask, ask)):
            if present:
                rows[f"len_{name}"] = 8
                rows[name] = values[mask]
            else:
                rows[f"len_{name}"] = -1
        parts.append(rows.tobytes())
    parts.append(COPY_TRAILER)
    return b"".join(parts)


def decode_fixed_rows(payload: bytes, fields: list[tuple[str, str]]) -> np.ndarray:
    """Parse a binary COPY TO payload whose fields are all non-NULL fixed-width values.

    `fields` are (name, big-endian numpy format) in column order; returns a structured array
    with those names in native byte order.
    """
    row_dtype = np.dtype(
        [("nfields", ">i2")]
        + [item for name, fmt in fields for item in ((f"len_{name}", ">i4"), (name, fmt))]
    )
    native = np.dtype([(name, np.dtype(fmt).newbyteorder("=")) for name, fmt in fields])
    if not payload.startswith(COPY_SIGNATURE):
        raise ValueError("binary COPY payload without the PGCOPY signature")
    ext_len = int.from_bytes(payload[15:19], "big")
    body = memoryview(payload)[19 + ext_len :]
    if bytes(body[-2:]) != COPY_TRAILER:
        raise ValueError("binary COPY payload without the end-of-data trailer")
    body = body[:-2]
    if len(body) % row_dtype.itemsize:
        raise ValueError(
            "binary COPY payload does not have fixed-width rows (a NULL or variable-width value?)"
        )
    rows = np.frombuffer(body, row_dtype)
    out = np.empty(rows.shape[0], native)
    for name, fmt in fields:
        if rows.shape[0] and np.any(rows[f"len_{name}"] != np.dtype(fmt).itemsize):
            raise ValueError(f"binary COPY column {name} is NULL or not {fmt}")
        out[name] = rows[name]
    return out


def encode_fixed_rows(fields: list[tuple[str, np.ndarray | bytes]], n: int) -> bytes:
    """A complete binary COPY payload of `n` rows whose fields all have a fixed width.

    Each field is (big-endian numpy format, values) for a column of numbers (NaN is a value,
    not NULL), or (name, bytes) for a text column holding the same value in every row: text
    of one length has one width, so a whole block still encodes in one numpy call.
    """
    layout: list[tuple[str, str]] = [("nfields", ">i2")]
    for i, (fmt, value) in enumerate(fields):
        width = f"S{len(value)}" if isinstance(value, bytes) else fmt
        layout += [(f"len{i}", ">i4"), (f"v{i}", width)]
    rows = np.empty(n, np.dtype(layout))
    rows["nfields"] = len(fields)
    for i, (fmt, value) in enumerate(fields):
        if isinstance(value, bytes):
            rows[f"len{i}"] = len(value)
        else:
            rows[f"len{i}"] = np.dtype(fmt).itemsize
        rows[f"v{i}"] = value
    return COPY_HEADER + rows.tobytes() + COPY_TRAILER
