"""Analytics fixtures: deterministic simulator ticks written into SQLite and PostgreSQL stores."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hft_pipeline.ingest.feeds.simulator import generate
from hft_pipeline.market.ticks import TickBatch
from hft_pipeline.store import TickStore, open_store

HOUR_NS = 3600 * 1_000_000_000
#: 2026-01-04 18:00 UTC: data crosses midnight, so indicator warm-up must reach into the day before.
T0 = 1_767_549_600 * 1_000_000_000
SYMBOLS = ("PETR4", "VALE3", "R_100")
RATE = 1.5  # ticks/s over all symbols: one tick per 2 s per symbol


@dataclass
class StoreCase:
    name: str
    url: str
    store: TickStore


def simulator_ticks(hours: float, seed: int = 7) -> pd.DataFrame:
    """Deterministic ticks of SYMBOLS from T0 for `hours` (symbol, ts, seq, price, volume, bid, ask)."""
    n = int(hours * 3600 * RATE / len(SYMBOLS))
    frames = []
    for symbol in SYMBOLS:
        b = generate(seed, symbol, 0, n, RATE, len(SYMBOLS), T0)
        frames.append(
            pd.DataFrame(
                {
                    "symbol": symbol,
                    "ts": b.ts,
                    "seq": b.seq,
                    "price": b.price,
                    "volume": b.volume,
                    "bid": b.bid,
                    "ask": b.ask,
                }
            )  # fmt: skip
        )
    frame = pd.concat(frames, ignore_index=True)
    return frame[frame["ts"] < T0 + int(hours * HOUR_NS)].reset_index(drop=True)


def write_ticks(store: TickStore, frame: pd.DataFrame, batch: int = 20_000, offset: int = 0) -> int:
    """Write `frame` through the store's ingest path (write_ticks) in shuffled batches."""
    order = np.random.default_rng(1).permutation(len(frame))
    shuffled = frame.iloc[order]
    for start in range(0, len(shuffled), batch):
        offset += 1
        store.write_ticks(TickBatch.from_frame(shuffled.iloc[start : start + batch]), offset)
    return offset


@pytest.fixture(params=["sqlite", "postgres"])
def store_case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreCase]:
    """An empty migrated store of each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store' / 'hft.sqlite3'}"
    else:
        url = request.getfixturevalue("pg_dsn")
    store = open_store(url, pool_size=2)
    try:
        yield StoreCase(request.param, url, store)
    finally:
        store.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[TickStore]:
    """An empty migrated SQLite store."""
    store = open_store(f"sqlite:///{tmp_path / 'hft.sqlite3'}")
    try:
        yield store
    finally:
        store.close()


#: Hours of ticks in `candle_store`: a 12-hour backtest window of 720 1m bars ends at its end.
CANDLE_STORE_HOURS = 13


@pytest.fixture(scope="module")
def candle_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TickStore]:
    """A SQLite store holding CANDLE_STORE_HOURS of ticks from T0 and their candles (per module)."""
    from hft_pipeline.analytics.candles import rebuild_candles

    path = tmp_path_factory.mktemp("candle_store") / "hft.sqlite3"
    store = open_store(f"sqlite:///{path}")
    try:
        write_ticks(store, simulator_ticks(CANDLE_STORE_HOURS))
        rebuild_candles(store, T0, T0 + CANDLE_STORE_HOURS * HOUR_NS, grace_s=60)
        yield store
    finally:
        store.close()
