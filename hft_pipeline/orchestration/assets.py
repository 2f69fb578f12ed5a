"""The asset graph: ticks -> candles -> indicators -> backtests -> strategy_comparison.

Thin wiring: candles come from `market.candles`, indicators from `market.indicators` through the
indicator cache, backtests and the comparison from `market.comparison`; the store reads and
writes everything. Partitioned assets loop over the hours of their time window, so ranged
backfill runs keep one hour of ticks in memory at a time.
"""

import base64
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetSpec,
    BackfillPolicy,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from hft_pipeline.market.candles import CANDLE_COLUMNS, PartialCandles, partial_candles, rollup
from hft_pipeline.market.frames import Wide, to_wide
from hft_pipeline.market.indicator_cache import IndicatorCache, fingerprint
from hft_pipeline.market.indicators import DEFAULT_INDICATORS, compute_wide, indicator_columns
from hft_pipeline.market.strategies import STRATEGIES, get_strategy
from hft_pipeline.market.timeframes import TIMEFRAMES
from hft_pipeline.orchestration import checks
from hft_pipeline.orchestration.alerting import alert_on_failure
from hft_pipeline.orchestration.partitions import HOUR_NS, candle_partitions, window_ns
from hft_pipeline.orchestration.resources import IngestApiError, IngestApiResource, StoreResource
from hft_pipeline.orchestration.sensors import WatermarkPolicy
from hft_pipeline.store import BacktestRun, TickStore

if TYPE_CHECKING:
    from hft_pipeline.market.backtest import BacktestConfig

# market.backtest and market.comparison import vectorbt (seconds, and numba writes its cache
# under HFT_HOME): they are imported inside the analytics assets, so loading the definitions
# (code server, sensors, `dagster definitions validate`) stays fast and writes nothing.

DAY_NS = 24 * HOUR_NS
#: Hourly partitions per run when a backfill covers many (BackfillPolicy.multi_run).
BACKFILL_PARTITIONS_PER_RUN = 24
#: Timeframes whose indicators are stored. 1m is what the backtests trade on; coarser
#: timeframes are cheap to add here but nothing reads them yet.
INDICATOR_TIMEFRAMES: tuple[str, ...] = ("1m",)
#: Earlier bars read before a window so recursive indicators (EMA, RSI, MACD, ATR, ADX) forget
#: where they started: measured, their values agree with a whole-history computation to the
#: last bit after ~600 bars of look-back (and to 1e-9 after 300); finite windows need 33.
INDICATOR_LOOKBACK_BARS = 720

ticks = AssetSpec(
    "ticks",
    group_name="ingest",
    description="Ticks the ingest service persists to the store (exactly once, from its tick "
    "log). External: the ingest watermark sensor reports its materializations.",
    kinds={"sqlite", "postgres"},
)

# One cache per process: a retried or re-run partition finds its indicators here (and in Redis
# when HFT_REDIS_URL is set, which other run processes share).
_indicator_cache: IndicatorCache | None = None


def indicator_cache() -> IndicatorCache:
    """The process-wide indicator cache, configured from the environment on first use."""
    global _indicator_cache
    if _indicator_cache is None:
        _indicator_cache = IndicatorCache.from_env()
    return _indicator_cache


# --- candles -------------------------------------------------------------------------------------


def hours(start_ns: int, end_ns: int) -> Iterator[tuple[int, int]]:
    """The hourly [start, end) windows covering [start_ns, end_ns)."""
    for lo in range(start_ns, end_ns, HOUR_NS):
        yield lo, min(lo + HOUR_NS, end_ns)


def _frame(parts: PartialCandles, names: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "ts": parts.ts,
            "open": parts.open,
            "high": parts.high,
            "low": parts.low,
            "close": parts.close,
            "volume": parts.volume,
            "ticks": parts.ticks,
        }
    )
    frame.insert(0, "symbol", names[parts.group])
    return frame


