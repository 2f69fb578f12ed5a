"""Prometheus metrics of the ingest service, named per Prometheus conventions.

Per-symbol counts are kept in numpy arrays by the hot path and exposed by a collector at
scrape time, so a batch touching 150 symbols costs one `np.add.at`, not 150 label lookups.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from hft_pipeline.market.ticks import REJECT_REASONS

LATENCY_BUCKETS = (
    5e-6,
    1e-5,
    2.5e-5,
    5e-5,
    1e-4,
    2.5e-4,
    5e-4,
    1e-3,
    2.5e-3,
    5e-3,
    1e-2,
    2.5e-2,
    0.1,
    1.0,
)
BATCH_BUCKETS = (1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 5.0)


class SymbolCounts:
    """Per-symbol int64 counters in a growable numpy array."""

    def __init__(self) -> None:
        self.values = np.zeros(0, np.int64)

    def add(self, ids: np.ndarray, size: int) -> None:
        if size > len(self.values):
            self.values = np.concatenate([self.values, np.zeros(size - len(self.values), np.int64)])
        if ids.size:
            self.values += np.bincount(ids, minlength=len(self.values))[: len(self.values)]


class _PerSymbolCollector(Collector):
    def __init__(self, families: Callable[[], Iterable]) -> None:
        self._families = families

    def collect(self):
        yield from self._families()


class IngestMetrics:
    """All metrics of one ingest service, on its own registry (so tests can run several)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.ticks_received = Counter(
            "hft_ticks_received_total", "Ticks received from feeds, before validation", registry=r
        )
        self.ticks_rejected = Counter(
            "hft_ticks_rejected_total", "Ticks rejected by validation", ["reason"], registry=r
        )
        for reason in REJECT_REASONS:
            self.ticks_rejected.labels(reason)
        self.ticks_duplicate = Counter(
            "hft_ticks_duplicate_total",
            "Ticks dropped as duplicates (same symbol and seq)",
            registry=r,
        )
        self.ticks_late = Counter(
            "hft_ticks_late_total", "Ticks whose candle bucket had already closed", registry=r
        )
        self.processing_seconds = Histogram(
            "hft_tick_processing_seconds",
            "Latency from a batch's arrival to its ticks being in the log, buffers and live candles",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter("hft_errors_total", "Errors by component", ["component"], registry=r)
        self.gaps = Counter("hft_gaps_total", "Detected gaps by kind", ["kind"], registry=r)
        for kind in ("seq", "silence"):
            self.gaps.labels(kind)
        self.buffer_bytes = Gauge(
            "hft_buffer_memory_bytes", "Memory allocated by ring buffers", registry=r
        )
        self.buffer_ticks = Gauge("hft_buffer_ticks", "Ticks held in ring buffers", registry=r)
        self.ticks_persisted = Counter(
            "hft_ticks_persisted_total", "Ticks written to the store", registry=r
        )
        self.persist_batches = Counter(
            "hft_persist_batches_total", "Batches written to the store", registry=r
        )
        self.persist_batch_seconds = Histogram(
            "hft_persist_batch_duration_seconds",
            "Duration of one store write (ticks + offset in one transaction)",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.persist_retries = Counter(
            "hft_persist_retries_total", "Store writes retried after a failure", registry=r
        )
        self.pending_ticks = Gauge(
            "hft_persist_pending_ticks", "Ticks in the log not yet in the store", registry=r
        )
        self.log_bytes = Gauge("hft_log_bytes", "Bytes of tick log on disk", registry=r)
        self.log_damaged_spans = Gauge(
            "hft_log_damaged_spans",
            "Damaged spans of the retained tick log, by whether an operator acknowledged them",
            ["state"],
            registry=r,
        )
        for state in ("unacknowledged", "acknowledged"):
            self.log_damaged_spans.labels(state)
        self.log_lost_ticks = Gauge(
            "hft_log_lost_ticks",
            "Ticks in damaged spans of the retained log and in the torn tail cut on open: "
            "logged once, now unreadable (those the damage hid from counting are not included)",
            registry=r,
        )
        self.subscriptions = Gauge("hft_subscriptions", "Subscribed symbols", registry=r)
        self.processed_by_symbol = SymbolCounts()
        self.symbol_names: list[str] = []
        r.register(_PerSymbolCollector(self._per_symbol_families))

    def _per_symbol_families(self):
        family = CounterMetricFamily(
            "hft_ticks_processed",
            "Ticks accepted into the log, buffers and candles",
            labels=["symbol"],
        )
        for name, value in zip(self.symbol_names, self.processed_by_symbol.values, strict=False):
            family.add_metric([name], float(value))
        yield family
        yield GaugeMetricFamily(
            "hft_symbols", "Symbols seen since start", value=len(self.symbol_names)
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
