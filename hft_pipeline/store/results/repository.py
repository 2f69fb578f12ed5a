"""The results half of the store, one implementation for SQLite and PostgreSQL.

Candles, indicators, backtest runs (metrics, trades) and comparisons of the Dagster assets,
through SQLAlchemy Core on the tables of `tables.py` (docs/results.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from hft_pipeline.market.timeframes import timeframe_ns
from hft_pipeline.store.base import (
    CANDLE_COLUMNS,
    STORED_CANDLE_COLUMNS,
    BacktestRun,
    StoreUnavailableError,
    config_json,
    validate_candles,
    validate_indicators,
)
from hft_pipeline.store.results import frames
from hft_pipeline.store.results import tables as t
from hft_pipeline.store.results.bulk import dense_lookup, fetch_array, insert_columns
from hft_pipeline.store.results.engine import unavailable_as_store_error


class ResultsRepository:
    """Results of the Dagster assets in the store's database; safe to share between threads."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._ids: dict[tuple[str, str], int] = {}  # (table, name) -> id; ids never change
        self._closed = False

    def __repr__(self) -> str:
        return f"ResultsRepository({self.engine.url!r})"

    def close(self) -> None:
        """Close the pooled connections; later calls raise StoreUnavailableError."""
        self._closed = True
        self.engine.dispose()

    def _connect(self, action: str) -> sa.Connection:
        if self._closed:
            raise StoreUnavailableError(f"{self!r} is closed ({action})")
        return self.engine.connect()

    # -- plumbing -------------------------------------------------------------------------

    @contextmanager
    def _read(self, action: str) -> Iterator[sa.Connection]:
        with unavailable_as_store_error(self.engine, action), self._connect(action) as conn:
            yield conn

    @contextmanager
    def _write(self, action: str) -> Iterator[sa.Connection]:
        """One transaction; rolled back on any exception, so the previous rows stay."""
        with unavailable_as_store_error(self.engine, action), self._connect(action) as conn:
            conn.execution_options(write=True)
            with conn.begin():
                yield conn

    def _insert_ignore(self, table: sa.Table) -> Any:
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        return dialect.insert(table).on_conflict_do_nothing(index_elements=["name"])

    def _name_ids(self, table: sa.Table, names: Sequence[str], action: str) -> dict[str, int]:
        """Ids of `names` in `table` (symbols, indicator_names), created when missing."""
        wanted = list(dict.fromkeys(names))
        missing = [n for n in wanted if (table.name, n) not in self._ids]
        if missing:
            with self._write(action) as conn:
                conn.execute(self._insert_ignore(table), [{"name": n} for n in missing])
                found = conn.execute(
                    sa.select(table.c.name, table.c.id).where(table.c.name.in_(missing))
                ).all()
            with self._lock:
                self._ids.update(((table.name, n), i) for n, i in found)
        return {n: self._ids[(table.name, n)] for n in wanted}

    def _symbol_ids(self, symbol: np.ndarray, action: str) -> np.ndarray:
        if not len(symbol):
            return np.empty(0, np.int64)
        names, inverse = np.unique(symbol, return_inverse=True)
        ids = self._name_ids(t.symbols, [str(n) for n in names], action)
        return np.array([ids[str(n)] for n in names], np.int64)[inverse]

    @staticmethod
    def _range(
        table: sa.Table,
        timeframe: str,
        start_ns: int | None,
        end_ns: int | None,
        symbols: Sequence[str] | None,
    ) -> list[sa.ColumnElement[bool]]:
        conds = [table.c.timeframe == timeframe]
        if start_ns is not None:
            conds.append(table.c.ts_ns >= int(start_ns))
        if end_ns is not None:
            conds.append(table.c.ts_ns < int(end_ns))
        if symbols is not None:
            wanted = sa.select(t.symbols.c.id).where(t.symbols.c.name.in_(list(symbols)))
            conds.append(table.c.symbol_id.in_(wanted))
        return conds

    @staticmethod
    def _labels(conn: sa.Connection, table: sa.Table) -> dict[int, str]:
        return dict(conn.execute(sa.select(table.c.id, table.c.name)).tuples().all())

    # -- candles --------------------------------------------------------------------------

    def replace_candles(
        self, candles: pd.DataFrame, start_ns: int, end_ns: int, timeframes: Sequence[str]
    ) -> int:
        """Replace the candles of `timeframes` in [start_ns, end_ns) by `candles`, atomically."""
        rows = validate_candles(candles, start_ns, end_ns, timeframes)
        ids = self._symbol_ids(rows.symbol, "replace_candles")
        tfs = sorted(set(timeframes))
        with self._write("replace_candles") as conn:
            conn.execute(
                sa.delete(t.candles).where(
                    t.candles.c.timeframe.in_(tfs),
                    t.candles.c.ts_ns >= int(start_ns),
                    t.candles.c.ts_ns < int(end_ns),
                )
            )
            for tf in tfs:
                # In primary-key order (ts, symbol) within the timeframe: appends to the b-tree.
                m = np.flatnonzero(rows.timeframe == tf)
                m = m[np.lexsort((ids[m], rows.ts[m]))]
                numbers = {"symbol_id": ids[m], "ts_ns": rows.ts[m]}
                numbers.update({c: getattr(rows, c)[m] for c in CANDLE_COLUMNS[1:]})
                insert_columns(conn, t.candles, {"timeframe": tf}, numbers)
        return len(rows)

    def stored_candles(
        self,
        timeframe: str,
        start_ns: int | None = None,
        end_ns: int | None = None,
        symbols: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Candles written by `replace_candles`: STORED_CANDLE_COLUMNS sorted by (symbol, ts)."""
        timeframe_ns(timeframe)
        c = t.candles.c
        query = sa.select(
            c.symbol_id, c.ts_ns, c.open, c.high, c.low, c.close, c.volume, c.ticks
        ).where(*self._range(t.candles, timeframe, start_ns, end_ns, symbols))
        with self._read("stored_candles") as conn:
            rows = fetch_array(conn, query, _STORED_CANDLE_DTYPE)
            labels = self._labels(conn, t.symbols)
        symbol, rank = dense_lookup(labels, rows["symbol_id"])
        order = np.lexsort((rows["ts"], rank))
        data = {"symbol": symbol[order], **{k: rows[k][order] for k in STORED_CANDLE_COLUMNS[1:]}}
        return pd.DataFrame(data, columns=list(STORED_CANDLE_COLUMNS))

    # -- indicators -----------------------------------------------------------------------

    def replace_indicators(
        self, timeframe: str, values: pd.DataFrame, start_ns: int, end_ns: int
    ) -> int:
        """Replace `timeframe`'s indicator values in [start_ns, end_ns) by `values`, atomically.

        Returns the number of values (rows x indicator columns) written.
        """
        timeframe_ns(timeframe)
        symbol, ts, names, matrix = validate_indicators(values, start_ns, end_ns)
        ids = self._symbol_ids(symbol, "replace_indicators")
        name_ids = self._name_ids(t.indicator_names, names, "replace_indicators")
        order = np.lexsort((ids, ts))  # primary-key order (ts, symbol, name)
        ids, ts, matrix = ids[order], ts[order], matrix[order]
        n, m = matrix.shape
        numbers = {
            "symbol_id": np.repeat(ids, m),
            "ts_ns": np.repeat(ts, m),
            "name_id": np.tile(np.array([name_ids[x] for x in names], np.int64), n),
            "value": matrix.ravel(),
        }
        with self._write("replace_indicators") as conn:
            conn.execute(
                sa.delete(t.indicators).where(
                    t.indicators.c.timeframe == timeframe,
                    t.indicators.c.ts_ns >= int(start_ns),
                    t.indicators.c.ts_ns < int(end_ns),
                )
            )
            insert_columns(conn, t.indicators, {"timeframe": timeframe}, numbers)
        return n * m

    def stored_indicators(
        self,
        timeframe: str,
        start_ns: int | None = None,
        end_ns: int | None = None,
        symbols: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Wide: symbol, ts, one float64 column per stored name (sorted); sorted by (symbol, ts)."""
        timeframe_ns(timeframe)
        c = t.indicators.c
        query = sa.select(c.symbol_id, c.ts_ns, c.name_id, c.value).where(
            *self._range(t.indicators, timeframe, start_ns, end_ns, symbols)
        )
        with self._read("stored_indicators") as conn:
            rows = fetch_array(conn, query, _INDICATOR_DTYPE)
            symbols_by_id = self._labels(conn, t.symbols)
            names_by_id = self._labels(conn, t.indicator_names)
        return frames.indicators_wide(rows, symbols_by_id, names_by_id)

    # -- backtests ------------------------------------------------------------------------

    def write_backtest(self, run: BacktestRun, metrics: pd.DataFrame, trades: pd.DataFrame) -> None:
        """Store `run` with its metrics and trades (docs/results.md#frames), replacing an
        earlier run with the same run_key, in one transaction."""
        key = str(run.run_key)
        config_json(run.config)  # ValueError now, not half-way through the transaction
        metric_rows = frames.metrics_rows(key, metrics)
        trade_rows = frames.trades_rows(key, trades)
        run_row = {
            "run_key": key, "created_ns": int(run.created_ns), "start_ns": int(run.start_ns),
            "end_ns": int(run.end_ns), "timeframe": str(run.timeframe), "config": run.config,
        }  # fmt: skip
        with self._write("write_backtest") as conn:
            for table in (t.backtest_trades, t.backtest_metrics, t.backtest_runs):
                conn.execute(sa.delete(table).where(table.c.run_key == key))
            conn.execute(sa.insert(t.backtest_runs), run_row)
            if metric_rows:
                conn.execute(sa.insert(t.backtest_metrics), metric_rows)
            if trade_rows:
                conn.execute(sa.insert(t.backtest_trades), trade_rows)

    def backtest_runs(self) -> list[BacktestRun]:
        """Every stored run, newest (created_ns) first."""
        r = t.backtest_runs.c
        query = sa.select(r.run_key, r.created_ns, r.start_ns, r.end_ns, r.timeframe, r.config)
        with self._read("backtest_runs") as conn:
            rows = conn.execute(query.order_by(r.created_ns.desc(), r.run_key.desc())).all()
        return [BacktestRun(k, int(c), int(s), int(e), tf, cfg) for k, c, s, e, tf, cfg in rows]

    def _run_rows(self, table: sa.Table, run_key: str, action: str) -> list[Any]:
        with self._read(action) as conn:
            exists = conn.execute(
                sa.select(t.backtest_runs.c.run_key).where(t.backtest_runs.c.run_key == run_key)
            ).first()
            if exists is None:
                raise KeyError(f"no backtest run {run_key!r} in {self!r}")
            query = sa.select(table).where(table.c.run_key == run_key).order_by(table.c.row_no)
            return list(conn.execute(query).mappings())

    def backtest_metrics(self, run_key: str) -> pd.DataFrame:
        """The metrics frame of `run_key` (KeyError if there is no such run)."""
        return frames.metrics_frame(self._run_rows(t.backtest_metrics, run_key, "backtest_metrics"))

    def backtest_trades(self, run_key: str) -> pd.DataFrame:
        """The trades frame of `run_key` (KeyError if there is no such run)."""
        return frames.trades_frame(self._run_rows(t.backtest_trades, run_key, "backtest_trades"))

    # -- comparisons ----------------------------------------------------------------------

    def write_comparison(self, run_key: str, ranked: pd.DataFrame) -> None:
        """Store (or replace) the ranked comparison table of `run_key`, atomically."""
        key = str(run_key)
        rows = frames.comparison_rows(key, ranked)
        with self._write("write_comparison") as conn:
            for table in (t.comparison_rows, t.comparisons):
                conn.execute(sa.delete(table).where(table.c.run_key == key))
            conn.execute(sa.insert(t.comparisons), {"run_key": key, "created_ns": time.time_ns()})
            if rows:
                conn.execute(sa.insert(t.comparison_rows), rows)

    def latest_comparison(self) -> tuple[str, pd.DataFrame] | None:
        """(run_key, ranked table) of the most recently written comparison, None if none."""
        c = t.comparisons.c
        rows_t = t.comparison_rows
        with self._read("latest_comparison") as conn:
            key = conn.execute(
                sa.select(c.run_key).order_by(c.created_ns.desc(), c.run_key.desc()).limit(1)
            ).scalar()
            if key is None:
                return None
            query = sa.select(rows_t).where(rows_t.c.run_key == key).order_by(rows_t.c.row_no)
            rows = list(conn.execute(query).mappings())
        return key, frames.comparison_frame(rows)


_STORED_CANDLE_DTYPE = np.dtype(
    [("symbol_id", "i8"), ("ts", "i8"), *((c, "f8") for c in CANDLE_COLUMNS[1:-1]), ("ticks", "i8")]
)
_INDICATOR_DTYPE = np.dtype([("symbol_id", "i8"), ("ts", "i8"), ("name_id", "i8"), ("value", "f8")])