def candles_all_timeframes(ticks_frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Candles of every timeframe (symbol, ts, OHLCV, ticks), each sorted by (symbol, ts).

    Same code as the live service: exact partial candles at 1s, rolled up to the coarser
    timeframes (every timeframe divides the next), so ticks are sorted and summed once.
    """
    codes, names = pd.factorize(ticks_frame["symbol"], sort=True)
    names = np.asarray(names, dtype=object)
    parts = partial_candles(
        ticks_frame["ts"].to_numpy(np.int64),
        ticks_frame["seq"].to_numpy(np.int64),
        ticks_frame["price"].to_numpy(np.float64),
        ticks_frame["volume"].to_numpy(np.float64),
        TIMEFRAMES["1s"],
        codes.astype(np.int64),
    )
    out: dict[str, pd.DataFrame] = {}
    for tf, tf_ns in TIMEFRAMES.items():
        parts = rollup(parts, tf_ns) if tf != "1s" else parts
        out[tf] = _frame(parts, names)
    return out


def candle_corrections(before: pd.DataFrame, after: pd.DataFrame) -> dict[str, int]:
    """How candles changed against a previous version: changed, added and removed buckets."""
    keys = ["symbol", "ts"]
    merged = before.merge(after, on=keys, how="outer", suffixes=("_old", ""), indicator=True)
    both = merged[merged["_merge"] == "both"]
    changed = np.zeros(len(both), dtype=bool)
    for column in CANDLE_COLUMNS[1:]:
        changed |= both[f"{column}_old"].to_numpy() != both[column].to_numpy()
    return {
        "compared": len(both),
        "changed": int(changed.sum()),
        "added": int((merged["_merge"] == "right_only").sum()),
        "removed": int((merged["_merge"] == "left_only").sum()),
    }


def live_candles(
    api: IngestApiResource, symbols: Sequence[str], start_ns: int, end_ns: int
) -> pd.DataFrame | None:
    """1m candles the ingest service serves from memory (its live candles), None if unreachable."""
    try:
        api.health()
    except IngestApiError:
        return None
    frames = []
    for symbol in symbols:
        try:
            body = api.candles(symbol, "1m", start_ns, end_ns)
        except IngestApiError:
            continue
        if body.get("source") == "store" or not body.get("data"):
            continue  # served from the store, not from live candles: nothing to compare
        frame = pd.DataFrame(body["data"])
        if "closed" in frame:  # a still forming candle is no correction
            frame = frame[frame["closed"].astype(bool)]
        frames.append(frame.assign(symbol=symbol)[["symbol", *CANDLE_COLUMNS]])
    if not frames:
        return None
    return pd.concat(frames, ignore_index=True)


class CandlesConfig(Config):
    compare_live: bool = Field(
        default=True,
        description="Compare the 1m candles with the ingest API's live candles when it answers.",
    )


_CANDLE_CHECKS = [
    AssetCheckSpec(
        "candles_match_ticks",
        asset="candles",
        blocking=True,
        description="Per timeframe and symbol, stored candle tick counts sum to the stored ticks.",
    ),
    AssetCheckSpec(
        "ohlc_invariants",
        asset="candles",
        blocking=True,
        description="low <= open, close <= high; volume >= 0; ticks >= 1.",
    ),
    AssetCheckSpec(
        "no_duplicate_buckets",
        asset="candles",
        blocking=True,
        description="One candle per timeframe, symbol and aligned bucket.",
    ),
    AssetCheckSpec(
        "gap_report",
        asset="candles",
        description="Empty 1m buckets inside each symbol's active span (warning).",
    ),
]


def hour_is_open(store: TickStore, end_ns: int, grace_s: float) -> bool:
    """Whether ticks may still arrive for an hour ending at `end_ns`: the newest stored tick is
    not yet a grace period past its end.

    Event time, not the wall clock: while the persister works off a backlog (a restart, an
    outage, the simulator's history) hours long past by the clock are still being filled.
    """
    newest = store.watermark().max_ts
    return newest is None or newest < end_ns + int(grace_s * 1e9)


def candle_check_results(
    store: TickStore,
    start_ns: int,
    end_ns: int,
    counts_read: dict[int, dict[str, int]] | None = None,
) -> list[AssetCheckResult]:
    """Run the candle checks on what the store now holds for [start_ns, end_ns), hour by hour.

    `counts_read`: hour start -> ticks per symbol the candles were computed from, for hours
    still open. There the recount uses those counts, since the store keeps receiving ticks for
    the open hour while the run goes on; a closed hour is recounted from the store itself.
    """
    counts_read = counts_read or {}
    hourly: dict[str, list[checks.CheckOutcome]] = {spec.name: [] for spec in _CANDLE_CHECKS}
    for lo, hi in hours(start_ns, end_ns):
        stored = {tf: store.stored_candles(tf, lo, hi) for tf in TIMEFRAMES}
        counts = counts_read[lo] if lo in counts_read else store.tick_counts(lo, hi)
        outcome = checks.candles_recount(counts, stored)
        # Hours recounted from the ticks read rather than the store (they were still open).
        outcome[1]["open_hours"] = int(lo in counts_read)
        hourly["candles_match_ticks"].append(outcome)
        hourly["ohlc_invariants"].append(checks.ohlc_invariants(stored))
        hourly["no_duplicate_buckets"].append(checks.no_duplicate_buckets(stored))
        hourly["gap_report"].append(checks.gap_report(stored["1m"]))
    results = []
    for name, outcomes in hourly.items():
        passed, metadata = checks.combine(outcomes)
        severity = AssetCheckSeverity.WARN if name == "gap_report" else AssetCheckSeverity.ERROR
        results.append(
            AssetCheckResult(check_name=name, passed=passed, metadata=metadata, severity=severity)
        )
    return results


@asset(
    hooks={alert_on_failure},
    partitions_def=candle_partitions,
    deps=[ticks],
    group_name="market",
    backfill_policy=BackfillPolicy.multi_run(BACKFILL_PARTITIONS_PER_RUN),
    check_specs=_CANDLE_CHECKS,
    kinds={"pandas"},
    description="Candles of all 7 timeframes (1s..1h) for every symbol, recomputed from the "
    "persisted ticks and replacing the partition's stored candles in one transaction.",
)
def candles(
    context: AssetExecutionContext,
    config: CandlesConfig,
    store: StoreResource,
    ingest_api: IngestApiResource,
) -> Iterator[MaterializeResult | AssetCheckResult]:
    start_ns, end_ns = window_ns(context.partition_time_window)
    per_tf = dict.fromkeys(TIMEFRAMES, 0)
    symbols: set[str] = set()
    n_ticks = 0
    stored_diff = {"compared": 0, "changed": 0, "added": 0, "removed": 0}
    live_diff = {"compared": 0, "changed": 0, "added": 0, "removed": 0}
    started = time.perf_counter()
    grace_s = WatermarkPolicy.from_env().grace_s
    counts_read: dict[int, dict[str, int]] = {}
    with store.open() as s:
        for lo, hi in hours(start_ns, end_ns):
            open_hour = hour_is_open(s, hi, grace_s)
            tick_frame = s.read_tick_range(lo, hi)
            if open_hour:
                counts_read[lo] = tick_frame["symbol"].value_counts().to_dict()
            frames = candles_all_timeframes(tick_frame)
            previous = s.stored_candles("1m", lo, hi)
            s.replace_candles(
                pd.concat([f.assign(timeframe=tf) for tf, f in frames.items()], ignore_index=True),
                lo,
                hi,
                list(TIMEFRAMES),
            )
            n_ticks += len(tick_frame)
            symbols.update(frames["1m"]["symbol"])
            for tf, f in frames.items():
                per_tf[tf] += len(f)
            if len(previous):
                for k, v in candle_corrections(previous, frames["1m"]).items():
                    stored_diff[k] += v
            live = (
                live_candles(ingest_api, sorted(set(frames["1m"]["symbol"])), lo, hi)
                if config.compare_live
                else None
            )
            if live is not None:
                common = frames["1m"].merge(live[["symbol", "ts"]], on=["symbol", "ts"])
                for k, v in candle_corrections(live, common).items():
                    live_diff[k] += v
        results = candle_check_results(s, start_ns, end_ns, counts_read)
    elapsed = time.perf_counter() - started
    context.log.info(f"{n_ticks} ticks -> {sum(per_tf.values())} candles in {elapsed:.2f} s")
    yield MaterializeResult(
        metadata={
            "ticks_read": n_ticks,
            "symbols": len(symbols),
            "symbol_list": ", ".join(sorted(symbols))[:2000],
            **{f"candles_{tf}": n for tf, n in per_tf.items()},
            "candles_total": sum(per_tf.values()),
            # A re-run after late ticks: 1m candles that differ from the previous materialization.
            "late_tick_corrections_vs_stored": stored_diff["changed"] + stored_diff["added"],
            "stored_1m_candles_compared": stored_diff["compared"],
            # 1m candles the ingest API served from its live candles, where they differ.
            "late_tick_corrections_vs_live": live_diff["changed"],
            "live_1m_candles_compared": live_diff["compared"],
            "seconds": round(elapsed, 3),
        }
    )
    yield from results


# --- indicators ----------------------------------------------------------------------------------


def _wide_from_stored(long: pd.DataFrame) -> Wide:
    long = long.assign(ts=pd.to_datetime(long["ts"].to_numpy(np.int64), unit="ns", utc=True))
    return to_wide(long)


def _long_from_wide(results: dict[str, pd.DataFrame], wide: Wide) -> pd.DataFrame:
    """symbol, ts, one column per indicator output, for the bars each symbol has (by symbol, ts)."""
    close = wide["close"]
    present = ~np.isnan(close.to_numpy().T)  # symbol x ts
    sym_idx, ts_idx = np.nonzero(present)
    frame = pd.DataFrame(
        {
            "symbol": np.asarray(close.columns, dtype=object)[sym_idx],
            "ts": close.index.asi8[ts_idx],
        }
    )
    for name in sorted(results):
        frame[name] = results[name].to_numpy().T[present]
    return frame


def indicators_window(
    store: TickStore,
    timeframe: str,
    start_ns: int,
    end_ns: int,
    names: Sequence[str] = DEFAULT_INDICATORS,
    lookback_bars: int = INDICATOR_LOOKBACK_BARS,
    cache: IndicatorCache | None = None,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Indicator values of the bars in [start_ns, end_ns), computed with warm-up from earlier bars.

    Look-back: `lookback_bars` bars, and at least back to the UTC day start (session VWAP resets
    there). OBV is cumulative since the first bar ever, which no finite look-back reaches, so it
    is anchored: shifted to continue from the OBV stored for the last bar before the window.
    """
    tf_ns = TIMEFRAMES[timeframe]
    lookback_start = min(start_ns - lookback_bars * tf_ns, (start_ns // DAY_NS) * DAY_NS)
    stored = store.stored_candles(timeframe, lookback_start, end_ns)
    # Per-symbol bar counts would be noisy: count distinct bar times before the window.
    stats = {
        "candles_read": len(stored),
        "warmup_bars": int(stored["ts"][stored["ts"] < start_ns].nunique()),
    }
    if stored.empty or not (stored["ts"] >= start_ns).any():
        empty = pd.DataFrame({"symbol": pd.Series(dtype=object), "ts": pd.Series(dtype=np.int64)})
        return empty, stats
    wide = _wide_from_stored(stored)
    cache = cache or indicator_cache()
    key = cache.key(
        "indicators", {"names": list(names), "timeframe": timeframe}, list(wide["close"].columns),
        fingerprint(wide),
    )  # fmt: skip
    results = cache.get_or_compute(key, lambda: compute_wide(wide, names))
    values = _long_from_wide(results, wide)
    obv_columns = [c for n in names if n == "obv" for c in indicator_columns(n)]
    if obv_columns and stats["warmup_bars"]:
        stats["obv_anchored_symbols"] = _anchor_cumulative(
            store, timeframe, values, obv_columns, lookback_start, start_ns
        )
    return values[values["ts"] >= start_ns].reset_index(drop=True), stats


def _anchor_cumulative(
    store: TickStore,
    timeframe: str,
    values: pd.DataFrame,
    columns: Sequence[str],
    lookback_start: int,
    start_ns: int,
) -> int:
    """Shift cumulative indicators so they continue from the values stored before `start_ns`."""
    before = store.stored_indicators(timeframe, lookback_start, start_ns)
    if before.empty:
        return 0
    anchored = 0
    for column in columns:
        if column not in before:
            continue
        last = before.dropna(subset=[column]).groupby("symbol").tail(1).set_index("symbol")
        mine = values[values["ts"] < start_ns].groupby("symbol").tail(1).set_index("symbol")
        for sym, row in last.iterrows():
            if sym in mine.index and mine.at[sym, "ts"] == row["ts"]:
                # Same bar, stored vs recomputed from the look-back: the difference is the
                # history before the look-back.
                rows = values["symbol"] == sym
                values.loc[rows, column] += row[column] - mine.at[sym, column]
                anchored += 1
    return anchored


class IndicatorsConfig(Config):
    lookback_bars: int = Field(
        default=INDICATOR_LOOKBACK_BARS, description="Earlier bars read for warm-up."
    )


@asset(
    hooks={alert_on_failure},
    partitions_def=candle_partitions,
    deps=["candles"],
    group_name="market",
    backfill_policy=BackfillPolicy.multi_run(BACKFILL_PARTITIONS_PER_RUN),
    kinds={"pandas"},
    description="Indicators (TA-Lib and VWAP, market.indicators.DEFAULT_INDICATORS) of the "
    "partition's 1m candles, warmed up on earlier stored candles so values at the partition "
    "start equal a whole-history computation.",
)
def indicators(
    context: AssetExecutionContext, config: IndicatorsConfig, store: StoreResource
) -> MaterializeResult:
    start_ns, end_ns = window_ns(context.partition_time_window)
    cache = indicator_cache()
    hits_before = cache.stats.hits
    metadata: dict[str, int | str] = {}
    with store.open() as s:
        for tf in INDICATOR_TIMEFRAMES:
            values, stats = indicators_window(
                s, tf, start_ns, end_ns, lookback_bars=config.lookback_bars, cache=cache
            )
            written = s.replace_indicators(tf, values, start_ns, end_ns)
            metadata.update({f"{tf}_{k}": v for k, v in stats.items()})
            metadata[f"{tf}_bars"] = len(values)
            metadata[f"{tf}_values_written"] = written
            metadata[f"{tf}_symbols"] = int(values["symbol"].nunique()) if len(values) else 0
    metadata["indicators"] = ", ".join(DEFAULT_INDICATORS)
    metadata["timeframes"] = ", ".join(INDICATOR_TIMEFRAMES)
    metadata["cache_hits"] = cache.stats.hits - hits_before
    return MaterializeResult(metadata=metadata)


# --- backtests -----------------------------------------------------------------------------------


class BacktestsConfig(Config):
    lookback_days: float = Field(default=7.0, description="Days of candles before the newest.")
    timeframe: str = Field(default="1m", description="Candle timeframe the strategies trade.")
    strategies: list[str] = Field(
        default_factory=list, description="Strategy names; empty: every registered strategy."
    )
    fees: float = Field(default=0.001, description="Fraction of each order's value.")
    slippage: float = Field(default=0.0, description="Fraction of the fill price.")
    init_cash: float = 10_000.0
    end: str | None = Field(
        default=None,
        description="ISO end of the window (exclusive); default: the newest stored tick's bucket.",
    )

    def backtest_config(self) -> "BacktestConfig":
        from hft_pipeline.market.backtest import BacktestConfig

        return BacktestConfig(init_cash=self.init_cash, fees=self.fees, slippage=self.slippage)

    def strategy_names(self) -> list[str]:
        names = list(self.strategies or STRATEGIES)
        for name in names:
            get_strategy(name)  # unknown names fail before any work, with the valid list
        return names


def backtest_window(store: TickStore, config: BacktestsConfig) -> tuple[int, int]:
    """[start_ns, end_ns) of the candles to backtest: `lookback_days` up to the newest bar."""
    tf_ns = TIMEFRAMES[config.timeframe]
    if config.end:
        moment = datetime.fromisoformat(config.end)
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        end_ns = int(moment.timestamp()) * 1_000_000_000
    else:
        newest = store.watermark().max_ts
        if newest is None:
            raise ValueError("the store holds no ticks yet: nothing to backtest")
        end_ns = (newest // tf_ns) * tf_ns  # the newest bar may still be forming: exclude it
    return end_ns - int(config.lookback_days * DAY_NS), end_ns


def _params_of(strategy: str, label: str) -> dict[str, float]:
    params = dict(part.split("=") for part in label.split(", "))
    return {k: float(params[k]) for k in get_strategy(strategy).defaults}


def best_run_trades(
    wide: Wide, metrics: pd.DataFrame, config: "BacktestConfig", rank_by: str = "sharpe"
) -> pd.DataFrame:
    """Trade lists of the best parameter set per (strategy, symbol), simulated in memory-bounded chunks."""
    from hft_pipeline.market.backtest import chunk_columns, simulate, trade_list

    score = metrics[rank_by].astype(float).fillna(-np.inf)
    best = metrics.loc[score.groupby([metrics["strategy"], metrics["symbol"]]).idxmax()]
    frames = []
    for (strategy, label), rows in best.groupby(["strategy", "params"], sort=False):
        strat = get_strategy(strategy)
        symbols = list(rows["symbol"])
        per_chunk = chunk_columns(len(wide["close"]), len(symbols), 256 * 1024**2)
        for s0 in range(0, len(symbols), per_chunk):
            sub = {k: v[symbols[s0 : s0 + per_chunk]] for k, v in wide.items()}
            entries, exits = strat.signals(sub, _params_of(strategy, label))
            pf = simulate(sub, entries, exits, config)
            trades = trade_list(pf, sub["close"].index).rename(columns={"column": "symbol"})
            trades.insert(0, "strategy", strategy)
            trades.insert(2, "params", label)
            frames.append(trades)
    if not frames:
        return pd.DataFrame(columns=["strategy", "symbol", "params"])
    return pd.concat(frames, ignore_index=True)


@asset(
    hooks={alert_on_failure},
    deps=["candles", "indicators"],
    group_name="market",
    check_specs=[
        AssetCheckSpec(
            "backtest_sanity",
            asset="backtests",
            blocking=True,
            description="No NaN metric where trades closed; n_trades equals the trade list.",
        )
    ],
    kinds={"vectorbt"},
    description="Every registered strategy x its parameter grid x every symbol over the look-back "
    "(default 7 days of 1m candles), vectorized across symbols; metrics of every run and the "
    "trades of each best run stored under one run key.",
)
def backtests(
    context: AssetExecutionContext, config: BacktestsConfig, store: StoreResource
) -> Iterator[MaterializeResult | AssetCheckResult]:
    from hft_pipeline.market.backtest import METRIC_COLUMNS
    from hft_pipeline.market.comparison import sweep

    started = time.perf_counter()
    bt_config = config.backtest_config()
    names = config.strategy_names()
    with store.open() as s:
        start_ns, end_ns = backtest_window(s, config)
        stored = s.stored_candles(config.timeframe, start_ns, end_ns)
        if stored.empty:
            raise ValueError(
                f"no {config.timeframe} candles stored in the look-back window: materialize "
                "`candles` partitions first"
            )
        wide = _wide_from_stored(stored)
        tables = [sweep(wide, name, config=bt_config) for name in names]
        metrics = pd.concat(
            [t[["strategy", "symbol", "params", *METRIC_COLUMNS]] for t in tables],
            ignore_index=True,
        )
        trades = best_run_trades(wide, metrics, bt_config)
        created_ns = time.time_ns()
        run = BacktestRun(
            run_key=datetime.fromtimestamp(created_ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M"),
            created_ns=created_ns,
            start_ns=start_ns,
            end_ns=end_ns,
            timeframe=config.timeframe,
            config={
                "strategies": names,
                "grids": {n: [dict(p) for p in get_strategy(n).grid] for n in names},
                "fees": config.fees,
                "slippage": config.slippage,
                "init_cash": config.init_cash,
                "lookback_days": config.lookback_days,
            },
        )
        s.write_backtest(run, metrics, trades)
    passed, check_meta = checks.backtest_sanity(metrics, trades)
    best = (
        metrics.loc[metrics["sharpe"].astype(float).idxmax()]
        if metrics["sharpe"].notna().any()
        else None
    )
    yield MaterializeResult(
        metadata={
            "run_key": run.run_key,
            "runs": len(metrics),
            "strategies": len(names),
            "symbols": int(metrics["symbol"].nunique()),
            "bars": len(wide["close"]),
            "window_start": pd.Timestamp(start_ns, tz="UTC").isoformat(),
            "window_end": pd.Timestamp(end_ns, tz="UTC").isoformat(),
            "trades_stored": len(trades),
            "best_sharpe": float(best["sharpe"]) if best is not None else float("nan"),
            "best_run": f"{best['strategy']} {best['symbol']} ({best['params']})"
            if best is not None
            else "none",
            "wall_seconds": round(time.perf_counter() - started, 3),
        }
    )
    yield AssetCheckResult(check_name="backtest_sanity", passed=passed, metadata=check_meta)


# --- strategy comparison -------------------------------------------------------------------------


def _png_markdown(paths: dict[str, object]) -> str:
    # The Dagster UI renders markdown images with data URIs; a path value would show as text.
    parts = []
    for name, path in paths.items():
        data = base64.b64encode(open(path, "rb").read()).decode()  # noqa: PTH123, SIM115
        parts.append(f"**{name}**\n\n![{name}](data:image/png;base64,{data})")
    return "\n\n".join(parts)


def comparison_markdown(ranked: pd.DataFrame, top: int = 40) -> str:
    """The ranked best runs as a markdown table (first `top` rows)."""
    columns = ["rank", "strategy", "symbol", "params", "sharpe", "total_return", "max_drawdown",
               "win_rate", "n_trades"]  # fmt: skip
    shown = ranked[columns].head(top).copy()
    for column in ("sharpe", "total_return", "max_drawdown", "win_rate"):
        shown[column] = shown[column].map(lambda v: "nan" if pd.isna(v) else f"{v:.3f}")
    return shown.to_markdown(index=False)


@asset(
    hooks={alert_on_failure},
    deps=[backtests],
    group_name="market",
    kinds={"matplotlib"},
    description="The ranked best parameter set per strategy and symbol from the latest backtests, "
    "with equity, underwater and parameter-heatmap figures; stored under the backtests' run key.",
)
def strategy_comparison(context: AssetExecutionContext, store: StoreResource) -> MaterializeResult:
    from hft_pipeline.market.backtest import BacktestConfig
    from hft_pipeline.market.comparison import compare_strategies, render_figures

    with store.open() as s:
        runs = s.backtest_runs()
        if not runs:
            raise ValueError("no backtest run stored: materialize `backtests` first")
        run = runs[0]
        metrics = s.backtest_metrics(run.run_key)
        wide = _wide_from_stored(s.stored_candles(run.timeframe, run.start_ns, run.end_ns))
        bt_config = BacktestConfig(
            init_cash=run.config.get("init_cash", 10_000.0),
            fees=run.config.get("fees", 0.001),
            slippage=run.config.get("slippage", 0.0),
        )
        names = list(run.config.get("strategies") or sorted(metrics["strategy"].unique()))
        # Reuse the stored sweep: only each strategy's best parameter sets are simulated again
        # (for their equity curves); the best of a subset holding every argmax is the same run.
        grids = {}
        for name in names:
            table = metrics[metrics["strategy"] == name]
            score = table["sharpe"].astype(float).fillna(-np.inf)
            best_labels = set(table.loc[score.groupby(table["symbol"]).idxmax(), "params"])
            grids[name] = [
                _params_of(name, label)
                for label in dict.fromkeys(table["params"])
                if label in best_labels
            ]
        result = compare_strategies(wide, names, grids, bt_config)
        for name in names:  # heatmaps over the whole stored grid, not the re-simulated subset
            table = metrics[metrics["strategy"] == name].reset_index(drop=True)
            params = pd.DataFrame([_params_of(name, p) for p in table["params"]])
            result.runs[name] = pd.concat([params, table], axis=1)
        s.write_comparison(run.run_key, result.best)
    with tempfile.TemporaryDirectory() as tmp:
        figures = render_figures(result, tmp)
        images = _png_markdown(figures)
    top = result.best.iloc[0]
    return MaterializeResult(
        metadata={
            "run_key": run.run_key,
            "ranked": MetadataValue.md(comparison_markdown(result.best)),
            "figures": MetadataValue.md(images),
            "rows": len(result.best),
            "best": f"{top['strategy']} {top['symbol']} ({top['params']}): sharpe {top['sharpe']:.3f}",
        }
    )


ALL_ASSETS = [ticks, candles, indicators, backtests, strategy_comparison]

__all__ = [
    "ALL_ASSETS",
    "INDICATOR_LOOKBACK_BARS",
    "INDICATOR_TIMEFRAMES",
    "backtests",
    "candle_check_results",
    "candles",
    "candles_all_timeframes",
    "indicators",
    "indicators_window",
    "strategy_comparison",
    "ticks",
]
