"""Candles rebuilt from stored ticks, without Dagster, on SQLite and PostgreSQL stores."""

from __future__ import annotations

import pandas as pd
import pytest

from hft_pipeline.analytics.candles import (
    HOUR_NS,
    Corrections,
    candle_corrections,
    candles_all_timeframes,
    hour_is_open,
    hours,
    rebuild_candles,
    wide_candles,
)
from hft_pipeline.market.candles import resample_reference
from hft_pipeline.market.timeframes import TIMEFRAMES
from hft_pipeline.store import TickStore
from hft_pipeline_tests.analytics.conftest import (
    SYMBOLS,
    T0,
    StoreCase,
    simulator_ticks,
    write_ticks,
)

S = 1_000_000_000


def in_window(frame: pd.DataFrame, lo: int, hi: int) -> pd.DataFrame:
    return frame[(frame["ts"] >= lo) & (frame["ts"] < hi)]


def assert_stored_equal_reference(store: TickStore, frame: pd.DataFrame, lo: int, hi: int) -> None:
    for tf in TIMEFRAMES:
        expected = resample_reference(in_window(frame, lo, hi), tf)
        stored = store.stored_candles(tf, lo, hi)
        pd.testing.assert_frame_equal(
            stored.reset_index(drop=True), expected, check_dtype=False, obj=tf
        )


def test_hours_cover_the_window_and_cut_the_last_one() -> None:
    assert list(hours(0, 2 * HOUR_NS + 5)) == [
        (0, HOUR_NS),
        (HOUR_NS, 2 * HOUR_NS),
        (2 * HOUR_NS, 2 * HOUR_NS + 5),
    ]
    assert list(hours(7, 7)) == []


def test_candles_of_every_timeframe_equal_pandas_resample() -> None:
    frame = simulator_ticks(0.5)
    got = candles_all_timeframes(frame)
    assert list(got) == list(TIMEFRAMES)
    for tf, candles in got.items():
        pd.testing.assert_frame_equal(candles, resample_reference(frame, tf), check_dtype=False)
    assert got["1h"]["ticks"].sum() == len(frame)
    assert set(got["1m"]["symbol"]) == set(SYMBOLS)


def test_corrections_count_changed_added_and_removed_buckets() -> None:
    def candles(rows: list[tuple[str, int, float]]) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {"symbol": s, "ts": ts, "open": 1.0, "high": 2.0, "low": 0.5, "close": close,
                 "volume": 3.0, "ticks": 4}
                for s, ts, close in rows
            ]
        )  # fmt: skip

    before = candles([("A", 0, 1.0), ("A", 60, 1.5), ("B", 0, 1.0)])
    after = candles([("A", 0, 1.0), ("A", 60, 1.75), ("A", 120, 1.0)])
    assert candle_corrections(before, after) == Corrections(
        compared=2, changed=1, added=1, removed=1
    )
    assert Corrections(1, 2, 3, 4) + Corrections(10, 20, 30, 40) == Corrections(11, 22, 33, 44)


def test_rebuild_replaces_the_window_with_reference_candles_and_reports_late_ticks(
    store_case: StoreCase,
) -> None:
    store = store_case.store
    frame = simulator_ticks(3)
    offset = write_ticks(store, frame)
    lo, hi = T0 + HOUR_NS, T0 + 2 * HOUR_NS

    first = rebuild_candles(store, lo, hi, grace_s=60)

    assert_stored_equal_reference(store, frame, lo, hi)
    assert store.stored_candles("1m", hi, hi + HOUR_NS).empty  # other hours untouched
    hour = in_window(frame, lo, hi)
    assert first.ticks_read == len(hour)
    assert first.symbols == set(SYMBOLS)
    assert first.candles == {tf: len(resample_reference(hour, tf)) for tf in TIMEFRAMES}
    assert first.vs_stored == Corrections()  # nothing stored before
    assert first.vs_live == Corrections()  # no live source given
    assert first.open_hour_counts == {}  # the store holds an hour more: this one is closed

    # A late tick makes a new high in the hour's second minute: exactly that candle changes.
    late = frame[frame["symbol"] == "VALE3"].iloc[[0]].copy()
    late["ts"] = [lo + 90 * S + 1]
    late["seq"] = frame["seq"].max() + 1
    late["price"] = 1_000.0
    write_ticks(store, late, offset=offset)
    frame = pd.concat([frame, late], ignore_index=True)

    again = rebuild_candles(store, lo, hi, grace_s=60)

    assert_stored_equal_reference(store, frame, lo, hi)
    assert again.ticks_read == len(hour) + 1
    assert again.vs_stored == Corrections(compared=first.candles["1m"], changed=1)


