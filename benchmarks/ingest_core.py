"""Ingest core throughput: `IngestService.ingest` (validate -> dedup -> tick log with 50 ms
group-commit fsync -> ring buffers -> live candles in 7 timeframes) on simulator ticks of 150
symbols in time-ordered batches of 10,000, against pandas resampling the same ticks into the same
7 timeframes.

The service is opened on a SQLite store in a temporary directory and its persister is stopped
right after `open()`, so the store never drains: this measures the ingest core alone (the log
still writes and fsyncs every tick to disk). The live candles are checked against the pandas
candles afterwards, so both sides did the same work.

Run: `.venv/bin/python -m benchmarks.ingest_core [--quick]`.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

from benchmarks.workload import print_rows, row, simulator_ticks, split, symbol_names
from hft_pipeline.ingest.buffers import TickBuffers
from hft_pipeline.ingest.live_candles import LiveCandles
from hft_pipeline.ingest.sequencer import Sequencer
from hft_pipeline.ingest.service import IngestService
from hft_pipeline.ingest.ticklog import TickLog
from hft_pipeline.ingest.validation import TickValidator
from hft_pipeline.market.ticks import TickBatch
from hft_pipeline.market.timeframes import PANDAS_RULES, TIMEFRAMES
from hft_pipeline.settings import Settings

N_SYMBOLS = 150
BATCH = 10_000
FULL_TICKS_PER_SYMBOL = 20_000  # 3,000,000 ticks
QUICK_TICKS_PER_SYMBOL = 2_000  # 300,000 ticks
#: Simulated market rate: sets the time span of the ticks (3M ticks = 5 minutes of market data).
MARKET_RATE = 10_000.0
TARGET = 1_000_000.0


def _settings(home: Path) -> Settings:
    return Settings(
        home=home,
        log_fsync="interval",
        log_fsync_interval_ms=50,
        # Room for every tick of the run: nothing is evicted while we measure.
        buffer_capacity=FULL_TICKS_PER_SYMBOL * 2,
    )


def pandas_candles(ticks: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The baseline: groupby symbol + time bucket, ohlc/sum/count, for every timeframe."""
    frame = ticks.assign(time=pd.to_datetime(ticks["ts"], unit="ns", utc=True))
    out = {}
    for tf, rule in PANDAS_RULES.items():
        grouped = frame.groupby(
            ["symbol", pd.Grouper(key="time", freq=rule, closed="left", label="left")],
            sort=True,
        )
        candles = grouped["price"].ohlc()
        candles["volume"] = grouped["volume"].sum()
        candles["ticks"] = grouped["price"].count()
        out[tf] = candles[candles["ticks"] > 0]
    return out


def _check_against_pandas(
    service: IngestService, expected: dict[str, pd.DataFrame], symbols: list[str]
) -> None:
    """Live candles equal the pandas candles (OHLC and counts exactly, volume to 1e-9)."""
    for tf in TIMEFRAMES:
        for symbol in symbols:
            live = service.candles.candles(symbol, tf, None, None, 1_000_000, False)
            ref = expected[tf].loc[symbol]
            assert len(live) == len(ref), (tf, symbol, len(live), len(ref))
            np.testing.assert_array_equal(live["ts"].to_numpy(), ref.index.as_unit("ns").asi8)
            for col in ("open", "high", "low", "close", "ticks"):
                np.testing.assert_array_equal(live[col].to_numpy(), ref[col].to_numpy())
            np.testing.assert_allclose(live["volume"].to_numpy(), ref["volume"].to_numpy(), 1e-9)


def _stage_times(batches: list[TickBatch], home: Path) -> dict[str, float]:
    """Seconds each stage of the hot path takes alone over all batches but the first."""
    validator, sequencer = TickValidator(), Sequencer()
    buffers, candles = TickBuffers(FULL_TICKS_PER_SYMBOL * 2), LiveCandles()
    times = dict.fromkeys(("validate", "dedup", "log append", "ring buffers", "live candles"), 0.0)
    with TickLog(home / "stage-log", fsync="interval", fsync_interval_ms=50) as ticklog:
        for batch in batches:
            t0 = time.perf_counter()
            valid, _ = validator.validate(batch)
            t1 = time.perf_counter()
            accepted, _ = sequencer.process(valid)
            t2 = time.perf_counter()
            ticklog.append(accepted)
            t3 = time.perf_counter()
            buffers.append(accepted)
            t4 = time.perf_counter()
            candles.update(accepted)
            t5 = time.perf_counter()
            if batch is batches[0]:
                continue  # warm-up: per-symbol allocation, reported by run() separately
            for name, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
                times[name] += dt
    return times


