"""PostgreSQL write throughput: `PostgresStore.write_ticks` (numpy-built binary COPY + offset in
one transaction) against psycopg's binary COPY with `write_row` per row, same rows, same table.

Run: `.venv/bin/python -m benchmarks.store_copy [--quick]` (DSN from $HFT_BENCH_PG_DSN, else
$HFT_TEST_PG_DSN, else postgresql://postgres@127.0.0.1:5432/postgres). A fresh database is
created and dropped.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psycopg

from hft_pipeline.market.ticks import TickBatch
from hft_pipeline.store.copy import TICK_COPY_COLUMNS, encode_ticks
from hft_pipeline.store.postgres import PostgresStore

SYMBOLS = 150
BATCH = 2000
FULL_TICKS = 2_000_000
QUICK_TICKS = 200_000
T0 = 1_710_100_000 * 1_000_000_000  # 2024-03-10 19:46 UTC: a run crosses midnight (2 partitions)
TARGET_RATIO = 2.0

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_COPY_TYPES = ["int4", "timestamptz", "int8", "int8", "float8", "float8", "float8", "float8"]


def _server_dsn() -> str:
    return (
        os.environ.get("HFT_BENCH_PG_DSN")
        or os.environ.get("HFT_TEST_PG_DSN")
        or "postgresql://postgres@127.0.0.1:5432/postgres"
    )


def _with_db(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path="/" + name))


def make_batches(n_ticks: int, seed: int = 1) -> list[TickBatch]:
    """Batches of BATCH ticks over SYMBOLS symbols, ~10 % of bid/ask missing."""
    rng = np.random.default_rng(seed)
    names = tuple(f"SYM{i:03d}" for i in range(SYMBOLS))
    sym = rng.integers(0, SYMBOLS, n_ticks).astype(np.int32)
    ts = T0 + np.cumsum(rng.integers(1, 40_000_000, n_ticks)).astype(np.int64)  # ~50 ticks/s
    order = np.argsort(sym, kind="stable")
    seq = np.empty(n_ticks, np.int64)
    counts = np.bincount(sym, minlength=SYMBOLS)
    seq[order] = np.concatenate([np.arange(1, c + 1) for c in counts])
    price = np.round(rng.uniform(10, 500, n_ticks), 2)
    volume = np.round(rng.uniform(0, 10, n_ticks), 3)
    bid = np.where(rng.random(n_ticks) < 0.1, np.nan, price - 0.01)
    ask = np.where(rng.random(n_ticks) < 0.1, np.nan, price + 0.01)
    return [
        TickBatch(names, sym[s], ts[s], seq[s], price[s], volume[s], bid[s], ask[s])
        for s in (slice(i, i + BATCH) for i in range(0, n_ticks, BATCH))
    ]


def _rows(batch: TickBatch, ids: np.ndarray) -> list[tuple]:
    """The rows psycopg's write_row baseline sends (prepared outside its timer)."""
    when = [_EPOCH + timedelta(microseconds=us) for us in (batch.ts // 1000).tolist()]
    bid = [None if np.isnan(v) else v for v in batch.bid.tolist()]
    ask = [None if np.isnan(v) else v for v in batch.ask.tolist()]
    return list(
        zip(
            ids[batch.sym].tolist(),
            when,
            batch.ts.tolist(),
            batch.seq.tolist(),
            batch.price.tolist(),
            batch.volume.tolist(),
            bid,
            ask,
            strict=True,
        )
    )


def run(quick: bool = False) -> list[dict]:
    """Benchmark rows: write_ticks ticks/s vs psycopg write_row COPY, and encode-only ticks/s."""
    n_ticks = QUICK_TICKS if quick else FULL_TICKS
    batches = make_batches(n_ticks)
    server = _server_dsn()
    name = f"hft_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'create database "{name}"')
    dsn = _with_db(server, name)
    try:
        store = PostgresStore(dsn, pool_size=2)
        try:
            store.migrate()
            started, cpu_started = time.perf_counter(), time.process_time()
            for offset, batch in enumerate(batches, start=1):
                store.write_ticks(batch, offset)
            store_s = time.perf_counter() - started
            store_cpu = time.process_time() - cpu_started
            assert store.watermark().rows == n_ticks
        finally:
            store.close()

        with psycopg.connect(dsn) as conn:
            ids_by_name = dict(conn.execute("select name, id from symbols").fetchall())
            ids = np.array([ids_by_name[s] for s in batches[0].symbols], np.int32)
            conn.execute("truncate ticks")
            conn.commit()
            copy_sql = "copy ticks ({}) from stdin (format binary)".format(
                ", ".join(TICK_COPY_COLUMNS)
            )
            # The baseline starts from the same TickBatch as write_ticks, so turning columns
            # into row tuples is part of its cost, as numpy encoding is part of ours.
            started, cpu_started = time.perf_counter(), time.process_time()
            for batch in batches:
                rows = _rows(batch, ids)
                with conn.transaction(), conn.cursor() as cur, cur.copy(copy_sql) as copy:
                    copy.set_types(_COPY_TYPES)
                    for row in rows:
                        copy.write_row(row)
            baseline_s = time.perf_counter() - started
            baseline_cpu = time.process_time() - cpu_started
            copied = conn.execute("select count(*) from ticks").fetchone()[0]
            assert copied == n_ticks, copied

        started = time.perf_counter()
        for batch in batches:
            encode_ticks(
                ids[batch.sym], batch.ts, batch.seq, batch.price, batch.volume, batch.bid,
                batch.ask,
            )  # fmt: skip
        encode_s = time.perf_counter() - started
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')

    store_rate = n_ticks / store_s
    baseline_rate = n_ticks / baseline_s
    ratio = store_rate / baseline_rate
    label = f"{n_ticks:,} ticks, {SYMBOLS} symbols, batches of {BATCH}"
    return [
        {
            "benchmark": "store_copy",
            "metric": f"write_ticks throughput ({label})",
            "value": store_rate,
            "unit": "ticks/s",
            "baseline": "psycopg binary COPY, write_row per row, same rows/table, txn per batch",
            "baseline_value": baseline_rate,
            "ratio": ratio,
            "target": f">= {TARGET_RATIO:g}x baseline",
            "met": ratio >= TARGET_RATIO,
        },
        {
            "benchmark": "store_copy",
            "metric": "client CPU per tick (write_ticks vs write_row COPY)",
            "value": store_cpu / n_ticks * 1e6,
            "unit": "us/tick",
            "baseline": "psycopg binary COPY, write_row per row",
            "baseline_value": baseline_cpu / n_ticks * 1e6,
            "ratio": baseline_cpu / store_cpu,
            "target": None,
            "met": None,
        },
        {
            "benchmark": "store_copy",
            "metric": "binary COPY payload encoding (numpy, no I/O)",
            "value": n_ticks / encode_s,
            "unit": "ticks/s",
            "baseline": None,
            "baseline_value": None,
            "ratio": None,
            "target": None,
            "met": None,
        },
    ]


def _print(rows: list[dict]) -> None:
    header = ("metric", "value", "unit", "baseline_value", "ratio", "target", "met")
    table = [header] + [
        (
            r["metric"],
            f"{r['value']:,.2f}" if r["value"] < 100 else f"{r['value']:,.0f}",
            r["unit"],
            "" if r["baseline_value"] is None else f"{r['baseline_value']:,.2f}",
            "" if r["ratio"] is None else f"{r['ratio']:.2f}x",
            r["target"] or "",
            "" if r["met"] is None else str(r["met"]),
        )
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))


if __name__ == "__main__":
    _print(run(quick="--quick" in sys.argv[1:]))
