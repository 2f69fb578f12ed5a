"""Data checks on good and deliberately corrupted candles and backtest results."""

from __future__ import annotations

import pandas as pd

from hft_pipeline.analytics.candles import HOUR_NS, candles_all_timeframes, rebuild_candles
from hft_pipeline.analytics.checks import (
    CANDLE_CHECKS,
    backtest_sanity,
    candle_checks,
    candles_recount,
    combine,
    no_duplicate_buckets,
)
from hft_pipeline.market.timeframes import TIMEFRAMES
from hft_pipeline.store import TickStore
from hft_pipeline_tests.analytics.conftest import T0, StoreCase, simulator_ticks, write_ticks

S = 1_000_000_000


def test_candle_checks_pass_on_rebuilt_candles_and_fail_on_corrupted_ones(
    store_case: StoreCase,
) -> None:
    store = store_case.store
    frame = simulator_ticks(2)
    write_ticks(store, frame)
    lo, hi = T0, T0 + HOUR_NS
    rebuild_candles(store, lo, hi, grace_s=60)
    good = candle_checks(store, lo, hi)
    assert list(good) == list(CANDLE_CHECKS)
    assert all(passed for passed, _ in good.values())
    assert good["candles_match_ticks"][1]["ticks"] == int(
        ((frame["ts"] >= lo) & (frame["ts"] < hi)).sum()
    )

    # A bad 1m candle (high below close) and a missing 1m bucket, written through the store.
    one_minute = store.stored_candles("1m", lo, hi)
    bad = one_minute.drop(index=5).reset_index(drop=True)
    bad.loc[3, "high"] = bad.loc[3, "close"] - 0.5
    store.replace_candles(bad.assign(timeframe="1m"), lo, hi, ["1m"])
    found = candle_checks(store, lo, hi)
    assert found["ohlc_invariants"][0] is False
    assert found["ohlc_invariants"][1]["violations"] == 1
    assert found["candles_match_ticks"][0] is False  # bucket 5's ticks are no longer counted
    assert found["candles_match_ticks"][1]["mismatches"] == 1  # 1m of that symbol only
    assert found["gap_report"][0] is False
    assert found["gap_report"][1]["empty_1m_buckets"] == 1
    assert found["no_duplicate_buckets"][0] is True


def test_an_open_hour_is_recounted_from_the_ticks_read_a_closed_one_from_the_store(
    sqlite_store: TickStore,
) -> None:
    frame = simulator_ticks(1)
    first, rest = frame[frame["ts"] < T0 + 1800 * S], frame[frame["ts"] >= T0 + 1800 * S]
    offset = write_ticks(sqlite_store, first)
    report = rebuild_candles(sqlite_store, T0, T0 + HOUR_NS, grace_s=60)
    assert set(report.open_hour_counts) == {T0}

    # Ticks keep arriving for the open hour after its candles were computed.
    write_ticks(sqlite_store, rest, offset=offset)
    strict = candle_checks(sqlite_store, T0, T0 + HOUR_NS)["candles_match_ticks"]
    assert strict[0] is False and strict[1]["open_hours"] == 0
    read = candle_checks(sqlite_store, T0, T0 + HOUR_NS, report.open_hour_counts)
    assert read["candles_match_ticks"] == (
        True,
        {"ticks": len(first), "mismatches": 0, "examples": "none", "open_hours": 1},
    )
    # Counts that do not match what the candles hold still fail.
    short = {T0: {s: n - 1 for s, n in report.open_hour_counts[T0].items()}}
    assert candle_checks(sqlite_store, T0, T0 + HOUR_NS, short)["candles_match_ticks"][0] is False


def test_recount_names_each_timeframe_and_symbol_that_disagrees() -> None:
    frames = candles_all_timeframes(simulator_ticks(0.5))
    counts = {s: int(n) for s, n in frames["1h"].groupby("symbol")["ticks"].sum().items()}
    assert candles_recount(counts, frames) == (
        True,
        {"ticks": sum(counts.values()), "mismatches": 0, "examples": "none"},
    )
    fewer = {**counts, "R_100": counts["R_100"] - 2}
    passed, meta = candles_recount(fewer, frames)
    assert not passed and meta["mismatches"] == len(TIMEFRAMES)
    n = counts["R_100"]
    assert f"1s R_100: {n} in candles vs {n - 2} ticks" in meta["examples"]


def test_duplicate_and_misaligned_buckets_are_reported() -> None:
    frames = candles_all_timeframes(simulator_ticks(0.5))
    assert no_duplicate_buckets(frames)[0]
    one_minute = frames["1m"]
    dup = pd.concat([one_minute, one_minute.iloc[[2]]], ignore_index=True)
    passed, meta = no_duplicate_buckets({"1m": dup})
    assert not passed and meta["duplicates"] == 1 and meta["misaligned"] == 0
    shifted = one_minute.copy()
    shifted.loc[0, "ts"] += S
    passed, meta = no_duplicate_buckets({"1m": shifted})
    assert not passed and meta["misaligned"] == 1


def test_combined_outcome_of_a_ranged_run_adds_counts_and_keeps_failures() -> None:
    ok = (True, {"violations": 0, "examples": "none"})
    bad = (False, {"violations": 2, "examples": "1m PETR4@60"})
    assert combine([ok, bad, ok]) == (False, {"violations": 2, "examples": "1m PETR4@60"})
    assert combine([ok, ok]) == (True, {"violations": 0, "examples": "none"})


def test_backtest_sanity_wants_metrics_where_trades_closed_and_matching_trade_lists() -> None:
    keys = {"strategy": ["s", "s", "s"], "symbol": ["A", "B", "C"], "params": ["p=1"] * 3}
    metrics = pd.DataFrame(
        {**keys, "total_return": [0.1, 0.0, 0.2], "sharpe": [1.0, float("nan"), 2.0],
         "max_drawdown": [-0.1, 0.0, -0.2], "win_rate": [1.0, float("nan"), 0.5],
         "expectancy": [5.0, float("nan"), 1.0], "exposure": [0.5, 0.0, 0.4],
         "n_trades": [1, 0, 2]}
    )  # fmt: skip
    trades = pd.DataFrame(
        {"strategy": ["s", "s", "s"], "symbol": ["A", "C", "C"], "params": ["p=1"] * 3,
         "status": ["Closed", "Closed", "Closed"]}
    )  # fmt: skip
    passed, meta = backtest_sanity(metrics, trades)
    assert passed
    assert meta["runs"] == 3 and meta["runs_with_trades"] == 2
    assert meta["runs_checked_against_trades"] == 2

    # One trade of C still open: its metrics count a trade the list does not close.
    open_trade = trades.assign(status=["Closed", "Closed", "Open"])
    passed, meta = backtest_sanity(metrics, open_trade)
    assert not passed and meta["trade_count_mismatches"] == 1
    assert "s C (p=1): n_trades 2 vs 1 listed" in meta["examples"]

    nan_sharpe = metrics.assign(sharpe=[float("nan"), float("nan"), 2.0])
    passed, meta = backtest_sanity(nan_sharpe, trades)
    assert not passed and meta["nan_metric_runs"] == 1
