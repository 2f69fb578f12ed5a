"""Stored 1m candles (candles_1m, kept by write_ticks) equal the candles of the stored ticks.

The reference is pandas `resample(closed="left", label="left")` of what `read_ticks` returns
(`market.candles.resample_reference`, whose volume is the exact `math.fsum`), on both stores.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hft_pipeline.market.candles import resample_reference
from hft_pipeline.market.ticks import TickBatch
from hft_pipeline.store import migrations
from hft_pipeline.store.postgres import PostgresStore
from hft_pipeline.store.sqlite import SqliteStore
from hft_pipeline_tests.store.conftest import Backend, assert_candles_equal

NS = 1_000_000_000
MINUTE = 60 * NS
T0 = 1_710_109_800 * NS  # 2024-03-10 22:30 UTC: 1h buckets and PostgreSQL days get crossed
STORED_TIMEFRAMES = ("1m", "5m", "15m", "1h")
_names = itertools.count()


def random_stream(seed: int, n_symbols: int, n: int, grid_ns: int, late: float, t0: int):
    """Ticks in arrival order: seq per symbol in arrival order, ts on a grid (duplicates),
    a fraction `late` of them stamped up to 90 minutes before the stream's front."""
    rng = np.random.default_rng(seed)
    names = [f"C{next(_names)}" for _ in range(n_symbols)]
    sym = rng.integers(0, n_symbols, n)
    ts = t0 + np.cumsum(rng.integers(0, 3, n)) * grid_ns
    is_late = rng.random(n) < late
    ts[is_late] -= rng.integers(1, 90 * MINUTE // grid_ns + 2, int(is_late.sum())) * grid_ns
    seq = np.zeros(n, np.int64)
    for s in range(n_symbols):
        mine = sym == s
        seq[mine] = np.arange(1, int(mine.sum()) + 1) + 10 * s
    price = np.round(rng.uniform(1, 100, n), 2)
    # Lots from 1e-6 to 1e6: a float sum in arrival order would differ from the exact sum.
    volume = np.round(rng.uniform(0, 5, n), 3) * 10.0 ** rng.integers(-6, 7, n)
    volume[rng.random(n) < 0.05] = 0.0
    return names, sym, ts.astype(np.int64), seq, price, volume


def write_batches(store, names, sym, ts, seq, price, volume, cuts, shuffle_seed, first=1):
    """Write the stream in batches cut at `cuts`, each shuffled (out of order within a batch)."""
    rng = np.random.default_rng(shuffle_seed)
    bounds = [0, *sorted(min(c, len(ts)) for c in cuts), len(ts)]
    offset = first
    for lo, hi in itertools.pairwise(bounds):
        if hi <= lo:
            continue
        take = lo + rng.permutation(hi - lo)
        symbols = tuple(names)
        n = len(take)
        nan = np.full(n, np.nan)
        batch = TickBatch(
            symbols, sym[take].astype(np.int32), ts[take], seq[take], price[take], volume[take],
            nan, nan,
        )  # fmt: skip
        store.write_ticks(batch, offset)
        offset += 1
    return offset


def expected(store, symbol: str, timeframe: str) -> pd.DataFrame:
    """resample_reference of the ticks `read_ticks` returns (an empty frame without ticks)."""
    ticks = store.read_ticks(symbol)
    if ticks.empty:
        return store.minute_candles("NO_SUCH_SYMBOL", timeframe)
    return resample_reference(ticks[["ts", "seq", "price", "volume"]], timeframe)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_symbols=st.integers(1, 12),
    n=st.integers(1, 600),
    grid_ns=st.sampled_from([1, 1_000_000, NS, 7 * NS, 20 * NS]),
    late=st.sampled_from([0.0, 0.05, 0.3]),
    cuts=st.lists(st.integers(0, 600), max_size=8),
    near_epoch=st.booleans(),
)
def test_stored_candles_equal_resample_of_the_stored_ticks(
    backend: Backend, seed, n_symbols, n, grid_ns, late, cuts, near_epoch
) -> None:
    t0 = -30 * MINUTE if near_epoch else T0  # near the epoch: buckets on both sides of 1970
    names, sym, ts, seq, price, volume = random_stream(seed, n_symbols, n, grid_ns, late, t0)
    write_batches(backend.store, names, sym, ts, seq, price, volume, cuts, seed)
    for name in names:
        for timeframe in STORED_TIMEFRAMES:
            got = backend.store.minute_candles(name, timeframe)
            want = expected(backend.store, name, timeframe)
            # Bit for bit, volume included: the upsert merges exact sums, not float sums.
            pd.testing.assert_frame_equal(got, want, check_exact=True)


