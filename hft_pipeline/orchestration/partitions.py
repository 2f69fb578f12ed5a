"""Hourly candle partitions (UTC) whose start is fixed from the first stored tick when definitions load."""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import closing, suppress
from datetime import UTC, datetime

from dagster import HourlyPartitionsDefinition, PartitionKeyRange, TimeWindow

from hft_pipeline.settings import Settings
from hft_pipeline.store import sqlite_path

PARTITIONS_START_ENV = "HFT_PARTITIONS_START"
PARTITION_FMT = "%Y-%m-%d-%H:%M"
HOUR_NS = 3600 * 1_000_000_000


def _floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _parse_start(raw: str) -> datetime:
    try:
        moment = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise ValueError(
            f"{PARTITIONS_START_ENV}={raw!r}: use an ISO-8601 date or time, e.g. 2026-11-20 "
            "or 2026-11-20T13:00Z"
        ) from None
    return _floor_hour(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def stored_first_tick_ts(store_url: str) -> int | None:
    """The store's oldest tick time, read without creating or migrating anything; None if unknown.

    Loading definitions must not create the SQLite file or touch a database schema
    (`dagster definitions validate` runs with no store at all), so the store is opened
    without `migrate()` and only when it already exists; any failure means "unknown".
    """
    with suppress(Exception):
        if store_url.startswith("sqlite:"):
            path = sqlite_path(store_url)
            if not path.is_file():
                return None
            from hft_pipeline.store.sqlite import SqliteStore

            with closing(SqliteStore(path)) as store:
                return store.first_tick_ts()
        if store_url.startswith(("postgresql://", "postgres://")):
            from hft_pipeline.store.postgres import PostgresStore

            with closing(
                PostgresStore(store_url, pool_size=1, connect_timeout=1.0, pool_timeout=1.0)
            ) as store:
                return store.first_tick_ts()
    return None


def partitions_start(env: Mapping[str, str] | None = None, now: datetime | None = None) -> datetime:
    """First partition: $HFT_PARTITIONS_START, else the first stored tick's hour, else this hour.

    Why "this hour" as the fallback rather than a fixed date: with an empty store there is no
    data before now, and the ingest service started next to Dagster writes its first tick in
    this hour or later, so a run worker that loads the definitions again (and then finds ticks)
    arrives at the same start. A fixed old date would make the catch-up schedule request
    thousands of empty partitions on a fresh install.
    """
    env = os.environ if env is None else env
    raw = env.get(PARTITIONS_START_ENV, "")
    if raw.strip():
        return _parse_start(raw)
    first = stored_first_tick_ts(Settings.from_env(env).resolved_store_url)
    if first is not None:
        return _floor_hour(datetime.fromtimestamp(first // 1_000_000_000, UTC))
    return _floor_hour(now or datetime.now(UTC))


def build_candle_partitions(start: datetime) -> HourlyPartitionsDefinition:
    """Hourly UTC partitions from `start`; the newest partition is the last complete hour."""
    return HourlyPartitionsDefinition(start_date=start, timezone="UTC", fmt=PARTITION_FMT)


#: The partitions of `candles` and `indicators` (start fixed when this module is imported).
candle_partitions = build_candle_partitions(partitions_start())


def window_ns(window: TimeWindow) -> tuple[int, int]:
    """[start_ns, end_ns) of a Dagster time window."""
    return (
        int(round(window.start.timestamp())) * 1_000_000_000,
        int(round(window.end.timestamp())) * 1_000_000_000,
    )


def partition_window(key: str) -> tuple[int, int]:
    """[start_ns, end_ns) of the hourly partition `key` (e.g. "2026-11-20-13:00")."""
    return window_ns(candle_partitions.time_window_for_partition_key(key))


def partition_key_for(ts_ns: int) -> str:
    """Key of the hourly partition holding the instant `ts_ns`."""
    start = datetime.fromtimestamp((ts_ns // HOUR_NS) * 3600, UTC)
    return start.strftime(PARTITION_FMT)


def partition_range_window(keys: PartitionKeyRange) -> tuple[int, int]:
    """[start_ns, end_ns) covering the partitions from `keys.start` to `keys.end` inclusive."""
    return partition_window(keys.start)[0], partition_window(keys.end)[1]


__all__ = [
    "HOUR_NS",
    "PARTITIONS_START_ENV",
    "PARTITION_FMT",
    "build_candle_partitions",
    "candle_partitions",
    "partition_key_for",
    "partition_range_window",
    "partition_window",
    "partitions_start",
    "stored_first_tick_ts",
    "window_ns",
]
