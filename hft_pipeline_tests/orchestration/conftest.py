"""Orchestration fixtures: a fixed partition start, simulator ticks in SQLite and PostgreSQL stores."""

from __future__ import annotations

import os

# Must precede any import of hft_pipeline.orchestration: the partitions' start is fixed when
# the definitions load, and test data lives at fixed times well after this start.
os.environ.setdefault("HFT_PARTITIONS_START", "2026-01-01T00:00Z")

from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from hft_pipeline.ingest.feeds.simulator import generate  # noqa: E402
from hft_pipeline.market.ticks import TickBatch  # noqa: E402
from hft_pipeline.store import TickStore, open_store  # noqa: E402

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
