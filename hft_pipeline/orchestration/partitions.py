"""Hourly candle partitions (UTC) from a configured start, and their windows in nanoseconds.

The start comes from `HFT_PARTITIONS_START` or a fixed default, never from the store: loading
the definitions must not depend on a reachable database, and every process that loads them
(code server, daemon, run workers) must agree on the same partition keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from dagster import (
    HourlyPartitionsDefinition,
    PartitionKeyRange,
    TimeWindow,
    TimeWindowPartitionsDefinition,
)

from hft_pipeline.settings import DEFAULT_PARTITIONS_START, Settings, env_name

PARTITIONS_START_ENV = env_name("partitions_start")
PARTITION_FMT = "%Y-%m-%d-%H:%M"
NS = 1_000_000_000
HOUR_NS = 3600 * NS


def partitions_start(env: Mapping[str, str] | None = None) -> datetime:
    """First partition: the hour of $HFT_PARTITIONS_START, else DEFAULT_PARTITIONS_START."""
    return Settings.from_env(env).partitions_start


def build_candle_partitions(start: datetime) -> HourlyPartitionsDefinition:
    """Hourly UTC partitions from `start`; the newest partition is the last complete hour."""
    return HourlyPartitionsDefinition(start_date=start, timezone="UTC", fmt=PARTITION_FMT)


#: The partitions of `candles` and `indicators`.
candle_partitions = build_candle_partitions(partitions_start())


def window_ns(window: TimeWindow) -> tuple[int, int]:
    """[start_ns, end_ns) of a Dagster time window."""
    return (
        int(round(window.start.timestamp())) * NS,
        int(round(window.end.timestamp())) * NS,
    )


def key_window_ns(partitions_def: TimeWindowPartitionsDefinition, key: str) -> tuple[int, int]:
    """[start_ns, end_ns) of partition `key` of `partitions_def`."""
    return window_ns(partitions_def.time_window_for_partition_key(key))


def partition_window(key: str) -> tuple[int, int]:
    """[start_ns, end_ns) of the hourly candle partition `key` (e.g. "2026-11-20-13:00")."""
    return key_window_ns(candle_partitions, key)


def partition_key_for(ts_ns: int) -> str:
    """Key of the hourly partition holding the instant `ts_ns`."""
    start = datetime.fromtimestamp((ts_ns // HOUR_NS) * 3600, UTC)
    return start.strftime(PARTITION_FMT)


def partition_key_at(partitions_def: TimeWindowPartitionsDefinition, ts_ns: int) -> str:
    """Key of the partition holding `ts_ns`, or the first partition when `ts_ns` precedes them all."""
    key = partitions_def.get_partition_key_for_timestamp(ts_ns / NS)
    if precedes_partitions(partitions_def, key_window_ns(partitions_def, key)[0]):
        return partitions_def.get_first_partition_key()  # type: ignore[return-value]
    return key


def precedes_partitions(partitions_def: TimeWindowPartitionsDefinition, ts_ns: int) -> bool:
    """Whether `ts_ns` lies before the first partition of `partitions_def`."""
    first = partitions_def.get_first_partition_key()
    return first is not None and ts_ns < key_window_ns(partitions_def, first)[0]


def partition_range_window(keys: PartitionKeyRange) -> tuple[int, int]:
    """[start_ns, end_ns) covering the partitions from `keys.start` to `keys.end` inclusive."""
    return partition_window(keys.start)[0], partition_window(keys.end)[1]


__all__ = [
    "DEFAULT_PARTITIONS_START",
    "HOUR_NS",
    "NS",
    "PARTITIONS_START_ENV",
    "PARTITION_FMT",
    "build_candle_partitions",
    "candle_partitions",
    "key_window_ns",
    "partition_key_at",
    "partition_key_for",
    "partition_range_window",
    "partition_window",
    "partitions_start",
    "precedes_partitions",
    "window_ns",
]
