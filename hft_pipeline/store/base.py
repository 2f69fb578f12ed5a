"""The store protocol: what ingest and Dagster need from SQLite or PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from hft_pipeline.market.ticks import TickBatch


class StoreUnavailableError(RuntimeError):
    """The store cannot be reached right now (connection refused, reset, timed out); retry later."""


@dataclass(frozen=True, slots=True)
class Subscription:
    symbol: str
    exchange: str
    created_ns: int


@dataclass(frozen=True, slots=True)
class Watermark:
    """How far persistence has got: total rows, newest tick time, per-symbol newest tick time."""

    rows: int
    max_ts: int | None
    per_symbol_max_ts: dict[str, int]


class TickStore(Protocol):
    """Everything that speaks SQL for ticks lives behind this protocol."""

    url: str

    def migrate(self) -> list[int]:
        """Apply pending migrations from `sql/`; return the versions applied now (empty if none)."""

    def write_ticks(self, batch: TickBatch, log_offset: int, stream: str = "ticklog") -> None:
        """Insert `batch` and set the consumer offset of `stream` to `log_offset`, in one transaction."""

    def log_offset(self, stream: str = "ticklog") -> int:
        """The offset stored by the last `write_ticks` for `stream`, 0 if none."""

    def read_ticks(
        self,
        symbol: str,
        start_ns: int | None = None,
        end_ns: int | None = None,
        limit: int | None = None,
        descending: bool = False,
    ) -> pd.DataFrame:
        """Ticks of `symbol` with start_ns <= ts < end_ns ordered by (ts, seq).

        Columns: ts (int64 ns), seq, price, volume, bid, ask (NaN when absent).
        With `descending` the most recent come first and `limit` keeps the most recent.
        """

    def candles(
        self,
        symbol: str,
        timeframe: str,
        start_ns: int | None = None,
        end_ns: int | None = None,
        limit: int | None = None,
        descending: bool = False,
    ) -> pd.DataFrame:
        """Candles of `symbol` computed from stored ticks, buckets with start_ns <= ts < end_ns.

        Columns: ts (bucket start, int64 ns), open, high, low, close, volume, ticks.
        Semantics of DESIGN §2: open/close are the first/last tick by (ts, seq).
        """

    def last_seqs(self) -> dict[str, int]:
        """Highest persisted seq per symbol."""

    def watermark(self) -> Watermark:
        """Rows, newest persisted tick time overall and per symbol."""

    def symbols(self) -> list[str]:
        """Every symbol with at least one stored tick, sorted."""

    def add_subscription(self, symbol: str, exchange: str) -> bool:
        """Persist a subscription; False if it already existed."""

    def remove_subscription(self, symbol: str) -> bool:
        """Delete a subscription; False if there was none."""

    def subscriptions(self) -> list[Subscription]:
        """All persisted subscriptions ordered by symbol."""

    def ping(self) -> None:
        """Raise StoreUnavailableError unless the store answers a trivial query."""

    def close(self) -> None:
        """Release connections."""


@dataclass(frozen=True, slots=True)
class SymbolTotals:
    """Per-symbol totals of one batch: `sym` indexes the batch's symbol table."""

    sym: np.ndarray  # int32, sorted, unique
    rows: np.ndarray  # int64
    max_ts: np.ndarray  # int64
    max_seq: np.ndarray  # int64


def symbol_totals(batch: TickBatch) -> SymbolTotals:
    """Tick count, newest ts and highest seq of every symbol present in `batch` (vectorized)."""
    n = len(batch)
    if n == 0:
        empty = np.empty(0, np.int64)
        return SymbolTotals(np.empty(0, np.int32), empty, empty, empty)
    order = np.argsort(batch.sym, kind="stable")
    sym = batch.sym[order]
    starts = np.flatnonzero(np.r_[True, sym[1:] != sym[:-1]])
    return SymbolTotals(
        sym=sym[starts].astype(np.int32),
        rows=np.diff(np.r_[starts, n]).astype(np.int64),
        max_ts=np.maximum.reduceat(batch.ts[order], starts),
        max_seq=np.maximum.reduceat(batch.seq[order], starts),
    )


#: Columns of the frames returned by `TickStore.read_ticks` and `TickStore.candles`.
TICK_FRAME_COLUMNS = ("ts", "seq", "price", "volume", "bid", "ask")
CANDLE_COLUMNS = ("ts", "open", "high", "low", "close", "volume", "ticks")


def candle_tick_range(
    tf_ns: int, start_ns: int | None, end_ns: int | None
) -> tuple[int | None, int | None]:
    """Tick-time bounds [lo, hi) of the ticks whose bucket start lies in [start_ns, end_ns).

    bucket(t) >= start  <=>  t >= ceil(start / tf) * tf, and likewise for the end, so the
    store can filter ticks on its time index instead of on a computed bucket.
    """

    def ceil_align(value: int | None) -> int | None:
        return None if value is None else -((-int(value)) // tf_ns) * tf_ns

    return ceil_align(start_ns), ceil_align(end_ns)


def recent_buckets_start(max_ts: int, tf_ns: int, limit: int, hi: int | None) -> int | None:
    """Tick-time lower bound spanning exactly the `limit` newest buckets up to `hi` (exclusive).

    If that window holds `limit` candles they are the newest ones; with gaps it holds fewer and
    the caller must fall back to the full range. None when the window would overflow int64.
    """
    top = max_ts if hi is None else min(max_ts, hi - 1)
    span = (limit - 1) * tf_ns
    if span > 2**62:
        return None
    return (top // tf_ns) * tf_ns - span
