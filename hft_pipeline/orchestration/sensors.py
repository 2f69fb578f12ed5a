"""Sensors: the store's watermark drives candle runs; the ingest API's health drives alerts.

Both keep all their state in a JSON cursor, so a tick costs a few cheap queries however long the
history is, and a restarted daemon resumes exactly where it stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any, Self

from dagster import (
    AssetKey,
    AssetMaterialization,
    DefaultSensorStatus,
    MetadataValue,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    TimeWindowPartitionsDefinition,
    sensor,
)

from hft_pipeline.observability.alerts import Level, ingest_recovered, ingest_stalled
from hft_pipeline.orchestration.alerting import AlertsResource
from hft_pipeline.orchestration.jobs import (
    ANALYTICS_JOB,
    CANDLES_JOB,
    IN_PROGRESS,
    LIVE,
    REFRESH_TAG,
    HealthPolicy,
    WatermarkPolicy,
    final_candles_request,
    first_analytics_request,
    live_candles_request,
)
from hft_pipeline.orchestration.partitions import (
    NS,
    PARTITIONS_START_ENV,
    candle_partitions,
    key_window_ns,
    partition_key_at,
    precedes_partitions,
)
from hft_pipeline.orchestration.resources import IngestApiResource, StoreResource
from hft_pipeline.store import Subscription, Watermark

Clock = Callable[[], int]


# --------------------------------------------------------------------------- watermark sensor


class JsonCursor:
    """A dataclass sensor cursor stored as compact JSON; unknown keys (older versions) are dropped."""

    __slots__ = ()

    @classmethod
    def parse(cls, raw: str | None) -> Self:
        if not raw:
            return cls()
        data = json.loads(raw)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def dump(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


@dataclass(slots=True)
class WatermarkCursor(JsonCursor):
    """What the watermark sensor remembers between ticks."""

    rows: int = 0
    max_ts: int | None = None
    symbols: list[str] = field(default_factory=list)
    next_key: str | None = None  # oldest partition not yet requested as final
    moved_ns: int = 0  # wall time the watermark last moved
    live_ns: int = 0  # wall time of the last live refresh request
    live_max_ts: int | None = None  # watermark that refresh saw


@dataclass(slots=True)
class WatermarkTick:
    """The outcome of one watermark tick: what to report, which runs to request, the new cursor."""

    cursor: WatermarkCursor
    report: dict[str, Any] | None = None  # metadata of a `ticks` materialization
    final_keys: list[str] = field(default_factory=list)
    live_key: str | None = None


def plan_watermark_tick(
    prev: WatermarkCursor,
    watermark: Watermark,
    subscriptions: Sequence[Subscription],
    first_ts: int | None,
    partitions_def: TimeWindowPartitionsDefinition,
    policy: WatermarkPolicy,
    now_ns: int,
    live_busy: bool = False,
) -> WatermarkTick:
    """Decide one tick from the store's state; pure, so tests and the benchmark call it directly."""
    cur = replace(prev, symbols=list(prev.symbols))
    moved = watermark.rows != prev.rows or watermark.max_ts != prev.max_ts
    if moved:
        cur.rows, cur.max_ts, cur.moved_ns = watermark.rows, watermark.max_ts, now_ns
    symbols = sorted(set(watermark.per_symbol_max_ts) | {s.symbol for s in subscriptions})
    tick = WatermarkTick(cursor=cur)
    if moved or symbols != prev.symbols:
        new = sorted(set(symbols) - set(prev.symbols))
        cur.symbols = symbols
        tick.report = _ticks_metadata(watermark, subscriptions, symbols, new, now_ns)
    if watermark.max_ts is None:
        return tick

    grace_ns = int(policy.grace_s * NS)
    idle = now_ns - cur.moved_ns >= grace_ns

    def complete(end_ns: int) -> bool:
        # Event time first (works for replays of old data); an idle feed closes hours by wall time.
        assert watermark.max_ts is not None
        return watermark.max_ts >= end_ns + grace_ns or (idle and now_ns >= end_ns + grace_ns)

    key = cur.next_key or partition_key_at(
        partitions_def, first_ts if first_ts is not None else watermark.max_ts
    )
    while len(tick.final_keys) < policy.max_requests:
        end_ns = key_window_ns(partitions_def, key)[1]
        if not partitions_def.has_partition_key(key) or not complete(end_ns):
            break
        tick.final_keys.append(key)
        # Not get_next_partition_key: it returns None past the newest existing partition, and
        # the cursor must keep pointing at the hour that does not exist yet.
        key = partitions_def.get_partition_key_for_timestamp(end_ns / NS)
    cur.next_key = key

    if policy.live_refresh_s > 0 and not live_busy:
        live = partition_key_at(partitions_def, watermark.max_ts)
        due = now_ns - cur.live_ns >= int(policy.live_refresh_s * NS)
        fresh = cur.live_max_ts != watermark.max_ts
        # Only the open partition (>= the next final one) needs refreshing; candles replace a
        # partition in one transaction, so the final run overwrites whatever a refresh wrote.
        not_final = key_window_ns(partitions_def, live)[0] >= key_window_ns(partitions_def, key)[0]
        if due and fresh and not_final and partitions_def.has_partition_key(live):
            tick.live_key = live
            cur.live_ns, cur.live_max_ts = now_ns, watermark.max_ts
    return tick


