"""Streams with out-of-order, late and duplicate ticks through the real service into PostgreSQL.

Stored ticks must equal the accepted ticks exactly, and candles served by the API must equal
`date_bin` aggregates computed by PostgreSQL from what was stored.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import psycopg
import pytest

from hft_pipeline.market.ticks import TickBatch
from hft_pipeline.market.timeframes import PG_INTERVALS, TIMEFRAMES
from hft_pipeline.settings import Settings
from hft_pipeline.store import open_store
from hft_pipeline_tests.ingest.harness import ScriptedFeed, running_service

SYMBOLS = ("PETR4", "R_100", "frxEURUSD")


def messy_stream(seed: int, n_per_symbol: int = 1500) -> tuple[list[TickBatch], pd.DataFrame]:
    """Batches as a feed would deliver them, and the unique ticks they contain.

    Volumes are whole lots so sums are exact in any order (PostgreSQL sums in scan order).
    """
    rng = np.random.default_rng(seed)
    start = (time.time_ns() - 3 * 3600 * 10**9) // 10**9 * 10**9
    frames = []
    for s in SYMBOLS:
        gaps = rng.integers(1, 4 * 10**9, n_per_symbol)  # up to 4 s apart: spans ~1.6 h
        ts = start + np.cumsum(gaps)
        ts[rng.random(n_per_symbol) < 0.05] -= rng.integers(0, 30 * 10**9)  # ts out of order
        ts[:10] = np.sort(ts[:10])
        price = np.round(100 + np.cumsum(rng.normal(0, 0.05, n_per_symbol)), 2)
        frames.append(
            pd.DataFrame(
                {
                    "symbol": s,
                    "ts": ts,
                    "seq": np.arange(n_per_symbol),
                    "price": price,
                    "volume": rng.integers(1, 20, n_per_symbol).astype(float) * 100,
                }
            )
        )
    unique = pd.concat(frames, ignore_index=True)
    # arrival order: by seq-ish with local shuffles, some ticks held back (late), some re-sent
    arrival = unique.assign(key=unique.groupby("symbol").cumcount() + rng.normal(0, 3, len(unique)))
    late = rng.random(len(arrival)) < 0.02
    arrival.loc[late, "key"] += rng.integers(50, 400, late.sum())
    dups = arrival.sample(frac=0.05, random_state=seed).assign(
        key=lambda f: f["key"] + rng.integers(1, 100, len(f))
    )
    arrival = pd.concat([arrival, dups])
    # a symbol's first batch decides where its sequence starts (see Sequencer): send seq 0 first
    arrival.loc[arrival["seq"] == 0, "key"] = -1.0
    arrival = arrival.sort_values("key", kind="stable")
    batches, i = [], 0
    while i < len(arrival):
        n = int(rng.integers(1, 200))
        chunk = arrival.iloc[i : i + n]
        batches.append(TickBatch.from_frame(chunk))
        i += n
    return batches, unique


@pytest.mark.parametrize("seed", [1, 2])
def test_stream_into_postgres_matches_date_bin(pg_dsn, tmp_path, seed):
    batches, unique = messy_stream(seed)
    feed = ScriptedFeed(batches)
    settings = Settings(home=tmp_path / "home", store_url=pg_dsn, symbols=SYMBOLS)
    with running_service(settings, feed=feed) as svc:
        total = len(unique)
        svc.wait(lambda: svc.service.counters.accepted == total and svc.service.pending_ticks == 0)
        status = svc.get("/status").json()
        assert status["ticks"]["duplicates"] == sum(len(b) for b in batches) - total
        assert status["ticks"]["late"] > 0
        candles = {}
        for sym in SYMBOLS:
            for tf in TIMEFRAMES:
                body = svc.get(f"/ticks/{sym}", timeframe=tf, limit=100_000, order="asc").json()
                candles[sym, tf] = pd.DataFrame(body["data"])

    store = open_store(pg_dsn)
    try:
        for sym in SYMBOLS:
            got = store.read_ticks(sym).sort_values("seq").reset_index(drop=True)
            want = unique[unique.symbol == sym].sort_values("seq").reset_index(drop=True)
            assert got["seq"].tolist() == want["seq"].tolist()
            assert (got["ts"].to_numpy() == want["ts"].to_numpy()).all()
            assert (got["price"].to_numpy() == want["price"].to_numpy()).all()
            assert (got["volume"].to_numpy() == want["volume"].to_numpy()).all()
    finally:
        store.close()

    with psycopg.connect(pg_dsn) as conn:
        for sym in SYMBOLS:
            for tf, interval in PG_INTERVALS.items():
                rows = conn.execute(
                    f"""
                    select (extract(epoch from date_bin('{interval}', t.ts, 'epoch'::timestamptz))
                            * 1e9)::bigint as bucket,
                           (array_agg(price order by ts_ns, seq))[1],
                           max(price), min(price),
                           (array_agg(price order by ts_ns desc, seq desc))[1],
                           sum(volume), count(*)
                    from ticks t join symbols s on s.id = t.symbol_id
                    where s.name = %s group by 1 order by 1
                    """,
                    (sym,),
                ).fetchall()
                want = pd.DataFrame(
                    rows, columns=["ts", "open", "high", "low", "close", "volume", "ticks"]
                )
                got = candles[sym, tf][want.columns].astype({"ts": "int64", "ticks": "int64"})
                pd.testing.assert_frame_equal(got.reset_index(drop=True), want, check_dtype=False)
