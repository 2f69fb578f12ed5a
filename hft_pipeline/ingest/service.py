"""The ingest service: feed batches -> validate -> dedup -> tick log -> buffers + live candles.

One asyncio process. The hot path (`ingest`) is synchronous and vectorized per batch; the
persister drains the log into the store on its own thread (docs/durability.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from hft_pipeline.ingest.buffers import TickBuffers
from hft_pipeline.ingest.checkpoint import Checkpoint
from hft_pipeline.ingest.feeds import make_feed
from hft_pipeline.ingest.feeds.base import Feed, ResumePoint
from hft_pipeline.ingest.live_candles import LiveCandles
from hft_pipeline.ingest.persister import Persister
from hft_pipeline.ingest.sequencer import Sequencer, SequenceStats, SilenceDetector
from hft_pipeline.ingest.ticklog import LogBackend, TickLog, TickLogError
from hft_pipeline.ingest.validation import TickValidator
from hft_pipeline.market.ticks import SymbolIndex, TickBatch, is_valid_symbol, validate_symbol
from hft_pipeline.observability.metrics import IngestMetrics
from hft_pipeline.observability.redaction import redact, redact_url, register_url
from hft_pipeline.settings import Settings
from hft_pipeline.store import make_store
from hft_pipeline.store.base import StoreUnavailableError, Subscription, TickStore

log = logging.getLogger(__name__)

DEFAULT_SYMBOLS = ("PETR4", "VALE3", "ITUB4", "BBDC4", "ABEV3")
HOUSEKEEPING_INTERVAL_S = 1.0
#: Backoff of the attempts to reach a store that was down at start (seconds, doubling).
STORE_CONNECT_INITIAL_S = 0.2
STORE_CONNECT_MAX_S = 5.0


@dataclass(slots=True)
class RecoveryReport:
    """What start-up found: torn bytes cut off the log, ticks replayed, backlog for the store.

    `backlog_ticks` is exact once the store was reached (`store_offset` known); before that it
    is the ticks after the checkpoint's offset, an upper bound.
    """

    truncated_bytes: int = 0
    replayed_ticks: int = 0
    backlog_ticks: int = 0
    store_offset: int | None = None
    seconds: float = 0.0
    store_ahead_by: int = 0  # bytes the store had persisted beyond the log's end (power loss)


@dataclass(frozen=True, slots=True)
class StoreState:
    """What the service reads from its store when it first reaches it."""

    offset: int
    last_seqs: dict[str, int]
    subscriptions: list[Subscription]
    resume: dict[str, ResumePoint]


@dataclass(slots=True)
class Counters:
    received: int = 0
    accepted: int = 0
    duplicates: int = 0
    late: int = 0
    seq_gaps: int = 0
    missing_seqs: int = 0
    batches: int = 0
    started_ns: int = field(default_factory=time.time_ns)


class IngestService:
    """Owns the log, buffers, live candles, persister and store of one ingest process."""

    def __init__(
        self,
        settings: Settings,
        feed: Feed | None = None,
        store: TickStore | None = None,
        live: bool = True,
        dedup: bool = True,
    ) -> None:
        """`live=False` skips ring buffers and live candles (bulk imports need only log -> store);
        `dedup=False` keeps ticks whose seq is not above their symbol's highest (an importer
        that has removed exactly the duplicates itself, and stores older history)."""
        self.settings = settings
        self.live = live
        self.dedup = dedup
        self.feed = feed
        self.store = store
        self.metrics = IngestMetrics()
        self.validator = TickValidator(settings.max_future_skew_s)
        self.sequencer = Sequencer()
        self.silence = SilenceDetector(settings.gap_silence_multiple)
        self.buffers = TickBuffers(settings.buffer_capacity, settings.buffer_max_bytes)
        # Not built for imports: loading its compiled kernel costs ~0.9 s.
        self.candles = LiveCandles(history=settings.candle_history) if live else None
        self.metric_symbols = SymbolIndex()
        self.counters = Counters()
        self.recovery = RecoveryReport()
        self.exchanges: dict[str, str] = {}
        self.log: LogBackend | None = None
        self.persister: Persister | None = None
        self.checkpoint: Checkpoint | None = None
        #: True once the store was reached, migrated and the persister drains into it.
        self.store_ready = False
        self.store_error: str | None = None
        self._stream = ""
        self._end_at_open = 0
        # pending_ticks = _pending_base + ticks appended since the base was counted - persisted
        self._pending_base = 0
        self._appended_at_base = 0
        self._appended_since_start = 0
        # Subscription changes made while the store was unreachable, written once it is back.
        self._subscriptions_offline: dict[str, str | None] = {}
        self._tasks: list[asyncio.Task] = []
        self._stopped = asyncio.Event()
        self.feed_error: str | None = None

    # ---- life cycle -------------------------------------------------------------------------

    def open(self) -> RecoveryReport:
        """Open the log, rebuild memory from it and, if the store is reachable, migrate it and
        start the persister; otherwise run from the log until `connect_store` succeeds."""
        started = time.perf_counter()
        s = self.settings
        s.home.mkdir(parents=True, exist_ok=True)
        register_url(s.resolved_store_url)
        if self.store is None:
            self.store = make_store(s.resolved_store_url, pool_size=s.pool_size)
        self._stream = self._stream_name()  # before the log directory is (re)created
        self.log = TickLog.from_settings(s)
        self.checkpoint = Checkpoint.load(s.home)
        report = RecoveryReport(truncated_bytes=self.log.truncated_bytes)
        for batch, _ in self.log.replay(self.log.start_offset):
            self.sequencer.process(batch)
            if self.live:
                self.buffers.append(batch)
                self.candles.update(batch)
            self._count_processed(batch)
            report.replayed_ticks += len(batch)
        self.sequencer.seed(self.checkpoint.last_seqs())
        self._end_at_open = self.log.end_offset
        self.persister = Persister(
            self.log,
            self.store,
            self.metrics,
            batch_size=s.persist_batch_size,
            batch_timeout_s=s.persist_batch_timeout_ms / 1000,
            max_batch=s.persist_max_batch,
            retry_initial_s=s.persist_retry_initial_s,
            retry_max_s=s.persist_retry_max_s,
            stream=self._stream,
            checkpoint=self.checkpoint,
        )
        self.recovery = report
        try:
            state = self._read_store()
        except StoreUnavailableError as exc:
            self._store_down(exc)
            lower = max(self.checkpoint.offset, self.log.start_offset)
            try:
                report.backlog_ticks = self._count_ticks(min(lower, self.log.end_offset))
            except TickLogError:  # the checkpoint is from another log: count all of this one
                report.backlog_ticks = report.replayed_ticks
            self._pending_base = report.backlog_ticks
            log.warning(
                "store unavailable at start (%s): running from the log (%d ticks replayed, at "
                "most %d not yet persisted); migrations and the drain start once it is reachable",
                self.store_error,
                report.replayed_ticks,
                report.backlog_ticks,
            )
        else:
            start = self._attach_store(state)
            self._pending_base = self._count_ticks(start)
            report.backlog_ticks = self._pending_base
            offline = dict(self._subscriptions_offline)
            if offline:
                self._apply_subscriptions(offline)
                self._forget_applied(offline)
        report.seconds = time.perf_counter() - started
        log.info(
            "recovered: %d ticks replayed from the log, %d to persist, %.2fs",
            report.replayed_ticks,
            report.backlog_ticks,
            report.seconds,
        )
        return report

    def _read_store(self, offline: dict[str, str | None] | None = None) -> StoreState:
        """Migrate the store, write the subscription changes `offline` and read what start-up
        needs from it (blocking; any thread)."""
        assert self.store is not None
        try:
            self.store.migrate()
            if offline:
                self._apply_subscriptions(offline)
            offset = self.store.log_offset(self._stream)
            last_seqs = self.store.last_seqs()
            subscriptions = self.store.subscriptions()
        except StoreUnavailableError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to reach/migrate: retry later
            raise StoreUnavailableError(f"{type(exc).__name__}: {exc}") from exc
        for sub in subscriptions:
            if not is_valid_symbol(sub.symbol):
                # Stored before symbols were fully matched (e.g. "NAME\n"): never served.
                log.warning("ignoring stored subscription %r: not a valid symbol", sub.symbol)
        subscriptions = [sub for sub in subscriptions if is_valid_symbol(sub.symbol)]
        resume: dict[str, ResumePoint] = {}
        for sub in subscriptions:
            if sub.symbol not in self.buffers:
                stored = self.store.read_ticks(sub.symbol, limit=1, descending=True)
                if len(stored):
                    row = stored.iloc[0]
                    resume[sub.symbol] = ResumePoint(int(row.seq), int(row.ts), float(row.price))
        return StoreState(offset, last_seqs, subscriptions, resume)

    def _attach_store(self, state: StoreState) -> int:
        """Start persisting after the store was reached (on the thread that runs `ingest`);
        returns the log offset the persister starts from."""
        assert self.log is not None and self.persister is not None and self.checkpoint
        end = self.log.end_offset
        start = state.offset
        if state.offset > end or (state.offset > self._end_at_open and self._appended_since_start):
            # The store holds records the log lost (a power loss under fsync "off", or a log
            # cut by hand): everything the log still holds is persisted.
            self.recovery.store_ahead_by = state.offset - self._end_at_open
            if self._appended_since_start:
                # New records already follow the old end: persist them from there.
                start = self._end_at_open
            else:
                self.log.reset_to(state.offset)
            log.warning(
                "the store has persisted stream %s up to offset %d but the log ends at %d: the "
                "log lost a tail the store already holds (power loss with HFT_LOG_FSYNC=off, or "
                "a cut log); nothing unpersisted was lost, continuing at offset %d",
                self._stream,
                state.offset,
                self._end_at_open,
                max(start, self.log.start_offset),
            )
        self.recovery.store_offset = state.offset
        self.sequencer.seed(state.last_seqs)
        self.checkpoint.seed(state.resume)
        stored = {sub.symbol: sub.exchange for sub in state.subscriptions}
        self._sync_subscriptions(stored, state.resume)
        self.persister.store_up = True
        self.persister.last_error = None
        start = max(start, self.log.start_offset)
        self.persister.start(start)
        self.store_ready = True
        self.store_error = None
        return start

    def _store_down(self, exc: BaseException) -> None:
        assert self.persister is not None
        self.store_error = redact(f"{type(exc).__name__}: {exc}")
        self.persister.store_up = False
        self.persister.last_error = self.store_error
        self.metrics.errors.labels("store").inc()

    def _count_ticks(self, offset: int, until: int | None = None) -> int:
        """Ticks in the log from `offset` (a record boundary) to its end or to `until`.

        A second read of the backlog part of the log on start: replay yields ~100k-tick chunks
        that straddle the store's offset, so it cannot count what lies beyond it."""
        assert self.log is not None
        return sum(len(batch) for batch, _ in self.log.replay(offset, until=until))

    async def connect_store(self) -> None:
        """Retry the store until it is reachable, then migrate it and start the drain."""
        delay = STORE_CONNECT_INITIAL_S
        while not self.store_ready:
            offline = dict(self._subscriptions_offline)
            try:
                state = await asyncio.to_thread(self._read_store, offline)
            except StoreUnavailableError as exc:
                self._store_down(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, STORE_CONNECT_MAX_S)
                continue
            self._forget_applied(offline)
            # No await between the snapshot and the persister's start: ingest runs on this
            # loop, so the appended count and the log end belong to the same instant.
            assert self.log is not None
            try:
                start = self._attach_store(state)
            except Exception as exc:  # noqa: BLE001 - keep trying; /health shows why
                log.exception("could not start persisting into the store")
                self._store_down(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, STORE_CONNECT_MAX_S)
                continue
            end, appended = self.log.end_offset, self._appended_since_start
            # Until the count below is in, pending_ticks keeps its upper bound (never a false 0).
            offline = dict(self._subscriptions_offline)
            if offline:
                with contextlib.suppress(StoreUnavailableError):
                    await asyncio.to_thread(self._apply_subscriptions, offline)
                    self._forget_applied(offline)
            count = await asyncio.to_thread(self._count_ticks, start, end)
            self._pending_base, self._appended_at_base = count, appended
            self.recovery.backlog_ticks = count
            log.warning(
                "store reachable: migrated, %d ticks in the log to persist; draining",
                count + self._appended_since_start - appended,
            )

    async def start(self) -> None:
        """Open everything, restore subscriptions, resume the feed and start consuming it."""
        await asyncio.to_thread(self.open)
        assert self.checkpoint is not None
        wanted = dict(self.exchanges) or dict(self.checkpoint.subscriptions)
        if self.settings.feed == "simulator":
            for symbol in self.settings.symbols:
                wanted.setdefault(validate_symbol(symbol), "SIM")
            if not wanted:
                wanted = dict.fromkeys(DEFAULT_SYMBOLS, "SIM")
        for symbol, exchange in wanted.items():
            if symbol not in self.exchanges:
                self._remember_subscription(symbol, exchange)
        if self.feed is None:
            self.feed = make_feed(self.settings, list(self.exchanges))
        self.feed.resume_from(self.resume_points(list(self.exchanges)))
        for symbol in self.exchanges:
            self.feed.subscribe(symbol)
        self._tasks = [
            asyncio.create_task(self._consume(), name="feed"),
            asyncio.create_task(self._housekeeping(), name="housekeeping"),
        ]
        if not self.store_ready:
            self._tasks.append(asyncio.create_task(self.connect_store(), name="connect-store"))

    def resume_points(self, symbols: list[str]) -> dict[str, ResumePoint]:
        """The last known tick of each symbol: memory, else the checkpoint, else the store."""
        assert self.checkpoint is not None
        points: dict[str, ResumePoint] = {}
        for symbol in symbols:
            last = self.buffers.last(symbol, 1) if symbol in self.buffers else {"ts": ()}
            if len(last["ts"]):
                points[symbol] = ResumePoint(
                    int(last["seq"][0]), int(last["ts"][0]), float(last["price"][0])
                )
            elif symbol in self.checkpoint.last:
                points[symbol] = self.checkpoint.last[symbol]
            elif self.store_ready:
                assert self.store is not None
                try:
                    stored = self.store.read_ticks(symbol, limit=1, descending=True)
                except StoreUnavailableError:
                    continue
                if len(stored):
                    row = stored.iloc[0]
                    points[symbol] = ResumePoint(int(row.seq), int(row.ts), float(row.price))
        for symbol in symbols:  # the highest seq wins even if a late tick has the newest ts
            seq = self.sequencer.last_seq(symbol)
            if symbol in points and seq is not None and seq > points[symbol].seq:
                p = points[symbol]
                points[symbol] = ResumePoint(seq, p.ts, p.price)
        return points

    async def stop(self) -> bool:
        """Stop the feed, flush the log and drain the persister within the deadline."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self.feed is not None:
            with contextlib.suppress(Exception):
                await self.feed.close()
        drained = await asyncio.to_thread(self.close)
        self._stopped.set()
        return drained

    def close(self) -> bool:
        drained = self.store_ready and self.pending_ticks == 0
        if self.log is not None:
            self.log.flush()
        if self.persister is not None and self.store_ready:
            drained = self.persister.stop(self.settings.shutdown_deadline_s)
        if self.checkpoint is not None:
            try:
                self.checkpoint.save()
            except OSError:
                log.exception("checkpoint not saved")
        if self.log is not None:
            self.log.close()
        if self.store is not None:
            self.store.close()
        return drained

    async def _consume(self) -> None:
        assert self.feed is not None
        try:
            async for batch in self.feed.batches():
                self.ingest(batch)
                await asyncio.sleep(0)  # let API requests in between batches
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("feed %s failed", getattr(self.feed, "name", "?"))
            self.feed_error = f"{type(exc).__name__}: {exc}"
            self.metrics.errors.labels("feed").inc()

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)
            self.refresh_gauges()
            for symbol in self.silence.check(time.time_ns(), set(self.exchanges)):
                log.warning("gap: %s silent for longer than usual", symbol)
                self.metrics.gaps.labels("silence").inc()

    # ---- the hot path -----------------------------------------------------------------------

    def ingest(self, batch: TickBatch) -> int:
        """Process one feed batch; return how many ticks were accepted."""
        started = time.perf_counter()
        n = len(batch)
        if n == 0:
            return 0
        self.counters.received += n
        self.counters.batches += 1
        self.metrics.ticks_received.inc(n)
        valid, rejected = self.validator.validate(batch)
        for reason, count in rejected.items():
            self.metrics.ticks_rejected.labels(reason).inc(count)
        accepted, seq = self.sequencer.process(valid) if self.dedup else (valid, SequenceStats())
        if seq.duplicates:
            self.counters.duplicates += seq.duplicates
            self.metrics.ticks_duplicate.inc(seq.duplicates)
        if seq.gaps:
            self.counters.seq_gaps += seq.gaps
            self.counters.missing_seqs += seq.missing
            self.metrics.gaps.labels("seq").inc(seq.gaps)
        k = len(accepted)
        if k == 0:
            return 0
        assert self.log is not None and self.persister is not None
        self.log.append(accepted)  # durable record first: only then does it count as received
        self._appended_since_start += k
        if self.live:
            self.buffers.append(accepted)
            late = self.candles.update(accepted).late
            if late:
                self.counters.late += late
                self.metrics.ticks_late.inc(late)
        self.counters.accepted += k
        self._count_processed(accepted)
        self.silence.observe(accepted, time.time_ns())
        self.persister.notify()
        self.metrics.processing_seconds.observe(time.perf_counter() - started)
        return k

    def _count_processed(self, batch: TickBatch) -> None:
        ids = self.metric_symbols.ids_for(batch)
        self.metrics.symbol_names = self.metric_symbols.names
        self.metrics.processed_by_symbol.add(ids, len(self.metric_symbols))

    # ---- subscriptions ----------------------------------------------------------------------

    def subscribe(self, symbol: str, exchange: str = "SIM") -> bool:
        """Subscribe `symbol` (persisted, restored on start); False if it was already subscribed.

        While the store is unreachable the subscription lives in memory and the checkpoint and
        is written to the store once it is back."""
        validate_symbol(symbol)
        assert self.feed is not None
        known = symbol in self.exchanges
        created = self._remember_subscription(symbol, exchange)
        if not known:
            self.feed.resume_from(self.resume_points([symbol]))
            self.feed.subscribe(symbol)
        return created

    def unsubscribe(self, symbol: str) -> bool:
        """Stop `symbol`; its stored ticks and memory stay. False if it was not subscribed."""
        validate_symbol(symbol)
        assert self.feed is not None and self.checkpoint is not None
        was = self.exchanges.pop(symbol, None) is not None
        removed = False
        if self._store_write(lambda store: store.remove_subscription(symbol)) is None:
            self._subscriptions_offline[symbol] = None
        else:
            removed = True
        self.checkpoint.set_subscriptions(self.exchanges)
        self.feed.unsubscribe(symbol)
        return was or removed

    def _remember_subscription(self, symbol: str, exchange: str) -> bool:
        assert self.checkpoint is not None
        known = self.exchanges.get(symbol) == exchange
        self.exchanges[symbol] = exchange
        self.checkpoint.set_subscriptions(self.exchanges)
        created = self._store_write(lambda store: store.add_subscription(symbol, exchange))
        if created is None:
            self._subscriptions_offline[symbol] = exchange
            return not known
        return bool(created)

    def _store_write(self, write: Any) -> Any:
        """`write(store)` if the store is attached and answers; None when it is not."""
        if not self.store_ready:
            return None
        assert self.store is not None
        try:
            return write(self.store)
        except StoreUnavailableError as exc:
            log.warning("store unavailable for a subscription change (%s); kept in memory", exc)
            return None

    def _apply_subscriptions(self, offline: dict[str, str | None]) -> None:
        """Write subscription changes made while the store was unreachable (blocking)."""
        assert self.store is not None
        for symbol, exchange in offline.items():
            if exchange is None:
                self.store.remove_subscription(symbol)
            else:
                self.store.add_subscription(symbol, exchange)

    def _forget_applied(self, applied: dict[str, str | None]) -> None:
        for symbol, exchange in applied.items():
            if symbol in self._subscriptions_offline and (
                self._subscriptions_offline[symbol] == exchange
            ):
                del self._subscriptions_offline[symbol]

    def _sync_subscriptions(self, stored: dict[str, str], resume: dict[str, ResumePoint]) -> None:
        """Join the store's subscriptions with memory's (on the thread that runs `ingest`)."""
        assert self.checkpoint is not None
        for symbol, exchange in self._subscriptions_offline.items():
            if exchange is None:
                stored.pop(symbol, None)
        new = [s for s in stored if s not in self.exchanges]
        for symbol in new:
            self.exchanges[symbol] = stored[symbol]
        missing = {s: e for s, e in self.exchanges.items() if s not in stored}
        self._subscriptions_offline = {
            s: e for s, e in self._subscriptions_offline.items() if s in missing or e is None
        }
        self._subscriptions_offline.update(missing)
        self.checkpoint.set_subscriptions(self.exchanges)
        if self.feed is not None and new:
            points = self.resume_points(new)
            points.update({s: p for s, p in resume.items() if s in new and s not in points})
            self.feed.resume_from(points)
            for symbol in new:
                self.feed.subscribe(symbol)

    # ---- status -----------------------------------------------------------------------------

    @property
    def pending_ticks(self) -> int:
        """Ticks in the log not yet in the store (exact once the store was reached)."""
        persisted = self.persister.persisted_ticks if self.persister else 0
        appended = self._appended_since_start - self._appended_at_base
        return max(0, self._pending_base + appended - persisted)

    def health_problems(self) -> list[str]:
        """Why the service is degraded, one sentence each; empty when healthy."""
        problems = []
        if self.feed_error:
            problems.append(f"feed failed: {self.feed_error}")
        if not self.store_ready:
            problems.append(
                f"store not reached since start: {self.store_error or 'connecting'}; ticks are "
                "logged and served from memory, and persisted once it is reachable"
            )
        elif self.persister is not None and not self.persister.store_up:
            problems.append(f"store unavailable: {self.persister.last_error}")
        spans = self.log.unacknowledged_damage if self.log is not None else []
        if spans:
            ticks = [span.ticks for span in spans]
            lost = "an unknown number of" if None in ticks else str(sum(ticks))
            where = ", ".join(f"{span.segment}@{span.offset}" for span in spans[:3])
            problems.append(
                f"tick log damaged: {len(spans)} span(s) at {where}{', …' if len(spans) > 3 else ''}"
                f" lost {lost} ticks; the records after them were kept. See /status log.damage, "
                "then POST /log/acknowledge"
            )
        return problems

    def refresh_gauges(self) -> None:
        self.metrics.pending_ticks.set(self.pending_ticks)
        self.metrics.buffer_bytes.set(self.buffers.nbytes)
        self.metrics.buffer_ticks.set(sum(self.buffers.count(s) for s in self.buffers.symbols()))
        self.metrics.subscriptions.set(len(self.exchanges))
        if self.log is not None:
            self.metrics.log_bytes.set(self.log.bytes_on_disk)
            damaged, open_spans = self.log.damaged, self.log.unacknowledged_damage
            self.metrics.log_damaged_spans.labels("unacknowledged").set(len(open_spans))
            self.metrics.log_damaged_spans.labels("acknowledged").set(
                len(damaged) - len(open_spans)
            )
            self.metrics.log_lost_ticks.set(self.lost_ticks())

    def lost_ticks(self) -> int:
        """Ticks the log held but can no longer read: damaged spans plus the torn tail."""
        assert self.log is not None
        torn = self.log.torn.ticks if self.log.torn is not None else 0
        return sum(span.ticks or 0 for span in self.log.damaged) + (torn or 0)

    def acknowledge_log_damage(self) -> int:
        """An operator has seen the damage report: /health stops saying degraded for it."""
        assert self.log is not None
        acknowledged = self.log.acknowledge_damage()
        if acknowledged:
            log.warning("tick log damage acknowledged: %d span(s)", acknowledged)
        return acknowledged

    def gaps_by_symbol(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for name, ident in ((n, i) for i, n in enumerate(self.sequencer.index.names)):
            out.setdefault(name, {})["seq"] = int(self.sequencer.seq_gaps[ident])
        for ident, name in enumerate(self.silence.index.names):
            out.setdefault(name, {})["silence"] = int(self.silence.gaps[ident])
        return {k: {"seq": v.get("seq", 0), "silence": v.get("silence", 0)} for k, v in out.items()}

    def symbol_stats(self, symbol: str) -> dict[str, Any]:
        ident = self.metric_symbols.get(symbol)
        processed = (
            int(self.metrics.processed_by_symbol.values[ident])
            if ident is not None and ident < len(self.metrics.processed_by_symbol.values)
            else 0
        )
        last = self.buffers.stats(symbol)
        seq_id = self.sequencer.index.get(symbol)
        gaps = self.gaps_by_symbol().get(symbol, {"seq": 0, "silence": 0})
        return {
            "ticks_processed": processed,
            "ticks_in_memory": self.buffers.count(symbol),
            "last_price": last.last_price,
            "last_ts": last.last_ts,
            "last_seq": self.sequencer.last_seq(symbol),
            "duplicates": int(self.sequencer.duplicates[seq_id]) if seq_id is not None else 0,
            "gaps": gaps,
        }

    def status(self) -> dict[str, Any]:
        """Everything an operator needs at a glance: counts, lag, backlog, store health."""
        assert self.log is not None and self.persister is not None and self.store is not None
        p = self.persister.status()
        now = time.time_ns()
        c = self.counters
        return {
            "status": "degraded" if self.health_problems() else "ok",
            "problems": self.health_problems(),
            "uptime_s": round((now - c.started_ns) / 1e9, 3),
            "feed": {"name": getattr(self.feed, "name", None), "error": self.feed_error},
            "subscriptions": sorted(self.exchanges),
            "ticks": {
                "received": c.received,
                "accepted": c.accepted,
                "rejected": dict(self.validator.rejected),
                "duplicates": c.duplicates,
                "late": c.late,
                "batches": c.batches,
            },
            "gaps": {
                "seq_total": int(self.sequencer.seq_gaps.sum()),
                "missing_seqs": c.missing_seqs,
                "silence_total": int(self.silence.gaps.sum()),
                "by_symbol": {
                    k: v for k, v in self.gaps_by_symbol().items() if v["seq"] or v["silence"]
                },
            },
            "persistence": {
                "store": public_store_url(self.store.url),
                "store_connected": self.store_ready,
                "store_up": p.store_up and self.store_ready,
                "last_error": redact(p.last_error) if p.last_error else None,
                "persisted_ticks": p.persisted_ticks,
                "pending_ticks": self.pending_ticks,
                "batches": p.batches,
                "retries": p.retries,
                "offset": p.offset,
            },
            "log": {
                "start_offset": self.log.start_offset,
                "end_offset": self.log.end_offset,
                "durable_offset": self.log.durable_offset,
                "bytes": self.log.bytes_on_disk,
                "segments": self.log.segment_count,
                "fsync": self.settings.log_fsync,
                "damage": self._damage_report(),
            },
            "buffers": {"bytes": self.buffers.nbytes, "symbols": len(self.buffers.symbols())},
            "recovery": {
                "truncated_bytes": self.recovery.truncated_bytes,
                "torn_tail": asdict(self.log.torn) if self.log.torn is not None else None,
                "replayed_ticks": self.recovery.replayed_ticks,
                "backlog_ticks": self.recovery.backlog_ticks,
                "store_ahead_bytes": self.recovery.store_ahead_by,
                "seconds": round(self.recovery.seconds, 3),
            },
        }

    def _damage_report(self) -> dict[str, Any]:
        assert self.log is not None
        unacknowledged = {span.key for span in self.log.unacknowledged_damage}
        spans = [
            {**asdict(span), "acknowledged": span.key not in unacknowledged}
            for span in self.log.damaged
        ]
        return {
            "spans": spans,
            "unacknowledged": len(unacknowledged),
            "lost_ticks": self.lost_ticks(),
        }

    def store_ok(self) -> bool:
        assert self.store is not None
        try:
            self.store.ping()
        except StoreUnavailableError:
            return False
        return True

    def _stream_name(self) -> str:
        """Consumer-offset key of this log; a new log directory gets a new stream (offsets restart)."""
        id_file = self.settings.home / "ticklog.id"
        if not id_file.exists() or not self.settings.log_dir.exists():
            id_file.write_text(uuid.uuid4().hex)
        return f"ticklog-{id_file.read_text().strip()}"


def public_store_url(url: str) -> str:
    """The store URL as unauthenticated endpoints show it: no secrets and no file paths."""
    if url.startswith("sqlite:"):
        return f"sqlite:///…/{url.rstrip('/').rsplit('/', 1)[-1]}"
    return redact_url(url)


__all__ = ["DEFAULT_SYMBOLS", "IngestService", "RecoveryReport"]
