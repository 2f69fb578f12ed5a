"""The TickStore contract, run against both backends (SQLite file and PostgreSQL database)."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from hft_pipeline.market.ticks import InvalidSymbolError, TickBatch
from hft_pipeline.market.timeframes import PANDAS_RULES, PG_INTERVALS, TIMEFRAMES
from hft_pipeline.store import UnsupportedStoreUrlError, open_store
from hft_pipeline.store.migrations import load_migrations
from hft_pipeline_tests.store.conftest import (
    Backend,
    assert_candles_equal,
    expected_ticks,
    make_ticks,
    pandas_candles,
    write_frame,
)

NS = 1_000_000_000
DAY = 86_400 * NS
# 2024-03-10 22:30 UTC: the data crosses midnight, so PostgreSQL needs two daily partitions.
T0 = 1_710_109_800 * NS


def test_round_trip_is_exact(backend: Backend) -> None:
    rng = np.random.default_rng(1)
    frame = make_ticks(rng, ["R_100", "frxEURUSD", "PETR4"], 6000, T0, 3 * 3600 * NS)
    last = write_frame(backend.store, frame, 700, rng)

    for symbol in ("R_100", "frxEURUSD", "PETR4"):
        got = backend.store.read_ticks(symbol)
        want = expected_ticks(frame, symbol)
        assert got["ts"].dtype == np.int64 and got["seq"].dtype == np.int64
        pd.testing.assert_frame_equal(got, want)  # NaN bid/ask came back as NaN, values bit-exact
    assert backend.store.log_offset() == last
    assert backend.store.log_offset("other-stream") == 0
    null_bids = backend.query("select count(*) from ticks where bid is null")[0][0]
    assert null_bids == int(frame["bid"].isna().sum()) > 0


def test_unknown_symbol_reads_empty_and_bad_symbol_is_rejected(backend: Backend) -> None:
    assert backend.store.read_ticks("NOPE").empty
    assert list(backend.store.candles("NOPE", "1m").columns) == [
        "ts", "open", "high", "low", "close", "volume", "ticks"
    ]  # fmt: skip
    with pytest.raises(InvalidSymbolError):
        backend.store.read_ticks("BAD SYMBOL")
    bad = TickBatch.from_columns("a|b", [T0], [1], [1.0], [1.0])
    with pytest.raises(InvalidSymbolError):
        backend.store.write_ticks(bad, 1)
    assert backend.store.log_offset() == 0


def test_offset_and_ticks_commit_together(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = backend.store
    first = TickBatch.from_columns("R_50", [T0, T0 + 1], [1, 2], [10.0, 11.0], [1.0, 1.0])
    store.write_ticks(first, 5)

    def offset_write_fails(*args: object) -> None:
        raise RuntimeError("simulated crash between the ticks and the offset")

    monkeypatch.setattr(store, "_write_offset", offset_write_fails)
    second = TickBatch.from_columns("R_50", [T0 + 2, T0 + 3], [3, 4], [12.0, 13.0], [1.0, 1.0])
    with pytest.raises(RuntimeError, match="simulated crash"):
        store.write_ticks(second, 9)
    monkeypatch.undo()

    # Neither the ticks nor the offset nor the per-symbol totals of the failed batch are visible.
    assert store.log_offset() == 5
    assert store.read_ticks("R_50")["seq"].tolist() == [1, 2]
    assert store.last_seqs() == {"R_50": 2}
    assert store.watermark().rows == 2
    assert backend.query("select count(*) from ticks")[0][0] == 2

    store.write_ticks(second, 9)
    assert store.log_offset() == 5 + 4
    assert store.read_ticks("R_50")["seq"].tolist() == [1, 2, 3, 4]


def test_empty_batch_only_moves_the_offset(backend: Backend) -> None:
    backend.store.write_ticks(TickBatch.empty(), 42, stream="s1")
    assert backend.store.log_offset("s1") == 42
    assert backend.store.log_offset() == 0
    assert backend.store.watermark().rows == 0


@pytest.mark.parametrize("timeframe", list(TIMEFRAMES))
def test_candles_equal_pandas_resample(backend: Backend, timeframe: str) -> None:
    rng = np.random.default_rng(7)
    # 100 ms grid: many ticks share a timestamp, so open/close depend on seq too.
    frame = make_ticks(rng, ["R_100", "R_25"], 8000, T0, 3 * 3600 * NS, tick_ns=100_000_000)
    write_frame(backend.store, frame, 500, rng)  # shuffled: out-of-order inserts

    for symbol in ("R_100", "R_25"):
        got = backend.store.candles(symbol, timeframe)
        assert_candles_equal(got, pandas_candles(frame, symbol, PANDAS_RULES[timeframe]))


def test_candles_before_1970_use_floor_buckets(backend: Backend) -> None:
    rng = np.random.default_rng(3)
    frame = make_ticks(rng, ["OLD"], 3000, -2 * 3600 * NS, 4 * 3600 * NS, tick_ns=10_000_000)
    write_frame(backend.store, frame, 1000, rng)
    assert (frame["ts"] < 0).any() and (frame["ts"] > 0).any()
    for timeframe in ("1s", "15s", "1m", "1h"):
        got = backend.store.candles("OLD", timeframe)
        assert_candles_equal(got, pandas_candles(frame, "OLD", PANDAS_RULES[timeframe]))


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)  # date_bin is PostgreSQL
def test_candles_match_date_bin_in_postgres(backend: Backend) -> None:
    rng = np.random.default_rng(11)
    frame = make_ticks(rng, ["R_10"], 5000, T0, 2 * 3600 * NS, tick_ns=50_000_000)
    write_frame(backend.store, frame, 800, rng)
    for timeframe, interval in PG_INTERVALS.items():
        rows = backend.query(
            f"""select (extract(epoch from b) * 1000000000)::bigint,
                       (array_agg(price order by ts_ns, seq))[1], max(price), min(price),
                       (array_agg(price order by ts_ns desc, seq desc))[1], sum(volume), count(*)
                from (select date_bin('{interval}', t.ts, timestamptz 'epoch') as b, t.*
                      from ticks t join symbols s on s.id = t.symbol_id where s.name = 'R_10') x
                group by b order by b"""
        )
        expected = pd.DataFrame(
            rows, columns=["ts", "open", "high", "low", "close", "volume", "ticks"]
        ).astype({"ts": np.int64, "ticks": np.int64})
        assert_candles_equal(backend.store.candles("R_10", timeframe), expected)


def test_candle_limit_descending_and_range(backend: Backend) -> None:
    rng = np.random.default_rng(5)
    frame = make_ticks(rng, ["R_75"], 4000, T0, 40 * 60 * NS)
    write_frame(backend.store, frame, 1000)
    store = backend.store
    full = store.candles("R_75", "1m")
    assert len(full) >= 40 and full["ts"].is_monotonic_increasing

    newest = store.candles("R_75", "1m", limit=5, descending=True)
    pd.testing.assert_frame_equal(newest, full.iloc[::-1].head(5).reset_index(drop=True))
    oldest = store.candles("R_75", "1m", limit=5)
    pd.testing.assert_frame_equal(oldest, full.head(5))
    assert store.candles("R_75", "1m", limit=0).empty

    # Bounds select buckets by their start; an unaligned start skips the bucket it cuts into.
    start, end = int(full["ts"].iloc[10]) + 1, int(full["ts"].iloc[20])
    ranged = store.candles("R_75", "1m", start_ns=start, end_ns=end)
    pd.testing.assert_frame_equal(ranged, full.iloc[11:20].reset_index(drop=True))


def test_read_ticks_limit_descending_and_range(backend: Backend) -> None:
    rng = np.random.default_rng(9)
    frame = make_ticks(rng, ["R_75"], 3000, T0, 3600 * NS, tick_ns=1_000_000_000)
    write_frame(backend.store, frame, 1000, rng)
    store = backend.store
    want = expected_ticks(frame, "R_75")

    newest = store.read_ticks("R_75", limit=7, descending=True)
    pd.testing.assert_frame_equal(newest, want.iloc[::-1].head(7).reset_index(drop=True))
    pd.testing.assert_frame_equal(store.read_ticks("R_75", limit=7), want.head(7))

    start, end = int(want["ts"].iloc[100]), int(want["ts"].iloc[200])
    in_range = want[(want["ts"] >= start) & (want["ts"] < end)].reset_index(drop=True)
    pd.testing.assert_frame_equal(store.read_ticks("R_75", start_ns=start, end_ns=end), in_range)
    # Exclusive end one nanosecond after a tick keeps that tick; a µs-truncated bound would not.
    got = store.read_ticks("R_75", start_ns=start, end_ns=start + 1)
    assert (got["ts"] == start).all() and len(got) == int((want["ts"] == start).sum())


def test_ticks_across_several_days(backend: Backend) -> None:
    rng = np.random.default_rng(13)
    day0 = (T0 // DAY) * DAY
    frame = make_ticks(rng, ["R_100", "R_50"], 6000, day0 + DAY // 2, 3 * DAY)
    write_frame(backend.store, frame, 2000, rng)

    for symbol in ("R_100", "R_50"):
        pd.testing.assert_frame_equal(
            backend.store.read_ticks(symbol), expected_ticks(frame, symbol)
        )
        assert_candles_equal(
            backend.store.candles(symbol, "1h"), pandas_candles(frame, symbol, "1h")
        )
    second_day = backend.store.read_ticks("R_100", start_ns=day0 + DAY, end_ns=day0 + 2 * DAY)
    want = expected_ticks(frame, "R_100")
    want = want[(want["ts"] >= day0 + DAY) & (want["ts"] < day0 + 2 * DAY)]
    pd.testing.assert_frame_equal(second_day, want.reset_index(drop=True))

    if backend.name == "postgres":
        # Native partitions and TimescaleDB chunks alike: one child table per UTC day, and a
        # query bounded to one day plans a scan of that day's child only.
        by_day = pg_children_by_day(backend)
        days = sorted({int(d) for d in frame["ts"] // DAY})
        assert len(days) == 4 and sorted(by_day) == days
        second = by_day[days[1]]
        count = backend.query(f"select count(*) from {second}")[0][0]
        assert count == int((frame["ts"] // DAY == days[1]).sum())
        lo, hi = (pd.Timestamp(d * DAY, unit="ns", tz="UTC").isoformat() for d in days[1:3])
        one_day = f"select count(*) from ticks where ts >= '{lo}' and ts < '{hi}'"
        assert pg_scanned_children(backend, one_day) == {second}
        assert backend.query(one_day)[0][0] == count


def pg_children_by_day(backend: Backend) -> dict[int, str]:
    """The child tables of ticks (partitions or chunks), keyed by the one UTC day each holds."""
    children = backend.query(
        "select format('%I.%I', n.nspname, c.relname) from pg_inherits i "
        "join pg_class c on c.oid = i.inhrelid join pg_namespace n on n.oid = c.relnamespace "
        "where i.inhparent = 'ticks'::regclass"
    )
    by_day: dict[int, str] = {}
    for (name,) in children:
        days = backend.query(f"select distinct ts_ns / {DAY} from {name}")
        assert len(days) == 1, f"{name} holds ticks of {len(days)} days"
        by_day[int(days[0][0])] = name
    return by_day


def pg_scanned_children(backend: Backend, query: str) -> set[str]:
    """Tables the plan of `query` reads, but the parent ticks (a hypertable's is always empty)."""
    ((explained,),) = backend.query(f"explain (verbose, format json) {query}")
    parent = backend.query(
        "select format('%I.%I', n.nspname, c.relname) from pg_class c "
        "join pg_namespace n on n.oid = c.relnamespace where c.oid = 'ticks'::regclass"
    )[0][0]
    found: set[str] = set()
    nodes = [explained[0]["Plan"]]
    while nodes:
        node = nodes.pop()
        if "Relation Name" in node:
            found.add(f"{node['Schema']}.{node['Relation Name']}")
        nodes.extend(node.get("Plans", []))
    return found - {parent}


def test_last_seqs_watermark_and_symbols(backend: Backend) -> None:
    store = backend.store
    assert store.last_seqs() == {} and store.symbols() == []
    assert store.watermark().rows == 0 and store.watermark().max_ts is None
    rng = np.random.default_rng(17)
    frame = make_ticks(rng, ["B_SYM", "A_SYM", "C.SYM"], 2500, T0, 600 * NS)
    write_frame(backend.store, frame, 300, rng)

    grouped = frame.groupby("symbol")
    assert store.last_seqs() == {s: int(v) for s, v in grouped["seq"].max().items()}
    mark = store.watermark()
    assert mark.rows == len(frame)
    assert mark.max_ts == int(frame["ts"].max())
    assert mark.per_symbol_max_ts == {s: int(v) for s, v in grouped["ts"].max().items()}
    assert store.symbols() == ["A_SYM", "B_SYM", "C.SYM"]


def test_subscriptions_crud(backend: Backend) -> None:
    store = backend.store
    assert store.subscriptions() == []
    assert store.add_subscription("R_100", "deriv") is True
    assert store.add_subscription("PETR4", "b3") is True
    assert store.add_subscription("R_100", "other") is False
    subs = store.subscriptions()
    assert [(s.symbol, s.exchange) for s in subs] == [("PETR4", "b3"), ("R_100", "deriv")]
    assert all(s.created_ns > 1_600_000_000 * NS for s in subs)
    assert store.remove_subscription("R_100") is True
    assert store.remove_subscription("R_100") is False
    assert [s.symbol for s in store.subscriptions()] == ["PETR4"]
    with pytest.raises(InvalidSymbolError):
        store.add_subscription("no/slash", "x")


def test_subscriptions_survive_reopen(backend: Backend) -> None:
    backend.store.add_subscription("frxEURUSD", "deriv")
    backend.store.write_ticks(TickBatch.from_columns("R_1", [T0], [3], [1.5], [0.0]), 77)
    backend.store.close()
    reopened = open_store(backend.url, pool_size=2)
    try:
        assert [s.symbol for s in reopened.subscriptions()] == ["frxEURUSD"]
        assert reopened.log_offset() == 77
        assert reopened.last_seqs() == {"R_1": 3}
    finally:
        reopened.close()


def test_migrations_are_idempotent(backend: Backend) -> None:
    before = backend.query("select version, name, applied_at from schema_migrations order by 1")
    dialect = "sqlite" if backend.name == "sqlite" else "postgres"
    assert [tuple(row[:2]) for row in before] == [
        (m.version, m.name) for m in load_migrations(dialect)
    ]
    assert backend.store.migrate() == []
    assert (
        backend.query("select version, name, applied_at from schema_migrations order by 1")
        == before
    )


def test_concurrent_readers_and_writer(backend: Backend) -> None:
    rng = np.random.default_rng(19)
    frame = make_ticks(rng, ["R_100"], 4000, T0, 600 * NS)
    errors: list[BaseException] = []
    reads: list[int] = []

    def reader() -> None:
        try:
            for _ in range(30):
                reads.append(len(backend.store.read_ticks("R_100", limit=100, descending=True)))
                backend.store.watermark()
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    write_frame(backend.store, frame, 200)
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(reads) == 60 and all(0 <= r <= 100 for r in reads)
    assert backend.store.watermark().rows == 4000


def test_open_store_rejects_unknown_schemes(tmp_path) -> None:
    with pytest.raises(UnsupportedStoreUrlError, match="sqlite:///"):
        open_store("mysql://localhost/db")
    with pytest.raises(UnsupportedStoreUrlError):
        open_store("sqlite://")


def test_open_store_relative_sqlite_path(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///nested/dir/rel.sqlite3")
    try:
        store.write_ticks(TickBatch.from_columns("R_1", [T0], [1], [2.0], [1.0]), 1)
        assert (tmp_path / "nested" / "dir" / "rel.sqlite3").is_file()
        journal = store._conn().execute("pragma journal_mode").fetchone()[0]  # type: ignore[attr-defined]
        assert journal == "wal"
    finally:
        store.close()


def test_newest_candles_with_gaps_and_end_bound(backend: Backend) -> None:
    rng = np.random.default_rng(23)
    # Two clusters five hours apart: the newest 1m window holds fewer candles than asked for.
    old = make_ticks(rng, ["GAP"], 1500, T0, 30 * 60 * NS)
    new = make_ticks(rng, ["GAP"], 300, T0 + 5 * 3600 * NS, 5 * 60 * NS)
    new["seq"] += old["seq"].max()
    frame = pd.concat([old, new], ignore_index=True)
    write_frame(backend.store, frame, 400, rng)
    store = backend.store
    full = store.candles("GAP", "1m")
    assert_candles_equal(full, pandas_candles(frame, "GAP", "1min"))
    newest_first = full.iloc[::-1].reset_index(drop=True)

    for limit in (1, 3, 5, 6, 12, 40, 1000):
        got = store.candles("GAP", "1m", limit=limit, descending=True)
        pd.testing.assert_frame_equal(got, newest_first.head(limit))
    end = int(full["ts"].iloc[20]) + 1  # bucket 20 starts before end_ns, so it is included
    bounded = full[full["ts"] < end].iloc[::-1].reset_index(drop=True)
    for limit in (4, 25):
        got = store.candles("GAP", "1m", end_ns=end, limit=limit, descending=True)
        pd.testing.assert_frame_equal(got, bounded.head(limit))


def test_sqlite_closed_store_is_unavailable_but_sql_bugs_are_not(tmp_path) -> None:
    import sqlite3

    from hft_pipeline.store import StoreUnavailableError

    store = open_store(f"sqlite:///{tmp_path}/c.sqlite3")
    with (
        pytest.raises(sqlite3.OperationalError, match="no such table"),
        store._unavailable("test"),  # type: ignore[attr-defined]
    ):
        store._conn().execute("select * from no_such_table")  # type: ignore[attr-defined]
    store.close()
    with pytest.raises(StoreUnavailableError, match="closed"):
        store.log_offset()
