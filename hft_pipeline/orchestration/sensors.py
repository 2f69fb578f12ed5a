"""Sensors: the store's watermark drives candle runs; the ingest API's health drives alerts.

Both keep all their state in a JSON cursor, so a tick costs a few cheap queries however long the
history is, and a restarted daemon resumes exactly where it stopped.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Self

from dagster import (
    AssetKey,
    AssetMaterialization,
    DagsterRunStatus,
    DefaultSensorStatus,
    MetadataValue,
    RunRequest,
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
from hft_pipeline.orchestration.partitions import candle_partitions
from hft_pipeline.orchestration.resources import IngestApiResource, StoreResource
from hft_pipeline.store import Subscription, Watermark

NS = 1_000_000_000
#: Jobs are targeted by name so this module does not import the assets (jobs.py defines them).
CANDLES_JOB = "candles_job"
ANALYTICS_JOB = "analytics_job"
#: Tag on the runs that refresh the still-open partition; dagster.yaml limits them to one at a time.
LIVE_TAG = "hft/refresh"
IN_PROGRESS = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]
Clock = Callable[[], int]


def _env_number(env: Mapping[str, str], name: str, default: float, kind: type = float) -> Any:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a number") from None
    if value < 0:
        raise ValueError(f"{name}={raw!r}: must be >= 0")
    return value


# --------------------------------------------------------------------------- watermark sensor


@dataclass(frozen=True, slots=True)
class WatermarkPolicy:
    """When a partition counts as complete, how much to request per tick, how often to refresh."""

    grace_s: float = 60.0  # late ticks still land in a closed hour for this long
    max_requests: int = 48  # final partitions requested per tick; the cursor continues next tick
    live_refresh_s: float = 300.0  # refresh the open partition this often; 0 turns it off

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WatermarkPolicy:
        """HFT_LATE_GRACE_S, HFT_SENSOR_MAX_REQUESTS, HFT_LIVE_REFRESH_S (defaults above)."""
        env = os.environ if env is None else env
        d = cls()
        return cls(
            grace_s=_env_number(env, "HFT_LATE_GRACE_S", d.grace_s),
            max_requests=max(1, _env_number(env, "HFT_SENSOR_MAX_REQUESTS", d.max_requests, int)),
            live_refresh_s=_env_number(env, "HFT_LIVE_REFRESH_S", d.live_refresh_s),
        )


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


def window_ns(partitions_def: TimeWindowPartitionsDefinition, key: str) -> tuple[int, int]:
    """[start, end) of partition `key` in nanoseconds."""
    window = partitions_def.time_window_for_partition_key(key)
    return int(window.start.timestamp()) * NS, int(window.end.timestamp()) * NS


def partition_key_at(partitions_def: TimeWindowPartitionsDefinition, ts_ns: int) -> str:
    """Key of the partition holding `ts_ns`, or the first partition when `ts_ns` precedes them all."""
    first = partitions_def.get_first_partition_key()
    key = partitions_def.get_partition_key_for_timestamp(ts_ns / NS)
    if (
        first is not None
        and window_ns(partitions_def, key)[0] < window_ns(partitions_def, first)[0]
    ):
        return first
    return key


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
        end_ns = window_ns(partitions_def, key)[1]
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
        not_final = window_ns(partitions_def, live)[0] >= window_ns(partitions_def, key)[0]
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
        requests = [
            RunRequest(run_key=key, partition_key=key, tags={LIVE_TAG: "final"})
            for key in tick.final_keys
        ]
        if tick.live_key is not None:
            requests.append(
                RunRequest(
                    run_key=f"{tick.live_key}@{tick.cursor.live_max_ts}",
                    partition_key=tick.live_key,
                    tags={LIVE_TAG: "live"},
                )
            )
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
    runs = RunsFilter(job_name=CANDLES_JOB, tags={LIVE_TAG: "live"}, statuses=IN_PROGRESS)
    return context.instance.get_runs_count(filters=runs) > 0


# --------------------------------------------------------------------------- health sensor


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """Thresholds for the ingest health alerts."""

    max_pending_ticks: int = 100_000  # ticks in the log but not yet in the store
    max_lag_s: float = 60.0  # how long persistence may stand still while ticks are pending
    critical_after_ticks: int = 3  # consecutive bad sensor ticks before CRITICAL
    critical_after_s: float = 300.0  # or this long bad, whichever comes first

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> HealthPolicy:
        """HFT_ALERT_PENDING_TICKS, HFT_ALERT_LAG_S, HFT_ALERT_CRITICAL_TICKS, HFT_ALERT_CRITICAL_S."""
        env = os.environ if env is None else env
        d = cls()
        return cls(
            max_pending_ticks=_env_number(env, "HFT_ALERT_PENDING_TICKS", d.max_pending_ticks, int),
            max_lag_s=_env_number(env, "HFT_ALERT_LAG_S", d.max_lag_s),
            critical_after_ticks=max(
                1, _env_number(env, "HFT_ALERT_CRITICAL_TICKS", d.critical_after_ticks, int)
            ),
            critical_after_s=_env_number(env, "HFT_ALERT_CRITICAL_S", d.critical_after_s),
        )


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
        return SensorResult(
            run_requests=[
                RunRequest(
                    run_key=f"first-analytics-{indicators.storage_id}",
                    tags={"hft/trigger": "first-analytics"},
                )
            ]
        )

    return first_analytics_sensor


ingest_watermark_sensor = build_ingest_watermark_sensor()
ingest_health_sensor = build_ingest_health_sensor()
first_analytics_sensor = build_first_analytics_sensor()
