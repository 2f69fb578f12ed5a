"""Watermark and health sensors through `build_sensor_context` on a real SQLite store and a real
HTTP server standing in for the ingest API."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from dagster import (
    AssetKey,
    AssetMaterialization,
    DagsterInstance,
    HourlyPartitionsDefinition,
    build_sensor_context,
)

from hft_pipeline.ingest.feeds.simulator import generate
from hft_pipeline.market.ticks import concat_batches
from hft_pipeline.observability.alerts import Alert, Level
from hft_pipeline.orchestration.alerting import AlertsResource
from hft_pipeline.orchestration.jobs import (
    ANALYTICS_JOB,
    REFRESH_TAG,
    HealthPolicy,
    WatermarkPolicy,
)
from hft_pipeline.orchestration.partitions import NS
from hft_pipeline.orchestration.resources import IngestApiResource, StoreResource
from hft_pipeline.orchestration.sensors import (
    WatermarkCursor,
    build_first_analytics_sensor,
    build_ingest_health_sensor,
    build_ingest_watermark_sensor,
)
from hft_pipeline.store import TickStore, open_store

SEED = 11
SYMBOLS = ["PETR4", "VALE3", "R_100"]
RATE = 3.0  # ticks/s over all symbols: one per second per symbol
T0 = int(datetime(2024, 5, 1, 10, 20, tzinfo=UTC).timestamp()) * NS
HOURLY = HourlyPartitionsDefinition(start_date="2024-05-01-00:00", timezone="UTC")
# The same partitions with the open hour included, as a live refresh needs.
HOURLY_OPEN = HourlyPartitionsDefinition(
    start_date="2024-05-01-00:00", timezone="UTC", end_offset=1
)


def at(hh: int, mm: int = 0, ss: int = 0) -> int:
    return int(datetime(2024, 5, 1, hh, mm, ss, tzinfo=UTC).timestamp()) * NS


class Clock:
    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns


class Feed:
    """Writes simulator ticks into the store up to a given time, like the persister would."""

    def __init__(self, store: TickStore) -> None:
        self.store = store
        self.k = 0
        self.offset = 0

    def until(self, end_ns: int) -> int:
        step = int(NS * len(SYMBOLS) / RATE)
        k_end = (end_ns - T0) // step + 1
        if k_end <= self.k:
            return 0
        parts = [generate(SEED, s, self.k, k_end, RATE, len(SYMBOLS), T0) for s in SYMBOLS]
        batch = concat_batches(parts)
        batch = batch.take(np.argsort(batch.ts, kind="stable"))
        self.offset += len(batch)
        self.store.write_ticks(batch, self.offset)
        self.k = k_end
        return len(batch)


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'hft.sqlite3'}"


@pytest.fixture
def store(store_url: str) -> Iterator[TickStore]:
    s = open_store(store_url)
    yield s
    s.close()


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.ephemeral() as inst:
        yield inst


class Ticker:
    """Evaluates a sensor tick after tick, carrying the cursor like the daemon does."""

    def __init__(self, sensor, instance: DagsterInstance, resources: dict[str, Any]) -> None:
        self.sensor, self.instance, self.resources = sensor, instance, resources
        self.cursor: str | None = None

    def tick(self):
        with build_sensor_context(
            instance=self.instance, cursor=self.cursor, resources=self.resources
        ) as context:
            result = self.sensor(context)
        self.cursor = result.cursor
        return result


def keys(result) -> list[str]:
    return [r.partition_key for r in result.run_requests if r.tags.get(REFRESH_TAG) == "final"]


def live(result) -> list[str]:
    return [r.partition_key for r in result.run_requests if r.tags.get(REFRESH_TAG) == "live"]


def report(result) -> dict[str, Any] | None:
    events = [e for e in result.asset_events if isinstance(e, AssetMaterialization)]
    if not events:
        return None
    assert len(events) == 1 and events[0].asset_key.to_user_string() == "ticks"
    return {k: v.value for k, v in events[0].metadata.items()}


def watermark_ticker(store_url, instance, clock, partitions=HOURLY, **policy) -> Ticker:
    policy.setdefault("live_refresh_s", 0)
    sensor = build_ingest_watermark_sensor(
        partitions_def=partitions, policy=WatermarkPolicy(**policy), clock=clock
    )
    return Ticker(sensor, instance, {"store": StoreResource(store_url=store_url)})


def test_first_tick_catches_up_from_the_first_partition_bounded_per_tick(
    store, store_url, instance
) -> None:
    feed = Feed(store)
    written = feed.until(at(13, 30))
    clock = Clock(at(13, 30, 5))
    ticker = watermark_ticker(store_url, instance, clock, grace_s=60, max_requests=2)

    first = ticker.tick()
    assert keys(first) == ["2024-05-01-10:00", "2024-05-01-11:00"]
    assert [r.run_key for r in first.run_requests] == keys(first)
    meta = report(first)
    assert meta is not None
    assert meta["rows"] == written == store.watermark().rows
    assert meta["symbols"] == 3
    assert meta["symbol_list"] == "PETR4, R_100, VALE3"
    assert meta["watermark"] == pytest.approx(store.watermark().max_ts / NS)
    assert meta["lag_seconds"] == round((clock.now_ns - store.watermark().max_ts) / NS, 3)

    # The cursor continues where the bound stopped; the watermark did not move: no report.
    second = ticker.tick()
    assert keys(second) == ["2024-05-01-12:00"]
    assert report(second) is None
    assert WatermarkCursor.parse(ticker.cursor).next_key == "2024-05-01-13:00"
    # Nothing is ever requested twice.
    third = ticker.tick()
    assert keys(third) == [] and third.run_requests == []
    assert third.skip_reason is not None


def test_the_cursor_waits_at_an_hour_that_is_not_a_partition_yet(
    store, store_url, instance
) -> None:
    # Like candle_partitions at run time: the newest partition is the last complete hour, so
    # the next one does not exist yet when its predecessor is requested.
    until_noon = HourlyPartitionsDefinition(
        start_date="2024-05-01-00:00", end_date="2024-05-01-12:00", timezone="UTC"
    )
    Feed(store).until(at(13, 30))
    ticker = watermark_ticker(store_url, instance, Clock(at(13, 30, 5)), partitions=until_noon)
    assert keys(ticker.tick()) == ["2024-05-01-10:00", "2024-05-01-11:00"]
    assert WatermarkCursor.parse(ticker.cursor).next_key == "2024-05-01-12:00"
    assert keys(ticker.tick()) == []


def test_grace_period_holds_a_closed_hour_until_late_ticks_had_their_time(
    store, store_url, instance
) -> None:
    feed = Feed(store)
    feed.until(at(11, 0, 30))
    clock = Clock(at(11, 0, 31))
    ticker = watermark_ticker(store_url, instance, clock, grace_s=60)
    assert keys(ticker.tick()) == []  # 10:00 closed 30 s ago, grace is 60 s

    feed.until(at(11, 0, 59))
    clock.now_ns = at(11, 1, 0)
    result = ticker.tick()
    assert keys(result) == []
    assert report(result)["rows"] == store.watermark().rows  # watermark moved: reported

    feed.until(at(11, 1, 1))
    clock.now_ns = at(11, 1, 2)
    assert keys(ticker.tick()) == ["2024-05-01-10:00"]
    assert keys(ticker.tick()) == []


def test_an_idle_feed_closes_the_hour_by_wall_clock(store, store_url, instance) -> None:
    Feed(store).until(at(10, 50))
    clock = Clock(at(10, 50, 1))
    ticker = watermark_ticker(store_url, instance, clock, grace_s=60)
    assert keys(ticker.tick()) == []
    clock.now_ns = at(11, 0, 30)  # hour over, grace not yet
    assert keys(ticker.tick()) == []
    clock.now_ns = at(11, 1, 1)  # hour over + grace, feed idle for longer than the grace
    assert keys(ticker.tick()) == ["2024-05-01-10:00"]


def test_a_new_subscription_appears_on_the_next_tick(store, store_url, instance) -> None:
    Feed(store).until(at(10, 40))
    clock = Clock(at(10, 40, 1))
    ticker = watermark_ticker(store_url, instance, clock)
    assert report(ticker.tick())["symbols"] == 3
    assert report(ticker.tick()) is None

    assert store.add_subscription("frxEURUSD", "deriv")
    meta = report(ticker.tick())
    assert meta is not None  # the watermark did not move; the symbol set did
    assert meta["symbols"] == 4
    assert meta["new_symbols"] == "frxEURUSD"
    assert meta["subscriptions"] == {"frxEURUSD": "deriv"}
    assert "frxEURUSD" in meta["symbol_list"].split(", ")
    assert report(ticker.tick()) is None


def test_live_refresh_of_the_open_hour_is_throttled_and_keyed_by_watermark(
    store, store_url, instance
) -> None:
    feed = Feed(store)
    feed.until(at(10, 40))
    clock = Clock(at(10, 40, 1))
    ticker = watermark_ticker(
        store_url, instance, clock, partitions=HOURLY_OPEN, live_refresh_s=120
    )
    first = ticker.tick()
    assert live(first) == ["2024-05-01-10:00"]
    (request,) = first.run_requests
    assert request.run_key == f"2024-05-01-10:00@{store.watermark().max_ts}"

    feed.until(at(10, 41))
    clock.now_ns = at(10, 41, 1)
    assert live(ticker.tick()) == []  # within the refresh interval
    clock.now_ns = at(10, 43, 0)
    again = ticker.tick()
    assert live(again) == ["2024-05-01-10:00"]
    assert again.run_requests[0].run_key != request.run_key
    clock.now_ns = at(10, 46, 0)
    assert live(ticker.tick()) == []  # due, but nothing new arrived

    # Past the hour plus grace the final run replaces the refreshed candles; the refresh moves on.
    feed.until(at(11, 1, 30))
    clock.now_ns = at(11, 1, 31)
    result = ticker.tick()
    assert keys(result) == ["2024-05-01-10:00"]
    assert live(result) == ["2024-05-01-11:00"]


# --------------------------------------------------------------------------- health sensor


class FakeIngest(BaseHTTPRequestHandler):
    """The ingest API's /health and /status, answering whatever the test sets in `state`."""

    state: ClassVar[dict[str, Any]] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        s = self.state
        if self.path == "/health":
            problems = s.get("problems", [])
            body = {"status": "degraded" if problems else "ok", "problems": problems}
            self._send(503 if problems else 200, body)
        elif self.path == "/status":
            persistence = {"pending_ticks": s["pending"], "persisted_ticks": s["persisted"]}
            self._send(200, {"status": "ok", "persistence": persistence})
        else:
            self._send(404, {"detail": "not found"})

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


