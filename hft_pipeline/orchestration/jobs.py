"""The two asset jobs and every run policy around them: names, tags, run keys, backfills, and
the thresholds from the settings (when an hour of candles is final, when ingest alerts).

Sensors and schedules build their run requests here, so a tag that dagster.yaml's concurrency
limits key on, or a run key that makes a request idempotent, is written once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dagster import (
    AssetSelection,
    BackfillPolicy,
    DagsterRunStatus,
    RunRequest,
    define_asset_job,
    in_process_executor,
)

from hft_pipeline.orchestration.partitions import candle_partitions
from hft_pipeline.settings import Settings

CANDLES_JOB = "candles_job"
ANALYTICS_JOB = "analytics_job"

#: Run tag that the instance's tag concurrency limits (dagster.yaml) key on.
JOB_TAG = "hft/job"
#: Which candles run this is: "final" (the hour is complete) or "live" (a refresh of the open
#: hour); dagster.yaml allows one live refresh at a time.
REFRESH_TAG = "hft/refresh"
FINAL = "final"
LIVE = "live"
#: What requested an analytics run outside its schedule.
TRIGGER_TAG = "hft/trigger"
#: The UTC day a scheduled analytics run is for.
DAY_TAG = "hft/day"

#: Runs that still count as busy for "is one in flight?" decisions.
IN_PROGRESS = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]

#: Hourly partitions per run when a backfill covers many: a ranged run reads one hour of ticks
#: at a time, so 24 cost one process start instead of 24.
BACKFILL_PARTITIONS_PER_RUN = 24
CANDLES_BACKFILL_POLICY = BackfillPolicy.multi_run(BACKFILL_PARTITIONS_PER_RUN)


def _default(field: str) -> Any:
    # The defaults and their meaning live once, in the settings (docs/configuration.md).
    return Settings.model_fields[field].default


@dataclass(frozen=True, slots=True)
class WatermarkPolicy:
    """When a partition counts as complete, how much to request per tick, how often to refresh."""

    grace_s: float = _default("late_grace_s")
    max_requests: int = _default("sensor_max_requests")
    live_refresh_s: float = _default("live_refresh_s")

    @classmethod
    def from_settings(cls, settings: Settings) -> WatermarkPolicy:
        """HFT_LATE_GRACE_S, HFT_SENSOR_MAX_REQUESTS, HFT_LIVE_REFRESH_S."""
        return cls(
            grace_s=settings.late_grace_s,
            max_requests=max(1, settings.sensor_max_requests),
            live_refresh_s=settings.live_refresh_s,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WatermarkPolicy:
        """The policy of `Settings.from_env(env)`."""
        return cls.from_settings(Settings.from_env(env))


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """Thresholds for the ingest health alerts."""

    max_pending_ticks: int = _default("alert_pending_ticks")
    max_lag_s: float = _default("alert_lag_s")
    critical_after_ticks: int = _default("alert_critical_ticks")
    critical_after_s: float = _default("alert_critical_s")

    @classmethod
    def from_settings(cls, settings: Settings) -> HealthPolicy:
        """HFT_ALERT_PENDING_TICKS, HFT_ALERT_LAG_S, HFT_ALERT_CRITICAL_TICKS, HFT_ALERT_CRITICAL_S."""
        return cls(
            max_pending_ticks=settings.alert_pending_ticks,
            max_lag_s=settings.alert_lag_s,
            critical_after_ticks=max(1, settings.alert_critical_ticks),
            critical_after_s=settings.alert_critical_s,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> HealthPolicy:
        """The policy of `Settings.from_env(env)`."""
        return cls.from_settings(Settings.from_env(env))


def final_candles_request(key: str) -> RunRequest:
    """The one run that materializes complete hour `key` (its key makes a repeat a no-op)."""
    return RunRequest(run_key=key, partition_key=key, tags={REFRESH_TAG: FINAL})


def live_candles_request(key: str, watermark_ns: int | None) -> RunRequest:
    """A refresh of open hour `key`, once per store watermark."""
    return RunRequest(run_key=f"{key}@{watermark_ns}", partition_key=key, tags={REFRESH_TAG: LIVE})


def catchup_candles_request(key: str, hour: str) -> RunRequest:
    """A catch-up run of `key`; the hour in its key retries a failed one the next hour."""
    return RunRequest(run_key=f"catchup:{key}@{hour}", partition_key=key, tags={REFRESH_TAG: FINAL})


def first_analytics_request(indicators_storage_id: int) -> RunRequest:
    """The first analytics run, keyed by the indicators materialization it follows."""
    return RunRequest(
        run_key=f"first-analytics-{indicators_storage_id}", tags={TRIGGER_TAG: "first-analytics"}
    )


def daily_analytics_request(day: str) -> RunRequest:
    """The scheduled analytics run of UTC day `day` (YYYY-MM-DD)."""
    return RunRequest(run_key=f"analytics-{day}", tags={DAY_TAG: day})


# In-process executor: both steps of a run share one process, so vectorbt/numba and the store
# connection are set up once per run instead of once per step.
candles_job = define_asset_job(
    CANDLES_JOB,
    selection=AssetSelection.assets("candles", "indicators"),
    partitions_def=candle_partitions,
    executor_def=in_process_executor,
    tags={JOB_TAG: "candles"},
    description="Candles for every timeframe, then indicators, for one hourly partition (or a range).",
)

analytics_job = define_asset_job(
    ANALYTICS_JOB,
    selection=AssetSelection.assets("backtests", "strategy_comparison"),
    executor_def=in_process_executor,
    tags={JOB_TAG: "analytics"},
    description="Backtests over the look-back window, then the ranked strategy comparison.",
)

__all__ = [
    "ANALYTICS_JOB",
    "BACKFILL_PARTITIONS_PER_RUN",
    "CANDLES_BACKFILL_POLICY",
    "CANDLES_JOB",
    "DAY_TAG",
    "FINAL",
    "HealthPolicy",
    "IN_PROGRESS",
    "JOB_TAG",
    "LIVE",
    "REFRESH_TAG",
    "TRIGGER_TAG",
    "WatermarkPolicy",
    "analytics_job",
    "candles_job",
    "catchup_candles_request",
    "daily_analytics_request",
    "final_candles_request",
    "first_analytics_request",
    "live_candles_request",
]
