"""The asset graph: ticks -> candles -> indicators -> backtests -> strategy_comparison.

Each asset opens the store, calls one `hft_pipeline.analytics` function and returns metadata;
docs/analytics.md says what those functions promise.
"""

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    AssetSpec,
    Config,
    MaterializeResult,
    asset,
)
from pydantic import Field

from hft_pipeline.analytics.candles import rebuild_candles
from hft_pipeline.analytics.checks import candle_checks
from hft_pipeline.analytics.indicators import INDICATOR_LOOKBACK_BARS, rebuild_indicators
from hft_pipeline.market.indicators import DEFAULT_INDICATORS
from hft_pipeline.orchestration import metadata
from hft_pipeline.orchestration.alerting import alert_on_failure
from hft_pipeline.orchestration.checks import (
    BACKTEST_CHECK_SPECS,
    CANDLE_CHECK_SPECS,
    check_results,
)
from hft_pipeline.orchestration.jobs import CANDLES_BACKFILL_POLICY, WatermarkPolicy
from hft_pipeline.orchestration.partitions import candle_partitions, window_ns
from hft_pipeline.orchestration.resources import (
    IngestApiResource,
    StoreResource,
    indicator_cache,
)

if TYPE_CHECKING:
    from hft_pipeline.analytics.backtests import BacktestSpec

# analytics.backtests and analytics.comparison import vectorbt (seconds, and numba writes its
# cache under HFT_HOME): the analytics assets import them in their bodies, so loading the
# definitions (code server, sensors, `dagster definitions validate`) stays fast and writes nothing.

ticks = AssetSpec(
    "ticks",
    group_name="ingest",
    description="Ticks the ingest service persists to the store (exactly once, from its tick "
    "log). External: the ingest watermark sensor reports its materializations.",
    kinds={"sqlite", "postgres"},
)


class CandlesConfig(Config):
    compare_live: bool = Field(
        default=True,
        description="Compare the 1m candles with the ingest API's live candles when it answers.",
    )


@asset(
    hooks={alert_on_failure},
    partitions_def=candle_partitions,
    deps=[ticks],
    group_name="market",
    backfill_policy=CANDLES_BACKFILL_POLICY,
    check_specs=CANDLE_CHECK_SPECS,
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
    live = ingest_api.live_candles if config.compare_live else None
    started = time.perf_counter()
    with store.open() as s:
        report = rebuild_candles(s, start_ns, end_ns, WatermarkPolicy.from_env().grace_s, live)
        outcomes = candle_checks(s, start_ns, end_ns, report.open_hour_counts)
    seconds = time.perf_counter() - started
    n_candles = sum(report.candles.values())
    context.log.info(f"{report.ticks_read} ticks -> {n_candles} candles in {seconds:.2f} s")
    yield MaterializeResult(metadata=metadata.candles_metadata(report, seconds))
    yield from check_results(outcomes)


class IndicatorsConfig(Config):
    lookback_bars: int = Field(
        default=INDICATOR_LOOKBACK_BARS, description="Earlier bars read for warm-up."
    )


@asset(
    hooks={alert_on_failure},
    partitions_def=candle_partitions,
    deps=["candles"],
    group_name="market",
    backfill_policy=CANDLES_BACKFILL_POLICY,
    kinds={"pandas"},
    description="Indicators (TA-Lib and VWAP, market.indicators.DEFAULT_INDICATORS) of the "
    "partition's 1m candles, warmed up on earlier stored candles so values at the partition "
    "start equal a whole-history computation.",
)
def indicators(
    context: AssetExecutionContext, config: IndicatorsConfig, store: StoreResource
) -> MaterializeResult:
    start_ns, end_ns = window_ns(context.partition_time_window)
    with store.open() as s:
        report = rebuild_indicators(
            s, start_ns, end_ns, lookback_bars=config.lookback_bars, cache=indicator_cache()
        )
    return MaterializeResult(
        metadata=metadata.indicators_metadata(report, list(DEFAULT_INDICATORS))
    )


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

    def spec(self) -> "BacktestSpec":
        """The analytics spec of this config; unknown strategy names raise here, before any work."""
        from hft_pipeline.analytics.backtests import BacktestSpec

        return BacktestSpec(
            lookback_days=self.lookback_days,
            timeframe=self.timeframe,
            strategies=tuple(self.strategies),
            fees=self.fees,
            slippage=self.slippage,
            init_cash=self.init_cash,
            end=self.end,
        )


@asset(
    hooks={alert_on_failure},
    deps=["candles", "indicators"],
    group_name="market",
    check_specs=BACKTEST_CHECK_SPECS,
    kinds={"vectorbt"},
    description="Every registered strategy x its parameter grid x every symbol over the look-back "
    "(default 7 days of 1m candles), vectorized across symbols; metrics of every run and the "
    "trades of each best run stored under one run key.",
)
def backtests(
    context: AssetExecutionContext, config: BacktestsConfig, store: StoreResource
) -> Iterator[MaterializeResult | AssetCheckResult]:
    from hft_pipeline.analytics.backtests import run_backtests, top_run
    from hft_pipeline.analytics.checks import backtest_sanity

    started = time.perf_counter()
    spec = config.spec()
    with store.open() as s:
        report = run_backtests(s, spec)
    seconds = time.perf_counter() - started
    yield MaterializeResult(
        metadata=metadata.backtests_metadata(report, top_run(report.metrics), seconds)
    )
    yield from check_results({"backtest_sanity": backtest_sanity(report.metrics, report.trades)})


@asset(
    hooks={alert_on_failure},
    deps=[backtests],
    group_name="market",
    kinds={"matplotlib"},
    description="The ranked best parameter set per strategy and symbol from the latest backtests, "
    "with equity, underwater and parameter-heatmap figures; stored under the backtests' run key.",
)
def strategy_comparison(context: AssetExecutionContext, store: StoreResource) -> MaterializeResult:
    from hft_pipeline.analytics.comparison import compare_latest_backtests

    with store.open() as s:
        report = compare_latest_backtests(s)
    return MaterializeResult(metadata=metadata.comparison_metadata(report))


ALL_ASSETS = [ticks, candles, indicators, backtests, strategy_comparison]

__all__ = [
    "ALL_ASSETS",
    "BacktestsConfig",
    "CandlesConfig",
    "IndicatorsConfig",
    "backtests",
    "candles",
    "indicators",
    "strategy_comparison",
    "ticks",
]
