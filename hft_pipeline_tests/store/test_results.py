"""Inputs and results of the Dagster assets in the store, on both backends.

Tick ranges, stored candles, indicators, backtest runs (metrics, trades) and comparisons
(the one results layer, store/results/, on SQLite and PostgreSQL): exact round trips,
replace-really-replaces, and a failure in the middle of a write (a row trigger raising after
the old rows were deleted) leaving the previous rows intact.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hft_pipeline.market.backtest import BacktestConfig, simulate, trade_list
from hft_pipeline.market.comparison import compare_strategies, sweep
from hft_pipeline.market.frames import to_wide
from hft_pipeline.market.strategies import get_strategy
from hft_pipeline.store import BacktestRun, StoreUnavailableError
from hft_pipeline.store.migrations import load_migrations
from hft_pipeline.store.results.frames import (
    COMPARISON_FRAME_COLUMNS,
    METRICS_FRAME_COLUMNS,
    TRADES_FRAME_COLUMNS,
)
from hft_pipeline_tests.store.conftest import Backend, expected_ticks, make_ticks, write_frame

NS = 1_000_000_000
HOUR = 3600 * NS
# 2024-03-10 22:30 UTC: ranges cross midnight, so PostgreSQL reads two daily partitions.
T0 = 1_710_109_800 * NS
SYMBOLS = ["R_100", "frxEURUSD", "PETR4", "b.2"]


def fail_on_insert(backend: Backend, table: str, condition: str) -> None:
    """A row trigger on `table` that raises 'boom' for rows matching `condition` (on NEW)."""
    if backend.name == "sqlite":
        backend.query(
            f"create trigger boom_{table} before insert on {table} "
            f"when {condition.replace('NEW', 'new')} begin select raise(abort, 'boom'); end"
        )
    else:
        backend.query(
            f"create function boom_{table}() returns trigger language plpgsql as $$ begin "
            f"if {condition} then raise exception 'boom'; end if; return new; end $$"
        )
        backend.query(
            f"create trigger boom_{table} before insert on {table} "
            f"for each row execute function boom_{table}()"
        )


# -- ticks ---------------------------------------------------------------------------------


def test_read_tick_range_equals_read_ticks_per_symbol(backend: Backend) -> None:
    rng = np.random.default_rng(7)
    frame = make_ticks(rng, SYMBOLS, 8000, T0, 3 * HOUR)
    write_frame(backend.store, frame, 900, rng)
    store = backend.store
    lo, hi = T0 + HOUR // 2, T0 + 2 * HOUR + 123

    got = store.read_tick_range(lo, hi)
    want = pd.concat(
        [store.read_ticks(s, lo, hi).assign(symbol=s) for s in sorted(SYMBOLS)],
        ignore_index=True,
    )[["symbol", "ts", "seq", "price", "volume", "bid", "ask"]]
    pd.testing.assert_frame_equal(got, want)
    assert got["symbol"].tolist() == sorted(got["symbol"].tolist())
    assert got["bid"].isna().any() and len(got) > 3000
    # ...and both equal the source frame (so read_ticks is not the only reference).
    inside = frame[(frame["ts"] >= lo) & (frame["ts"] < hi)]
    for symbol in SYMBOLS:
        part = got[got["symbol"] == symbol].drop(columns="symbol").reset_index(drop=True)
        pd.testing.assert_frame_equal(part, expected_ticks(inside, symbol))

    subset = store.read_tick_range(lo, hi, ["PETR4", "NOPE", "R_100"])
    pd.testing.assert_frame_equal(
        subset, got[got["symbol"].isin(["PETR4", "R_100"])].reset_index(drop=True)
    )
    assert store.read_tick_range(lo, hi, ["NOPE"]).empty
    assert list(store.read_tick_range(lo, hi, []).columns) == list(got.columns)

    counts = inside.groupby("symbol").size().to_dict()
    assert store.tick_counts(lo, hi) == {k: int(v) for k, v in counts.items()}
    assert store.tick_counts(T0 - 2 * HOUR, T0 - HOUR) == {}
    assert store.first_tick_ts() == int(frame["ts"].min())


def test_empty_store_reads(backend: Backend) -> None:
    store = backend.store
    assert store.first_tick_ts() is None
    ticks = store.read_tick_range(T0, T0 + HOUR)
    assert ticks.empty
    assert list(ticks.columns) == ["symbol", "ts", "seq", "price", "volume", "bid", "ask"]
    assert store.tick_counts(T0, T0 + HOUR) == {}
    assert store.stored_candles("1m").empty
    assert list(store.stored_indicators("1m").columns) == ["symbol", "ts"]
    assert store.backtest_runs() == []
    assert store.results.latest_comparison() is None
    with pytest.raises(KeyError, match="no backtest run"):
        store.backtest_metrics("missing")


def test_a_closed_store_refuses_results_calls(backend: Backend) -> None:
    backend.store.close()
    with pytest.raises(StoreUnavailableError, match="closed"):
        backend.store.stored_candles("1m")
    with pytest.raises(StoreUnavailableError, match="closed"):
        backend.store.backtest_runs()


# -- candles -------------------------------------------------------------------------------


def candles_frame(rng: np.random.Generator, timeframe: str, start: int, n: int) -> pd.DataFrame:
    step = {"1m": 60 * NS, "5m": 300 * NS, "1s": NS}[timeframe]
    rows = []
    for symbol in ("R_100", "PETR4", "b.2"):
        ts = start + np.sort(rng.choice(n * 2, n, replace=False)) * step
        close = rng.uniform(10, 20, n)
        rows.append(
            pd.DataFrame(
                {
                    "timeframe": timeframe,
                    "symbol": symbol,
                    "ts": ts.astype(np.int64),
                    "open": close + 0.5,
                    "high": close + 1.0,
                    "low": close - 1.0,
                    "close": close,
                    "volume": rng.uniform(0, 3, n),
                    "ticks": rng.integers(1, 50, n).astype(np.int64),
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def stored(frame: pd.DataFrame, timeframe: str, lo: int | None = None, hi: int | None = None):
    part = frame[frame["timeframe"] == timeframe].drop(columns="timeframe")
    if lo is not None:
        part = part[(part["ts"] >= lo) & (part["ts"] < hi)]
    return part.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)


def test_candles_round_trip_and_replace(backend: Backend) -> None:
    rng = np.random.default_rng(3)
    store = backend.store
    r1, r2 = (T0, T0 + HOUR), (T0 + HOUR, T0 + 2 * HOUR)
    first = pd.concat([candles_frame(rng, "1m", T0, 25), candles_frame(rng, "1s", T0, 300)])
    second = candles_frame(rng, "1m", r2[0], 25)
    fives = candles_frame(rng, "5m", T0, 6)
    assert store.replace_candles(first, *r1, ["1m", "1s"]) == len(first)
    assert store.replace_candles(second, *r2, ["1m"]) == len(second)
    assert store.replace_candles(fives, *r1, ["5m"]) == len(fives)

    everything = pd.concat([first, second])
    got = store.stored_candles("1m")
    pd.testing.assert_frame_equal(got, stored(everything, "1m"))
    assert got["ts"].dtype == np.int64 and got["ticks"].dtype == np.int64
    pd.testing.assert_frame_equal(store.stored_candles("1s"), stored(first, "1s"))
    pd.testing.assert_frame_equal(
        store.stored_candles("1m", r2[0], r2[1], ["b.2", "R_100", "NOPE"]),
        stored(second[second["symbol"].isin(["b.2", "R_100"])], "1m"),
    )

    # Re-run range 1 for 1m only, with fewer candles: no stale rows; 1s, 5m, range 2 untouched.
    redo = candles_frame(rng, "1m", T0, 10)
    redo = redo[redo["symbol"] != "PETR4"]
    assert store.replace_candles(redo, *r1, ["1m"]) == len(redo)
    pd.testing.assert_frame_equal(
        store.stored_candles("1m"), stored(pd.concat([redo, second]), "1m")
    )
    pd.testing.assert_frame_equal(store.stored_candles("1s"), stored(first, "1s"))
    pd.testing.assert_frame_equal(store.stored_candles("5m"), stored(fives, "5m"))

    # An empty frame clears a range (a partition whose ticks vanished).
    assert store.replace_candles(redo.iloc[:0], *r1, ["1m"]) == 0
    pd.testing.assert_frame_equal(store.stored_candles("1m"), stored(second, "1m"))


def test_bad_candles_are_rejected_before_anything_is_written(backend: Backend) -> None:
    rng = np.random.default_rng(4)
    store = backend.store
    good = candles_frame(rng, "1m", T0, 20)
    store.replace_candles(good, T0, T0 + HOUR, ["1m"])
    outside = candles_frame(rng, "1m", T0, 5)
    outside.loc[2, "ts"] = T0 + HOUR  # end is exclusive
    with pytest.raises(ValueError, match="outside"):
        store.replace_candles(outside, T0, T0 + HOUR, ["1m"])
    with pytest.raises(ValueError, match="timeframes"):
        store.replace_candles(candles_frame(rng, "1s", T0, 5), T0, T0 + HOUR, ["1m"])
    dup = pd.concat([good.iloc[:3], good.iloc[:1]])
    with pytest.raises(ValueError, match="duplicate"):
        store.replace_candles(dup, T0, T0 + HOUR, ["1m"])
    with pytest.raises(ValueError, match="lacks columns"):
        store.replace_candles(good.drop(columns="ticks"), T0, T0 + HOUR, ["1m"])
    pd.testing.assert_frame_equal(store.stored_candles("1m"), stored(good, "1m"))


def test_failure_mid_write_keeps_the_previous_rows(backend: Backend) -> None:
    rng = np.random.default_rng(5)
    store = backend.store
    good = candles_frame(rng, "1m", T0, 20)
    store.replace_candles(good, T0, T0 + HOUR, ["1m"])
    values = indicator_frame(rng, T0, 30)
    store.replace_indicators("1m", values, T0, T0 + HOUR)
    run, metrics, trades = backtest_results()
    store.write_backtest(run, metrics, trades)

    fail_on_insert(backend, "candles", "NEW.ticks = 999")
    fail_on_insert(backend, "indicators", "NEW.value = 999")
    fail_on_insert(backend, "backtest_trades", "NEW.pnl = 999")
    bad = candles_frame(rng, "1m", T0, 20)
    bad.loc[len(bad) - 1, "ticks"] = 999  # the last row: the delete and most inserts ran
    with pytest.raises(Exception, match="boom"):
        store.replace_candles(bad, T0, T0 + HOUR, ["1m"])
    bad_values = indicator_frame(rng, T0, 30)
    bad_values.iloc[-1, bad_values.columns.get_loc("rsi_14")] = 999.0
    with pytest.raises(Exception, match="boom"):
        store.replace_indicators("1m", bad_values, T0, T0 + HOUR)
    bad_trades = trades.copy()
    bad_trades.loc[len(bad_trades) - 1, "pnl"] = 999.0
    with pytest.raises(Exception, match="boom"):
        store.write_backtest(run, metrics.iloc[:1], bad_trades)

    pd.testing.assert_frame_equal(store.stored_candles("1m"), stored(good, "1m"))
    pd.testing.assert_frame_equal(store.stored_indicators("1m"), wide_expected(values))
    pd.testing.assert_frame_equal(store.backtest_metrics(run.run_key), metrics)
    pd.testing.assert_frame_equal(store.results.backtest_trades(run.run_key), trades)
    # The store still works afterwards (the failed transaction did not leak).
    assert store.replace_candles(good.iloc[:5], T0, T0 + HOUR, ["1m"]) == 5


# -- indicators ----------------------------------------------------------------------------


def indicator_frame(rng: np.random.Generator, start: int, n: int) -> pd.DataFrame:
    ts = start + np.arange(n, dtype=np.int64) * 60 * NS
    frame = pd.DataFrame(
        {
            "symbol": np.repeat(["R_100", "b.2"], n),
            "ts": np.tile(ts, 2),
            "rsi_14": rng.uniform(0, 100, 2 * n),
            "macd_12_26_9_signal": rng.normal(0, 1, 2 * n),
            "bbands_20_2_upper": rng.uniform(10, 20, 2 * n),
        }
    )
    frame.loc[:13, "rsi_14"] = np.nan  # warm-up
    frame.loc[3, "bbands_20_2_upper"] = -np.inf
    return frame


def wide_expected(*frames: pd.DataFrame) -> pd.DataFrame:
    both = pd.concat(frames, ignore_index=True)
    names = sorted(c for c in both.columns if c not in ("symbol", "ts"))
    both = both[["symbol", "ts", *names]]
    return both.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)


def test_indicators_round_trip_and_replace(backend: Backend) -> None:
    rng = np.random.default_rng(6)
    store = backend.store
    r1, r2 = (T0, T0 + HOUR), (T0 + HOUR, T0 + 2 * HOUR)
    a, b = indicator_frame(rng, r1[0], 40), indicator_frame(rng, r2[0], 40)
    assert store.replace_indicators("1m", a, *r1) == 40 * 2 * 3
    store.replace_indicators("1m", b, *r2)
    other = indicator_frame(rng, r1[0], 5)[["symbol", "ts", "rsi_14"]]
    store.replace_indicators("5m", other, *r1)

    got = store.stored_indicators("1m")
    pd.testing.assert_frame_equal(got, wide_expected(a, b))  # NaN and -inf round-trip
    assert got["rsi_14"].isna().sum() == 2 * 14
    pd.testing.assert_frame_equal(store.stored_indicators("5m"), wide_expected(other))
    pd.testing.assert_frame_equal(
        store.stored_indicators("1m", r2[0], r2[1], ["b.2"]),
        wide_expected(b[b["symbol"] == "b.2"]),
    )

    # A new indicator needs no migration; replacing range 1 drops its old names and rows.
    redo = indicator_frame(rng, r1[0], 10)[["symbol", "ts", "rsi_14"]].assign(ema_50=1.5)
    assert store.replace_indicators("1m", redo, *r1) == 10 * 2 * 2
    pd.testing.assert_frame_equal(store.stored_indicators("1m", *r1), wide_expected(redo))
    pd.testing.assert_frame_equal(store.stored_indicators("1m", *r2), wide_expected(b))
    pd.testing.assert_frame_equal(store.stored_indicators("5m"), wide_expected(other))

    with pytest.raises(ValueError, match="outside"):
        store.replace_indicators("1m", b, *r1)
    with pytest.raises(ValueError, match="numeric"):
        store.replace_indicators("1m", redo.assign(note="x"), *r1)
    pd.testing.assert_frame_equal(store.stored_indicators("1m", *r1), wide_expected(redo))


# -- backtests and comparisons -------------------------------------------------------------


def wide_candles() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(11)
    index = pd.date_range("2026-01-01", periods=400, freq="1min", tz="UTC", name="ts")
    frames = {}
    for symbol in ("R_100", "PETR4"):
        close = 100 + np.cumsum(rng.normal(0, 1, len(index)))
        frames[symbol] = pd.DataFrame(
            {"open": close, "high": close + 1, "low": close - 1, "close": close, "volume": 1.0},
            index=index,
        )
    return to_wide(frames)


GRIDS = {
    "sma_crossover": [{"fast": 5, "slow": 50}, {"fast": 10, "slow": 50}],
    "rsi_mean_reversion": [{"window": 14}],
}
#: Parameter values a `{v:g}` label would round: they must come back bit for bit.
EXACT = {"fast": 0.1 + 0.2, "slow": 123456.789012345, "tiny": 1e-12, "big": 2**53 + 1}


def metrics_frame(wide: dict[str, pd.DataFrame], grids: dict) -> pd.DataFrame:
    """The metrics frame of docs/results.md#frames, from market/'s sweeps."""
    parts = []
    for name, grid in grids.items():
        table = sweep(wide, name, grid)
        values = table[list(get_strategy(name).defaults)].to_dict("records")
        table.insert(table.columns.get_loc("params") + 1, "param_values", values)
        parts.append(table[list(METRICS_FRAME_COLUMNS)])
    return pd.concat(parts, ignore_index=True)