def _ticks_metadata(
    watermark: Watermark,
    subscriptions: Sequence[Subscription],
    symbols: list[str],
    new: list[str],
    now_ns: int,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "rows": MetadataValue.int(watermark.rows),
        "symbols": MetadataValue.int(len(symbols)),
        "symbol_list": MetadataValue.text(", ".join(symbols)),
        "new_symbols": MetadataValue.text(", ".join(new)),
        "subscriptions": MetadataValue.json({s.symbol: s.exchange for s in subscriptions}),
    }
    if watermark.max_ts is not None:
        meta["watermark"] = MetadataValue.timestamp(watermark.max_ts / NS)
        meta["lag_seconds"] = MetadataValue.float(round((now_ns - watermark.max_ts) / NS, 3))
    return meta


def build_ingest_watermark_sensor(
    name: str = "ingest_watermark_sensor",
    partitions_def: TimeWindowPartitionsDefinition = candle_partitions,
    policy: WatermarkPolicy | None = None,
    minimum_interval_seconds: int = 30,
    clock: Clock = time.time_ns,
) -> SensorDefinition:
    """A sensor that reports `ticks` and requests candles_job runs as the store's watermark moves."""
    policy = policy or WatermarkPolicy.from_env()

    @sensor(
        name=name,
        job_name=CANDLES_JOB,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            "Reports the ticks the ingest service persisted (rows, watermark, lag, symbols) and "
            f"requests candles_job for every hour complete {policy.grace_s:g}s past its end, "
            "plus a refresh of the open hour."
        ),
    )
    def ingest_watermark_sensor(
        context: SensorEvaluationContext, store: StoreResource
    ) -> SensorResult:
        prev = WatermarkCursor.parse(context.cursor)
        with store.open() as tick_store:
            watermark = tick_store.watermark()
            subscriptions = tick_store.subscriptions()
            # Only needed once, to know where the first partition starts.
            first_ts = tick_store.first_tick_ts() if prev.next_key is None else None
        live_busy = policy.live_refresh_s > 0 and _live_run_in_progress(context)
        tick = plan_watermark_tick(
            prev, watermark, subscriptions, first_ts, partitions_def, policy, clock(), live_busy
        )
        if first_ts is not None and precedes_partitions(partitions_def, first_ts):
            hour = datetime.fromtimestamp(first_ts // NS, UTC).strftime("%Y-%m-%dT%H:00Z")
            context.log.warning(
                f"the store's first tick ({hour}) precedes the first candles partition, so "
                f"earlier ticks get no candles: set {PARTITIONS_START_ENV}={hour} to include them"
            )
        requests = [final_candles_request(key) for key in tick.final_keys]
        if tick.live_key is not None:
            requests.append(live_candles_request(tick.live_key, tick.cursor.live_max_ts))
        events = []
        if tick.report is not None:
            events.append(AssetMaterialization(asset_key="ticks", metadata=tick.report))
        skip = None if requests or events else "watermark unchanged"
        return SensorResult(
            run_requests=requests,
            asset_events=events,
            cursor=tick.cursor.dump(),
            skip_reason=skip,
        )

    return ingest_watermark_sensor


def _live_run_in_progress(context: SensorEvaluationContext) -> bool:
    # Refreshes are optional work: never queue a second one behind a slow first.
    runs = RunsFilter(job_name=CANDLES_JOB, tags={REFRESH_TAG: LIVE}, statuses=IN_PROGRESS)
    return context.instance.get_runs_count(filters=runs) > 0


# --------------------------------------------------------------------------- health sensor


@dataclass(slots=True)
class HealthCursor(JsonCursor):
    """Alert state between ticks, so every transition alerts exactly once."""

    state: str = "ok"  # ok | warning | critical
    bad_ticks: int = 0
    bad_since_ns: int = 0
    persisted: int | None = None  # the service's persisted_ticks counter at the last tick
    persisted_ns: int = 0  # wall time that counter last moved


@dataclass(frozen=True, slots=True)
class Probe:
    """What one look at the ingest API found."""

    problems: list[str]
    pending: int | None
    lag_s: float | None


def probe_ingest(
    api: IngestApiResource, prev: HealthCursor, policy: HealthPolicy, now_ns: int
) -> tuple[Probe, HealthCursor]:
    """Call /health and /status; return the problems found and the cursor's persistence fields."""
    cur = replace(prev)
    problems: list[str] = []
    try:
        health = api.health()
        if health.get("status") != "ok":
            problems.extend(health.get("problems") or [f"health status {health.get('status')!r}"])
    except Exception as exc:  # noqa: BLE001 - any failure to answer is the finding
        problems.append(f"/health failed: {exc}")
    pending: int | None = None
    lag_s: float | None = None
    try:
        persistence = api.status()["persistence"]
        pending = int(persistence["pending_ticks"])
        persisted = int(persistence["persisted_ticks"])
        if persisted != prev.persisted or pending == 0:
            cur.persisted, cur.persisted_ns = persisted, now_ns
        lag_s = 0.0 if pending == 0 else (now_ns - cur.persisted_ns) / NS
    except Exception as exc:  # noqa: BLE001
        problems.append(f"/status failed: {exc}")
    if pending is not None and pending > policy.max_pending_ticks:
        problems.append(f"{pending} ticks pending (threshold {policy.max_pending_ticks})")
    if lag_s is not None and lag_s > policy.max_lag_s:
        problems.append(
            f"persistence stalled for {lag_s:.0f}s with ticks pending "
            f"(threshold {policy.max_lag_s:g}s)"
        )
    return Probe(problems, pending, lag_s), cur


def plan_health_tick(
    cur: HealthCursor, probe: Probe, policy: HealthPolicy, now_ns: int
) -> tuple[HealthCursor, Level | None]:
    """The next alert state and the level to alert at now (None: no transition, no alert)."""
    if not probe.problems:
        level = Level.INFO if cur.state != "ok" else None
        return replace(cur, state="ok", bad_ticks=0, bad_since_ns=0), level
    bad_ticks = cur.bad_ticks + 1
    bad_since = cur.bad_since_ns or now_ns
    critical = bad_ticks >= policy.critical_after_ticks or now_ns - bad_since >= int(
        policy.critical_after_s * NS
    )
    state = "critical" if critical or cur.state == "critical" else "warning"
    level = None
    if state != cur.state:
        level = Level.CRITICAL if state == "critical" else Level.WARNING
    return replace(cur, state=state, bad_ticks=bad_ticks, bad_since_ns=bad_since), level


def build_ingest_health_sensor(
    name: str = "ingest_health_sensor",
    policy: HealthPolicy | None = None,
    minimum_interval_seconds: int = 30,
    clock: Clock = time.time_ns,
) -> SensorDefinition:
    """A sensor that alerts WARNING, then CRITICAL, while the ingest service is unwell, INFO after."""
    policy = policy or HealthPolicy.from_env()

    @sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            "Polls the ingest API's /health and /status; alerts when it fails, more than "
            f"{policy.max_pending_ticks} ticks are pending or persistence stands still for "
            f"{policy.max_lag_s:g}s; CRITICAL after {policy.critical_after_ticks} bad ticks; "
            "INFO on recovery."
        ),
    )
    def ingest_health_sensor(
        context: SensorEvaluationContext, ingest_api: IngestApiResource, alerts: AlertsResource
    ) -> SensorResult:
        now_ns = clock()
        prev = HealthCursor.parse(context.cursor)
        probe, cur = probe_ingest(ingest_api, prev, policy, now_ns)
        cur, level = plan_health_tick(cur, probe, policy, now_ns)
        if level is not None:
            detail = "; ".join(probe.problems)
            lag_s, pending = probe.lag_s or 0.0, probe.pending or 0
            if level is Level.INFO:
                down_for_s = (now_ns - prev.bad_since_ns) / NS if prev.bad_since_ns else None
                alert = ingest_recovered(lag_s, pending, down_for_s=down_for_s)
            else:
                alert = ingest_stalled(lag_s, pending, detail, level=level)
            alerts.send(alert)
            context.log.info(f"ingest health {cur.state}: {detail or 'recovered'}")
        skip = None if level is not None else f"ingest {cur.state}"
        return SensorResult(cursor=cur.dump(), skip_reason=SkipReason(skip) if skip else None)

    return ingest_health_sensor


