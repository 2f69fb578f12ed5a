"""Ring buffer memory: bytes per tick, and the RSS of a process holding 5 x 5,000,000 ticks.

The RSS is measured in a fresh subprocess (psutil) before and after filling the buffers, so the
interpreter and libraries are not counted. Baseline: the same ticks as a pandas DataFrame of the
full tick record (symbol as category, ts, seq, price, volume, bid, ask).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from hft_pipeline.ingest.buffers import BYTES_PER_TICK, TickBuffers
from hft_pipeline.market.ticks import TickBatch

ROOT = Path(__file__).resolve().parent.parent
SYMBOLS = ("R_10", "R_25", "R_50", "R_75", "R_100")

_CHILD = """
import json, sys, time
import numpy as np, psutil
from hft_pipeline.ingest.buffers import TickBuffers
from hft_pipeline.market.ticks import TickBatch

per_symbol, batch = int(sys.argv[1]), 100_000
symbols = ("R_10", "R_25", "R_50", "R_75", "R_100")
proc = psutil.Process()
buffers = TickBuffers(capacity_per_symbol=per_symbol, max_bytes=2 * 1024**3)
rng = np.random.default_rng(0)
rss0 = proc.memory_info().rss
elapsed = 0.0
for start in range(0, per_symbol, batch // len(symbols)):
    k = min(batch // len(symbols), per_symbol - start)
    n = k * len(symbols)
    sym = np.tile(np.arange(len(symbols), dtype=np.int32), k)
    seq = start + np.repeat(np.arange(k, dtype=np.int64), len(symbols))
    nan = np.full(n, np.nan)
    b = TickBatch(symbols, sym, 1_780_000_000_000_000_000 + seq * 1000, seq,
                  100 + rng.random(n), rng.random(n), nan, nan)
    t = time.perf_counter()
    buffers.append(b)
    elapsed += time.perf_counter() - t
rss1 = proc.memory_info().rss
ticks = sum(buffers.count(s) for s in symbols)
print(json.dumps({"ticks": ticks, "rss_delta": rss1 - rss0, "rss": rss1, "nbytes": buffers.nbytes,
                  "append_s": elapsed}))
"""


def _row(
    metric,
    value,
    unit,
    baseline=None,
    baseline_value=None,
    target=None,
    met=None,
    higher_better=False,
):
    ratio = None
    if baseline_value:
        ratio = value / baseline_value if higher_better else baseline_value / value
    return {
        "benchmark": "buffers",
        "metric": metric,
        "value": float(value),
        "unit": unit,
        "baseline": baseline,
        "baseline_value": None if baseline_value is None else float(baseline_value),
        "ratio": ratio,
        "target": target,
        "met": met,
    }


def pandas_bytes_per_tick(n: int = 1_000_000) -> float:
    """Bytes per tick of a pandas DataFrame holding the full tick record."""
    rng = np.random.default_rng(0)
    sym = np.tile(np.arange(len(SYMBOLS), dtype=np.int32), n // len(SYMBOLS))
    m = sym.shape[0]
    batch = TickBatch(
        SYMBOLS,
        sym,
        np.arange(m),
        np.arange(m),
        rng.random(m),
        rng.random(m),
        rng.random(m),
        rng.random(m),
    )
    frame = batch.to_frame()
    frame["symbol"] = frame["symbol"].astype("category")
    return float(frame.memory_usage(deep=True, index=False).sum()) / m


def measure_rss(per_symbol: int) -> dict:
    """Fill 5 symbols with `per_symbol` ticks each in a fresh process; its RSS growth and more."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(per_symbol)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> list[dict]:
    """Benchmark rows (see the module docstring)."""
    buffers = TickBuffers(capacity_per_symbol=100_000)
    k = 100_000
    buffers.append(
        TickBatch.from_columns("R_100", np.arange(k), np.arange(k), np.ones(k), np.ones(k))
    )
    per_tick = buffers.nbytes / buffers.count("R_100")
    baseline = pandas_bytes_per_tick(200_000 if quick else 1_000_000)
    per_symbol = 1_000_000 if quick else 5_000_000
    rss = measure_rss(per_symbol)
    rss_per_tick = rss["rss_delta"] / rss["ticks"]
    return [
        _row(
            "bytes per tick (allocated, full buffer)",
            per_tick,
            "B",
            "pandas DataFrame of full ticks",
            baseline,
            target=f"<= {BYTES_PER_TICK} B",
            met=per_tick <= BYTES_PER_TICK,
        ),
        _row(
            f"RSS growth holding 5 x {per_symbol:,} ticks",
            rss["rss_delta"] / 2**20,
            "MiB",
            "pandas DataFrame of full ticks",
            baseline * rss["ticks"] / 2**20,
        ),
        _row(
            "RSS growth per tick",
            rss_per_tick,
            "B",
            "pandas DataFrame of full ticks",
            baseline,
            target=f"<= {BYTES_PER_TICK * 1.1:.1f} B",
            met=rss_per_tick <= BYTES_PER_TICK * 1.1,
        ),
        _row(
            "append throughput, ordered batches of 100k",
            rss["ticks"] / rss["append_s"],
            "ticks/s",
            higher_better=True,
        ),
    ]


if __name__ == "__main__":
    from benchmarks.candles import print_table

    print_table(run(quick="--quick" in sys.argv))
