"""End to end on PostgreSQL: the ingest service's simulator fills the store, a Dagster instance
stored in PostgreSQL (dagster-postgres) runs the sensor, the requested candles runs, the catch-up
schedule and the analytics job; the comparison lands in the store and the runs in PostgreSQL."""

from __future__ import annotations

import http.client
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import psycopg
import pytest
from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    RunsFilter,
    build_schedule_context,
    build_sensor_context,
)

from hft_pipeline.ingest.feeds.simulator import DEFAULT_SYMBOLS, generate
from hft_pipeline.market.ticks import concat_batches
from hft_pipeline.orchestration.alerting import AlertsResource
from hft_pipeline.orchestration.assets import ALL_ASSETS
from hft_pipeline.orchestration.jobs import REFRESH_TAG, analytics_job, candles_job
from hft_pipeline.orchestration.partitions import NS, candle_partitions, key_window_ns
from hft_pipeline.orchestration.resources import IngestApiResource, StoreResource
from hft_pipeline.orchestration.schedules import candles_catchup_schedule
from hft_pipeline.orchestration.sensors import ingest_watermark_sensor
from hft_pipeline.store import open_store

ROOT = Path(__file__).resolve().parents[2]
SEED = 42
RATE = 10.0  # ticks/s over the five default symbols
HISTORY_S = 2 * 3600 + 25 * 60  # the simulator resumes this far back and emits the backlog


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def dagster_pg(pg_server_dsn: str, tmp_path: Path, monkeypatch) -> Iterator[str]:
    """DAGSTER_HOME with deploy/postgres/dagster.yaml over a scratch database; yields its DSN."""
    name = f"hft_dagster_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    parts = urlsplit(pg_server_dsn)
    home = tmp_path / "dagster"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "postgres" / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_PG_HOST", parts.hostname or "127.0.0.1")
    monkeypatch.setenv("DAGSTER_PG_PORT", str(parts.port or 5432))
    monkeypatch.setenv("DAGSTER_PG_USER", parts.username or "postgres")
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", parts.password or "")
    monkeypatch.setenv("DAGSTER_PG_DB", name)
    try:
        yield parts._replace(path="/" + name).geturl()
    finally:
        with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


def run_ingest(store_url: str, home: Path) -> int:
    """`hft ingest` on PostgreSQL until its simulator caught up with the wall clock; ticks stored."""
    # One stored tick per symbol, HISTORY_S ago: the simulator resumes there and emits everything
    # since then at full speed (its deterministic backlog), then paces at RATE.
    t0 = time.time_ns() - HISTORY_S * NS
    n = len(DEFAULT_SYMBOLS)
    store = open_store(store_url)
    seed = concat_batches([generate(SEED, s, 0, 1, RATE, n, t0) for s in DEFAULT_SYMBOLS])
    store.write_ticks(seed, 0, stream="seed")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hft_pipeline.cli", "ingest", "--store", store_url,
         "--home", str(home), "--port", str(port), "--rate", str(RATE), "--seed", str(SEED)],
        cwd=ROOT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"hft ingest exited with {proc.returncode}"
            assert time.monotonic() < deadline, "the simulator did not catch up within 90 s"
            wm = store.watermark()
            if wm.max_ts is not None and time.time_ns() - wm.max_ts < 3 * NS:
                break
            time.sleep(0.5)
        assert _get(port, "/health") == 200
        time.sleep(2)  # a little live ticking after the backlog
    finally:
        store.close()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0
    return port


