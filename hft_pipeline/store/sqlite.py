"""The embedded SQLite tick store (the default): one file in WAL mode, candles in SQL."""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hft_pipeline.market.ticks import TickBatch, validate_symbol
from hft_pipeline.market.timeframes import timeframe_ns
from hft_pipeline.store.base import (
    CANDLE_COLUMNS,
    TICK_FRAME_COLUMNS,
    TICK_RANGE_COLUMNS,
    CancelScope,
    StoreUnavailableError,
    Subscription,
    Watermark,
    candle_tick_range,
    recent_buckets_start,
    symbol_totals,
)
from hft_pipeline.store.candles_1m import (
    COLUMNS as MINUTE_COLUMNS,
)
from hft_pipeline.store.candles_1m import (
    READ_COLUMNS,
    READ_DTYPE,
    batch_minutes,
    candles_from_minutes,
    check_timeframe,
    merge_assignments,
    minute_rows_limit,
    upsert_columns,
)
from hft_pipeline.store.migrations import migrate_sqlite
from hft_pipeline.store.results import ResultsRepository, sqlite_engine
from hft_pipeline.store.results.delegate import StoredResults

_TICK_DTYPE = np.dtype(
    [("ts", "i8"), ("seq", "i8"), ("price", "f8"), ("volume", "f8"), ("bid", "f8"), ("ask", "f8")]
)
_CANDLE_DTYPE = np.dtype(
    [
        ("ts", "i8"),
        ("open", "f8"),
        ("high", "f8"),
        ("low", "f8"),
        ("close", "f8"),
        ("volume", "f8"),
        ("ticks", "i8"),
    ]
)

# SQLite binds NaN as NULL, which is exactly the NaN <-> NULL mapping bid/ask need.
# Statements as (head, tail) around the VALUES list `_insert_rows` puts in between.
_INSERT_TICKS = ("insert into ticks (symbol_id, ts_ns, seq, price, volume, bid, ask)", "")
_TRANSIENT = ("locked", "busy", "disk", "i/o", "unable to open", "closed", "readonly")

_UPSERT_TOTALS = (
    "insert into symbol_stats (symbol_id, rows, max_ts_ns, max_seq)",
    """on conflict (symbol_id) do update set
        rows = rows + excluded.rows,
        max_ts_ns = max(max_ts_ns, excluded.max_ts_ns),
        max_seq = max(max_seq, excluded.max_seq)""",
)
# The batch's 1m partial candles merged into candles_1m (docs/candles.md).
_UPSERT_MINUTES = (
    f"insert into candles_1m as o ({', '.join(MINUTE_COLUMNS)})",
    f"on conflict (symbol_id, ts_ns) do update set {merge_assignments('max', 'min')}",
)
#: Rows per multi-row INSERT (SQLite allows 32,766 bound values by default, this build more).
_ROWS_PER_STATEMENT = 2048
_UPSERT_OFFSET = """
    insert into consumer_offsets (stream, "offset", updated_at) values (?, ?, ?)
    on conflict (stream) do update set "offset" = excluded."offset", updated_at = excluded.updated_at
"""