SENT: list[Alert] = []


class RecordingAlerts(AlertsResource):
    """Records alerts instead of delivering them (delivery itself is tested with receivers)."""

    def send(self, alert: Alert) -> dict:
        SENT.append(alert)
        return {}


@pytest.fixture
def ingest_url() -> Iterator[str]:
    FakeIngest.state = {"pending": 0, "persisted": 0, "problems": []}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeIngest)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def health_ticker(url: str, instance, clock: Clock, **policy) -> Ticker:
    SENT.clear()
    sensor = build_ingest_health_sensor(policy=HealthPolicy(**policy), clock=clock)
    resources = {
        "ingest_api": IngestApiResource(base_url=url, timeout=2.0),
        "alerts": RecordingAlerts(read_environment=False),
    }
    return Ticker(sensor, instance, resources)


def levels() -> list[Level]:
    return [a.level for a in SENT]


def test_health_alerts_warning_then_critical_then_info_once_each(ingest_url, instance) -> None:
    clock = Clock(at(12))
    ticker = health_ticker(ingest_url, instance, clock, critical_after_ticks=3)
    ticker.tick()
    assert SENT == []

    FakeIngest.state["problems"] = ["store unavailable: connection refused"]
    for _ in range(2):
        clock.now_ns += 30 * NS
        ticker.tick()
    assert levels() == [Level.WARNING]
    assert "connection refused" in SENT[0].message
    assert json.loads(ticker.cursor)["state"] == "warning"

    for _ in range(3):
        clock.now_ns += 30 * NS
        ticker.tick()
    assert levels() == [Level.WARNING, Level.CRITICAL]

    FakeIngest.state["problems"] = []
    clock.now_ns += 30 * NS
    ticker.tick()
    clock.now_ns += 30 * NS
    ticker.tick()
    assert levels() == [Level.WARNING, Level.CRITICAL, Level.INFO]
    assert SENT[-1].fields["unhealthy for"] == "150 s"
    assert json.loads(ticker.cursor)["state"] == "ok"


