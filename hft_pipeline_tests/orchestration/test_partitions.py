"""Candle partitions: a configured start that never depends on the store, and their windows."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from dagster import HourlyPartitionsDefinition, PartitionKeyRange

from hft_pipeline.orchestration.partitions import (
    DEFAULT_PARTITIONS_START,
    HOUR_NS,
    NS,
    PARTITIONS_START_ENV,
    key_window_ns,
    partition_key_at,
    partition_key_for,
    partition_range_window,
    partition_window,
    partitions_start,
    precedes_partitions,
)
from hft_pipeline_tests.orchestration.conftest import StoreCase, simulator_ticks, write_ticks

HOURLY = HourlyPartitionsDefinition(start_date="2024-05-01-00:00", timezone="UTC")
MAY_1 = int(datetime(2024, 5, 1, tzinfo=UTC).timestamp()) * NS


def test_the_start_is_the_configured_hour_or_the_default() -> None:
    assert partitions_start({PARTITIONS_START_ENV: "2026-03-04T05:59:59Z"}) == datetime(
        2026, 3, 4, 5, tzinfo=UTC
    )
    assert partitions_start({PARTITIONS_START_ENV: "2026-03-04"}) == datetime(
        2026, 3, 4, tzinfo=UTC
    )
    assert partitions_start({PARTITIONS_START_ENV: "2026-03-04T08:30+02:00"}) == datetime(
        2026, 3, 4, 6, tzinfo=UTC
    )
    assert partitions_start({}) == partitions_start({PARTITIONS_START_ENV: " "})
    assert partitions_start({}) == DEFAULT_PARTITIONS_START == datetime(2025, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="ISO-8601"):
        partitions_start({PARTITIONS_START_ENV: "yesterday"})


def test_the_start_does_not_look_at_the_store(store_case: StoreCase) -> None:
    write_ticks(store_case.store, simulator_ticks(0.2))
    assert partitions_start({"HFT_STORE_URL": store_case.url}) == DEFAULT_PARTITIONS_START


def test_loading_the_partitions_opens_no_store_module() -> None:
    # An unreachable store URL: loading must neither wait for it nor import a backend.
    code = (
        "import json, sys, time; t = time.perf_counter()\n"
        "import hft_pipeline.orchestration.partitions as p\n"
        "print(json.dumps([time.perf_counter() - t, p.candle_partitions.start.isoformat(),\n"
        "  [m for m in sys.modules if m.startswith(('hft_pipeline.store', 'psycopg'))]]))"
    )
    env = {"HFT_STORE_URL": "postgresql://postgres@192.0.2.1:5432/postgres", "PATH": ""}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    seconds, start, store_modules = json.loads(out.stdout.splitlines()[-1])
    assert store_modules == []
    assert start == DEFAULT_PARTITIONS_START.isoformat()
    assert seconds < 10


def test_windows_and_keys_in_nanoseconds() -> None:
    assert key_window_ns(HOURLY, "2024-05-01-03:00") == (MAY_1 + 3 * HOUR_NS, MAY_1 + 4 * HOUR_NS)
    key = partition_key_for(MAY_1 + 3 * HOUR_NS + 59 * 60 * NS)
    assert key == "2024-05-01-03:00"
    assert partition_window("2026-01-04-18:00") == (1_767_549_600 * NS, 1_767_553_200 * NS)
    assert partition_range_window(PartitionKeyRange("2026-01-04-18:00", "2026-01-04-20:00")) == (
        1_767_549_600 * NS,
        1_767_549_600 * NS + 3 * HOUR_NS,
    )


def test_a_time_before_the_first_partition_maps_to_it() -> None:
    assert partition_key_at(HOURLY, MAY_1 + HOUR_NS + 1) == "2024-05-01-01:00"
    assert partition_key_at(HOURLY, MAY_1 - 5 * HOUR_NS) == "2024-05-01-00:00"
    assert precedes_partitions(HOURLY, MAY_1 - 1)
    assert not precedes_partitions(HOURLY, MAY_1)
