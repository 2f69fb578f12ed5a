"""Schedules: daily backtests and comparison; an hourly catch-up for missing candle partitions."""

from __future__ import annotations

from datetime import datetime

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DefaultScheduleStatus,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    TimeWindowPartitionsDefinition,
    schedule,
)

from hft_pipeline.orchestration.jobs import (
    ANALYTICS_JOB,
    CANDLES_JOB,
    IN_PROGRESS,
    WatermarkPolicy,
    catchup_candles_request,
    daily_analytics_request,
)
from hft_pipeline.orchestration.partitions import (
    NS,
    candle_partitions,
    key_window_ns,
    partition_key_at,
)
from hft_pipeline.orchestration.resources import StoreResource

CANDLES = AssetKey("candles")


@schedule(
    cron_schedule="10 0 * * *",
    execution_timezone="UTC",
    job_name=ANALYTICS_JOB,
    default_status=DefaultScheduleStatus.RUNNING,
    description="Backtests over the look-back window and the strategy comparison, daily at 00:10 UTC.",
)
def daily_analytics_schedule(context: ScheduleEvaluationContext) -> RunRequest:
    return daily_analytics_request(context.scheduled_execution_time.strftime("%Y-%m-%d"))


def missing_partitions(
    instance,
    partitions_def: TimeWindowPartitionsDefinition,
    first_ts: int,
    now_ns: int,
    grace_s: float,
    recheck: int = 48,
    limit: int = 168,
) -> list[str]:
    """Complete partitions since `first_ts` that were never materialized, or only before they closed.

    "Only before they closed" is a live refresh whose final run never happened; only the newest
    `recheck` partitions are checked for that, since the watermark sensor finalizes within the hour.
    """
    grace_ns = int(grace_s * NS)
    done = instance.get_materialized_partitions(CANDLES)
    keys: list[str] = []
    key: str | None = partition_key_at(partitions_def, first_ts)
    while key is not None and partitions_def.has_partition_key(key):
        window = partitions_def.time_window_for_partition_key(key)
        if int(window.end.timestamp()) * NS + grace_ns > now_ns:
            break
        keys.append(key)
        key = partitions_def.get_next_partition_key(key)
    missing = [k for k in keys if k not in done]
    recent = [k for k in keys[-recheck:] if k in done]
    if recent:
        records = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=CANDLES, asset_partitions=recent), limit=len(recent) * 50
        ).records
        latest: dict[str, float] = {}
        for record in records:
            key = record.partition_key
            if key is not None:
                latest[key] = max(latest.get(key, 0.0), record.timestamp)
        for k in recent:
            closed_s = partitions_def.time_window_for_partition_key(k).end.timestamp() + grace_s
            if latest.get(k, 0.0) < closed_s:
                missing.append(k)
    return sorted(set(missing))[:limit]


def _in_flight(instance, key: str) -> bool:
    runs = RunsFilter(job_name=CANDLES_JOB, tags={"dagster/partition": key}, statuses=IN_PROGRESS)
    return instance.get_runs_count(filters=runs) > 0


def build_candles_catchup_schedule(
    name: str = "candles_catchup_schedule",
    partitions_def: TimeWindowPartitionsDefinition = candle_partitions,
    policy: WatermarkPolicy | None = None,
) -> ScheduleDefinition:
    """Hourly backstop for the watermark sensor: request every complete partition not materialized."""
    policy = policy or WatermarkPolicy.from_env()

    @schedule(
        name=name,
        cron_schedule="20 * * * *",
        execution_timezone="UTC",
        job_name=CANDLES_JOB,
        default_status=DefaultScheduleStatus.RUNNING,
        description=(
            "Hourly at :20, requests any complete candles partition with data that was never "
            "materialized (or only before it closed): catch-up after downtime or failed runs."
        ),
    )
    def candles_catchup_schedule(context: ScheduleEvaluationContext, store: StoreResource):
        now_ns = int(context.scheduled_execution_time.timestamp()) * NS
        with store.open() as tick_store:
            first_ts = tick_store.first_tick_ts()
            if first_ts is None:
                return SkipReason("the store holds no ticks yet")
            candidates = missing_partitions(
                context.instance,
                partitions_def,
                first_ts,
                now_ns,
                policy.grace_s,
                limit=policy.max_requests,
            )
            keys = []
            for key in candidates:
                start, end = key_window_ns(partitions_def, key)
                if sum(tick_store.tick_counts(start, end).values()) and not _in_flight(
                    context.instance, key
                ):
                    keys.append(key)
        if not keys:
            return SkipReason(f"no missing partitions among {len(candidates)} candidates")
        hour = _hour(context.scheduled_execution_time)
        return [catchup_candles_request(key, hour) for key in keys]

    return candles_catchup_schedule


def _hour(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H")


candles_catchup_schedule = build_candles_catchup_schedule()
