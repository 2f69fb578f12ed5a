"""Shared workload for the ingest benchmarks: simulator ticks, a scratch PostgreSQL database, rows.

Not a benchmark itself (the runner only imports the modules it lists).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psycopg

from hft_pipeline.ingest.feeds.simulator import generate
from hft_pipeline.market.ticks import TickBatch, concat_batches

SEED = 7


def symbol_names(n: int) -> list[str]:
    """`n` simulator symbol names: B3-like tickers SIM000, SIM001, ..."""
    return [f"SIM{i:03d}" for i in range(n)]


def simulator_ticks(
    symbols: list[str], ticks_per_symbol: int, rate: float, t0: int, k_start: int = 0
) -> TickBatch:
    """Ticks k_start..k_start+ticks_per_symbol of every symbol, merged in time order (one batch).

    `rate` is the total ticks/s over all symbols, so the stream spans ticks_per_symbol *
    len(symbols) / rate seconds from t0.
    """
    parts = [
        generate(SEED, s, k_start, k_start + ticks_per_symbol, rate, len(symbols), t0)
        for s in symbols
    ]
    merged = concat_batches(parts)
    # Time order across symbols, as a feed delivers them (stable: per-symbol order is kept).
    return merged.take(np.argsort(merged.ts, kind="stable"))


def split(batch: TickBatch, size: int) -> list[TickBatch]:
    """`batch` cut into consecutive batches of `size` ticks (the last may be shorter)."""
    return [batch.take(np.arange(i, min(i + size, len(batch)))) for i in range(0, len(batch), size)]


def server_dsn() -> str:
    """The PostgreSQL server to benchmark against ($HFT_BENCH_PG_DSN, $HFT_TEST_PG_DSN, local)."""
    return (
        os.environ.get("HFT_BENCH_PG_DSN")
        or os.environ.get("HFT_TEST_PG_DSN")
        or "postgresql://postgres@127.0.0.1:5432/postgres"
    )


@contextmanager
def scratch_database(prefix: str = "hft_bench") -> Iterator[str]:
    """A fresh PostgreSQL database for the duration of the block (dropped afterwards); yields its DSN."""
    server = server_dsn()
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'create database "{name}"')
    try:
        yield urlunsplit(urlsplit(server)._replace(path="/" + name))
    finally:
        with psycopg.connect(server, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


def percentiles(values: np.ndarray, qs: tuple[float, ...] = (50, 95, 99)) -> dict[float, float]:
    """Percentiles of `values` (linear interpolation), keyed by q."""
    if len(values) == 0:
        return dict.fromkeys(qs, float("nan"))
    got = np.percentile(np.asarray(values, dtype=np.float64), qs)
    return {q: float(v) for q, v in zip(qs, got, strict=True)}


def row(
    benchmark: str,
    metric: str,
    value: float,
    unit: str,
    *,
    baseline: str | None = None,
    baseline_value: float | None = None,
    ratio: float | None = None,
    target: str | None = None,
    met: bool | None = None,
) -> dict:
    """One result row in the format every benchmark module returns."""
    return {
        "benchmark": benchmark,
        "metric": metric,
        "value": float(value),
        "unit": unit,
        "baseline": baseline,
        "baseline_value": None if baseline_value is None else float(baseline_value),
        "ratio": None if ratio is None else float(ratio),
        "target": target,
        "met": met,
    }


def print_rows(rows: list[dict]) -> None:
    """Print benchmark rows as an aligned text table."""
    header = ("benchmark", "metric", "value", "unit", "baseline", "ratio", "target", "met")

    def fmt(v: float | None) -> str:
        if v is None:
            return ""
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"

    table = [header] + [
        (
            r["benchmark"],
            r["metric"],
            fmt(r["value"]),
            r["unit"],
            "" if r["baseline"] is None else f"{r['baseline']}: {fmt(r['baseline_value'])}",
            "" if r["ratio"] is None else f"{r['ratio']:.2f}x",
            r["target"] or "",
            "" if r["met"] is None else ("yes" if r["met"] else "NO"),
        )
        for r in rows
    ]
    widths = [max(len(str(t[i])) for t in table) for i in range(len(header))]
    for t in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(t, widths, strict=True)))


def now_ns() -> int:
    return time.time_ns()
