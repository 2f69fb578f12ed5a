"""The store protocol: what ingest and Dagster need from SQLite or PostgreSQL."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from hft_pipeline.market.ticks import InvalidSymbolError, TickBatch, validate_symbol
from hft_pipeline.market.timeframes import timeframe_ns


class StoreUnavailableError(RuntimeError):
    """The store cannot be reached right now (connection refused, reset, timed out); retry later."""


class QueryCancelledError(RuntimeError):
    """A store query stopped by `CancelScope.cancel`: whoever asked for it gave up."""


class CancelScope:
    """Lets another thread stop the store queries a thread runs inside `TickStore.query_scope`.

    While a query runs, the store attaches how to interrupt it (SQLite `interrupt()`, a
    PostgreSQL cancel request); `cancel` calls that and makes later queries of the scope raise
    QueryCancelledError. Nothing is attached between queries, so a cancel never reaches a
    connection that has moved on to other work.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._interrupt: Callable[[], None] | None = None
        self.cancelled = False

    def cancel(self) -> None:
        """Stop the running query (if any) and refuse later ones; callable from any thread."""
        with self._lock:
            self.cancelled = True
            if self._interrupt is not None:
                self._interrupt()

    @contextmanager
    def attached(self, interrupt: Callable[[], None]) -> Iterator[None]:
        """Run a query that `interrupt` stops; QueryCancelledError if the scope is cancelled."""
        with self._lock:
            if self.cancelled:
                raise QueryCancelledError("the store query was cancelled by its caller")
            self._interrupt = interrupt
        try:
            yield
        finally:
            with self._lock:
                self._interrupt = None


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
        Semantics of docs/architecture.md#candles: open/close are the first/last tick by (ts, seq).
        """

    def minute_candles(
        self,
        symbol: str,
        timeframe: str,
        start_ns: int | None = None,
        end_ns: int | None = None,
        limit: int | None = None,
        descending: bool = False,
    ) -> pd.DataFrame:
        """`candles` for 1m and coarser timeframes, read from the 1m candles `write_ticks` keeps.

        An index read instead of an aggregation of ticks (docs/candles.md); same frame, same
        candles, volume the exact sum of the ticks' volumes (except minutes backfilled by the
        migration, which hold the database's sum).
        """

    def query_scope(self, scope: CancelScope) -> AbstractContextManager[None]:
        """Run this thread's queries inside the block under `scope` (`scope.cancel()` stops them)."""

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

    # -- inputs and results of the Dagster assets --------------------------------------------

    def read_tick_range(
        self, start_ns: int, end_ns: int, symbols: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """Ticks of every (or the given) symbol with start_ns <= ts < end_ns.

        Columns TICK_RANGE_COLUMNS (bid/ask NaN when absent), sorted by (symbol, ts, seq).
        """

    def tick_counts(self, start_ns: int, end_ns: int) -> dict[str, int]:
        """Stored ticks per symbol with start_ns <= ts < end_ns (symbols without any left out)."""

    def first_tick_ts(self) -> int | None:
        """Time of the oldest stored tick, None if there is none."""

    def replace_candles(
        self, candles: pd.DataFrame, start_ns: int, end_ns: int, timeframes: Sequence[str]
    ) -> int:
        """Replace the stored candles of `timeframes` with start_ns <= ts < end_ns by `candles`.

        `candles` has CANDLE_INPUT_COLUMNS. One transaction; a row outside the range or of
        another timeframe raises ValueError before anything is written. Returns rows inserted.
        """

    def stored_candles(
        self,
        timeframe: str,
        start_ns: int | None = None,
        end_ns: int | None = None,
        symbols: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Candles written by `replace_candles`: STORED_CANDLE_COLUMNS sorted by (symbol, ts)."""

    def replace_indicators(
        self, timeframe: str, values: pd.DataFrame, start_ns: int, end_ns: int
    ) -> int:
        """Replace `timeframe`'s indicator values with start_ns <= ts < end_ns, one transaction.

        `values`: columns symbol, ts and any number of float indicator columns (NaN kept).
        Returns the number of values (rows x indicator columns) written.
        """

    def stored_indicators(
        self,
        timeframe: str,
        start_ns: int | None = None,
        end_ns: int | None = None,
        symbols: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Wide: symbol, ts, one float64 column per stored name (sorted); sorted by (symbol, ts)."""

    def write_backtest(self, run: BacktestRun, metrics: pd.DataFrame, trades: pd.DataFrame) -> None:
        """Store a run with its metrics and trades (the frames of docs/results.md#frames).

        Replaces an earlier run with the same run_key, in one transaction.
        """

    def backtest_runs(self) -> list[BacktestRun]:
        """Every stored run, newest (created_ns) first."""

    def backtest_metrics(self, run_key: str) -> pd.DataFrame:
        """The metrics frame of `run_key` (docs/results.md#frames); KeyError if there is none."""

    def write_comparison(self, run_key: str, ranked: pd.DataFrame) -> None:
        """Store (or replace) the ranked comparison table of `run_key`."""


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


# -- results of the Dagster assets: candles, indicators, backtests, comparisons ---------------

#: Columns of `read_tick_range`, `replace_candles` input and `stored_candles`.
TICK_RANGE_COLUMNS = ("symbol", "ts", "seq", "price", "volume", "bid", "ask")
CANDLE_INPUT_COLUMNS = (
    "timeframe",
    "symbol",
    "ts",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "ticks",
)
STORED_CANDLE_COLUMNS = ("symbol", "ts", "open", "high", "low", "close", "volume", "ticks")


@dataclass(frozen=True, slots=True)
class BacktestRun:
    """One backtests materialization; writing the same `run_key` again replaces it."""

    run_key: str
    created_ns: int
    start_ns: int  # candle range the backtests covered: [start_ns, end_ns)
    end_ns: int
    timeframe: str
    config: dict  # JSON-serializable: strategies, grids, fees, ...


def config_json(config: dict) -> str:
    """`config` as strict JSON (no NaN/inf), or ValueError saying why it cannot be stored."""
    try:
        return json.dumps(config, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"BacktestRun.config must be JSON-serializable: {exc}") from exc


def validate_range(start_ns: int, end_ns: int) -> tuple[int, int]:
    start_ns, end_ns = int(start_ns), int(end_ns)
    if start_ns >= end_ns:
        raise ValueError(f"empty range: start_ns={start_ns} must be < end_ns={end_ns}")
    return start_ns, end_ns


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}; it has {list(frame.columns)}")


def _check_in_range(ts: np.ndarray, start_ns: int, end_ns: int, what: str) -> None:
    outside = (ts < start_ns) | (ts >= end_ns)
    if outside.any():
        bad = int(ts[outside][0])
        raise ValueError(
            f"{what}: {int(outside.sum())} rows with ts outside [{start_ns}, {end_ns}), e.g. {bad}"
        )


def _symbol_column(frame: pd.DataFrame, what: str) -> np.ndarray:
    symbols = frame["symbol"].to_numpy(dtype=object)
    for name in pd.unique(symbols):
        try:
            validate_symbol(name)
        except InvalidSymbolError as exc:
            raise ValueError(f"{what}: {exc}") from exc
    return symbols


def _int_column(frame: pd.DataFrame, name: str, what: str) -> np.ndarray:
    column = frame[name]
    if not pd.api.types.is_integer_dtype(column.dtype):
        raise ValueError(f"{what}: column {name!r} must be int64, not {column.dtype}")
    return column.to_numpy(dtype=np.int64)


def _float_column(frame: pd.DataFrame, name: str, what: str) -> np.ndarray:
    column = frame[name]
    if not (
        pd.api.types.is_float_dtype(column.dtype) or pd.api.types.is_integer_dtype(column.dtype)
    ):
        raise ValueError(f"{what}: column {name!r} must be numeric, not {column.dtype}")
    return column.to_numpy(dtype=np.float64)


@dataclass(frozen=True, slots=True)
class CandleRows:
    """Validated `replace_candles` input as numpy columns (symbol names still as strings)."""

    timeframe: np.ndarray  # object (str)
    symbol: np.ndarray  # object (str)
    ts: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    ticks: np.ndarray

    def __len__(self) -> int:
        return len(self.ts)


def validate_candles(
    candles: pd.DataFrame, start_ns: int, end_ns: int, timeframes: Sequence[str]
) -> CandleRows:
    """Check `replace_candles` input completely before anything is written (ValueError if bad)."""
    what = "replace_candles"
    start_ns, end_ns = validate_range(start_ns, end_ns)
    allowed = set(timeframes)
    if not allowed:
        raise ValueError(f"{what}: give at least one timeframe to replace")
    for tf in allowed:
        timeframe_ns(tf)
    _require_columns(candles, CANDLE_INPUT_COLUMNS, what)
    tf_col = candles["timeframe"].to_numpy(dtype=object)
    stray = sorted(set(pd.unique(tf_col)) - allowed, key=str)
    if stray:
        raise ValueError(f"{what}: rows with timeframes {stray} not in {sorted(allowed)}")
    rows = CandleRows(
        timeframe=tf_col,
        symbol=_symbol_column(candles, what),
        ts=_int_column(candles, "ts", what),
        open=_float_column(candles, "open", what),
        high=_float_column(candles, "high", what),
        low=_float_column(candles, "low", what),
        close=_float_column(candles, "close", what),
        volume=_float_column(candles, "volume", what),
        ticks=_int_column(candles, "ticks", what),
    )
    _check_in_range(rows.ts, start_ns, end_ns, what)
    for name in ("open", "high", "low", "close", "volume"):
        if np.isnan(getattr(rows, name)).any():
            raise ValueError(f"{what}: column {name!r} has NaN (an empty bucket has no candle)")
    if candles.duplicated(["timeframe", "symbol", "ts"]).any():
        raise ValueError(f"{what}: duplicate (timeframe, symbol, ts) rows")
    return rows


def validate_indicators(
    values: pd.DataFrame, start_ns: int, end_ns: int
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Check `replace_indicators` input; return (symbol, ts, names, values[n_rows, n_names])."""
    what = "replace_indicators"
    start_ns, end_ns = validate_range(start_ns, end_ns)
    _require_columns(values, ("symbol", "ts"), what)
    names = [c for c in values.columns if c not in ("symbol", "ts")]
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{what}: indicator column names must be non-empty str, not {name!r}")
    symbol = _symbol_column(values, what)
    ts = _int_column(values, "ts", what)
    _check_in_range(ts, start_ns, end_ns, what)
    if values.duplicated(["symbol", "ts"]).any():
        raise ValueError(f"{what}: duplicate (symbol, ts) rows")
    matrix = np.empty((len(values), len(names)), np.float64)
    for j, name in enumerate(names):
        matrix[:, j] = _float_column(values, name, what)
    return symbol, ts, names, matrix