def backtest_results(
    run_key: str = "2026-11-21T00:10", created_ns: int = 1, grids: dict = GRIDS
) -> tuple[BacktestRun, pd.DataFrame, pd.DataFrame]:
    """Metrics and trades as the pipeline writes them (several strategies concatenated)."""
    wide = wide_candles()
    metrics = metrics_frame(wide, grids)
    metrics.at[0, "param_values"] = dict(EXACT)
    strategy = get_strategy("sma_crossover")
    entries, exits = strategy.sweep_signals(wide, grids["sma_crossover"])
    raw = trade_list(simulate(wide, entries, exits, BacktestConfig()), wide["close"].index)
    values = [
        {"fast": int(f), "slow": int(s)} for f, s in zip(raw["fast"], raw["slow"], strict=True)
    ]
    trades = raw.drop(columns=["fast", "slow"])
    trades.insert(0, "strategy", "sma_crossover")
    trades.insert(2, "params", [f"fast={p['fast']}, slow={p['slow']}" for p in values])
    trades.insert(3, "param_values", values)
    trades = trades[list(TRADES_FRAME_COLUMNS)]
    run = BacktestRun(
        run_key, created_ns, T0, T0 + 7 * 24 * HOUR, "1m",
        {"strategies": list(grids), "grids": grids, "fees": 0.001, "slippage": 0.1 + 0.2},
    )  # fmt: skip
    return run, metrics, trades


