"""kill -9 the real service mid-stream, restart it, and find every simulator tick stored once."""

from __future__ import annotations

import signal
import time

import numpy as np
import psycopg
import requests

from hft_pipeline.ingest.feeds.simulator import generate
from hft_pipeline.ingest.service import DEFAULT_SYMBOLS
from hft_pipeline_tests.ingest.harness import free_port, start_ingest

SEED, RATE = 7, 4000


def start(home, dsn, port):
    return start_ingest(home, dsn, port, "--seed", str(SEED), "--rate", str(RATE))


def accepted(port) -> int:
    return requests.get(f"http://127.0.0.1:{port}/status", timeout=5).json()["ticks"]["accepted"]


def test_kill_9_three_times_then_clean_stop_keeps_every_tick_once(pg_dsn, tmp_path):
    home = tmp_path / "home"
    rng = np.random.default_rng(3)
    for _ in range(3):
        port = free_port()
        proc = start(home, pg_dsn, port)
        time.sleep(float(rng.uniform(1.0, 2.5)))
        assert accepted(port) > 0
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
    port = free_port()
    proc = start(home, pg_dsn, port)
    status = requests.get(f"http://127.0.0.1:{port}/status", timeout=5).json()
    assert status["recovery"]["replayed_ticks"] > 0  # memory was rebuilt from the log
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "stopped cleanly" in out

    with psycopg.connect(pg_dsn) as conn:
        for symbol in DEFAULT_SYMBOLS:
            rows = conn.execute(
                "select seq, ts_ns, price, volume, bid, ask from ticks t join symbols s "
                "on s.id = t.symbol_id where s.name = %s order by seq",
                (symbol,),
            ).fetchall()
            seq = np.array([r[0] for r in rows])
            assert len(seq) > 100
            assert (seq == np.arange(len(seq))).all(), f"{symbol}: missing or duplicate seqs"
            want = generate(SEED, symbol, 0, len(seq), RATE, len(DEFAULT_SYMBOLS), t0=0)
            assert np.array_equal([r[2] for r in rows], want.price)
            assert np.array_equal([r[3] for r in rows], want.volume)
            ts = np.array([r[1] for r in rows])
            assert (np.diff(ts) > 0).all()
            # the schedule is t0 + k * interval + jitter(k): one constant offset from t0 = 0
            offsets = ts - want.ts
            assert (offsets == offsets[0]).all(), f"{symbol}: timestamps drifted across restarts"
