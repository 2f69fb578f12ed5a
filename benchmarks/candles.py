"""Live candles + ring buffers throughput and latency vs pandas resample of the same ticks.

150 symbols, a random walk at ~1M ticks/s total (ts spacing ~1 us, a few ticks out of order),
fed in batches of 10,000 through LiveCandles.update + TickBuffers.append, against pandas
`groupby(symbol).resample(rule)` into the same 7 timeframes. Then the 50,000 ticks/s case:
batches of ~50 ticks every 1 ms, per-batch latency p50/p99. Last, the start-up cost of the
numba kernel: import + `LiveCandles()` + first 50-tick update in a fresh process, with an empty
compile cache and with the on-disk cache that every later start uses.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd

from hft_pipeline.ingest.buffers import TickBuffers
from hft_pipeline.ingest.live_candles import LiveCandles
from hft_pipeline.market.ticks import TickBatch
from hft_pipeline.market.timeframes import PANDAS_RULES, TIMEFRAMES

SYMBOLS = tuple(f"SYM{i:03d}" for i in range(150))
T0 = 1_780_000_000 * 1_000_000_000  # 2026


def simulate(n: int, seed: int = 1, ticks_per_second: float = 1e6) -> TickBatch:
    """`n` ticks of a random walk over 150 symbols, ~`ticks_per_second` in total, 0.1% late."""
    rng = np.random.default_rng(seed)
    sym = rng.integers(0, len(SYMBOLS), n).astype(np.int32)
    gaps = rng.exponential(1e9 / ticks_per_second, n)
    ts = T0 + np.cumsum(gaps).astype(np.int64)
    late = rng.random(n) < 0.001
    ts[late] -= rng.integers(0, 2_000_000_000, int(late.sum()))  # up to 2 s late
    price = np.empty(n)
    steps = rng.standard_normal(n) * 0.01
    order = np.argsort(sym, kind="stable")
    walk = np.cumsum(steps[order])
    starts = np.searchsorted(sym[order], np.arange(len(SYMBOLS)))
    # Restart the cumulative walk at each symbol so every symbol walks from 100.
    offsets = np.where(starts > 0, walk[np.maximum(starts - 1, 0)], 0.0)
    counts = np.diff(np.append(starts, n))
    price[order] = 100.0 + walk - np.repeat(offsets, counts)
    nan = np.full(n, np.nan)
    return TickBatch(
        symbols=SYMBOLS,
        sym=sym,
        ts=ts,
        seq=np.arange(n, dtype=np.int64),  # strictly increasing per symbol
        price=price,
        volume=np.round(rng.exponential(1.0, n), 4),
        bid=nan,
        ask=nan,
    )


def _row(
    benchmark,
    metric,
    value,
    unit,
    baseline=None,
    baseline_value=None,
    higher_better=True,
    target=None,
    met=None,
):
    ratio = None
    if baseline_value:
        ratio = value / baseline_value if higher_better else baseline_value / value
    return {
        "benchmark": benchmark,
        "metric": metric,
        "value": float(value),
        "unit": unit,
        "baseline": baseline,
        "baseline_value": None if baseline_value is None else float(baseline_value),
        "ratio": ratio,
        "target": target,
        "met": met,
    }


def pandas_baseline(batch: TickBatch) -> float:
    """Seconds for pandas to resample the ticks into all 7 timeframes per symbol."""
    frame = batch.to_frame()[["symbol", "ts", "seq", "price", "volume"]]
    start = time.perf_counter()
    frame = frame.sort_values(["ts", "seq"], kind="stable")
    frame.index = pd.to_datetime(frame["ts"].to_numpy(), unit="ns", utc=True)
    grouped = frame.groupby("symbol", sort=True)[["price", "volume"]]
    for timeframe in TIMEFRAMES:
        res = grouped.resample(PANDAS_RULES[timeframe], closed="left", label="left")
        out = res.agg(
            open=("price", "first"),
            high=("price", "max"),
            low=("price", "min"),
            close=("price", "last"),
            volume=("volume", "sum"),
            ticks=("price", "count"),
        )
        out = out[out["ticks"] > 0]
    return time.perf_counter() - start


def _batches(batch: TickBatch, size: int) -> list[TickBatch]:
    return [batch.take(slice(i, i + size)) for i in range(0, len(batch), size)]


def latency_rows(quick: bool) -> list[dict]:
    """The 50,000 ticks/s case: ~50 ticks per 1 ms batch over 150 symbols; per-batch p50/p99.

    Wall time includes scheduling delays on a loaded machine; thread CPU time does not.
    """
    m = 100_000 if quick else 500_000
    small = simulate(m, seed=2, ticks_per_second=50_000)
    live, buffers = LiveCandles(), TickBuffers()
    wall_live, cpu_live, wall_both = [], [], []
    for b in _batches(small, 50):
        t, c = time.perf_counter(), time.thread_time()
        live.update(b)
        t1, c1 = time.perf_counter(), time.thread_time()
        buffers.append(b)
        t2 = time.perf_counter()
        wall_live.append(t1 - t)
        cpu_live.append(c1 - c)
        wall_both.append(t2 - t)
    warm = len(wall_live) // 20  # first batches add symbols and grow storage

    def pct(values: list[float]) -> np.ndarray:
        return np.percentile(np.array(values[warm:]) * 1e6, [50, 99])

    p_live, p_cpu, p_both = pct(wall_live), pct(cpu_live), pct(wall_both)
    return [
        _row(
            "candles",
            "live candles latency p50, 50-tick batches",
            p_live[0],
            "us",
            target="< 1000 us",
            met=p_live[0] < 1000,
        ),
        _row(
            "candles",
            "live candles latency p99, 50-tick batches",
            p_live[1],
            "us",
            target="< 1000 us",
            met=p_live[1] < 1000,
        ),
        _row(
            "candles",
            "live candles CPU time p99, 50-tick batches",
            p_cpu[1],
            "us",
            target="< 1000 us",
            met=p_cpu[1] < 1000,
        ),
        _row("candles", "live candles + buffers latency p50, 50-tick batches", p_both[0], "us"),
        _row("candles", "live candles + buffers latency p99, 50-tick batches", p_both[1], "us"),
    ]


def throughput_rows(quick: bool) -> list[dict]:
    """Batches of 10,000 through LiveCandles.update + TickBuffers.append vs pandas resample."""
    n = 300_000 if quick else 2_000_000
    ticks = simulate(n)
    live, buffers = LiveCandles(), TickBuffers()
    t_live = t_buf = 0.0
    for b in _batches(ticks, 10_000):
        t = time.perf_counter()
        live.update(b)
        t_live += time.perf_counter() - t
        t = time.perf_counter()
        buffers.append(b)
        t_buf += time.perf_counter() - t
    base = n / pandas_baseline(ticks)
    both = n / (t_live + t_buf)
    return [
        _row(
            "candles",
            "live candles + buffers, batches of 10k",
            both,
            "ticks/s",
            "pandas resample 7 timeframes",
            base,
            target=">= 1000000 ticks/s",
            met=both >= 1e6,
        ),
        _row(
            "candles",
            "live candles only, batches of 10k",
            n / t_live,
            "ticks/s",
            "pandas resample 7 timeframes",
            base,
        ),
        _row("candles", "ring buffers only, batches of 10k", n / t_buf, "ticks/s"),
    ]


_FIRST_UPDATE = """
import time
start = time.perf_counter()
from benchmarks.candles import simulate
from hft_pipeline.ingest.live_candles import LiveCandles
batch = simulate(50, seed=3, ticks_per_second=50_000)
live = LiveCandles()
live.update(batch)
print(time.perf_counter() - start)
"""


def _first_update_seconds(cache_dir: str | None) -> float:
    """Seconds from a fresh interpreter's first import to its first update (timed inside)."""
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", _FIRST_UPDATE],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        check=True,
    )
    return float(out.stdout.split()[-1])


