"""The PostgreSQL tick store: a psycopg 3 pool, binary COPY writes, candles computed in SQL."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from hft_pipeline.market.ticks import TickBatch, validate_symbol
from hft_pipeline.market.timeframes import timeframe_ns
from hft_pipeline.observability.redaction import register_url
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
    batch_minutes,
    candles_from_minutes,
    check_timeframe,
    merge_assignments,
    minute_rows_limit,
    upsert_columns,
)
from hft_pipeline.store.copy import (
    TICK_COPY_COLUMNS,
    decode_fixed_rows,
    encode_ticks,
)
from hft_pipeline.store.migrations import PG_MIGRATION_LOCK, migrate_postgres
from hft_pipeline.store.pg_arrays import Float8Array, Int4Array, Int8Array, PgArray
from hft_pipeline.store.results import ResultsRepository, postgres_engine
from hft_pipeline.store.results.delegate import StoredResults

DAY_NS = 86_400 * 1_000_000_000
_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Advisory lock key serializing on-demand partition creation across processes.
_PARTITION_LOCK = 0x4846_5450_4152  # "HFTPAR"

log = logging.getLogger(__name__)

# -- ticks layout: TimescaleDB hypertable or native daily partitions (docs/postgres.md) --------

#: The extension whose hypertable holds ticks where the server can run it.
TIMESCALEDB = "timescaledb"

# Only TimescaleDB's loader, which runs from shared_preload_libraries, defines
# timescaledb.max_background_workers; without it, loading the extension ends the session with a
# FATAL error that no SQL exception handler catches.
_PROBE_TIMESCALEDB = """
    select
        exists (select 1 from pg_available_extensions where name = %(ext)s),
        current_setting('timescaledb.max_background_workers', true) is not null,
        exists (select 1 from pg_extension where extname = %(ext)s),
        to_regclass('ticks') is not null
"""

_LAYOUT_NAMES = {
    "hypertable": "a TimescaleDB hypertable (1-day chunks)",
    "partitions": "native daily range partitions",
}


@dataclass(frozen=True, slots=True)
class TicksLayout:
    """The layout chosen for a ticks table about to be created, and why."""

    hypertable: bool
    create_extension: bool
    reason: str


def choose_ticks_layout(*, available: bool, preloaded: bool, installed: bool) -> TicksLayout:
    """Hypertable only where TimescaleDB can load: preloaded, and installed or installable."""
    ext = TIMESCALEDB
    if not preloaded:
        if installed:
            why = "is installed in this database but not in shared_preload_libraries"
        elif available:
            why = "is available but not in shared_preload_libraries"
        else:
            why = "is not available on this server"
        return TicksLayout(False, False, f"{ext} {why}")
    if installed:
        return TicksLayout(True, False, f"{ext} is preloaded and installed in this database")
    if available:
        return TicksLayout(True, True, f"{ext} is preloaded and available")
    return TicksLayout(False, False, f"{ext} is not available on this server")


def ticks_layout(conn: psycopg.Connection) -> str | None:
    """How the catalog partitions ticks: "hypertable", "partitions", "table"; None if absent."""
    exists, partitioned, timescale = conn.execute(
        "select to_regclass('ticks') is not null, exists (select 1 from pg_partitioned_table "
        "where partrelid = to_regclass('ticks')), "
        "to_regclass('timescaledb_information.hypertables') is not null"
    ).fetchone()
    if not exists:
        return None
    if partitioned:
        return "partitions"
    if timescale:
        hypertable = conn.execute(
            "select exists (select 1 from timescaledb_information.hypertables "
            "where format('%I.%I', hypertable_schema, hypertable_name)::regclass "
            "= to_regclass('ticks'))"
        ).fetchone()[0]
        if hypertable:
            return "hypertable"
    return "table"


_COPY_TICKS = "copy ticks ({}) from stdin (format binary)".format(", ".join(TICK_COPY_COLUMNS))

# Per-symbol totals, the batch's 1m partial candles (docs/candles.md) and the consumer offset in
# one statement (one round trip); it returns the transaction id, needed to resolve a COMMIT
# whose answer is lost. Rows in key order: concurrent writers lock them in the same order. The
# columns go as binary arrays (%b, see pg_arrays).
_WRITE_TOTALS_AND_OFFSET = """
    with totals as (
        insert into symbol_stats (symbol_id, rows, max_ts_ns, max_seq)
        select * from unnest(%b, %b, %b, %b) order by 1
        on conflict (symbol_id) do update set
            rows = symbol_stats.rows + excluded.rows,
            max_ts_ns = greatest(symbol_stats.max_ts_ns, excluded.max_ts_ns),
            max_seq = greatest(symbol_stats.max_seq, excluded.max_seq)
    ), minutes as (
        insert into candles_1m as o ({minute_columns})
        select * from unnest({minute_arrays}) order by 1, 2
        on conflict (symbol_id, ts_ns) do update set {minute_merge}
    ), stream_offset as (
        insert into consumer_offsets (stream, "offset", updated_at) values (%s, %s, now())
        on conflict (stream) do update
        set "offset" = excluded."offset", updated_at = excluded.updated_at
    )
    select pg_current_xact_id()::text