def test_health_alerts_on_pending_ticks_and_on_persistence_standing_still(
    ingest_url, instance
) -> None:
    clock = Clock(at(12))
    ticker = health_ticker(
        ingest_url, instance, clock, max_pending_ticks=1000, max_lag_s=60, critical_after_s=600
    )
    FakeIngest.state.update(pending=5000, persisted=100)
    ticker.tick()
    assert levels() == [Level.WARNING]
    assert "5000 ticks pending" in SENT[0].message
    assert SENT[0].fields["pending ticks"] == "5,000"

    FakeIngest.state.update(pending=10, persisted=200)
    clock.now_ns += 30 * NS
    ticker.tick()
    assert levels() == [Level.WARNING, Level.INFO]

    # Ticks pending but the persisted count stands still: stalled after max_lag_s.
    clock.now_ns += 30 * NS
    ticker.tick()
    clock.now_ns += 61 * NS
    ticker.tick()
    assert levels() == [Level.WARNING, Level.INFO, Level.WARNING]
    assert "persistence stalled for 91s" in SENT[-1].message


def test_health_alerts_when_the_service_does_not_answer(instance) -> None:
    clock = Clock(at(12))
    ticker = health_ticker("http://127.0.0.1:9", instance, clock, critical_after_ticks=2)
    ticker.tick()
    clock.now_ns += 30 * NS
    ticker.tick()
    assert levels() == [Level.WARNING, Level.CRITICAL]
    assert "/health failed" in SENT[0].message and "/status failed" in SENT[0].message