def test_an_open_hour_keeps_the_counts_it_read(sqlite_store: TickStore) -> None:
    frame = simulator_ticks(1)
    half = frame[frame["ts"] < T0 + 1800 * S]
    write_ticks(sqlite_store, half)

    report = rebuild_candles(sqlite_store, T0, T0 + HOUR_NS, grace_s=60)

    assert report.open_hour_counts == {T0: half["symbol"].value_counts().to_dict()}
    assert sum(report.open_hour_counts[T0].values()) == report.ticks_read == len(half)


def test_hour_is_open_until_the_newest_tick_is_a_grace_period_past_its_end(
    sqlite_store: TickStore,
) -> None:
    assert hour_is_open(sqlite_store, T0, 60)  # no tick yet: anything may still arrive
    frame = simulator_ticks(1)
    write_ticks(sqlite_store, frame[frame["ts"] < T0 + 1800 * S])
    newest = sqlite_store.watermark().max_ts
    # Event time: years past by the wall clock, the hour is open while ticks are half-way in.
    assert hour_is_open(sqlite_store, T0 + HOUR_NS, 60)
    assert hour_is_open(sqlite_store, newest - 60 * S + 1, 60)
    assert not hour_is_open(sqlite_store, newest - 60 * S, 60)


def test_live_candles_that_missed_ticks_are_counted_as_corrections(
    sqlite_store: TickStore,
) -> None:
    frame = simulator_ticks(1)
    write_ticks(sqlite_store, frame)
    live = resample_reference(frame[frame["symbol"] == "PETR4"], "1m")
    live.loc[7, "close"] += 0.01  # the live candle missed a late tick
    live.loc[8, "ticks"] -= 1
    asked: list[tuple[list[str], int, int]] = []

    def served(symbols, start_ns, end_ns):
        asked.append((list(symbols), start_ns, end_ns))
        return live

    report = rebuild_candles(sqlite_store, T0, T0 + HOUR_NS, 60, served)

    assert asked == [(sorted(SYMBOLS), T0, T0 + HOUR_NS)]
    assert report.vs_live == Corrections(compared=len(live), changed=2)
    unreachable = rebuild_candles(sqlite_store, T0, T0 + HOUR_NS, 60, lambda *_: None)
    assert unreachable.vs_live == Corrections()


def test_wide_candles_put_symbols_in_columns_on_a_utc_index() -> None:
    stored = pd.DataFrame(
        {"symbol": ["A", "B", "A"], "ts": [0, 0, 60 * S], "open": [1.0, 2.0, 3.0],
         "high": [1.0, 2.0, 3.0], "low": [1.0, 2.0, 3.0], "close": [1.5, 2.5, 3.5],
         "volume": [1.0, 1.0, 1.0], "ticks": [1, 1, 1]}
    )  # fmt: skip
    wide = wide_candles(stored)
    close = wide["close"]
    assert list(close.columns) == ["A", "B"]
    assert list(close.index) == [pd.Timestamp(0, tz="UTC"), pd.Timestamp(60 * S, tz="UTC")]
    assert close.loc[pd.Timestamp(60 * S, tz="UTC"), "A"] == 3.5
    assert pd.isna(close.loc[pd.Timestamp(60 * S, tz="UTC"), "B"])  # absent bar, not filled


@pytest.mark.parametrize("grace_s", [0.0, 3600.0])
def test_grace_decides_which_hours_count_as_open(sqlite_store: TickStore, grace_s: float) -> None:
    write_ticks(sqlite_store, simulator_ticks(2))
    report = rebuild_candles(sqlite_store, T0, T0 + 2 * HOUR_NS, grace_s)
    # The newest tick is just before T0 + 2h: the second hour is open under any grace, the
    # first only when the grace reaches past that tick.
    expected = {T0, T0 + HOUR_NS} if grace_s >= 3600 else {T0 + HOUR_NS}
    assert set(report.open_hour_counts) == expected
