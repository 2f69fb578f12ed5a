"""The persister: drains the tick log into the store, exactly once, retrying forever.

Each store write carries the log offset it reached, in the same transaction as the ticks,
so after any crash the log is replayed from exactly where the store stops. The store is never
ahead of what the log has made durable (docs/durability.md), so a power loss cannot leave a
store offset that points past the surviving log.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from hft_pipeline.ingest.checkpoint import Checkpoint
from hft_pipeline.ingest.ticklog import LogBackend
from hft_pipeline.market.ticks import TickBatch, concat_batches
from hft_pipeline.observability.metrics import IngestMetrics
from hft_pipeline.observability.redaction import redact
from hft_pipeline.store.base import StoreUnavailableError, TickStore

log = logging.getLogger(__name__)

RETENTION_INTERVAL_S = 5.0
_EMPTY = TickBatch.empty()


@dataclass(frozen=True, slots=True)
class PersisterStatus:
    running: bool
    offset: int
    persisted_ticks: int
    batches: int
    retries: int
    store_up: bool
    last_error: str | None


class Persister:
    """A thread that writes log records to the store in batches (size or timeout, whichever first)."""

    def __init__(
        self,
        ticklog: LogBackend,
        store: TickStore,
        metrics: IngestMetrics | None = None,
        batch_size: int = 2000,
        batch_timeout_s: float = 0.05,
        max_batch: int = 50_000,
        retry_initial_s: float = 0.1,
        retry_max_s: float = 5.0,
        stream: str = "ticklog",
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.log = ticklog
        self.checkpoint = checkpoint
        # With fsync "off" nothing is promised after a power loss; otherwise the persister
        # commits only offsets the log has fsynced.
        self._durable_first = getattr(ticklog, "fsync", "always") != "off"
        self.store = store
        self.metrics = metrics or IngestMetrics()
        self.batch_size = batch_size
        self.batch_timeout_s = batch_timeout_s
        if max_batch < batch_size:
            raise ValueError(f"max_batch ({max_batch}) must be >= batch_size ({batch_size})")
        self.max_batch = max_batch
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.stream = stream
        self.offset = 0
        self.persisted_ticks = 0
        self.batches = 0
        self.retries = 0
        self.store_up = True
        self.last_error: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._drain_deadline: float | None = None
        self._thread: threading.Thread | None = None
        self._last_retention = 0.0

    def start(self, offset: int) -> None:
        """Start draining from `offset` (the store's consumer offset)."""
        self.offset = offset
        self._thread = threading.Thread(target=self._run, name="persister", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        """Tell the persister new records were appended (it also polls on its own)."""
        self._wake.set()

    def stop(self, deadline_s: float = 10.0) -> bool:
        """Drain what the log holds until `deadline_s`, then stop; True if everything was persisted."""
        if self._thread is None:
            return self.offset >= self.log.end_offset
        self._drain_deadline = time.monotonic() + deadline_s
        self._stop.set()
        self._wake.set()
        self._thread.join(deadline_s + 1.0)
        self._thread = None
        return self.offset >= self.log.end_offset

    def status(self) -> PersisterStatus:
        return PersisterStatus(
            running=self._thread is not None and self._thread.is_alive(),
            offset=self.offset,
            persisted_ticks=self.persisted_ticks,
            batches=self.batches,
            retries=self.retries,
            store_up=self.store_up,
            last_error=self.last_error,
        )

    def _run(self) -> None:
        pending: list[TickBatch] = []
        pending_ticks = 0
        next_offset = self.offset
        first_seen = 0.0
        while True:
            stopping = self._stop.is_set()
            if (
                stopping
                and self._drain_deadline is not None
                and time.monotonic() > self._drain_deadline
            ):
                return
            # A full batch is written at once, unless the log already holds more (a backlog
            # after an outage, a restart or a burst): then up to max_batch ticks go in one
            # transaction, which amortizes the per-commit cost and lets the store catch up.
            backlog = pending_ticks >= self.batch_size and next_offset < self.log.end_offset
            limit = (self.max_batch if backlog else self.batch_size) - pending_ticks
            batch, after = self.log.read(next_offset, limit) if limit > 0 else (_EMPTY, next_offset)
            if len(batch):
                if not pending:
                    first_seen = time.monotonic()
                pending.append(batch)
                pending_ticks += len(batch)
                next_offset = after
            elif after != next_offset:  # records with no ticks still move the offset
                next_offset = after
            caught_up = next_offset >= self.log.end_offset
            due = (
                pending_ticks >= self.max_batch
                or (pending_ticks >= self.batch_size and caught_up)
                or (pending and (stopping or time.monotonic() - first_seen >= self.batch_timeout_s))
            )
            if due or (not pending and next_offset != self.offset):
                if not self._write(concat_batches(pending), next_offset):
                    return  # stopped while the store was down: the log keeps the rest
                pending, pending_ticks = [], 0
                self._retain()
                continue
            if stopping and not pending and next_offset >= self.log.end_offset:
                return
            if not len(batch):
                wait = (
                    self.batch_timeout_s
                    if not pending
                    else max(0.0, self.batch_timeout_s - (time.monotonic() - first_seen))
                )
                self._wake.wait(min(wait, 0.05) if not stopping else 0.0)
                self._wake.clear()

    def _write(self, batch: TickBatch, offset: int) -> bool:
        delay = self.retry_initial_s
        while True:
            started = time.perf_counter()
            try:
                if self._durable_first and self.log.durable_offset < offset:
                    # A group commit from this thread: cheaper than waiting for the flusher's
                    # next interval, and the store never records an offset a power loss could
                    # undo.
                    self.log.flush()
                self.store.write_ticks(batch, offset, self.stream)
            except StoreUnavailableError as exc:
                self._failed(exc)
            except Exception as exc:  # noqa: BLE001 - never drop: log, count, retry
                log.exception("persister: store write failed")
                self._failed(exc)
            else:
                elapsed = time.perf_counter() - started
                self.metrics.persist_batch_seconds.observe(elapsed)
                self.metrics.persist_batches.inc()
                self.metrics.ticks_persisted.inc(len(batch))
                self.persisted_ticks += len(batch)
                self.batches += 1
                self.offset = offset
                if self.checkpoint is not None:
                    self.checkpoint.advance(batch, offset)
                if not self.store_up:
                    log.warning("persister: store is back; %d ticks in this batch", len(batch))
                self.store_up = True
                self.last_error = None
                return True
            if not self._wait_to_retry(delay):
                return False
            delay = min(delay * 2, self.retry_max_s)

    # Not stamina, which the alerts use: its sync backoff is a time.sleep that stop() cannot cut
    # short (a stop during a 5 s wait would overrun a shorter drain deadline), and its
    # process-wide switches (stamina.set_active, set_testing) would bound or switch off a loop
    # whose promise is never to give up while the service runs.
    def _wait_to_retry(self, delay: float) -> bool:
        """Wait `delay` s before the next attempt; False once a stop's drain deadline has passed."""
        if not self._stop.is_set():
            # stop() ends the wait at once: the next attempt is the drain's.
            self._stop.wait(delay)
            return True
        deadline = self._drain_deadline
        remaining = 0.0 if deadline is None else deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        return True

    def _failed(self, exc: Exception) -> None:
        if self.store_up:
            log.warning("persister: store unavailable (%s); retrying with backoff", exc)
        self.store_up = False
        self.last_error = redact(f"{type(exc).__name__}: {exc}")
        self.retries += 1
        self.metrics.persist_retries.inc()
        self.metrics.errors.labels("persister").inc()

    def _retain(self) -> None:
        now = time.monotonic()
        if now - self._last_retention >= RETENTION_INTERVAL_S:
            self._last_retention = now
            try:
                # Segments about to go may hold a symbol's last tick: the checkpoint keeps
                # its position for a start while the store is down.
                if self.checkpoint is not None:
                    self.checkpoint.save()
                # A store whose commits are not fsynced one by one (SQLite with
                # synchronous=normal) must make them durable before the log lets go of them.
                durable = getattr(self.store, "make_durable", None)
                if durable is not None:
                    durable()
                self.log.retain(self.offset)
            except (OSError, StoreUnavailableError):
                log.exception("persister: log retention failed; segments kept")
                self.metrics.errors.labels("retention").inc()