def _get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.timeout(300)
def test_sensor_schedule_and_assets_on_postgres_end_to_end(
    pg_dsn: str, dagster_pg: str, tmp_path: Path
) -> None:
    port = run_ingest(pg_dsn, tmp_path / "hft")
    resources = {
        "store": StoreResource(store_url=pg_dsn, pool_size=2),
        "ingest_api": IngestApiResource(base_url=f"http://127.0.0.1:{port}"),
        "alerts": AlertsResource(read_environment=False),
    }
    defs = Definitions(
        assets=ALL_ASSETS,
        jobs=[candles_job, analytics_job],
        sensors=[ingest_watermark_sensor],
        schedules=[candles_catchup_schedule],
        resources=resources,
    )
    store = open_store(pg_dsn)
    with DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        wm = store.watermark()
        assert set(wm.per_symbol_max_ts) == set(DEFAULT_SYMBOLS)
        assert wm.rows > HISTORY_S * RATE * 0.95

        with build_sensor_context(instance=instance, resources=resources, definitions=defs) as ctx:
            first = ingest_watermark_sensor(ctx)
        final = [r for r in first.run_requests if r.tags.get(REFRESH_TAG) == "final"]
        keys = [r.partition_key for r in final]
        # Every hour from the first tick's to the last one closed a grace period ago.
        first_key = candle_partitions.get_partition_key_for_timestamp(store.first_tick_ts() / NS)
        assert keys[0] == first_key and len(keys) >= 2
        assert all(key_window_ns(candle_partitions, k)[1] + 60 * NS <= wm.max_ts for k in keys)
        ((_, ticks_event),) = [(0, e) for e in first.asset_events]
        assert ticks_event.metadata["rows"].value == wm.rows
        assert ticks_event.metadata["symbols"].value == len(DEFAULT_SYMBOLS)

        # The hourly catch-up sees the same partitions as missing before any run.
        now = time.time()
        with build_schedule_context(
            instance=instance,
            resources=resources,
            scheduled_execution_time=_utc(now),
            repository_def=defs.get_repository_def(),
        ) as sctx:
            catchup = candles_catchup_schedule.evaluate_tick(sctx)
        assert sorted(r.partition_key for r in catchup.run_requests) == sorted(keys)

        job = defs.resolve_job_def("candles_job")
        for request in final:
            result = job.execute_in_process(
                partition_key=request.partition_key, instance=instance, tags=request.tags
            )
            assert result.success

        # The sensor's cursor holds: nothing is requested twice.
        with build_sensor_context(
            instance=instance, resources=resources, definitions=defs, cursor=first.cursor
        ) as ctx:
            second = ingest_watermark_sensor(ctx)
        assert [r for r in second.run_requests if r.tags.get(REFRESH_TAG) == "final"] == []
        # ... and the catch-up finds nothing missing any more.
        with build_schedule_context(
            instance=instance,
            resources=resources,
            scheduled_execution_time=_utc(now),
            repository_def=defs.get_repository_def(),
        ) as sctx:
            after = candles_catchup_schedule.evaluate_tick(sctx)
        assert not after.run_requests
        assert after.skip_message

        # Stored candles equal candles computed from the persisted ticks (date_bin in PostgreSQL).
        start, end = key_window_ns(candle_partitions, keys[0])
        stored = store.stored_candles("1m", start, end, symbols=["PETR4"])
        expected = store.candles("PETR4", "1m", start, end)
        assert len(stored) == len(expected) > 0
        np.testing.assert_array_equal(stored["ts"].to_numpy(), expected["ts"].to_numpy())
        np.testing.assert_allclose(stored["close"].to_numpy(), expected["close"].to_numpy())
        np.testing.assert_array_equal(stored["ticks"].to_numpy(), expected["ticks"].to_numpy())

        analytics = defs.resolve_job_def("analytics_job").execute_in_process(instance=instance)
        assert analytics.success
        latest = store.results.latest_comparison()
        assert latest is not None
        _, ranked = latest
        assert len(ranked) > 0

        runs = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.SUCCESS]))
        assert len(runs) == len(final) + 1
        assert {r.job_name for r in runs} == {"candles_job", "analytics_job"}
    store.close()

    # The run records live in the PostgreSQL database of the instance.
    with psycopg.connect(dagster_pg) as conn:
        rows = conn.execute("select run_id, status from runs").fetchall()
    assert {r[0] for r in rows} == {r.run_id for r in runs}
    assert {r[1] for r in rows} == {"SUCCESS"}


def _utc(ts: float):
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC)