def test_first_analytics_runs_once_per_indicators_until_a_comparison_exists(instance) -> None:
    from dagster import DagsterRunStatus
    from dagster._core.storage.dagster_run import DagsterRun

    ticker = Ticker(build_first_analytics_sensor(), instance, {})
    assert "no indicators" in ticker.tick().skip_reason.skip_message

    instance.report_runless_asset_event(AssetMaterialization("indicators"))
    first = ticker.tick()
    assert [r.tags["hft/trigger"] for r in first.run_requests] == ["first-analytics"]
    storage_id = (
        instance.fetch_materializations(AssetKey("indicators"), limit=1).records[0].storage_id
    )
    assert first.run_requests[0].run_key == f"first-analytics-{storage_id}"

    # While it runs nothing more is requested, even after newer indicators.
    instance.add_run(
        DagsterRun(job_name=ANALYTICS_JOB, run_id="a" * 32, status=DagsterRunStatus.STARTED)
    )
    instance.report_runless_asset_event(AssetMaterialization("indicators"))
    assert "in flight" in ticker.tick().skip_reason.skip_message

    # It failed: the next indicators materialization gets a new key, so a retry.
    instance.delete_run("a" * 32)
    retry = ticker.tick()
    newest = instance.fetch_materializations(AssetKey("indicators"), limit=1).records[0].storage_id
    assert [r.run_key for r in retry.run_requests] == [f"first-analytics-{newest}"]
    assert newest != storage_id

    instance.report_runless_asset_event(AssetMaterialization("strategy_comparison"))
    assert "comparison exists" in ticker.tick().skip_reason.skip_message


def test_ticks_before_the_first_partition_are_reported_once(
    store, store_url, instance, capfd
) -> None:
    Feed(store).until(at(13, 30))
    late_start = HourlyPartitionsDefinition(start_date="2024-05-01-12:00", timezone="UTC")
    ticker = watermark_ticker(store_url, instance, Clock(at(13, 30, 5)), partitions=late_start)
    first = ticker.tick()
    ticker.tick()
    # Catch-up starts at the first partition; the hours before it are named, once (the sensor's
    # log goes to the daemon's output and the tick's log in the UI).
    assert keys(first) == ["2024-05-01-12:00"]
    warnings = [line for line in capfd.readouterr().err.splitlines() if "precedes" in line]
    assert len(warnings) == 1
    assert "WARNING" in warnings[0]
    assert "HFT_PARTITIONS_START=2024-05-01T10:00Z" in warnings[0]
