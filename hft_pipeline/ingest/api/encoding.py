"""The /ticks body as JSON: msgspec row structs, rows encoded once and reused where they repeat."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
import pandas as pd

RAW_FIELDS = ("ts", "seq", "price", "volume")
CANDLE_FIELDS = ("ts", "open", "high", "low", "close", "volume", "ticks")


class RawRow(msgspec.Struct, gc=False):
    """One raw tick of a /ticks response (fields in response order)."""

    time: str
    ts: int
    seq: int
    price: float
    volume: float


class CandleRow(msgspec.Struct, gc=False):
    """One candle of a /ticks response (fields in response order)."""

    time: str
    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    ticks: int
    closed: bool


class TicksBody(msgspec.Struct, gc=False):
    """The /ticks response."""

    symbol: str
    timeframe: str
    order: str
    count: int
    source: str
    data: msgspec.Raw  # the rows' JSON array, encoded by `encode_rows`


def _iso(ts: np.ndarray) -> list[str]:
    """ISO-8601 UTC times to the microsecond (truncated), e.g. 2026-01-02T03:04:05.123456Z."""
    return np.datetime_as_string(ts.astype("datetime64[ns]"), unit="us", timezone="UTC").tolist()


def _rows(columns: dict[str, np.ndarray], row: type[RawRow] | type[CandleRow]) -> list:
    """`columns` as row structs: built by `map` in C, no per-row dict or Python frame."""
    fields = row.__struct_fields__[1:]
    values = [np.asarray(columns[f]).tolist() for f in fields]
    return list(map(row, _iso(columns["ts"]), *values))


def concat_columns(
    parts: list[dict[str, np.ndarray]], fields: tuple[str, ...]
) -> dict[str, np.ndarray]:
    parts = [p for p in parts if len(p["ts"])]
    if not parts:
        return {f: np.empty(0) for f in fields}
    return {f: np.concatenate([np.asarray(p[f]) for p in parts]) for f in fields}


def encode_rows(columns: dict[str, np.ndarray], row: type[RawRow] | type[CandleRow]) -> list[bytes]:
    """Each row's JSON object without its braces, in order: `json_array` joins them."""
    if not len(columns["ts"]):
        return []
    # Rows hold numbers, booleans and ISO times only, so "},{" occurs only between rows.
    return msgspec.json.encode(_rows(columns, row))[2:-2].split(b"},{")


def json_array(rows: list[bytes]) -> msgspec.Raw:
    return msgspec.Raw(b"[{" + b"},{".join(rows) + b"}]" if rows else b"[]")


class EncodedTicks:
    """The JSON rows of the last newest-first raw answer per symbol, reused for the next one.

    Consecutive /ticks answers of a symbol overlap in all but the ticks that arrived in between,
    and encoding is most of an answer's cost. A cached row is reused only where the new answer's
    columns equal the cached ones element by element, so late ticks merged into the ring (or any
    other change) just cost a fresh encoding.
    """

    #: Rows cached per symbol at most (an answer holds up to MAX_LIMIT).
    MAX_ROWS = 20_000

    def __init__(self) -> None:
        self._last: dict[str, tuple[dict[str, np.ndarray], list[bytes]]] = {}

    def rows(self, symbol: str, columns: dict[str, np.ndarray]) -> list[bytes]:
        """JSON rows of `columns` (raw ticks, newest first), as `encode_rows` would give."""
        n = len(columns["ts"])
        rows = self._reuse(symbol, columns, n)
        if rows is None:
            rows = encode_rows(columns, RawRow)
        if n <= self.MAX_ROWS:
            self._last[symbol] = (columns, rows)
        else:
            self._last.pop(symbol, None)
        return rows

    def _reuse(self, symbol: str, columns: dict[str, np.ndarray], n: int) -> list[bytes] | None:
        last = self._last.get(symbol)
        if last is None or n == 0 or not len(last[1]):
            return None
        old, old_rows = last
        ts, seq = columns["ts"], columns["seq"]
        at = np.flatnonzero((ts == old["ts"][0]) & (seq == old["seq"][0]))
        if not len(at):
            return None
        p = int(at[0])  # rows newer than the cached newest
        m = min(n - p, len(old_rows))
        # Bit for bit (0.0 and -0.0 compare equal but encode differently); every column is 8-byte.
        if not all(
            np.array_equal(columns[f][p : p + m].view(np.int64), old[f][:m].view(np.int64))
            for f in RAW_FIELDS
        ):
            return None
        newer = encode_rows({f: columns[f][:p] for f in RAW_FIELDS}, RawRow)
        older = encode_rows({f: columns[f][p + m :] for f in RAW_FIELDS}, RawRow)
        return newer + old_rows[:m] + older


def frame_columns(frame: pd.DataFrame, fields: tuple[str, ...]) -> dict[str, np.ndarray]:
    return {f: frame[f].to_numpy() for f in fields}


def _struct_schema(struct: type[msgspec.Struct]) -> dict[str, Any]:
    """`struct`'s JSON Schema, inline: its fields are scalars, so it needs no references."""
    return msgspec.json.schema(struct)["$defs"][struct.__name__]


def ticks_schema() -> dict[str, Any]:
    """The JSON Schema of a /ticks body (TicksBody with its rows)."""
    schema = _struct_schema(TicksBody)
    schema["properties"]["data"] = {
        "description": "Raw ticks when timeframe=raw, else candles",
        "anyOf": [
            {"type": "array", "items": _struct_schema(RawRow)},
            {"type": "array", "items": _struct_schema(CandleRow)},
        ],
    }
    return schema
