"""Tick log throughput: append (fsync interval 50 ms and always) and read-back, against np.save;
and the time to open a ~256 MB log, against one CRC pass over its files.

Baseline, measured in the same run on the same disk: each batch's seven columns and its symbol
table written with `np.save` into a BytesIO, then that buffer written to one file (with an fsync
after every batch for the `always` rows, one fsync at the end for the `interval` rows); read-back
baseline is `np.load` of those arrays in sequence. The baseline has no framing, no CRC, no
segments and no crash recovery, so it is an upper bound on what plain numpy file I/O costs.

Open checks every record of every segment (docs/ticklog.md §3); its baseline is the floor of any
check that reads every byte once: each segment read in 16 MiB chunks and `zlib.crc32`-ed whole.
Both run with the files in the page cache (just written), so they measure CPU, not the disk.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from hft_pipeline.ingest.ticklog import TickLog
from hft_pipeline.market.ticks import TickBatch

SYMBOLS = ("R_100", "R_50", "frxEURUSD", "frxGBPUSD", "PETR4", "VALE3", "BTC-USD", "ETH-USD")
BASELINE = "np.save of the columns into BytesIO, then one file write per batch"
OPEN_BASELINE = "read every segment once in 16 MiB chunks and zlib.crc32 it"


def _batches(n: int, count: int, seed: int = 0) -> list[TickBatch]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        price = rng.uniform(50, 150, n)
        out.append(
            TickBatch(
                symbols=SYMBOLS,
                sym=rng.integers(0, len(SYMBOLS), n).astype(np.int32),
                ts=np.sort(rng.integers(0, 10**12, n)).astype(np.int64) + 1_700_000_000 * 10**9,
                seq=np.arange(i * n, (i + 1) * n, dtype=np.int64),
                price=price,
                volume=rng.uniform(0, 10, n),
                bid=price - 0.01,
                ask=price + 0.01,
            )
        )
    return out


def _ticklog_append(directory: Path, batches: list[TickBatch], appends: int, fsync: str):
    log = TickLog(directory, fsync=fsync, fsync_interval_ms=50)
    try:
        start = time.perf_counter()
        for i in range(appends):
            log.append(batches[i % len(batches)])
        log.flush()  # count the last group commit too: everything is durable at the end
        elapsed = time.perf_counter() - start
        return elapsed, log.end_offset - log.start_offset
    finally:
        log.close()


def _ticklog_read(directory: Path) -> tuple[float, int]:
    log = TickLog(directory, fsync="off")
    try:
        start = time.perf_counter()
        ticks = 0
        for batch, _ in log.replay(log.start_offset, max_ticks=100_000):
            ticks += len(batch)
        return time.perf_counter() - start, ticks
    finally:
        log.close()


def _npsave_append(path: Path, batches: list[TickBatch], appends: int, fsync_each: bool):
    start = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        for i in range(appends):
            b = batches[i % len(batches)]
            buf = io.BytesIO()
            np.save(buf, np.asarray(b.symbols))
            for col in (b.sym, b.ts, b.seq, b.price, b.volume, b.bid, b.ask):
                np.save(buf, col)
            f.write(buf.getbuffer())
            if fsync_each:
                os.fsync(f.fileno())
        os.fsync(f.fileno())
    elapsed = time.perf_counter() - start
    return elapsed, path.stat().st_size


def _npsave_read(path: Path, appends: int) -> tuple[float, int]:
    start = time.perf_counter()
    ticks = 0
    with open(path, "rb") as f:
        for _ in range(appends):
            np.load(f)  # symbol table
            cols = [np.load(f) for _ in range(7)]
            ticks += len(cols[0])
    return time.perf_counter() - start, ticks


def _open_times(directory: Path, batches: list[TickBatch], nbytes: int) -> tuple[float, float, int]:
    """Median open() seconds of a log of about `nbytes`, the CRC-pass baseline, and its size."""
    with TickLog(directory, fsync="off") as log:
        i = 0
        while log.end_offset < nbytes:
            log.append(batches[i % len(batches)])
            i += 1
        size = log.end_offset
    opens, passes = [], []
    for _ in range(3):
        start = time.perf_counter()
        TickLog(directory, fsync="off").close()
        opens.append(time.perf_counter() - start)
        start = time.perf_counter()
        for path in sorted(directory.glob("*.log")):
            crc = 0
            with open(path, "rb", buffering=0) as f:
                while chunk := f.read(1 << 24):
                    crc = zlib.crc32(chunk, crc)
        passes.append(time.perf_counter() - start)
    return sorted(opens)[1], sorted(passes)[1], size


def _row(benchmark, metric, value, unit, baseline_value, target, met, baseline=BASELINE) -> dict:
    return {
        "benchmark": benchmark,
        "metric": metric,
        "value": float(value),
        "unit": unit,
        "baseline": baseline if baseline_value is not None else None,
        "baseline_value": None if baseline_value is None else float(baseline_value),
        "ratio": None if not baseline_value else float(value) / float(baseline_value),
        "target": target,
        "met": met,
    }


def run(quick: bool = False) -> list[dict]:
    """Measure tick log append and read throughput next to the np.save baseline."""
    rows: list[dict] = []
    # (batch size, fsync, appends): sized so quick mode finishes in well under a minute on a
    # 2-core VM, with `always` bounded by fsync latency.
    plan = [
        (1_000, "interval", 1_500 if quick else 10_000),
        (10_000, "interval", 150 if quick else 1_000),
        (1_000, "always", 300 if quick else 3_000),
        (10_000, "always", 60 if quick else 500),
    ]
    targets = {"interval": 1_000_000, "always": 100_000}
    for n, fsync, appends in plan:
        batches = _batches(n, 8)
        with tempfile.TemporaryDirectory(prefix="ticklog-bench-") as tmp:
            tmp_path = Path(tmp)
            t_log, nbytes = _ticklog_append(tmp_path / "log", batches, appends, fsync)
            t_base, base_bytes = _npsave_append(
                tmp_path / "base.npy", batches, appends, fsync_each=fsync == "always"
            )
            ticks = n * appends
            name = f"ticklog_append_{n}_{fsync}"
            rate = ticks / t_log
            target = targets[fsync]
            rows.append(
                _row(
                    name,
                    "throughput",
                    rate,
                    "ticks/s",
                    ticks / t_base,
                    f">= {target} ticks/s",
                    rate >= target,
                )
            )
            rows.append(
                _row(
                    name,
                    "bandwidth",
                    nbytes / t_log / 1e6,
                    "MB/s",
                    base_bytes / t_base / 1e6,
                    None,
                    None,
                )
            )
            if fsync == "interval":
                t_read, got = _ticklog_read(tmp_path / "log")
                t_bread, bgot = _npsave_read(tmp_path / "base.npy", appends)
                assert got == bgot == ticks, (got, bgot, ticks)
                read_name = f"ticklog_read_{n}"
                read_rate = ticks / t_read
                rows.append(
                    _row(
                        read_name,
                        "throughput",
                        read_rate,
                        "ticks/s",
                        ticks / t_bread,
                        ">= 5000000 ticks/s",
                        read_rate >= 5_000_000,
                    )
                )
                rows.append(
                    _row(
                        read_name,
                        "bandwidth",
                        nbytes / t_read / 1e6,
                        "MB/s",
                        base_bytes / t_bread / 1e6,
                        None,
                        None,
                    )
                )
    # Open scans every segment once; 1,000-tick records make it CRC-bound (smaller records add
    # about 1 us of Python per record: 20-tick ones take about 2.5x as long per byte).
    open_bytes = (32 if quick else 256) * 1024**2
    with tempfile.TemporaryDirectory(prefix="ticklog-bench-") as tmp:
        t_open, t_pass, size = _open_times(Path(tmp) / "log", _batches(1_000, 8), open_bytes)
    rows.append(
        _row(
            f"ticklog_open_{open_bytes >> 20}MiB",
            "open time",
            t_open * 1000,
            "ms",
            t_pass * 1000,
            f"<= {size / 1e6:.0f} ms (1 GB/s)",
            t_open <= size / 1e9,
            OPEN_BASELINE,
        )
    )
    return rows


def _print_table(rows: list[dict]) -> None:
    header = f"{'benchmark':<30} {'metric':<11} {'value':>14} {'unit':<8} {'baseline':>14} {'ratio':>7} {'target':<20} met"
    print(header)
    print("-" * len(header))
    for r in rows:
        base = "" if r["baseline_value"] is None else f"{r['baseline_value']:14,.1f}"
        ratio = "" if r["ratio"] is None else f"{r['ratio']:7.2f}"
        print(
            f"{r['benchmark']:<30} {r['metric']:<11} {r['value']:14,.1f} {r['unit']:<8} "
            f"{base:>14} {ratio:>7} {r['target'] or '':<20} {'' if r['met'] is None else r['met']}"
        )
    print(f"\nbaseline: {BASELINE}; open: {OPEN_BASELINE}")


if __name__ == "__main__":
    _print_table(run(quick="--quick" in sys.argv[1:]))