def startup_rows() -> list[dict]:
    """Import + LiveCandles() + first update in a fresh process: cold compile, then cached."""
    with tempfile.TemporaryDirectory() as empty:
        cold = _first_update_seconds(empty)
    _first_update_seconds(None)  # make sure the default on-disk cache is current
    warm = _first_update_seconds(None)
    return [
        _row(
            "candles",
            "first update in a fresh process, kernel compiled (empty cache)",
            cold,
            "s",
            higher_better=False,
        ),
        _row(
            "candles",
            "first update in a fresh process, kernel from disk cache",
            warm,
            "s",
            "cold compile",
            cold,
            higher_better=False,
            target="<= 2 s",
            met=warm <= 2.0,
        ),
    ]


def run(quick: bool = False) -> list[dict]:
    """Benchmark rows; latency first, in a process not yet churned by the 2M-tick run."""
    latency = latency_rows(quick)
    return throughput_rows(quick) + latency + startup_rows()


def print_table(rows: list[dict]) -> None:
    """Print benchmark rows as an aligned table."""
    header = ("metric", "value", "unit", "baseline_value", "ratio", "target", "met")
    lines = [header]
    for r in rows:
        lines.append(
            (
                r["metric"],
                f"{r['value']:,.1f}",
                r["unit"],
                "" if r["baseline_value"] is None else f"{r['baseline_value']:,.1f}",
                "" if r["ratio"] is None else f"{r['ratio']:.1f}x",
                r["target"] or "",
                "" if r["met"] is None else str(r["met"]),
            )
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)))


if __name__ == "__main__":
    import sys

    print_table(run(quick="--quick" in sys.argv))