class SqliteStore(StoredResults):
    """TickStore in one SQLite file; safe to share between threads (a connection per thread)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._lock = threading.Lock()
        # One writer at a time inside this process; other processes wait on SQLite's own lock.
        self._write_lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._symbol_ids: dict[str, int] = {}
        self._closed = False
        #: Candles, indicators, backtests and comparisons: the one results layer (docs/results.md).
        self.results = ResultsRepository(sqlite_engine(self.path))

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    # -- plumbing -------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreUnavailableError(f"{self!r} is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            # WAL: readers (API thread) never block the writer (persister) nor wait for it.
            conn.execute("pragma journal_mode = wal")
            # NORMAL skips the fsync per commit; a power cut may lose the last commits, which is
            # fine because the tick log still holds them (the persister calls make_durable
            # before retention deletes a segment) and the offset stored with the ticks makes
            # the replay after restart exact (docs/durability.md).
            conn.execute("pragma synchronous = normal")
            with self._lock:
                self._connections.append(conn)
            self._local.conn = conn
        return conn

    @contextmanager
    def _unavailable(self, action: str) -> Iterator[None]:
        try:
            yield
        except (sqlite3.OperationalError, sqlite3.ProgrammingError) as exc:
            # Only conditions that can pass (locked beyond the busy timeout, disk trouble, a
            # closed store) are retryable; "no such table" and the like must surface as bugs.
            if not any(word in str(exc).lower() for word in _TRANSIENT):
                raise
            raise StoreUnavailableError(
                f"SQLite store {self.path} unavailable ({action}): {exc}"
            ) from exc

    def _lookup_symbol(self, conn: sqlite3.Connection, symbol: str) -> int | None:
        validate_symbol(symbol)
        ident = self._symbol_ids.get(symbol)
        if ident is None:
            row = conn.execute("select id from symbols where name = ?", (symbol,)).fetchone()
            if row is None:
                return None
            ident = row[0]
            with self._lock:
                self._symbol_ids[symbol] = ident
        return ident

    def _symbol_table(self, conn: sqlite3.Connection, names: Sequence[str]) -> np.ndarray:
        missing = [name for name in names if name not in self._symbol_ids]
        if missing:
            for name in missing:
                validate_symbol(name)
            conn.executemany(
                "insert or ignore into symbols (name) values (?)", ((m,) for m in missing)
            )
            marks = ", ".join("?" * len(missing))
            rows = conn.execute(f"select name, id from symbols where name in ({marks})", missing)
            with self._lock:
                self._symbol_ids.update(rows.fetchall())
        return np.fromiter((self._symbol_ids[n] for n in names), np.int64, len(names))

    def _write_offset(self, conn: sqlite3.Connection, stream: str, log_offset: int) -> None:
        conn.execute(_UPSERT_OFFSET, (stream, int(log_offset), time.time_ns()))

    # -- TickStore ------------------------------------------------------------------------

    def migrate(self) -> list[int]:
        """Apply pending migrations from `sql/sqlite`; return the versions applied now."""
        with self._unavailable("migrate"), self._write_lock:
            return migrate_sqlite(self._conn())

    def write_ticks(self, batch: TickBatch, log_offset: int, stream: str = "ticklog") -> None:
        """Insert `batch` and set the offset of `stream`, in one transaction."""
        n = len(batch)
        with self._unavailable("write_ticks"), self._write_lock:
            conn = self._conn()
            table = self._symbol_table(conn, batch.symbols) if n else None
            conn.execute("begin immediate")
            try:
                if n:
                    columns = (batch.ts, batch.seq, batch.price, batch.volume, batch.bid, batch.ask)
                    _insert_rows(conn, _INSERT_TICKS, (table[batch.sym], *columns))
                    totals = symbol_totals(batch)
                    _insert_rows(
                        conn,
                        _UPSERT_TOTALS,
                        (table[totals.sym], totals.rows, totals.max_ts, totals.max_seq),
                    )
                    # A few hundred rows per batch (symbols x minutes it touches), not per tick.
                    _insert_rows(conn, _UPSERT_MINUTES, upsert_columns(batch_minutes(batch), table))
                self._write_offset(conn, stream, log_offset)
                conn.execute("commit")
            except BaseException:
                with suppress(sqlite3.Error):
                    conn.execute("rollback")
                raise

    def log_offset(self, stream: str = "ticklog") -> int:
        """The offset stored by the last `write_ticks` for `stream`, 0 if none."""
        with self._unavailable("log_offset"):
            row = (
                self._conn()
                .execute('select "offset" from consumer_offsets where stream = ?', (stream,))
                .fetchone()
            )
        return 0 if row is None else int(row[0])

    def read_ticks(
        self,
        symbol: str,
        start_ns: int | None = None,
        end_ns: int | None = None,
        limit: int | None = None,
        descending: bool = False,
    ) -> pd.DataFrame:
        """Ticks of `symbol` with start_ns <= ts < end_ns ordered by (ts, seq); see TickStore."""
        with self._unavailable("read_ticks"):
            conn = self._conn()
            ident = self._lookup_symbol(conn, symbol)
            if ident is None or (limit is not None and limit <= 0):
                return _frame([], _TICK_DTYPE, TICK_FRAME_COLUMNS)
            where, params = _time_filter(ident, start_ns, end_ns)
            direction = "desc" if descending else "asc"
            rows = conn.execute(
                f"select ts_ns, seq, price, volume, bid, ask from ticks where {where} "
                f"order by ts_ns {direction}, seq {direction}" + _limit(limit, params),
                params,
            ).fetchall()
        return _frame(rows, _TICK_DTYPE, TICK_FRAME_COLUMNS)

    def candles(
        self,
        symbol: str,
        timeframe: str,
        start_ns: int | None = None,
        end_ns: int | None = None,
        limit: int | None = None,
        descending: bool = False,
    ) -> pd.DataFrame:
        """Candles of `symbol` computed in SQL from stored ticks; see TickStore."""
        tf = timeframe_ns(timeframe)
        lo, hi = candle_tick_range(tf, start_ns, end_ns)
        with self._unavailable("candles"):
            conn = self._conn()
            ident = self._lookup_symbol(conn, symbol)
            if ident is None or (limit is not None and limit <= 0):
                return _frame([], _CANDLE_DTYPE, CANDLE_COLUMNS)
            if descending and limit is not None and lo is None:
                # The API asks for the newest N candles: try the window that holds exactly N
                # buckets below the newest tick before aggregating the whole history.
                row = conn.execute(
                    "select max_ts_ns from symbol_stats where symbol_id = ?", (ident,)
                ).fetchone()
                window_lo = None if row is None else recent_buckets_start(row[0], tf, limit, hi)
                if window_lo is not None:
                    rows = _candle_rows(conn, ident, tf, window_lo, hi, limit, descending)
                    if len(rows) == limit:
                        return _frame(rows, _CANDLE_DTYPE, CANDLE_COLUMNS)
            rows = _candle_rows(conn, ident, tf, lo, hi, limit, descending)
        return _frame(rows, _CANDLE_DTYPE, CANDLE_COLUMNS)

    def minute_candles(
        self,
        symbol: str,
        timeframe: str,
        start_ns: int | None = None,
        end_ns: int | None = None,
        limit: int | None = None,
        descending: bool = False,
    ) -> pd.DataFrame:
        """Candles of `symbol` (1m or coarser) read from candles_1m; see TickStore."""
        tf = timeframe_ns(timeframe)
        check_timeframe(tf)
        lo, hi = candle_tick_range(tf, start_ns, end_ns)
        with self._unavailable("minute_candles"):
            conn = self._conn()
            ident = self._lookup_symbol(conn, symbol)
            if ident is None or (limit is not None and limit <= 0):
                return _frame([], _CANDLE_DTYPE, CANDLE_COLUMNS)
            where, params = _time_filter(ident, lo, hi)
            direction = "desc" if descending else "asc"
            rows = np.fromiter(
                conn.execute(
                    f"select {READ_COLUMNS} from candles_1m where {where} "
                    f"order by ts_ns {direction}" + _limit(minute_rows_limit(tf, limit), params),
                    params,
                ),
                READ_DTYPE,
            )
        return candles_from_minutes(rows, tf, limit, descending)

    @contextmanager
    def query_scope(self, scope: CancelScope) -> Iterator[None]:
        """This thread's queries in the block stop when `scope` is cancelled (`interrupt()`)."""
        conn = self._conn()
        with scope.attached(conn.interrupt):
            yield

    def last_seqs(self) -> dict[str, int]:
        """Highest persisted seq per symbol."""
        with self._unavailable("last_seqs"):
            rows = self._conn().execute(
                "select s.name, t.max_seq from symbol_stats t join symbols s on s.id = t.symbol_id"
            )
            return {name: int(seq) for name, seq in rows}

    def watermark(self) -> Watermark:
        """Rows, newest persisted tick time overall and per symbol."""
        with self._unavailable("watermark"):
            rows = (
                self._conn()
                .execute(
                    "select s.name, t.rows, t.max_ts_ns from symbol_stats t "
                    "join symbols s on s.id = t.symbol_id"
                )
                .fetchall()
            )
        per_symbol = {name: int(ts) for name, count, ts in rows if count > 0}
        return Watermark(
            rows=sum(int(count) for _, count, _ in rows),
            max_ts=max(per_symbol.values()) if per_symbol else None,
            per_symbol_max_ts=per_symbol,
        )

    def symbols(self) -> list[str]:
        """Every symbol with at least one stored tick, sorted."""
        with self._unavailable("symbols"):
            rows = self._conn().execute(
                "select s.name from symbol_stats t join symbols s on s.id = t.symbol_id "
                "where t.rows > 0"
            )
            return sorted(name for (name,) in rows)

    def add_subscription(self, symbol: str, exchange: str) -> bool:
        """Persist a subscription; False if it already existed."""
        validate_symbol(symbol)
        with self._unavailable("add_subscription"), self._write_lock:
            cur = self._conn().execute(
                "insert or ignore into subscriptions (symbol, exchange, created_ns) values (?, ?, ?)",
                (symbol, str(exchange), time.time_ns()),
            )
            return cur.rowcount == 1

    def remove_subscription(self, symbol: str) -> bool:
        """Delete a subscription; False if there was none."""
        with self._unavailable("remove_subscription"), self._write_lock:
            cur = self._conn().execute("delete from subscriptions where symbol = ?", (symbol,))
            return cur.rowcount == 1

    def subscriptions(self) -> list[Subscription]:
        """All persisted subscriptions ordered by symbol."""
        with self._unavailable("subscriptions"):
            rows = self._conn().execute("select symbol, exchange, created_ns from subscriptions")
            return [Subscription(s, e, int(c)) for s, e, c in sorted(rows)]

    def ping(self) -> None:
        """Raise StoreUnavailableError unless the database file answers `select 1`."""
        with self._unavailable("ping"):
            self._conn().execute("select 1").fetchone()

    def make_durable(self) -> None:
        """Make every committed write survive a power loss.

        With `synchronous = normal` a commit is not fsynced; SQLite syncs the WAL before each
        checkpoint, so a passive checkpoint makes all committed transactions durable. The
        persister calls this before log retention deletes segments the store holds.
        """
        with self._unavailable("make_durable"):
            self._conn().execute("pragma wal_checkpoint(passive)").fetchone()

    def close(self) -> None:
        """Close the connections of every thread; later calls raise StoreUnavailableError."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            with suppress(sqlite3.Error):
                conn.close()
        self.results.close()

    # -- inputs and results of the Dagster assets ----------------------------------------------

    def _names_by_id(self, conn: sqlite3.Connection) -> dict[int, str]:
        return dict(conn.execute("select id, name from symbols").fetchall())

    def _selected_symbols(
        self, conn: sqlite3.Connection, symbols: Sequence[str] | None
    ) -> list[tuple[str, int]]:
        """(name, id) of the requested (or all) stored symbols, sorted by name."""
        if symbols is None:
            return sorted((n, i) for i, n in self._names_by_id(conn).items())
        found = ((s, self._lookup_symbol(conn, s)) for s in dict.fromkeys(symbols))
        return sorted((s, i) for s, i in found if i is not None)

    def read_tick_range(
        self, start_ns: int, end_ns: int, symbols: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """Ticks of every (or the given) symbol in [start_ns, end_ns), by (symbol, ts, seq)."""
        names, parts = [], []
        with self._unavailable("read_tick_range"):
            conn = self._conn()
            # One indexed range scan per symbol, in name order: the result needs no sort.
            for name, ident in self._selected_symbols(conn, symbols):
                cursor = conn.execute(
                    "select ts_ns, seq, price, volume, bid, ask from ticks "
                    "where symbol_id = ? and ts_ns >= ? and ts_ns < ? order by ts_ns, seq",
                    (ident, int(start_ns), int(end_ns)),
                )
                # Straight from the cursor: no list of millions of tuples (and the GC passes it
                # triggers), measured 2.2x faster than fetchall + np.array. NULL -> NaN.
                rows = np.fromiter(cursor, _TICK_DTYPE)
                if len(rows):
                    names.append(name)
                    parts.append(rows)
        ticks = np.concatenate(parts) if parts else np.empty(0, _TICK_DTYPE)
        symbol = np.repeat(np.array(names, dtype=object), [len(p) for p in parts])
        return _range_frame(symbol, ticks, TICK_RANGE_COLUMNS)

    def tick_counts(self, start_ns: int, end_ns: int) -> dict[str, int]:
        """Stored ticks per symbol in [start_ns, end_ns) (symbols without any left out)."""
        with self._unavailable("tick_counts"):
            rows = self._conn().execute(
                "select s.name, (select count(*) from ticks t where t.symbol_id = s.id "
                "and t.ts_ns >= ? and t.ts_ns < ?) from symbols s",
                (int(start_ns), int(end_ns)),
            )
            return {name: int(n) for name, n in sorted(rows) if n}

    def first_tick_ts(self) -> int | None:
        """Time of the oldest stored tick, None if there is none."""
        with self._unavailable("first_tick_ts"):
            # Per symbol the (symbol_id, ts_ns, seq) index answers min() with one seek.
            row = (
                self._conn()
                .execute(
                    "select min((select min(ts_ns) from ticks t where t.symbol_id = s.id)) "
                    "from symbols s"
                )
                .fetchone()
            )
        return None if row is None or row[0] is None else int(row[0])


def _insert_rows(
    conn: sqlite3.Connection, statement: tuple[str, str], columns: Sequence[np.ndarray]
) -> None:
    """`head values (...), (...), ... tail` for the rows of `columns`, in a few statements.

    executemany steps the statement once per row, and Python's sqlite3 releases and retakes the
    GIL around every step: while API threads hold the GIL, each retake waits up to the switch
    interval (5 ms), which starved the persister under query load (docs/candles.md). A multi-row
    INSERT steps once, so a batch costs a handful of GIL handovers instead of one per row.
    """
    head, tail = statement
    width, n = len(columns), len(columns[0])
    flat: list = [None] * (n * width)
    for j, column in enumerate(columns):
        flat[j::width] = column.tolist()
    done = 0
    while done < n:
        # Largest power of two that fits: at most log2(_ROWS_PER_STATEMENT) + 1 statement texts,
        # all kept prepared by the connection's statement cache.
        size = min(_ROWS_PER_STATEMENT, 1 << ((n - done).bit_length() - 1))
        conn.execute(
            _values_sql(head, tail, width, size), flat[done * width : (done + size) * width]
        )
        done += size


@functools.lru_cache(maxsize=64)
def _values_sql(head: str, tail: str, width: int, rows: int) -> str:
    row = "(" + ", ".join("?" * width) + ")"
    return f"{head} values {', '.join([row] * rows)} {tail}"


def _candle_rows(
    conn: sqlite3.Connection,
    ident: int,
    tf: int,
    lo: int | None,
    hi: int | None,
    limit: int | None,
    descending: bool,
) -> list[tuple]:
    where, params = _time_filter(ident, lo, hi)
    params["tf"] = tf
    direction = "desc" if descending else "asc"
    # SQLite's % truncates toward zero: ((x % tf) + tf) % tf is the floor remainder, so
    # buckets stay epoch-aligned before 1970. One window sorted by (ts_ns, seq) gives
    # the first and last price of every bucket.
    return conn.execute(
        f"""
        select b, max(o), max(price), min(price), max(c), sum(volume), count(*)
        from (
            select b, price, volume,
                first_value(price) over w as o,
                last_value(price) over w as c
            from (
                select ts_ns - (((ts_ns % :tf) + :tf) % :tf) as b, ts_ns, seq, price, volume
                from ticks where {where}
            )
            window w as (partition by b order by ts_ns, seq
                         rows between unbounded preceding and unbounded following)
        )
        group by b order by b {direction}"""
        + _limit(limit, params),
        params,
    ).fetchall()


def _time_filter(ident: int, lo: int | None, hi: int | None) -> tuple[str, dict[str, Any]]:
    conds = ["symbol_id = :sid"]
    params: dict[str, Any] = {"sid": ident}
    if lo is not None:
        conds.append("ts_ns >= :lo")
        params["lo"] = int(lo)
    if hi is not None:
        conds.append("ts_ns < :hi")
        params["hi"] = int(hi)
    return " and ".join(conds), params


def _limit(limit: int | None, params: dict[str, Any]) -> str:
    if limit is None:
        return ""
    params["limit"] = int(limit)
    return " limit :limit"


def _frame(rows: list[tuple], dtype: np.dtype, columns: Sequence[str]) -> pd.DataFrame:
    # NULL bid/ask arrive as None, which numpy turns into NaN in a float field.
    array = np.array(rows, dtype=dtype) if rows else np.empty(0, dtype)
    return pd.DataFrame({name: array[name] for name in columns}, columns=list(columns))


def _range_frame(symbol: np.ndarray, rows: np.ndarray, columns: Sequence[str]) -> pd.DataFrame:
    data = {"symbol": symbol, **{name: rows[name] for name in columns[1:]}}
    return pd.DataFrame(data, columns=list(columns))
