"""Tick -> live-candle latency at 50,000 ticks/s over 150 symbols, paced in real time.

Every millisecond the driver hands `IngestService.ingest` all simulator ticks whose timestamps
are due by now (~50 ticks; more when ingest fell behind), as `SimulatorFeed.poll` does. The service's persister
runs against PostgreSQL (a scratch database) with default settings and the log fsyncs every
50 ms, so the hot path competes with persisting as in production.

Per tick we record two latencies (every tick of a batch gets its batch's value):
- service time: from the batch being handed to `ingest` until `ingest` returns (the tick is then
  in the log, the ring buffers and the live candles); the target (p99 < 1 ms) applies to this.
- delivery latency: from the moment the tick is due (its timestamp in real time) until
  `ingest` returns: the tick -> live-candle latency a client sees, including pacing and queueing.

Baseline: the same paced run through `IngestService(live=False)`, the durable part of the hot
path alone (validate, dedup, log append) with no buffers or candles: the floor the live work is
added to. The first WARMUP_S seconds (per-symbol allocation) are not recorded. A third run with
the persister thread stopped shows how much of the tail comes from sharing the GIL with it.

Run: `.venv/bin/python -m benchmarks.latency [--quick]`.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.workload import (
    percentiles,
    print_rows,
    row,
    scratch_database,
    simulator_ticks,
    symbol_names,
)
from hft_pipeline.ingest.service import IngestService
from hft_pipeline.market.ticks import TickBatch
from hft_pipeline.settings import Settings

N_SYMBOLS = 150
RATE = 50_000.0
TICK_MS = 1.0  # one batch per millisecond
WARMUP_S = 1.0
FULL_SECONDS = 10.0
QUICK_SECONDS = 2.0
TARGET_P99_MS = 1.0


def _paced_run(
    ticks: TickBatch, dsn: str, home: Path, live: bool, seconds: float, persist: bool = True
) -> dict:
    """Drive one service in real time: every TICK_MS hand over all ticks due by now."""
    settings = Settings(home=home, store_url=dsn, log_fsync="interval", log_fsync_interval_ms=50)
    service = IngestService(settings, live=live)
    service.open()
    if not persist:
        assert service.persister is not None
        service.persister.stop(0.0)  # diagnosis: the hot path without the persister's thread
    n = len(ticks)
    due_s = ticks.ts / 1e9  # seconds after the start at which each tick exists
    service_s = np.zeros(n)
    done_s = np.zeros(n)
    sizes: list[int] = []
    step = TICK_MS / 1000
    # Timestamps are relative to the start: shift them so each tick is "now" when handed over.
    start = time.perf_counter() + 0.05
    shift = time.time_ns() + 50_000_000
    handed_upto = 0
    try:
        tick_no = 1
        while handed_upto < n:
            wait = start + tick_no * step - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            now = time.perf_counter() - start
            tick_no = max(tick_no + 1, int(now / step) + 1)
            hi = int(np.searchsorted(due_s, now, "right"))
            lo = handed_upto
            if hi == lo:
                continue
            # Like SimulatorFeed.poll: everything due by now, so a late driver catches up.
            batch = TickBatch(
                ticks.symbols,
                ticks.sym[lo:hi],
                ticks.ts[lo:hi] + shift,
                ticks.seq[lo:hi],
                ticks.price[lo:hi],
                ticks.volume[lo:hi],
                ticks.bid[lo:hi],
                ticks.ask[lo:hi],
            )
            handed = time.perf_counter()
            accepted = service.ingest(batch)
            done = time.perf_counter()
            assert accepted == hi - lo, (accepted, hi - lo)
            service_s[lo:hi] = done - handed
            done_s[lo:hi] = done - start
            sizes.append(hi - lo)
            handed_upto = hi
        elapsed = time.perf_counter() - start
    finally:
        drained = service.close()
    assert drained or not persist, "persister did not drain"
    warm = due_s >= WARMUP_S
    batch_sizes = np.array(sizes)
    return {
        "service_ms": service_s[warm] * 1e3,
        "delivery_ms": (done_s - due_s)[warm] * 1e3,
        "ticks": int(np.count_nonzero(warm)),
        "mean_batch": float(batch_sizes.mean()),
        "max_batch": int(batch_sizes.max()),
        "batches": len(sizes),
        "rate": n / elapsed,
    }


def run(quick: bool = False) -> list[dict]:
    """Rows: p50/p99/max service time per tick vs the log-only floor, and delivery latency."""
    seconds = (QUICK_SECONDS if quick else FULL_SECONDS) + WARMUP_S
    symbols = symbol_names(N_SYMBOLS)
    per_symbol = int(RATE * seconds / N_SYMBOLS)
    ticks = simulator_ticks(symbols, per_symbol, RATE, 0)
    ticks = ticks.take(ticks.ts < int(seconds * 1e9))

    results = {}
    runs = (("live", True, True), ("log only", False, True), ("no persister", True, False))
    for name, live, persist in runs:
        with scratch_database("hft_bench_latency") as dsn, tempfile.TemporaryDirectory() as tmp:
            results[name] = _paced_run(ticks, dsn, Path(tmp), live, seconds, persist)

    ours, floor = results["live"], results["log only"]
    p = percentiles(ours["service_ms"], (50, 99))
    f = percentiles(floor["service_ms"], (50, 99))
    d = percentiles(ours["delivery_ms"], (50, 99))
    alone = percentiles(results["no persister"]["service_ms"], (50, 99))
    label = (
        f"{RATE:,.0f} ticks/s, {N_SYMBOLS} symbols, a batch every {TICK_MS:g} ms "
        f"(mean {ours['mean_batch']:.0f} ticks), {seconds - WARMUP_S:.0f} s, persister -> PostgreSQL"
    )
    base = "same paced run, IngestService(live=False): validate+dedup+log only"
    return [
        row(
            "latency",
            f"service time per tick, p99 ({label})",
            p[99],
            "ms",
            baseline=base,
            baseline_value=f[99],
            ratio=f[99] / p[99],
            target=f"p99 < {TARGET_P99_MS:g} ms",
            met=p[99] < TARGET_P99_MS,
        ),
        row("latency", "service time per tick, p50", p[50], "ms", baseline=base,
            baseline_value=f[50], ratio=f[50] / p[50]),
        row("latency", "service time per tick, max", float(ours["service_ms"].max()), "ms",
            baseline=base, baseline_value=float(floor["service_ms"].max()),
            ratio=float(floor["service_ms"].max() / ours["service_ms"].max())),
        row("latency", "delivery latency per tick (tick due -> ingest returns), p50",
            d[50], "ms"),
        row("latency", "delivery latency per tick, p99", d[99], "ms"),
        row("latency", "delivery latency per tick, max", float(ours["delivery_ms"].max()), "ms"),
        row("latency", "largest batch (ticks due while ingest was busy)", ours["max_batch"], "ticks"),
        row("latency", "batches handed over", ours["batches"], "batches"),
        row("latency", "ticks measured (after warm-up)", ours["ticks"], "ticks"),
        row("latency", "diagnosis: service time p50 with the persister thread stopped", alone[50],
            "ms"),
        row("latency", "diagnosis: service time p99 with the persister thread stopped", alone[99],
            "ms"),
    ]  # fmt: skip


if __name__ == "__main__":
    print_rows(run(quick="--quick" in sys.argv[1:]))