def test_backtest_round_trip_and_replace(backend: Backend) -> None:
    store = backend.store
    run, metrics, trades = backtest_results()
    # What market/ returns, so the test covers the awkward dtypes.
    assert metrics["avg_trade_duration"].dtype.kind == "m"
    assert metrics["n_trades"].dtype == np.int64 and len(trades) > 3
    assert str(trades["entry_time"].dtype) == "datetime64[ns, UTC]"
    metrics.loc[0, "profit_factor"] = np.inf
    metrics.loc[1, "sharpe"] = np.nan
    metrics.loc[1, "avg_trade_duration"] = pd.NaT
    store.write_backtest(run, metrics, trades)
    older, m2, t2 = backtest_results("2026-11-20T00:10", created_ns=0)
    store.write_backtest(older, m2.iloc[:2], t2.iloc[:0])

    assert store.backtest_runs() == [run, older]
    got = store.backtest_metrics(run.run_key)
    pd.testing.assert_frame_equal(got, metrics)
    pd.testing.assert_frame_equal(store.results.backtest_trades(run.run_key), trades)
    pd.testing.assert_frame_equal(store.backtest_metrics(older.run_key), m2.iloc[:2])
    assert store.results.backtest_trades(older.run_key).empty

    # Parameter values come back exactly, as their own type: never re-read from a label.
    stored = got.at[0, "param_values"]
    assert stored == EXACT and stored["fast"] == 0.30000000000000004
    assert stored["tiny"] == 1e-12 and stored["slow"] == 123456.789012345
    assert type(stored["big"]) is int and stored["big"] == 9007199254740993
    assert got.at[1, "param_values"] == {"fast": 5, "slow": 50}
    assert type(got.at[1, "param_values"]["fast"]) is int
    assert store.backtest_runs()[0].config["slippage"] == 0.30000000000000004

    # One row per run, metrics in real columns (no cells to count).
    sharpe = backend.query(
        f"select row_no, sharpe, n_trades from backtest_metrics where run_key = '{run.run_key}' "
        "order by row_no"
    )
    assert len(sharpe) == len(metrics)
    assert sharpe[2][1] == metrics.loc[2, "sharpe"] and sharpe[2][2] == metrics.loc[2, "n_trades"]

    # Same key again with a smaller result: replaced, no stale rows, the other run untouched.
    again = BacktestRun(run.run_key, 5, run.start_ns, run.end_ns, "5m", {"fees": 0.0})
    small = metrics[metrics["strategy"] == "rsi_mean_reversion"].reset_index(drop=True)
    store.write_backtest(again, small, trades.iloc[:2])
    assert store.backtest_runs() == [again, older]
    pd.testing.assert_frame_equal(store.backtest_metrics(run.run_key), small)
    pd.testing.assert_frame_equal(store.results.backtest_trades(run.run_key), trades.iloc[:2])
    rows = backend.query(f"select count(*) from backtest_metrics where run_key = '{run.run_key}'")
    assert rows[0][0] == len(small)
    pd.testing.assert_frame_equal(store.backtest_metrics(older.run_key), m2.iloc[:2])

    with pytest.raises(ValueError, match="JSON"):
        store.write_backtest(BacktestRun("x", 9, 0, 1, "1m", {"bad": object()}), small, trades)
    with pytest.raises(ValueError, match="lacks columns"):
        store.write_backtest(run, small.drop(columns="params"), trades)
    with pytest.raises(ValueError, match="no place"):
        store.write_backtest(run, small.assign(fast=1.0), trades)
    with pytest.raises(ValueError, match="finite number"):
        bad = small.copy()
        bad.at[0, "param_values"] = {"fast": float("nan")}
        store.write_backtest(run, bad, trades)
    assert [r.run_key for r in store.backtest_runs()] == [run.run_key, older.run_key]
    with pytest.raises(KeyError, match="no backtest run"):
        store.results.backtest_trades("missing")