@pytest.mark.parametrize("timeframe", STORED_TIMEFRAMES)
def test_limit_order_and_bounds_select_like_candles(backend: Backend, timeframe: str) -> None:
    names, sym, ts, seq, price, volume = random_stream(5, 2, 6000, NS, 0.05, T0)
    # 3 h with gaps: whole 1m..15m buckets without ticks, so windows are cut by the limit.
    keep = (ts - T0) % (47 * MINUTE) < 31 * MINUTE
    write_batches(
        backend.store, names, *(a[keep] for a in (sym, ts, seq, price, volume)), [700, 3000], 1
    )
    store, symbol = backend.store, names[0]
    full = store.minute_candles(symbol, timeframe)
    assert len(full) >= 3
    pd.testing.assert_frame_equal(full, expected(store, symbol, timeframe), check_exact=True)
    for limit in (1, 2, 3, 7, len(full), len(full) + 5):
        newest = store.minute_candles(symbol, timeframe, limit=limit, descending=True)
        pd.testing.assert_frame_equal(newest, full.iloc[::-1].head(limit).reset_index(drop=True))
        oldest = store.minute_candles(symbol, timeframe, limit=limit)
        pd.testing.assert_frame_equal(oldest, full.head(limit))
    assert store.minute_candles(symbol, timeframe, limit=0).empty
    # Bounds select buckets by their start; an unaligned start skips the bucket it cuts into.
    start, end = int(full["ts"].iloc[1]) + 1, int(full["ts"].iloc[-1])
    ranged = store.minute_candles(symbol, timeframe, start_ns=start, end_ns=end)
    pd.testing.assert_frame_equal(ranged, full.iloc[2:-1].reset_index(drop=True))
    newest_before = store.minute_candles(symbol, timeframe, None, end, 2, True)
    pd.testing.assert_frame_equal(newest_before, full.iloc[-2:-4:-1].reset_index(drop=True))
    # Same candles as the aggregation of the ticks (whose SQL volume is a float sum).
    assert_candles_equal(full, store.candles(symbol, timeframe))


def test_volume_is_the_exact_sum_across_batches(backend: Backend) -> None:
    for volume in (2.0**53, 1.0, 1.0):  # a float sum in this order loses both 1.0s
        batch = TickBatch.from_columns("EXACT", [T0], [1], [10.0], [volume])
        backend.store.write_ticks(batch, 1)
    got = backend.store.minute_candles("EXACT", "1m")
    assert got["volume"].tolist() == [2.0**53 + 2] and got["ticks"].tolist() == [3]
    assert backend.store.minute_candles("EXACT", "1h")["volume"].tolist() == [2.0**53 + 2]


def test_late_tick_moves_open_and_close_of_its_minute(backend: Backend) -> None:
    store = backend.store
    store.write_ticks(TickBatch.from_columns("LATE", [T0 + NS, T0 + 2 * NS], [5, 6], [2.0, 3.0], [1.0, 1.0]), 1)  # fmt: skip
    # Same ts as the first tick but a lower seq: it is the new open; a later ts the new close.
    store.write_ticks(TickBatch.from_columns("LATE", [T0 + NS, T0 + 59 * NS, T0 + 61 * NS], [4, 7, 8], [1.0, 9.0, 4.0], [1.0, 1.0, 1.0]), 2)  # fmt: skip
    got = store.minute_candles("LATE", "1m")
    assert got["ts"].tolist() == [T0, T0 + MINUTE]
    assert got[["open", "high", "low", "close"]].values.tolist() == [
        [1.0, 9.0, 1.0, 9.0],
        [4.0] * 4,
    ]
    assert got["ticks"].tolist() == [4, 1]


