"""Dagster orchestration: sensor tick with 150 symbols, one candles partition end to end in a
fresh process, a 24-partition backfill, and a fresh-process backtests run, on PostgreSQL.

Fresh processes go through `dagster asset materialize` (what a launched run pays: Python start,
definitions import, run start, the asset) on an embedded instance under a scratch DAGSTER_HOME.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.workload import row as workload_row
from benchmarks.workload import scratch_database, simulator_ticks, split, symbol_names

NS = 1_000_000_000
HOUR_NS = 3600 * NS
ROOT = Path(__file__).resolve().parents[1]
# A fixed day in the past: every partition is complete, nothing depends on the wall clock.
DAY0 = int(datetime(2026, 1, 5, tzinfo=UTC).timestamp()) * NS


def row(metric: str, value: float, unit: str, **extra) -> dict:
    return workload_row("dagster", metric, value, unit, **extra)


def _fill(store, symbols: list[str], rate: float, start_ns: int, hours: float) -> int:
    per_symbol = int(hours * 3600 * rate / len(symbols))
    batch = simulator_ticks(symbols, per_symbol, rate, start_ns)
    offset = 0
    for part in split(batch, 200_000):
        offset += len(part)
        store.write_ticks(part, offset)
    return len(batch)


def _materialize(env: dict[str, str], select: str, *partition: str) -> float:
    args = [str(Path(sys.executable).with_name("dagster")), "asset", "materialize"]
    args += ["-m", "hft_pipeline.definitions", "--select", select, *partition]
    started = time.perf_counter()
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    return wall


RANGED_RUN = """
import sys
from dagster import DagsterInstance
from hft_pipeline.definitions import defs
job = defs.resolve_job_def("candles_job")
tags = {"dagster/asset_partition_range_start": sys.argv[1],
        "dagster/asset_partition_range_end": sys.argv[2]}
with DagsterInstance.get() as instance:
    assert job.execute_in_process(instance=instance, tags=tags).success
"""


def _ranged_run(env: dict[str, str], first: str, last: str) -> float:
    """One ranged run over first..last in a fresh process: what a backfill batch executes."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", RANGED_RUN, first, last],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"ranged run failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def _key(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns / NS, UTC).strftime("%Y-%m-%d-%H:%M")


def run(quick: bool) -> list[dict]:
    os.environ.setdefault("HFT_PARTITIONS_START", "2026-01-01T00:00Z")
    from dagster import DagsterInstance, HourlyPartitionsDefinition, build_sensor_context

    from hft_pipeline.orchestration.resources import StoreResource
    from hft_pipeline.orchestration.sensors import (
        WatermarkPolicy,
        build_ingest_watermark_sensor,
    )
    from hft_pipeline.store import open_store

    n_symbols = 150
    symbols = symbol_names(n_symbols)
    hour_rate = 100.0 if quick else 1000.0  # ticks/s over all symbols for the one-hour partition
    day_rate = 5.0 if quick else 50.0  # ticks/s for the 24-partition backfill
    rows: list[dict] = []
    home = Path(tempfile.mkdtemp(prefix="hft_bench_dagster_"))
    try:
        with scratch_database("hft_bench_dagster") as dsn:
            store = open_store(dsn)
            # 24 hours of day data first, then one dense hour right after them.
            day_ticks = _fill(store, symbols, day_rate, DAY0, 24)
            dense_start = DAY0 + 24 * HOUR_NS
            hour_ticks = _fill(store, symbols, hour_rate, dense_start, 1)
            for s in symbols:
                store.add_subscription(s, "SIM")

            # Sensor tick: first (reads first_tick_ts, requests 25 partitions) and steady state.
            partitions = HourlyPartitionsDefinition(start_date="2026-01-01-00:00", timezone="UTC")
            sensor = build_ingest_watermark_sensor(
                partitions_def=partitions, policy=WatermarkPolicy(live_refresh_s=0)
            )
            resources = {"store": StoreResource(store_url=dsn, pool_size=2)}
            cursor = None
            times = []
            with DagsterInstance.ephemeral() as instance:
                for _ in range(5):
                    with build_sensor_context(
                        instance=instance, cursor=cursor, resources=resources
                    ) as ctx:
                        started = time.perf_counter()
                        result = sensor(ctx)
                        times.append(time.perf_counter() - started)
                    cursor = result.cursor
            started = time.perf_counter()
            store.watermark()
            store.subscriptions()
            bare = time.perf_counter() - started
            rows.append(
                row(f"sensor first tick, 150 symbols, {day_ticks + hour_ticks:,} ticks stored",
                    times[0], "s", target="< 60 s", met=times[0] < 60)
            )  # fmt: skip
            steady = sorted(times[1:])[len(times[1:]) // 2]
            rows.append(
                row("sensor steady tick, 150 symbols (median)", steady, "s",
                    baseline="store.watermark() + subscriptions()", baseline_value=bare,
                    ratio=steady / bare if bare else None, target="< 60 s", met=steady < 60)
            )  # fmt: skip
            store.close()

            dagster_home = home / "dagster"
            dagster_home.mkdir()
            shutil.copy(ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith(("HFT_", "DAGSTER_"))},
                "DAGSTER_HOME": str(dagster_home),
                "HFT_HOME": str(home),
                "HFT_STORE_URL": dsn,
                "HFT_PARTITIONS_START": "2026-01-01T00:00Z",
                "NUMBA_CACHE_DIR": str(ROOT / ".hft" / "numba-cache"),
            }

            # Fresh-process start alone: Python plus the definitions import.
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-c", "import hft_pipeline.definitions"],
                cwd=ROOT, env=env, check=True, capture_output=True,
            )  # fmt: skip
            start_only = time.perf_counter() - started
            hour_wall = _materialize(env, "candles,indicators", "--partition", _key(dense_start))
            rows.append(
                row(f"candles+indicators, 1 partition ({hour_ticks:,} ticks, 150 symbols), fresh process",
                    hour_wall, "s", baseline="fresh process importing the definitions",
                    baseline_value=start_only, ratio=hour_wall / start_only)
            )  # fmt: skip

            first, last = _key(DAY0), _key(DAY0 + 23 * HOUR_NS)
            day_wall = _ranged_run(env, first, last)
            rows.append(
                row(f"backfill 24 partitions as one ranged run ({day_ticks:,} ticks, 150 symbols), fresh process",
                    day_wall, "s", baseline="1 partition, fresh process", baseline_value=hour_wall,
                    ratio=day_wall / hour_wall)
            )  # fmt: skip

            backtests_wall = _materialize(env, "backtests")
            rows.append(
                row("backtests (7-day look-back, 150 symbols), fresh process", backtests_wall, "s",
                    baseline="fresh process importing the definitions",
                    baseline_value=start_only, ratio=backtests_wall / start_only)
            )  # fmt: skip
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return rows
