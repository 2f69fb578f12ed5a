"""The store goes away behind a loopback TCP proxy: nothing is lost, the backlog drains."""

from __future__ import annotations

import time

import numpy as np
import psycopg

from hft_pipeline.market.ticks import TickBatch
from hft_pipeline.settings import Settings
from hft_pipeline_tests.ingest.harness import ScriptedFeed, running_service
from hft_pipeline_tests.store.tcp_proxy import TcpProxy, proxied_dsn

T0 = (time.time_ns() // 10**9 - 300) * 10**9


def batch(seq0: int, n: int) -> TickBatch:
    k = np.arange(seq0, seq0 + n)
    return TickBatch.from_columns(
        "PETR4", T0 + k * 1_000_000, k, 38 + (k % 7) / 100, np.full(n, 100.0)
    )


def test_outage_raises_pending_then_drains_without_loss(pg_dsn, tmp_path):
    feed = ScriptedFeed()
    with TcpProxy.for_dsn(pg_dsn) as proxy:
        settings = Settings(
            home=tmp_path / "home",
            store_url=proxied_dsn(pg_dsn, proxy.port),
            symbols=("PETR4",),
            persist_retry_initial_s=0.05,
            persist_retry_max_s=0.2,
        )
        with running_service(settings, feed=feed) as svc:
            feed.push(batch(0, 1000))
            svc.wait(
                lambda: svc.service.pending_ticks == 0 and svc.service.counters.accepted == 1000
            )
            proxy.cut()
            seq = 1000
            pending_seen = []
            for _ in range(10):
                feed.push(batch(seq, 500))
                seq += 500
                time.sleep(0.1)
                pending_seen.append(svc.get("/status").json()["persistence"]["pending_ticks"])
            assert pending_seen[-1] == 5000 and pending_seen == sorted(pending_seen)
            svc.wait(lambda: not svc.service.persister.store_up)  # after the pool's connect timeout
            health = svc.get("/health")
            assert health.status_code == 503 and "store unavailable" in health.json()["problems"][0]
            metrics = svc.get("/metrics").text
            assert "hft_persist_pending_ticks 5000.0" in metrics
            assert svc.service.persister.retries > 0
            proxy.restore()
            svc.wait(lambda: svc.service.pending_ticks == 0, timeout=60)
            assert svc.get("/health").status_code == 200
    with psycopg.connect(pg_dsn) as conn:
        seqs = [r[0] for r in conn.execute("select seq from ticks order by seq").fetchall()]
    assert seqs == list(range(6000))