def run(quick: bool = False) -> list[dict]:
    """Rows: ingest ticks/s vs pandas resample ticks/s, plus per-stage ticks/s."""
    per_symbol = QUICK_TICKS_PER_SYMBOL if quick else FULL_TICKS_PER_SYMBOL
    symbols = symbol_names(N_SYMBOLS)
    n = per_symbol * N_SYMBOLS
    span_ns = int(n / MARKET_RATE * 1e9)
    # In the past (the validator rejects ticks > 5 s ahead), aligned so buckets are realistic.
    t0 = time.time_ns() - span_ns - 60 * 10**9
    ticks = simulator_ticks(symbols, per_symbol, MARKET_RATE, t0)
    batches = split(ticks, BATCH)

    with tempfile.TemporaryDirectory(prefix="hft-bench-core-") as tmp:
        home = Path(tmp)
        service = IngestService(_settings(home / "svc"))
        service.open()
        assert service.persister is not None
        service.persister.stop(0.0)  # the ingest core alone: the store never drains
        try:
            # The first batch brings all 150 symbols: per-symbol memory is allocated and first
            # touched then. Timed on its own so the steady-state rate is not an average with it.
            started = time.perf_counter()
            accepted = service.ingest(batches[0])
            first_s = time.perf_counter() - started
            cpu = time.process_time()
            accepted += sum(service.ingest(b) for b in batches[1:])
            steady_s = time.perf_counter() - started - first_s
            cpu = time.process_time() - cpu
            assert accepted == n, (accepted, n)
            rss = psutil.Process().memory_info().rss
            assert service.log is not None
            service.log.flush()
            assert service.log.durable_offset == service.log.end_offset
            frame = ticks.to_frame()
            b_started = time.perf_counter()
            expected = pandas_candles(frame)
            b_elapsed = time.perf_counter() - b_started
            _check_against_pandas(service, expected, symbols[:: max(1, N_SYMBOLS // 10)])
        finally:
            service.close()
        stages = _stage_times(batches, home)

    steady_n = n - len(batches[0])
    rate = steady_n / steady_s
    overall = n / (first_s + steady_s)
    b_rate = n / b_elapsed
    label = f"{n:,} ticks, {N_SYMBOLS} symbols, batches of {BATCH:,}"
    baseline = (
        "pandas groupby(symbol, Grouper) ohlc/sum/count, 7 timeframes, one pass over a DataFrame"
    )
    rows = [
        row(
            "ingest_core",
            f"IngestService.ingest steady state ({label}; fsync 50 ms; persister stopped)",
            rate,
            "ticks/s",
            baseline=baseline,
            baseline_value=b_rate,
            ratio=rate / b_rate,
            target=f">= {TARGET:,.0f} ticks/s",
            met=rate >= TARGET,
        ),
        row(
            "ingest_core",
            "IngestService.ingest including the first batch (150 new symbols)",
            overall,
            "ticks/s",
            baseline=baseline,
            baseline_value=b_rate,
            ratio=overall / b_rate,
        ),
        row(
            "ingest_core", "first batch: 10,000 ticks introducing 150 symbols", first_s * 1e3, "ms"
        ),
        row(
            "ingest_core",
            "steady state: time per 10,000-tick batch",
            steady_s / (len(batches) - 1) * 1e3,
            "ms",
        ),
        row(
            "ingest_core",
            "steady state: process CPU per tick (all threads)",
            cpu / steady_n * 1e6,
            "us/tick",
        ),
        row("ingest_core", "process RSS after ingest", rss / 2**20, "MiB"),
    ]
    rows += [
        row("ingest_core", f"stage alone (steady state): {name}", steady_n / seconds, "ticks/s")
        for name, seconds in stages.items()
    ]
    return rows


if __name__ == "__main__":
    print_rows(run(quick="--quick" in sys.argv[1:]))
