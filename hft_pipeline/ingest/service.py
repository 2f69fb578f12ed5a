"""The ingest service: feed batches -> validate -> dedup -> tick log -> buffers + live candles.

One asyncio process. The hot path (`ingest`) is synchronous and vectorized per batch; the
persister drains the log into the store on its own thread (DESIGN §3).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from hft_pipeline.ingest.buffers import TickBuffers
from hft_pipeline.ingest.feeds import make_feed
from hft_pipeline.ingest.feeds.base import Feed, ResumePoint
from hft_pipeline.ingest.live_candles import LiveCandles
from hft_pipeline.ingest.persister import Persister
from hft_pipeline.ingest.sequencer import Sequencer, SilenceDetector
from hft_pipeline.ingest.ticklog import TickLog
from hft_pipeline.ingest.validation import TickValidator
from hft_pipeline.market.ticks import SymbolIndex, TickBatch, validate_symbol
from hft_pipeline.observability.metrics import IngestMetrics
from hft_pipeline.settings import Settings
from hft_pipeline.store import open_store
from hft_pipeline.store.base import StoreUnavailableError, TickStore

log = logging.getLogger(__name__)

DEFAULT_SYMBOLS = ("PETR4", "VALE3", "ITUB4", "BBDC4", "ABEV3")
HOUSEKEEPING_INTERVAL_S = 1.0


@dataclass(slots=True)
class RecoveryReport:
    """What start-up found: torn bytes cut off the log, ticks replayed, backlog for the store."""

    truncated_bytes: int = 0
    replayed_ticks: int = 0
    backlog_ticks: int = 0
    store_offset: int = 0
    seconds: float = 0.0


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
    ) -> None:
        """`live=False` skips ring buffers and live candles (bulk imports need only log -> store)."""
        self.settings = settings
        self.live = live
        self.feed = feed
        self.store = store
        self.metrics = IngestMetrics()
        self.validator = TickValidator(settings.max_future_skew_s)
        self.sequencer = Sequencer()
        self.silence = SilenceDetector(settings.gap_silence_multiple)
        self.buffers = TickBuffers(settings.buffer_capacity, settings.buffer_max_bytes)
        self.candles = LiveCandles(history=settings.candle_history)
        self.metric_symbols = SymbolIndex()
        self.counters = Counters()
        self.recovery = RecoveryReport()
        self.exchanges: dict[str, str] = {}
        self.log: TickLog | None = None
        self.persister: Persister | None = None
        self._appended_since_start = 0
        self._tasks: list[asyncio.Task] = []
        self._stopped = asyncio.Event()
        self.feed_error: str | None = None

    # ---- life cycle -------------------------------------------------------------------------

    def open(self) -> RecoveryReport:
        """Open store and log, rebuild memory from the log, start the persister (no feed yet)."""
        started = time.perf_counter()
        s = self.settings
        s.home.mkdir(parents=True, exist_ok=True)
        if self.store is None:
            self.store = open_store(s.resolved_store_url, pool_size=s.pool_size)
        stream = self._stream_name()  # before the log directory is (re)created
        self.log = TickLog(
            s.log_dir,
            fsync=s.log_fsync,
            fsync_interval_ms=s.log_fsync_interval_ms,
            segment_bytes=s.log_segment_bytes,
        )
        store_offset = self.store.log_offset(stream)
        if store_offset > self.log.end_offset:
            raise RuntimeError(
                f"the store says stream {stream} was persisted up to offset {store_offset} but the "
                f"log in {s.log_dir} ends at {self.log.end_offset}; the log directory was replaced"
            )
        report = RecoveryReport(truncated_bytes=self.log.truncated_bytes, store_offset=store_offset)
        for batch, next_offset in self.log.replay(self.log.start_offset):
            self.sequencer.process(batch)
            if self.live:
                self.buffers.append(batch)
                self.candles.update(batch)
            self._count_processed(batch)
            report.replayed_ticks += len(batch)
            if next_offset > store_offset:
                report.backlog_ticks += len(batch)
        self.sequencer.seed(self.store.last_seqs())
        self.persister = Persister(
            self.log,
            self.store,
            self.metrics,
            batch_size=s.persist_batch_size,
            batch_timeout_s=s.persist_batch_timeout_ms / 1000,
            max_batch=s.persist_max_batch,
            retry_initial_s=s.persist_retry_initial_s,
            retry_max_s=s.persist_retry_max_s,
            stream=stream,
        )
        self.persister.start(store_offset)
        report.seconds = time.perf_counter() - started
        self.recovery = report
        log.info(
            "recovered: %d ticks replayed from the log, %d to persist, %d torn bytes cut, %.2fs",
            report.replayed_ticks,
            report.backlog_ticks,
            report.truncated_bytes,
            report.seconds,
        )
        return report

    async def start(self) -> None:
        """Open everything, restore subscriptions, resume the feed and start consuming it."""
        await asyncio.to_thread(self.open)
        assert self.store is not None
        wanted = {sub.symbol: sub.exchange for sub in self.store.subscriptions()}
        if self.settings.feed == "simulator":
            for symbol in self.settings.symbols:
                wanted.setdefault(validate_symbol(symbol), "SIM")
            if not wanted:
                wanted = dict.fromkeys(DEFAULT_SYMBOLS, "SIM")
        for symbol, exchange in wanted.items():
            self.store.add_subscription(symbol, exchange)
        self.exchanges = dict(wanted)
        if self.feed is None:
            self.feed = make_feed(self.settings, list(wanted))
        self.feed.resume_from(self.resume_points(list(wanted)))
        for symbol in wanted:
            self.feed.subscribe(symbol)
        self._tasks = [
            asyncio.create_task(self._consume(), name="feed"),
            asyncio.create_task(self._housekeeping(), name="housekeeping"),
        ]

    def resume_points(self, symbols: list[str]) -> dict[str, ResumePoint]:
        """The last known tick of each symbol, from memory or else from the store."""
        points: dict[str, ResumePoint] = {}
        for symbol in symbols:
            last = self.buffers.last(symbol, 1) if symbol in self.buffers else {"ts": ()}
            if len(last["ts"]):
                points[symbol] = ResumePoint(
                    int(last["seq"][0]), int(last["ts"][0]), float(last["price"][0])
                )
                continue
            stored = self.store.read_ticks(symbol, limit=1, descending=True)
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
        drained = True
        if self.log is not None:
            self.log.flush()
        if self.persister is not None:
            drained = self.persister.stop(self.settings.shutdown_deadline_s)
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
        accepted, seq = self.sequencer.process(valid)
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
        """Subscribe `symbol` (persisted, restored on start); False if it was already subscribed."""
        validate_symbol(symbol)
        assert self.store is not None and self.feed is not None
        created = self.store.add_subscription(symbol, exchange)
        if symbol not in self.exchanges:
            self.feed.resume_from(self.resume_points([symbol]))
            self.feed.subscribe(symbol)
        self.exchanges[symbol] = exchange
        return created

    def unsubscribe(self, symbol: str) -> bool:
        """Stop `symbol`; its stored ticks and memory stay. False if it was not subscribed."""
        validate_symbol(symbol)
        assert self.store is not None and self.feed is not None
        removed = self.store.remove_subscription(symbol)
        was = self.exchanges.pop(symbol, None) is not None
        self.feed.unsubscribe(symbol)
        return removed or was

    # ---- status -----------------------------------------------------------------------------

    @property
    def pending_ticks(self) -> int:
        persisted = self.persister.persisted_ticks if self.persister else 0
        return self.recovery.backlog_ticks + self._appended_since_start - persisted

    def refresh_gauges(self) -> None:
        self.metrics.pending_ticks.set(self.pending_ticks)
        self.metrics.buffer_bytes.set(self.buffers.nbytes)
        self.metrics.buffer_ticks.set(sum(self.buffers.count(s) for s in self.buffers.symbols()))
        self.metrics.subscriptions.set(len(self.exchanges))
        if self.log is not None:
            self.metrics.log_bytes.set(self.log.bytes_on_disk)

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
            "status": "degraded" if (not p.store_up or self.feed_error) else "ok",
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
                "store": _mask_password(self.store.url),
                "store_up": p.store_up,
                "last_error": p.last_error,
                "persisted_ticks": p.persisted_ticks,
                "pending_ticks": self.pending_ticks,
                "batches": p.batches,
                "retries": p.retries,
                "offset": p.offset,
            },
            "log": {
                "directory": str(self.settings.log_dir),
                "start_offset": self.log.start_offset,
                "end_offset": self.log.end_offset,
                "durable_offset": self.log.durable_offset,
                "bytes": self.log.bytes_on_disk,
                "segments": self.log.segment_count,
                "fsync": self.settings.log_fsync,
            },
            "buffers": {"bytes": self.buffers.nbytes, "symbols": len(self.buffers.symbols())},
            "recovery": {
                "truncated_bytes": self.recovery.truncated_bytes,
                "replayed_ticks": self.recovery.replayed_ticks,
                "backlog_ticks": self.recovery.backlog_ticks,
                "seconds": round(self.recovery.seconds, 3),
            },
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


def _mask_password(url: str) -> str:
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


__all__ = ["DEFAULT_SYMBOLS", "IngestService", "RecoveryReport"]
