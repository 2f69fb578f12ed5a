"""The two asset jobs the sensors and schedules launch: hourly candles, daily analytics."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job, in_process_executor

from hft_pipeline.orchestration.assets import backtests, candles, indicators, strategy_comparison
from hft_pipeline.orchestration.partitions import candle_partitions

#: Run tag that the instance's tag concurrency limits (dagster.yaml) key on.
JOB_TAG = "hft/job"

# In-process executor: both steps of a run share one process, so vectorbt/numba and the store
# connection are set up once per run instead of once per step (DESIGN §7).
candles_job = define_asset_job(
    "candles_job",
    selection=AssetSelection.assets(candles, indicators),
    partitions_def=candle_partitions,
    executor_def=in_process_executor,
    tags={JOB_TAG: "candles"},
    description="Candles for every timeframe, then indicators, for one hourly partition (or a range).",
)

analytics_job = define_asset_job(
    "analytics_job",
    selection=AssetSelection.assets(backtests, strategy_comparison),
    executor_def=in_process_executor,
    tags={JOB_TAG: "analytics"},
    description="Backtests over the look-back window, then the ranked strategy comparison.",
)
