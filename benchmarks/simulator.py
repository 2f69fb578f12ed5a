"""Simulator speed: bulk generation, paced streaming and resume cost, against a per-tick Python loop.

Baseline, measured in the same run: the same geometric random walk written the obvious way,
one tick at a time in Python (`random.gauss` shock, `math.exp`, rounding to the tick grid,
jittered timestamp, geometric volume, bid/ask), appending to lists that become numpy columns.
The resume baseline recomputes W_{k-1} by summing all k shocks with the same vectorized
counter-based generator in chunks, which is what resuming costs without the block construction.
"""

from __future__ import annotations

import math
import random
import sys
import time

import numpy as np

from hft_pipeline.ingest.feeds import simulator as sim
from hft_pipeline.ingest.feeds.simulator import SimulatorFeed, generate, instrument_for, interval_ns

N_SYMBOLS = 150
SYMBOLS = tuple(f"SYM{i:03d}" for i in range(N_SYMBOLS))
RATE = 1_000_000.0
T0 = 1_700_000_000_000_000_000
BASELINE = "per-tick Python loop (random.gauss walk) into lists, then numpy arrays"


def _row(benchmark, metric, value, unit, baseline_value, target, met, baseline=BASELINE) -> dict:
    ratio = None
    if baseline_value:
        # time-like metrics: smaller is better
        ratio = baseline_value / value if unit in ("ms", "s") else value / baseline_value
    return {
        "benchmark": benchmark,
        "metric": metric,
        "value": float(value),
        "unit": unit,
        "baseline": baseline if baseline_value is not None else None,
        "baseline_value": None if baseline_value is None else float(baseline_value),
        "ratio": ratio,
        "target": target,
        "met": met,
    }


def _naive(symbol: str, n: int, rng: random.Random) -> dict[str, np.ndarray]:
    """The same walk, one tick per loop iteration: the straightforward way to write a simulator."""
    inst = instrument_for(symbol)
    step = interval_ns(RATE, N_SYMBOLS)
    ts, seq, price, volume, bid, ask = [], [], [], [], [], []
    w = 0.0
    for k in range(n):
        n_ticks = max(1, round(inst.p0_ticks * math.exp(inst.sigma * w)))
        below = rng.random() < 0.5
        spread = 1 if rng.random() < 0.5 else 2
        b = max(n_ticks - below, 1)
        ts.append(T0 + k * step + int(rng.random() * (step // 2)))
        seq.append(k)
        price.append(n_ticks / inst.inv_tick)
        volume.append(inst.lot * (1 + math.floor(-math.log(1.0 - rng.random()) * inst.lots_mean)))
        bid.append(b / inst.inv_tick)
        ask.append((b + spread) / inst.inv_tick)
        w += rng.gauss(0.0, 1.0)
    return {
        "ts": np.array(ts, np.int64),
        "seq": np.array(seq, np.int64),
        "price": np.array(price),
        "volume": np.array(volume),
        "bid": np.array(bid),
        "ask": np.array(ask),
    }


def _bulk(per_symbol: int) -> float:
    start = time.perf_counter()
    total = 0
    for s in SYMBOLS:
        total += len(generate(0, s, 0, per_symbol, RATE, N_SYMBOLS, T0))
    return total / (time.perf_counter() - start)


def _naive_rate(per_symbol: int) -> float:
    rng = random.Random(0)
    start = time.perf_counter()
    total = 0
    for s in SYMBOLS:
        total += len(_naive(s, per_symbol, rng)["ts"])
    return total / (time.perf_counter() - start)


def _stream(seconds: float) -> tuple[float, int]:
    """Ticks/s of compute for the paced feed at RATE over 150 symbols, polled every 2 ms."""
    feed = SimulatorFeed(SYMBOLS, include_defaults=False, seed=0, rate=RATE)
    now, stop, emitted = T0, T0 + int(seconds * 1e9), 0
    start = time.perf_counter()
    while now <= stop:
        batch, _ = feed.poll(now)
        emitted += len(batch)
        now += 2_000_000
    return emitted / (time.perf_counter() - start), emitted


def _resume_ms(k: int) -> float:
    start = time.perf_counter()
    generate(0, "PETR4", k, k + 1, RATE, N_SYMBOLS, T0)
    return (time.perf_counter() - start) * 1e3


def _resume_by_summing_ms(k: int) -> float:
    """W_{k-1} by summing k shocks in 1M chunks: the cost the block construction avoids."""
    key = sim.stream_key(0, "PETR4", sim._STREAM_SHOCK)
    start = time.perf_counter()
    total = 0.0
    for lo in range(0, k, 1 << 20):
        total += float(sim._normal(key, np.arange(lo, min(k, lo + (1 << 20)))).sum())
    return (time.perf_counter() - start) * 1e3


def run(quick: bool = False) -> list[dict]:
    """Benchmark rows (see benchmarks/README.md)."""
    per_symbol = 10_000 if quick else 100_000
    naive_per_symbol = 1_000 if quick else 10_000
    _bulk(1_000)  # warm up numpy paths
    bulk = _bulk(per_symbol)
    naive = _naive_rate(naive_per_symbol)
    stream, emitted = _stream(0.5 if quick else 5.0)
    k_resume = 10**8 if quick else 10**9
    k_sum = 10**7 if quick else 10**8
    resume = min(_resume_ms(k_resume) for _ in range(3))
    summing = _resume_by_summing_ms(k_sum) * (k_resume / k_sum)
    name = f"simulator_{N_SYMBOLS}_symbols"
    return [
        _row(
            f"{name}_bulk", "throughput", bulk, "ticks/s", naive, ">= 1000000 ticks/s", bulk >= 1e6
        ),
        _row(
            f"{name}_stream_1M_per_s",
            "throughput",
            stream,
            "ticks/s",
            naive,
            ">= 1000000 ticks/s",
            stream >= 1e6 and emitted > 0,
        ),
        _row(
            f"simulator_resume_at_k_{k_resume:.0e}",
            "latency",
            resume,
            "ms",
            summing,
            "<= 100 ms",
            resume <= 100,
            baseline=f"summing all k shocks in 1M chunks (measured at k={k_sum:.0e}, scaled linearly)",
        ),
    ]


def _print_table(rows: list[dict]) -> None:
    header = f"{'benchmark':<38} {'metric':<11} {'value':>14} {'unit':<8} {'baseline':>14} {'ratio':>8} {'target':<20} met"
    print(header)
    print("-" * len(header))
    for r in rows:
        base = "" if r["baseline_value"] is None else f"{r['baseline_value']:14,.1f}"
        ratio = "" if r["ratio"] is None else f"{r['ratio']:8.1f}"
        print(
            f"{r['benchmark']:<38} {r['metric']:<11} {r['value']:14,.1f} {r['unit']:<8} "
            f"{base:>14} {ratio:>8} {r['target'] or '':<20} {'' if r['met'] is None else r['met']}"
        )
    for r in rows:
        print(f"baseline of {r['benchmark']}: {r['baseline']}")


if __name__ == "__main__":
    _print_table(run(quick="--quick" in sys.argv[1:]))
