"""`hft import` throughput and exactness: a CSV with 10 % bad rows imported into SQLite and
PostgreSQL, then imported again, against pandas reading the same file (the parse cost every
importer pays) in the same run.

Run: `.venv/bin/python -m benchmarks importer [--quick]` (PostgreSQL from $HFT_BENCH_PG_DSN,
else $HFT_TEST_PG_DSN, else postgresql://postgres@127.0.0.1:5432/postgres; a fresh database is
created and dropped).
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd
import psycopg

from hft_pipeline.ingest.importer import import_file
from hft_pipeline.settings import Settings

SYMBOLS = 150
FULL_ROWS = 1_000_000
QUICK_ROWS = 100_000
BAD_SHARE = 0.10


def _server_dsn() -> str:
    return (
        os.environ.get("HFT_BENCH_PG_DSN")
        or os.environ.get("HFT_TEST_PG_DSN")
        or "postgresql://postgres@127.0.0.1:5432/postgres"
    )


def write_file(path: Path, rows: int, seed: int = 3) -> int:
    """A shuffled CSV of `rows` ticks over SYMBOLS symbols; returns how many rows are good."""
    rng = np.random.default_rng(seed)
    sym = rng.integers(0, SYMBOLS, rows)
    t0 = (time.time_ns() // 10**9 - 86_400) * 10**9
    ts = t0 + np.sort(rng.integers(0, 80_000 * 10**9, rows))
    seq = np.empty(rows, np.int64)
    for s in range(SYMBOLS):
        mask = sym == s
        seq[mask] = np.arange(mask.sum())
    frame = pd.DataFrame(
        {
            "symbol": [f"SYM{s:03d}" for s in sym],
            "ts": ts,
            "price": np.round(rng.uniform(10, 500, rows), 2).astype(str),
            "volume": np.round(rng.uniform(0, 10, rows), 3),
            "seq": seq,
        }
    )
    bad = rng.random(rows) < BAD_SHARE
    kinds = rng.integers(0, 4, rows)
    frame.loc[bad & (kinds == 0), "price"] = "n/a"  # not a number
    frame.loc[bad & (kinds == 1), "price"] = "-1"  # not positive
    frame.loc[bad & (kinds == 2), "symbol"] = "BAD SYM"  # not a symbol
    frame.loc[bad & (kinds == 3), "ts"] = -5  # before the epoch
    frame = frame.sample(frac=1.0, random_state=seed)  # shuffled: seqs arrive out of order
    frame.to_csv(path, index=False)
    return int((~bad).sum())


def _import(path: Path, settings: Settings) -> tuple[float, int, int]:
    started = time.perf_counter()
    result = import_file(path, settings, progress=False)
    seconds = time.perf_counter() - started
    assert result.rows == result.accepted + result.duplicates + result.rejected_total
    return seconds, result.accepted, result.rows


def run(quick: bool = False) -> list[dict]:
    """Rows per second of `hft import` on each store, first run and re-run, vs pandas parsing."""
    rows = QUICK_ROWS if quick else FULL_ROWS
    out: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="hft-bench-import-") as tmp:
        path = Path(tmp) / "ticks.csv"
        good = write_file(path, rows)
        started = time.perf_counter()
        pd.read_csv(path, dtype={"symbol": str, "price": str})
        parse_s = time.perf_counter() - started
        parse_rate = rows / parse_s
        server = _server_dsn()
        name = f"hft_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(server, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'create database "{name}"')
        try:
            stores = {
                "sqlite": "",
                "postgres": urlunsplit(urlsplit(server)._replace(path="/" + name)),
            }
            for store, url in stores.items():
                settings = Settings(home=Path(tmp) / store, store_url=url)
                first_s, accepted, read = _import(path, settings)
                again_s, again_accepted, _ = _import(path, settings)
                label = f"{rows:,} shuffled rows, {BAD_SHARE:.0%} bad, {SYMBOLS} symbols"
                out.append(
                    {
                        "benchmark": "import",
                        "metric": f"{store}: rows/s ({label})",
                        "value": read / first_s,
                        "unit": "rows/s",
                        "baseline": "pandas read_csv of the same file",
                        "baseline_value": parse_rate,
                        "ratio": (read / first_s) / parse_rate,
                        "target": f"exactly {good:,} stored",
                        "met": accepted == good,
                    }
                )
                out.append(
                    {
                        "benchmark": "import",
                        "metric": f"{store}: re-import rows/s (adds 0 rows)",
                        "value": read / again_s,
                        "unit": "rows/s",
                        "baseline": "pandas read_csv of the same file",
                        "baseline_value": parse_rate,
                        "ratio": (read / again_s) / parse_rate,
                        "target": "0 rows added",
                        "met": again_accepted == 0,
                    }
                )
        finally:
            with psycopg.connect(server, autocommit=True) as conn:
                conn.execute(f'drop database if exists "{name}" with (force)')
    return out


if __name__ == "__main__":
    import sys

    from benchmarks.__main__ import table

    print(table(run(quick="--quick" in sys.argv)))