""".format(
    minute_columns=", ".join(MINUTE_COLUMNS),
    minute_arrays=", ".join(["%b"] * len(MINUTE_COLUMNS)),
    minute_merge=merge_assignments("greatest", "least"),
)
#: Array types of the symbol_stats columns, then of the candles_1m columns.
_TOTALS_ARRAYS = (Int4Array, Int8Array, Int8Array, Int8Array)
_MINUTE_ARRAYS = (Int4Array, Int8Array, *[Float8Array] * 7, *[Int8Array] * 5)
#: Parameters of an empty batch.
_NO_ROWS = tuple(kind(np.empty(0)) for kind in (*_TOTALS_ARRAYS, *_MINUTE_ARRAYS))

_TICK_FIELDS = [
    ("ts", ">i8"),
    ("seq", ">i8"),
    ("price", ">f8"),
    ("volume", ">f8"),
    ("bid", ">f8"),
    ("ask", ">f8"),
]
_CANDLE_FIELDS = [
    ("ts", ">i8"),
    ("open", ">f8"),
    ("high", ">f8"),
    ("low", ">f8"),
    ("close", ">f8"),
    ("volume", ">f8"),
    ("ticks", ">i8"),
]
#: candles_1m rows as `READ_COLUMNS` selects them (the volume as its exact-sum terms).
_MINUTE_FIELDS = [
    *_CANDLE_FIELDS[:5],
    ("vs", ">f8"),
    ("vc", ">f8"),
    ("vd", ">f8"),
    ("ticks", ">i8"),
]
#: The CancelScope of the API query the current thread runs, if any (see `query_scope`).
_QUERY_SCOPE = threading.local()


class PostgresStore(StoredResults):
    """TickStore on PostgreSQL 15+ (TimescaleDB hypertable if available, else daily partitions).

    Every method raises StoreUnavailableError when the server cannot be reached; the pool
    checks connections before handing them out and reconnects by itself, so the same object
    works again once the server is back.
    """

    def __init__(
        self,
        dsn: str,
        pool_size: int = 20,
        *,
        connect_timeout: float = 3.0,
        pool_timeout: float = 5.0,
    ) -> None:
        self.url = dsn
        self._dsn = dsn
        self._safe_url = register_url(dsn)  # also masks it in every log line and error
        self._connect_kwargs: dict[str, Any] = {
            "connect_timeout": max(1, round(connect_timeout)),
            "application_name": "hft_pipeline",
            # A server that vanishes without a FIN/RST (cable, VM pause) is noticed in seconds
            # instead of the OS default of two hours.
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 3,
            "keepalives_count": 3,
            "tcp_user_timeout": 15_000,
        }
        self._lock = threading.Lock()
        self._symbol_ids: dict[str, int] = {}
        self._known_days: set[int] = set()
        self._partitioned: bool | None = None
        # stream -> (log_offset, n_ticks, xid) of a write whose COMMIT got no answer.
        self._in_doubt: dict[str, tuple[int, int, str]] = {}
        self._pool = ConnectionPool(
            dsn,
            min_size=1,
            max_size=max(1, pool_size),
            kwargs=self._connect_kwargs,
            open=False,
            check=ConnectionPool.check_connection,
            timeout=pool_timeout,
            # Give up a failed reconnect attempt quickly: the next request starts a fresh one,
            # so recovery after an outage never waits out a long exponential backoff.
            reconnect_timeout=max(pool_timeout, 5.0),
            name="hft-store",
        )
        self._pool.open(wait=False)
        #: Candles, indicators, backtests and comparisons: the one results layer (docs/results.md),
        #: on its own small SQLAlchemy pool (no connection until first use).
        self.results = ResultsRepository(
            postgres_engine(dsn, connect_timeout_s=self._connect_kwargs["connect_timeout"])
        )

    def __repr__(self) -> str:
        return f"PostgresStore({self._safe_url!r})"

    # -- plumbing -------------------------------------------------------------------------

    @contextmanager
    def _unavailable(self, action: str) -> Iterator[None]:
        """Translate connection-level failures into StoreUnavailableError."""
        try:
            yield
        except StoreUnavailableError:
            raise
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise StoreUnavailableError(
                f"PostgreSQL at {self._safe_url} is unavailable ({action}): {exc}"
            ) from exc

    def _fetch_copy(
        self, query: str, params: dict[str, Any], fields: list[tuple[str, str]]
    ) -> np.ndarray:
        statement = f"copy ({query}) to stdout (format binary)"
        with (
            self._reader() as conn,
            conn.cursor() as cur,
            cur.copy(statement, params) as copy,
        ):
            payload = b"".join(bytes(block) for block in copy)
        return decode_fixed_rows(payload, fields)

    @contextmanager
    def _reader(self) -> Iterator[psycopg.Connection]:
        """A pooled connection for a read; inside `query_scope`, cancelling the scope stops it."""
        scope: CancelScope | None = getattr(_QUERY_SCOPE, "current", None)
        with self._pool.connection() as conn:
            if scope is None:
                yield conn
                return
            try:
                with scope.attached(lambda: conn.cancel_safe(timeout=2.0)):
                    yield conn
            finally:
                if scope.cancelled:
                    # A cancel request can still hit this session's next query: closed, the
                    # pool replaces it instead of handing it to someone else.
                    conn.close()

    def _lookup_symbol(self, symbol: str) -> int | None:
        validate_symbol(symbol)
        ident = self._symbol_ids.get(symbol)
        if ident is None:
            with self._reader() as conn:
                row = conn.execute("select id from symbols where name = %s", (symbol,)).fetchone()
            if row is None:
                return None
            ident = row[0]
            with self._lock:
                self._symbol_ids[symbol] = ident
        return ident

    def _symbol_table(self, names: Sequence[str]) -> np.ndarray:
        """Database ids of `names` (int32, same order), creating missing symbols."""
        missing = [name for name in names if name not in self._symbol_ids]
        if missing:
            for name in missing:
                validate_symbol(name)
            # Own committed transaction: ids stay valid even if the tick transaction fails.
            with self._pool.connection() as conn:
                conn.execute(
                    "insert into symbols (name) select unnest(%s::text[]) order by 1 "
                    "on conflict (name) do nothing",
                    (missing,),
                )
                rows = conn.execute(
                    "select name, id from symbols where name = any(%s::text[])", (missing,)
                ).fetchall()
            with self._lock:
                self._symbol_ids.update(rows)
        return np.fromiter((self._symbol_ids[n] for n in names), np.int32, len(names))

    def _ensure_partitions(self, ts_ns: np.ndarray) -> None:
        """Create the daily partitions `ts_ns` falls into (native partitioning only)."""
        days = [d for d in np.unique(ts_ns // DAY_NS).tolist() if d not in self._known_days]
        if not days:
            return
        with self._pool.connection() as conn:
            if self._partitioned is None:
                self._partitioned = conn.execute(
                    "select exists (select 1 from pg_partitioned_table "
                    "where partrelid = to_regclass('ticks'))"
                ).fetchone()[0]
            if self._partitioned:
                conn.execute("select pg_advisory_xact_lock(%s)", (_PARTITION_LOCK,))
                for day in days:
                    first = date(1970, 1, 1) + timedelta(days=day)
                    name = f"ticks_{first:%Y%m%d}"
                    exists = conn.execute("select to_regclass(%s)", (name,)).fetchone()[0]
                    if exists is None:
                        conn.execute(
                            sql.SQL(
                                "create table {} partition of ticks for values from ({}) to ({})"
                            ).format(
                                sql.Identifier(name),
                                sql.Literal(f"{first.isoformat()} 00:00:00+00"),
                                sql.Literal(
                                    f"{(first + timedelta(days=1)).isoformat()} 00:00:00+00"
                                ),
                            )
                        )
        with self._lock:
            self._known_days.update(days)

    def _write_offset(
        self, cur: psycopg.Cursor, stream: str, log_offset: int, totals: tuple[PgArray, ...]
    ) -> str:
        """Upsert the symbol totals, 1m candles and offset of `stream`; return the transaction id."""
        row = cur.execute(_WRITE_TOTALS_AND_OFFSET, (*totals, stream, int(log_offset))).fetchone()
        return row[0]

    def _already_committed(self, stream: str, log_offset: int, n: int) -> bool:
        """Resolve a write whose COMMIT was sent but never answered (connection lost).

        The server may have committed it; writing it again would duplicate the ticks. Its
        transaction id tells: pg_xact_status says committed, aborted or still in progress.
        """
        entry = self._in_doubt.get(stream)
        if entry is None:
            return False
        if entry[:2] != (log_offset, n):
            # The caller moved on to another batch: it knows better than we do.
            self._in_doubt.pop(stream, None)
            return False
        with self._pool.connection() as conn:
            status = conn.execute("select pg_xact_status(%s::xid8)", (entry[2],)).fetchone()[0]
        if status == "in progress":
            raise StoreUnavailableError("the previous write of this batch is still being committed")
        # Forget the entry only once its fate is known: a failed check must be repeatable.
        self._in_doubt.pop(stream, None)
        return status == "committed"

    # -- TickStore ------------------------------------------------------------------------

    def migrate(self) -> list[int]:
        """Apply pending migrations from `sql/postgres`; return the versions applied now.

        Before the migration that creates ticks, TimescaleDB is created where it can run; any
        other case, a failed CREATE EXTENSION included, gets native daily partitions, and the
        log says why (docs/postgres.md).
        """
        with self._unavailable("migrate"):
            choice = self._prepare_ticks_layout()
            # A fresh connection: a failed CREATE EXTENSION may have ended the other session.
            with psycopg.connect(self._dsn, autocommit=True, **self._connect_kwargs) as conn:
                applied = migrate_postgres(conn)
                layout = ticks_layout(conn)
        self._partitioned = layout == "partitions"
        if choice is not None:
            log.info("ticks are stored in %s: %s", _LAYOUT_NAMES.get(layout, layout), choice.reason)
        return applied

    def _prepare_ticks_layout(self) -> TicksLayout | None:
        """Probe TimescaleDB and create it if usable; None if ticks exists (layout fixed)."""
        with psycopg.connect(self._dsn, autocommit=True, **self._connect_kwargs) as conn:
            # Concurrent migrators probe one at a time, so one creates the extension and the
            # others find it installed (the lock goes with the session, even one ended by FATAL).
            conn.execute("select pg_advisory_lock(%s)", (PG_MIGRATION_LOCK,))
            available, preloaded, installed, exists = conn.execute(
                _PROBE_TIMESCALEDB, {"ext": TIMESCALEDB}
            ).fetchone()
            if exists:
                return None
            choice = choose_ticks_layout(
                available=available, preloaded=preloaded, installed=installed
            )
            if choice.create_extension:
                try:
                    conn.execute(
                        sql.SQL("create extension if not exists {}").format(
                            sql.Identifier(TIMESCALEDB)
                        )
                    )
                except psycopg.Error as exc:
                    failure = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    return TicksLayout(
                        False,
                        False,
                        f"{choice.reason}, but CREATE EXTENSION failed "
                        f"({type(exc).__name__}: {failure})",
                    )
        return choice

    def write_ticks(self, batch: TickBatch, log_offset: int, stream: str = "ticklog") -> None:
        """Insert `batch` by binary COPY and set the offset of `stream`, in one transaction."""
        n = len(batch)
        with self._unavailable("write_ticks"):
            if self._already_committed(stream, log_offset, n):
                return
            totals_params = _NO_ROWS
            if n:
                table = self._symbol_table(batch.symbols)
                self._ensure_partitions(batch.ts)
                ids = table[batch.sym]
                # Rows sorted like the (symbol_id, ts) btree insert into neighbouring leaf
                # pages: measured ~8 % less server time per COPY than arrival order.
                order = np.lexsort((batch.ts, ids))
                payload = encode_ticks(
                    ids[order], batch.ts[order], batch.seq[order], batch.price[order],
                    batch.volume[order], batch.bid[order], batch.ask[order],
                )  # fmt: skip
                totals = symbol_totals(batch)
                # A few hundred candle rows per batch (symbols x minutes it touches).
                columns = (
                    table[totals.sym], totals.rows, totals.max_ts, totals.max_seq,
                    *upsert_columns(batch_minutes(batch), table),
                )  # fmt: skip
                kinds = (*_TOTALS_ARRAYS, *_MINUTE_ARRAYS)
                totals_params = tuple(k(c) for k, c in zip(kinds, columns, strict=True))
            with self._pool.connection() as conn:
                with conn.cursor() as cur:
                    if n:
                        with cur.copy(_COPY_TICKS) as copy:
                            copy.write(payload)
                    xid = self._write_offset(cur, stream, log_offset, totals_params)
                try:
                    conn.commit()
                except psycopg.OperationalError:
                    with self._lock:
                        self._in_doubt[stream] = (log_offset, n, xid)
                    raise

    def log_offset(self, stream: str = "ticklog") -> int:
        """The offset stored by the last `write_ticks` for `stream`, 0 if none."""
        with self._unavailable("log_offset"), self._pool.connection() as conn:
            row = conn.execute(
                'select "offset" from consumer_offsets where stream = %s', (stream,)
            ).fetchone()
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
            ident = self._lookup_symbol(symbol)
            if ident is None or (limit is not None and limit <= 0):
                return _frame(np.empty(0, _native(_TICK_FIELDS)), TICK_FRAME_COLUMNS)
            where, params = _time_filter(ident, start_ns, end_ns)
            # The btree is on (symbol_id, ts); ts is ts_ns floored, so (ts, ts_ns, seq) sorts
            # exactly like (ts_ns, seq) and lets the planner use the index with an incremental sort.
            direction = "desc" if descending else "asc"
            query = (
                "select ts_ns, seq, price, volume, coalesce(bid, 'NaN'), coalesce(ask, 'NaN') "
                f"from ticks where {where} "
                f"order by ts {direction}, ts_ns {direction}, seq {direction}"
                + _limit(limit, params)
            )
            rows = self._fetch_copy(query, params, _TICK_FIELDS)
        return _frame(rows, TICK_FRAME_COLUMNS)

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
            ident = self._lookup_symbol(symbol)
            if ident is None or (limit is not None and limit <= 0):
                return _frame(np.empty(0, _native(_CANDLE_FIELDS)), CANDLE_COLUMNS)
            if descending and limit is not None and lo is None:
                # The API asks for the newest N candles: try the window that holds exactly N
                # buckets below the newest tick before aggregating the whole history.
                window_lo = self._window_start(ident, tf, limit, hi)
                if window_lo is not None:
                    rows = self._candle_rows(ident, tf, window_lo, hi, limit, descending)
                    if len(rows) == limit:
                        return _frame(rows, CANDLE_COLUMNS)
            rows = self._candle_rows(ident, tf, lo, hi, limit, descending)
        return _frame(rows, CANDLE_COLUMNS)

    def _window_start(self, ident: int, tf: int, limit: int, hi: int | None) -> int | None:
        with self._reader() as conn:
            row = conn.execute(
                "select max_ts_ns from symbol_stats where symbol_id = %s", (ident,)
            ).fetchone()
        return None if row is None else recent_buckets_start(row[0], tf, limit, hi)

    def _candle_rows(
        self,
        ident: int,
        tf: int,
        lo: int | None,
        hi: int | None,
        limit: int | None,
        descending: bool,
    ) -> np.ndarray:
        where, params = _time_filter(ident, lo, hi)
        params["tf"] = tf
        direction = "desc" if descending else "asc"
        # Floor (not truncating) division keeps buckets epoch-aligned before 1970 too.
        query = (
            "select b, (array_agg(price order by ts_ns, seq))[1], max(price), min(price), "
            "(array_agg(price order by ts_ns desc, seq desc))[1], sum(volume), count(*) "
            "from (select ts_ns - mod(mod(ts_ns, %(tf)s) + %(tf)s, %(tf)s) as b, "
            f"ts_ns, seq, price, volume from ticks where {where}) as t "
            f"group by b order by b {direction}" + _limit(limit, params)
        )
        return self._fetch_copy(query, params, _CANDLE_FIELDS)

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
            ident = self._lookup_symbol(symbol)
            if ident is None or (limit is not None and limit <= 0):
                return _frame(np.empty(0, _native(_CANDLE_FIELDS)), CANDLE_COLUMNS)
            conds, params = ["symbol_id = %(sid)s"], {"sid": ident}
            for bound, op, value in (("lo", ">=", lo), ("hi", "<", hi)):
                if value is not None:
                    conds.append(f"ts_ns {op} %({bound})s")
                    params[bound] = int(value)
            direction = "desc" if descending else "asc"
            query = (
                f"select {READ_COLUMNS} from candles_1m where {' and '.join(conds)} "
                f"order by ts_ns {direction}" + _limit(minute_rows_limit(tf, limit), params)
            )
            rows = self._fetch_copy(query, params, _MINUTE_FIELDS)
        return candles_from_minutes(rows, tf, limit, descending)

    @contextmanager
    def query_scope(self, scope: CancelScope) -> Iterator[None]:
        """This thread's queries in the block stop when `scope` is cancelled (cancel request)."""
        previous = getattr(_QUERY_SCOPE, "current", None)
        _QUERY_SCOPE.current = scope
        try:
            yield
        finally:
            _QUERY_SCOPE.current = previous

    def last_seqs(self) -> dict[str, int]:
        """Highest persisted seq per symbol."""
        with self._unavailable("last_seqs"), self._pool.connection() as conn:
            rows = conn.execute(
                "select s.name, t.max_seq from symbol_stats t join symbols s on s.id = t.symbol_id"
            ).fetchall()
        return {name: int(seq) for name, seq in rows}

    def watermark(self) -> Watermark:
        """Rows, newest persisted tick time overall and per symbol."""
        with self._unavailable("watermark"), self._pool.connection() as conn:
            rows = conn.execute(
                "select s.name, t.rows, t.max_ts_ns from symbol_stats t "
                "join symbols s on s.id = t.symbol_id"
            ).fetchall()
        per_symbol = {name: int(ts) for name, count, ts in rows if count > 0}
        return Watermark(
            rows=sum(int(count) for _, count, _ in rows),
            max_ts=max(per_symbol.values()) if per_symbol else None,
            per_symbol_max_ts=per_symbol,
        )

    def symbols(self) -> list[str]:
        """Every symbol with at least one stored tick, sorted."""
        with self._unavailable("symbols"), self._reader() as conn:
            rows = conn.execute(
                "select s.name from symbol_stats t join symbols s on s.id = t.symbol_id "
                "where t.rows > 0"
            ).fetchall()
        return sorted(name for (name,) in rows)

    def add_subscription(self, symbol: str, exchange: str) -> bool:
        """Persist a subscription; False if it already existed."""
        validate_symbol(symbol)
        with self._unavailable("add_subscription"), self._pool.connection() as conn:
            cur = conn.execute(
                "insert into subscriptions (symbol, exchange, created_ns) values (%s, %s, %s) "
                "on conflict (symbol) do nothing",
                (symbol, str(exchange), time.time_ns()),
            )
            return cur.rowcount == 1

    def remove_subscription(self, symbol: str) -> bool:
        """Delete a subscription; False if there was none."""
        with self._unavailable("remove_subscription"), self._pool.connection() as conn:
            cur = conn.execute("delete from subscriptions where symbol = %s", (symbol,))
            return cur.rowcount == 1

    def subscriptions(self) -> list[Subscription]:
        """All persisted subscriptions ordered by symbol."""
        with self._unavailable("subscriptions"), self._pool.connection() as conn:
            rows = conn.execute("select symbol, exchange, created_ns from subscriptions").fetchall()
        return [Subscription(s, e, int(c)) for s, e, c in sorted(rows)]

    def ping(self) -> None:
        """Raise StoreUnavailableError unless the server answers `select 1`."""
        with self._unavailable("ping"), self._pool.connection() as conn:
            conn.execute("select 1").fetchone()

    def close(self) -> None:
        """Close every pooled connection."""
        self._pool.close()
        self.results.close()

    # -- inputs and results of the Dagster assets ----------------------------------------------

    def _names_by_id(self) -> dict[int, str]:
        with self._pool.connection() as conn:
            return dict(conn.execute("select id, name from symbols").fetchall())

    def _stored_ids(self, symbols: Sequence[str] | None) -> list[int] | None:
        """Ids of the requested stored symbols (unknown ones skipped); None means all."""
        if symbols is None:
            return None
        return [
            i for i in (self._lookup_symbol(s) for s in dict.fromkeys(symbols)) if i is not None
        ]

    def read_tick_range(
        self, start_ns: int, end_ns: int, symbols: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """Ticks of every (or the given) symbol in [start_ns, end_ns), by (symbol, ts, seq)."""
        with self._unavailable("read_tick_range"):
            ids = self._stored_ids(symbols)
            if ids is not None and not ids:
                return _symbol_frame(
                    np.empty(0, object), np.empty(0, _native(_TICK_FIELDS)), TICK_RANGE_COLUMNS
                )
            where, params = _range_filter(start_ns, end_ns, ids)
            # Unordered: one sequential pass over the partition; numpy sorts faster than a
            # server-side sort of millions of rows that would spill to disk. Measured on 3.6M
            # ticks: the scan takes ~1 s of server time, most of the rest is psycopg handing
            # over one COPY message per row. Packing rows server-side (string_agg of
            # int8send(...) per symbol and 10 s) saved ~12 % wall time but cost the server
            # 4-7 s of CPU, which ingest needs more.
            rows = self._fetch_copy(
                "select symbol_id, ts_ns, seq, price, volume, coalesce(bid, 'NaN'), "
                f"coalesce(ask, 'NaN') from ticks where {where}",
                params,
                [("symbol_id", ">i4"), *_TICK_FIELDS],
            )
            names = self._names_by_id()
        symbol, order = _sorted_symbols(names, rows["symbol_id"], rows["ts"], rows["seq"])
        return _symbol_frame(symbol, rows[order], TICK_RANGE_COLUMNS)

    def tick_counts(self, start_ns: int, end_ns: int) -> dict[str, int]:
        """Stored ticks per symbol in [start_ns, end_ns) (symbols without any left out)."""
        where, params = _range_filter(start_ns, end_ns, None)
        with self._unavailable("tick_counts"), self._pool.connection() as conn:
            rows = conn.execute(
                "select s.name, c.n from (select symbol_id, count(*) as n from ticks "
                f"where {where} group by symbol_id) c join symbols s on s.id = c.symbol_id",
                params,
            ).fetchall()
        return {name: int(n) for name, n in sorted(rows)}

    def first_tick_ts(self) -> int | None:
        """Time of the oldest stored tick, None if there is none."""
        with self._unavailable("first_tick_ts"), self._pool.connection() as conn:
            # One (symbol_id, ts) index seek per symbol instead of a scan of every partition.
            row = conn.execute(
                "select min(f.ts_ns) from symbols s cross join lateral ("
                "select ts_ns from ticks where symbol_id = s.id order by ts, ts_ns limit 1) f"
            ).fetchone()
        return None if row is None or row[0] is None else int(row[0])


def _us_to_datetime(us: int) -> datetime:
    return _UNIX_EPOCH + timedelta(microseconds=us)


def _time_filter(ident: int, lo: int | None, hi: int | None) -> tuple[str, dict[str, Any]]:
    """WHERE clause on ts_ns (exact) plus the implied bounds on ts (partition pruning, index)."""
    conds = ["symbol_id = %(sid)s"]
    params: dict[str, Any] = {"sid": ident}
    if lo is not None:
        conds += ["ts_ns >= %(lo)s", "ts >= %(lo_ts)s"]
        params |= {"lo": int(lo), "lo_ts": _us_to_datetime(int(lo) // 1000)}
    if hi is not None:
        # ts_ns < hi  =>  floor_us(ts_ns) <= floor_us(hi - 1)
        conds += ["ts_ns < %(hi)s", "ts < %(hi_ts)s"]
        params |= {"hi": int(hi), "hi_ts": _us_to_datetime((int(hi) - 1) // 1000 + 1)}
    return " and ".join(conds), params


def _limit(limit: int | None, params: dict[str, Any]) -> str:
    if limit is None:
        return ""
    params["limit"] = int(limit)
    return " limit %(limit)s"


def _native(fields: list[tuple[str, str]]) -> np.dtype:
    return np.dtype([(name, np.dtype(fmt).newbyteorder("=")) for name, fmt in fields])


def _frame(rows: np.ndarray, columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({name: rows[name] for name in columns}, columns=list(columns))


def _range_filter(start_ns: int, end_ns: int, ids: list[int] | None) -> tuple[str, dict[str, Any]]:
    """WHERE clause on ts_ns in [start_ns, end_ns) with the implied ts bounds (partition pruning)."""
    lo, hi = int(start_ns), int(end_ns)
    conds = ["ts_ns >= %(lo)s", "ts >= %(lo_ts)s", "ts_ns < %(hi)s", "ts < %(hi_ts)s"]
    params: dict[str, Any] = {
        "lo": lo,
        "lo_ts": _us_to_datetime(lo // 1000),
        "hi": hi,
        "hi_ts": _us_to_datetime((hi - 1) // 1000 + 1),
    }
    if ids is not None:
        conds.append("symbol_id = any(%(ids)s::int4[])")
        params["ids"] = ids
    return " and ".join(conds), params


def _sorted_symbols(
    names: dict[int, str], ids: np.ndarray, *keys: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(symbol names in sorted row order, the permutation) ordering rows by (name, *keys)."""
    if not len(ids):
        return np.empty(0, object), np.empty(0, np.int64)
    ordered = sorted(names, key=names.__getitem__)
    rank = np.zeros(max(names) + 1, np.int64)
    rank[ordered] = np.arange(len(ordered))
    order = np.lexsort((*reversed(keys), rank[ids]))
    labels = np.array([names[i] for i in ordered], dtype=object)
    return labels[rank[ids][order]], order


def _symbol_frame(symbol: np.ndarray, rows: np.ndarray, columns: Sequence[str]) -> pd.DataFrame:
    data = {"symbol": symbol, **{name: rows[name] for name in columns[1:]}}
    return pd.DataFrame(data, columns=list(columns))
