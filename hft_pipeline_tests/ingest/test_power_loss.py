"""The log and the store disagree after a power loss or a cut log: the service starts, stores
nothing twice and loses nothing it acknowledged."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import psycopg
import requests

from hft_pipeline.ingest.ticklog import TickLog
from hft_pipeline.market.ticks import TickBatch
from hft_pipeline.settings import Settings
from hft_pipeline.store import open_store
from hft_pipeline_tests.ingest.harness import (
    ScriptedFeed,
    free_port,
    running_service,
    start_ingest,
)

T0 = (time.time_ns() // 10**9 - 600) * 10**9


def batch(seq0: int, n: int) -> TickBatch:
    k = np.arange(seq0, seq0 + n)
    return TickBatch.from_columns("PETR4", T0 + k * 1_000_000, k, 20 + (k % 3) / 10, np.ones(n))


def record_ends(log_dir: Path) -> list[int]:
    """The end offset of every record in the log, in order."""
    with TickLog(log_dir) as ticklog:
        return [end for _, end in ticklog.replay(ticklog.start_offset, max_ticks=1)]


def cut_log(log_dir: Path, offset: int) -> None:
    """Truncate the log at `offset` (a record boundary), as a power loss or a hand would."""
    segments = sorted(log_dir.glob("*.log"))
    for path in segments:
        base = int(path.stem)
        size = path.stat().st_size
        if base >= offset and base != int(segments[0].stem):
            path.unlink()
        elif base <= offset < base + size:
            os.truncate(path, offset - base)


def stored_seqs(settings: Settings, symbol: str = "PETR4") -> list[int]:
    store = open_store(settings.resolved_store_url)
    try:
        return store.read_ticks(symbol)["seq"].tolist()
    finally:
        store.close()


def test_log_ending_before_the_store_offset_starts_and_stores_nothing_twice(tmp_path):
    settings = Settings(home=tmp_path / "home", symbols=("PETR4",))
    feed = ScriptedFeed([batch(i * 1000, 1000) for i in range(5)])
    with running_service(settings, feed=feed) as svc:
        svc.wait(lambda: svc.service.counters.accepted == 5000 and svc.service.pending_ticks == 0)
    ends = record_ends(settings.log_dir)
    assert len(ends) == 5
    cut_log(settings.log_dir, ends[2])  # the last two records are gone, but stored

    # The feed resends what the log lost (already stored) and then new ticks.
    feed = ScriptedFeed([batch(3000, 2000), batch(5000, 1000)])
    with running_service(settings, feed=feed) as svc:
        svc.wait(lambda: svc.service.counters.received == 3000 and svc.service.pending_ticks == 0)
        status = svc.get("/status").json()
        assert status["recovery"]["replayed_ticks"] == 3000
        assert status["recovery"]["store_ahead_bytes"] == ends[4] - ends[2]
        assert status["ticks"]["duplicates"] == 2000
        assert status["ticks"]["accepted"] == 1000
        assert svc.get("/health").status_code == 200
    assert stored_seqs(settings) == list(range(6000))


def test_store_offset_never_passes_the_durable_log(tmp_path):
    """The persister commits only fsynced offsets, so a power loss (the log cut at its durable
    offset) can never leave the store ahead of the log."""
    settings = Settings(home=tmp_path / "home", symbols=("PETR4",), log_fsync_interval_ms=2000)
    feed = ScriptedFeed([batch(0, 1000)])
    with running_service(settings, feed=feed) as svc:
        svc.wait(lambda: svc.service.pending_ticks == 0 and svc.service.counters.accepted == 1000)
        ticklog = svc.service.log
        assert svc.service.persister.offset <= ticklog.durable_offset
        for i in range(1, 20):
            feed.push(batch(i * 1000, 1000))
            time.sleep(0.01)
            assert svc.service.persister.offset <= ticklog.durable_offset
        svc.wait(lambda: svc.service.pending_ticks == 0)
        assert svc.service.persister.offset == ticklog.durable_offset == ticklog.end_offset


SEED, RATE = 5, 4000


def _start(home: Path, dsn: str, port: int, fsync: str) -> subprocess.Popen:
    args = ("--seed", str(SEED), "--rate", str(RATE), "--symbols", "PETR4,VALE3")
    return start_ingest(home, dsn, port, *args, env={"HFT_LOG_FSYNC": fsync})


def _store_offset(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.execute('select max("offset") from consumer_offsets').fetchone()[0])


def test_power_loss_under_each_fsync_policy_starts_with_no_duplicate(pg_dsn, tmp_path):
    """kill -9, then cut the log as a power loss would: at the store's offset (the most a
    power loss can take under "interval": the store never passes the durable offset) and,
    for fsync "off", below it (the store then holds records the log lost)."""
    for fsync, below in (("interval", 0), ("off", 3)):
        home = tmp_path / fsync
        port = free_port()
        proc = _start(home, pg_dsn, port, fsync)
        time.sleep(2.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
        ends = record_ends(home / "ticklog")
        offset = _store_offset(pg_dsn)
        persisted = [e for e in ends if e <= offset]
        assert len(persisted) > below
        cut_log(home / "ticklog", persisted[-1 - below])

        port = free_port()
        proc = _start(home, pg_dsn, port, fsync)
        status = requests.get(f"http://127.0.0.1:{port}/status", timeout=5).json()
        if below:
            assert status["recovery"]["store_ahead_bytes"] > 0
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "stopped cleanly" in out, out
        with psycopg.connect(pg_dsn) as conn:
            for symbol in ("PETR4", "VALE3"):
                seqs = [
                    r[0]
                    for r in conn.execute(
                        "select seq from ticks t join symbols s on s.id = t.symbol_id "
                        "where s.name = %s order by seq",
                        (symbol,),
                    ).fetchall()
                ]
                assert seqs == list(range(len(seqs))), f"{fsync}/{symbol}: holes or duplicates"
            conn.execute("truncate ticks, consumer_offsets, subscriptions, symbols cascade")
            conn.commit()