def test_comparison_round_trip_and_latest(backend: Backend) -> None:
    store = backend.store
    result = compare_strategies(wide_candles(), list(GRIDS), GRIDS)
    ranked = result.best
    assert list(ranked.columns) == list(COMPARISON_FRAME_COLUMNS)
    assert ranked["avg_trade_duration"].dtype.kind == "m" and ranked["rank"].dtype == np.int64
    store.write_comparison("2026-11-20T00:10", ranked.iloc[:2])
    store.write_comparison("2026-11-21T00:10", ranked)
    key, got = store.results.latest_comparison()
    assert key == "2026-11-21T00:10"
    pd.testing.assert_frame_equal(got, ranked)
    # Rewriting an older key makes it the latest written, with its new content only.
    store.write_comparison("2026-11-20T00:10", ranked.iloc[:1])
    key, got = store.results.latest_comparison()
    assert key == "2026-11-20T00:10"
    pd.testing.assert_frame_equal(got, ranked.iloc[:1])
    rows = backend.query("select count(*) from comparison_rows")[0][0]
    assert rows == len(ranked) + 1


# -- migration -----------------------------------------------------------------------------


def test_results_migration_applied_twice_changes_nothing(backend: Backend) -> None:
    store = backend.store
    good = candles_frame(np.random.default_rng(8), "1m", T0, 5)
    store.replace_candles(good, T0, T0 + HOUR, ["1m"])
    versions = backend.query("select version, name from schema_migrations order by 1")
    assert (2, "results") in versions
    assert store.migrate() == []
    assert backend.query("select version, name from schema_migrations order by 1") == versions
    # The file itself is idempotent too (create ... if not exists), should a runner replay it.
    results = next(m for m in load_migrations(backend.name) if m.name == "results")
    if backend.name == "sqlite":
        from hft_pipeline.store.migrations import _split_sqlite

        for statement in _split_sqlite(results.sql):
            backend.query(statement)
    else:
        backend.query(results.sql)
    pd.testing.assert_frame_equal(store.stored_candles("1m"), stored(good, "1m"))