def test_failed_write_leaves_stored_candles_untouched(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = backend.store
    store.write_ticks(TickBatch.from_columns("TXN", [T0], [1], [10.0], [1.0]), 1)
    before = store.minute_candles("TXN", "1m")

    def offset_write_fails(*args: object) -> None:
        raise RuntimeError("simulated crash after the candles, before the offset")

    monkeypatch.setattr(store, "_write_offset", offset_write_fails)
    with pytest.raises(RuntimeError, match="simulated crash"):
        store.write_ticks(TickBatch.from_columns("TXN", [T0 + 1, T0 + MINUTE], [2, 3], [99.0, 1.0], [5.0, 5.0]), 2)  # fmt: skip
    monkeypatch.undo()
    pd.testing.assert_frame_equal(store.minute_candles("TXN", "1m"), before)
    assert backend.query("select count(*) from candles_1m")[0][0] == 1


def test_finer_timeframes_are_refused(backend: Backend) -> None:
    with pytest.raises(ValueError, match="1m and coarser"):
        backend.store.minute_candles("ANY", "15s")


# -- the migration backfills candles_1m from ticks stored before it ---------------------------


def _insert_ticks_directly(store, name: str, ts, seq, price, volume) -> None:
    """Ticks as the code before migration 003 stored them (no candles_1m yet)."""
    if isinstance(store, SqliteStore):
        conn = store._conn()
        conn.execute("insert into symbols (name) values (?)", (name,))
        ident = conn.execute("select id from symbols where name = ?", (name,)).fetchone()[0]
        conn.executemany(
            "insert into ticks (symbol_id, ts_ns, seq, price, volume) values (?, ?, ?, ?, ?)",
            zip(
                [ident] * len(ts),
                ts.tolist(),
                seq.tolist(),
                price.tolist(),
                volume.tolist(),
                strict=True,
            ),
        )
        return
    ident = int(store._symbol_table([name])[0])
    store._ensure_partitions(ts)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    with psycopg.connect(store.url) as conn, conn.cursor() as cur:
        cur.executemany(
            "insert into ticks (symbol_id, ts, ts_ns, seq, price, volume) "
            "values (%s, %s, %s, %s, %s, %s)",
            [
                (ident, epoch + timedelta(microseconds=t // 1000), t, q, p, v)
                for t, q, p, v in zip(
                    ts.tolist(), seq.tolist(), price.tolist(), volume.tolist(), strict=True
                )
            ],
        )


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_migration_backfills_minutes_from_existing_ticks(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    if kind == "sqlite":
        store = SqliteStore(tmp_path / "old.sqlite3")
    else:
        store = PostgresStore(request.getfixturevalue("pg_dsn"), pool_size=2)
    try:
        every = migrations.load_migrations
        with monkeypatch.context() as m:
            m.setattr(
                migrations, "load_migrations", lambda d: [x for x in every(d) if x.version < 3]
            )
            assert 3 not in store.migrate()
        names, sym, ts, seq, price, volume = random_stream(11, 1, 3000, 100_000_000, 0.1, T0)
        _insert_ticks_directly(store, names[0], ts, seq, price, volume)

        assert 3 in store.migrate()
        for timeframe in STORED_TIMEFRAMES:
            # The backfill sums volume in SQL: equal up to float summation order.
            assert_candles_equal(
                store.minute_candles(names[0], timeframe), expected(store, names[0], timeframe)
            )
        # Ticks written afterwards, late ones included, merge into the backfilled minutes.
        more = random_stream(12, 1, 2000, 100_000_000, 0.5, T0 + 20 * MINUTE)[1:]
        more[2][:] += 10_000  # seq continues after the stored ones
        write_batches(store, names, *more, [500, 1500], 3)
        for timeframe in STORED_TIMEFRAMES:
            assert_candles_equal(
                store.minute_candles(names[0], timeframe), expected(store, names[0], timeframe)
            )
    finally:
        store.close()
