"""Store fixtures: the same suite runs against SQLite (tmp file) and PostgreSQL (fresh database)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest

from hft_pipeline.market.ticks import TickBatch
from hft_pipeline.store import TickStore, open_store


@dataclass
class Backend:
    name: str
    url: str
    store: TickStore
    query: Callable[[str], list[tuple]]  # a query on a separate connection, no parameters


def _pg_query(dsn: str) -> Callable[[str], list[tuple]]:
    def query(sql: str) -> list[tuple]:
        with psycopg.connect(dsn, autocommit=True) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else []

    return query


def _sqlite_query(path: Path) -> Callable[[str], list[tuple]]:
    def query(sql: str) -> list[tuple]:
        conn = sqlite3.connect(path)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    return query


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A migrated, empty store of each backend."""
    if request.param == "sqlite":
        path = tmp_path / "db" / "store.sqlite3"
        url, query = f"sqlite:///{path}", _sqlite_query(path)
    else:
        url = request.getfixturevalue("pg_dsn")
        query = _pg_query(url)
    store = open_store(url, pool_size=4)
    try:
        yield Backend(request.param, url, store, query)
    finally:
        store.close()


def make_ticks(
    rng: np.random.Generator,
    symbols: list[str],
    n: int,
    start_ns: int,
    span_ns: int,
    *,
    tick_ns: int = 1_000_000,
) -> pd.DataFrame:
    """Random ticks as a frame (symbol, ts, seq, price, volume, bid, ask), sorted by (symbol, ts).

    Timestamps fall on a `tick_ns` grid, so several ticks share a ts and only seq orders them;
    seq increases with ts per symbol, as a feed assigns it. About a fifth of bid/ask are NaN.
    """
    symbol = rng.choice(np.asarray(symbols, dtype=object), n)
    ts = start_ns + rng.integers(0, span_ns // tick_ns, n) * tick_ns
    frame = pd.DataFrame({"symbol": symbol, "ts": ts.astype(np.int64)})
    frame = frame.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)
    frame["seq"] = frame.groupby("symbol").cumcount().astype(np.int64) + 1
    frame["price"] = np.round(rng.uniform(10, 200, n), 2)
    frame["volume"] = np.round(rng.uniform(0, 5, n), 3)
    bid = frame["price"].to_numpy() - 0.01
    ask = frame["price"].to_numpy() + 0.01
    bid[rng.random(n) < 0.2] = np.nan
    ask[rng.random(n) < 0.2] = np.nan
    frame["bid"] = bid
    frame["ask"] = ask
    return frame


def write_frame(
    store: TickStore,
    frame: pd.DataFrame,
    batch_size: int,
    rng: np.random.Generator | None = None,
    first_offset: int = 1,
) -> int:
    """Write `frame` in batches (shuffled first when `rng` is given); return the last offset."""
    if rng is not None:
        frame = frame.iloc[rng.permutation(len(frame))]
    offset = first_offset - 1
    for offset, start in enumerate(range(0, len(frame), batch_size), start=first_offset):
        store.write_ticks(TickBatch.from_frame(frame.iloc[start : start + batch_size]), offset)
    return offset


def expected_ticks(frame: pd.DataFrame, symbol: str) -> pd.DataFrame:
    """The ticks of `symbol` as read_ticks must return them: ordered by (ts, seq)."""
    part = frame[frame["symbol"] == symbol].sort_values(["ts", "seq"], kind="stable")
    return part[["ts", "seq", "price", "volume", "bid", "ask"]].reset_index(drop=True)


def pandas_candles(frame: pd.DataFrame, symbol: str, rule: str) -> pd.DataFrame:
    """The reference of docs/architecture.md#candles: pandas resample(closed="left",
    label="left") of the ticks."""
    part = expected_ticks(frame, symbol)
    indexed = part.set_index(pd.to_datetime(part["ts"], unit="ns"))
    resampled = indexed.resample(rule, closed="left", label="left")
    out = pd.DataFrame(
        {
            "open": resampled["price"].first(),
            "high": resampled["price"].max(),
            "low": resampled["price"].min(),
            "close": resampled["price"].last(),
            "volume": resampled["volume"].sum(),
            "ticks": resampled["price"].count().astype(np.int64),
        }
    )
    out = out[out["ticks"] > 0]
    out.insert(0, "ts", out.index.as_unit("ns").asi8.astype(np.int64))
    return out.reset_index(drop=True)


def assert_candles_equal(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Exact on bucket, OHLC and count; volume to float-summation-order tolerance."""
    assert list(actual.columns) == ["ts", "open", "high", "low", "close", "volume", "ticks"]
    assert len(actual) == len(expected)
    for column in ("ts", "open", "high", "low", "close", "ticks"):
        np.testing.assert_array_equal(
            actual[column].to_numpy(), expected[column].to_numpy(), column
        )
    np.testing.assert_allclose(
        actual["volume"].to_numpy(), expected["volume"].to_numpy(), rtol=1e-12
    )
