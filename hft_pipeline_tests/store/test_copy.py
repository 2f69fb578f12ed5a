"""The numpy binary COPY encoder against an independent struct-based reading of the format."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from hft_pipeline.store.copy import (
    COPY_HEADER,
    COPY_TRAILER,
    PG_EPOCH_OFFSET_US,
    decode_fixed_rows,
    encode_ticks,
    ts_ns_to_pg_us,
)


def parse_rows(payload: bytes) -> list[tuple]:
    """Walk the payload field by field (slow, obviously correct) and return the rows."""
    assert payload.startswith(COPY_HEADER) and payload.endswith(COPY_TRAILER)
    pos, rows = len(COPY_HEADER), []
    formats = [">i", ">q", ">q", ">q", ">d", ">d", ">d", ">d"]
    while True:
        (count,) = struct.unpack_from(">h", payload, pos)
        pos += 2
        if count == -1:
            break
        assert count == 8
        row = []
        for fmt in formats:
            (length,) = struct.unpack_from(">i", payload, pos)
            pos += 4
            if length == -1:
                row.append(None)
                continue
            assert length == struct.calcsize(fmt)
            row.append(struct.unpack_from(fmt, payload, pos)[0])
            pos += length
        rows.append(tuple(row))
    assert pos == len(payload)
    return rows


def test_encode_ticks_matches_the_format_field_by_field() -> None:
    rng = np.random.default_rng(0)
    n = 257
    sym = rng.integers(1, 9, n).astype(np.int32)
    ts = rng.integers(-(10**17), 10**18, n).astype(np.int64)
    seq = rng.integers(0, 2**40, n).astype(np.int64)
    price, volume = rng.uniform(1, 100, n), rng.uniform(0, 5, n)
    bid = np.where(rng.random(n) < 0.3, np.nan, price - 0.5)
    ask = np.where(rng.random(n) < 0.3, np.nan, price + 0.5)
    rows = parse_rows(encode_ticks(sym, ts, seq, price, volume, bid, ask))

    expected = [
        (
            int(sym[i]),
            int(ts[i]) // 1000 - PG_EPOCH_OFFSET_US,  # floor to µs, PostgreSQL epoch
            int(ts[i]),
            int(seq[i]),
            float(price[i]),
            float(volume[i]),
            None if np.isnan(bid[i]) else float(bid[i]),
            None if np.isnan(ask[i]) else float(ask[i]),
        )
        for i in range(n)
    ]
    # Rows come grouped by NULL pattern; the set of rows is what matters.
    assert sorted(rows, key=lambda r: r[2]) == sorted(expected, key=lambda r: r[2])
    assert {(r[6] is None, r[7] is None) for r in rows} == {
        (False, False), (False, True), (True, False), (True, True)
    }  # fmt: skip


def test_empty_encode_is_header_and_trailer() -> None:
    empty_i, empty_f = np.empty(0, np.int64), np.empty(0)
    payload = encode_ticks(
        np.empty(0, np.int32), empty_i, empty_i, empty_f, empty_f, empty_f, empty_f
    )
    assert payload == COPY_HEADER + COPY_TRAILER


def test_timestamps_floor_to_microseconds_before_1970() -> None:
    us = ts_ns_to_pg_us(np.array([-1, 0, 999, 1000, -1001], np.int64))
    assert (us + PG_EPOCH_OFFSET_US).tolist() == [-1, 0, 0, 1, -2]


def test_decode_fixed_rows_round_trip_and_rejects_nulls() -> None:
    fields = [("a", ">i8"), ("b", ">f8")]
    body = b"".join(struct.pack(">hiqid", 2, 8, v, 8, v / 2) for v in (5, -7))
    got = decode_fixed_rows(COPY_HEADER + body + COPY_TRAILER, fields)
    assert got["a"].tolist() == [5, -7] and got["b"].tolist() == [2.5, -3.5]
    assert got.dtype["a"] == np.dtype("int64")  # native byte order for pandas

    with_null = struct.pack(">hiqi", 2, 8, 1, -1) + struct.pack(">hiqid", 2, 8, 5, 8, 1.0)
    with pytest.raises(ValueError, match="NULL|fixed-width"):
        decode_fixed_rows(COPY_HEADER + with_null + COPY_TRAILER, fields)
    with pytest.raises(ValueError, match="signature"):
        decode_fixed_rows(b"garbage" + body, fields)


def test_numpy_arrays_reach_postgresql_bit_for_bit(pg_dsn: str) -> None:
    import psycopg

    from hft_pipeline.store.pg_arrays import Float8Array, Int4Array, Int8Array

    floats = np.array([0.1, -0.0, 2.0**53 + 2, 5e-324, -1.7976931348623157e308])
    ints = np.array([-(2**63), -1, 0, 2**63 - 1])
    with psycopg.connect(pg_dsn) as conn:
        got = conn.execute(
            "select array_agg(f order by o), (select array_agg(i order by o) from "
            "unnest(%b::int8[]) with ordinality as x(i, o)), (select array_agg(j) from "
            "unnest(%b::int4[]) as y(j)), cardinality(%b::float8[]) "
            "from unnest(%b::float8[]) with ordinality as t(f, o)",
            (
                Int8Array(ints),
                Int4Array(np.array([7, -7], np.int32)),
                Float8Array(np.empty(0)),
                Float8Array(floats),
            ),
        ).fetchone()
    assert np.array(got[0]).view(np.int64).tolist() == floats.view(np.int64).tolist()
    assert got[1] == ints.tolist() and got[2] == [7, -7] and got[3] == 0