# --------------------------------------------------------------------------- first analytics


def build_first_analytics_sensor(
    name: str = "first_analytics_sensor", minimum_interval_seconds: int = 60
) -> SensorDefinition:
    """A sensor that runs analytics_job once indicators exist and no comparison was ever made.

    The daily schedule refreshes the comparison; without this sensor a new deployment would show
    no backtests until the next 00:10 UTC. The run key names the indicators materialization it
    follows, so a failed first run is tried again after the next indicators run, never twice for
    the same one, and never while an analytics run is in flight.
    """

    @sensor(
        name=name,
        job_name=ANALYTICS_JOB,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            "Requests analytics_job (backtests + strategy_comparison) as soon as indicators are "
            "materialized on an instance that has no strategy comparison yet."
        ),
    )
    def first_analytics_sensor(context: SensorEvaluationContext) -> SensorResult:
        instance = context.instance
        if instance.get_latest_materialization_event(AssetKey("strategy_comparison")) is not None:
            return SensorResult(
                skip_reason="a strategy comparison exists; the daily schedule refreshes it"
            )
        latest = instance.fetch_materializations(AssetKey("indicators"), limit=1).records
        indicators = latest[0] if latest else None
        if indicators is None:
            return SensorResult(skip_reason="no indicators materialized yet")
        busy = RunsFilter(job_name=ANALYTICS_JOB, statuses=IN_PROGRESS)
        if instance.get_runs_count(filters=busy) > 0:
            return SensorResult(skip_reason="an analytics run is in flight")
        return SensorResult(run_requests=[first_analytics_request(indicators.storage_id)])

    return first_analytics_sensor


ingest_watermark_sensor = build_ingest_watermark_sensor()
ingest_health_sensor = build_ingest_health_sensor()
first_analytics_sensor = build_first_analytics_sensor()
