"""The service starts while its store is down: feeds run, ticks are logged and served from
memory, /health says why it is degraded, and migrations and the drain happen once the store is
reachable (through a loopback proxy that is off at start)."""

from __future__ import annotations

import signal
import subprocess
import time

import numpy as np
import psycopg
import requests

from hft_pipeline.market.ticks import TickBatch
from hft_pipeline.settings import Settings
from hft_pipeline_tests.ingest.harness import (
    ScriptedFeed,
    free_port,
    running_service,
    start_ingest,
)
from hft_pipeline_tests.store.tcp_proxy import TcpProxy, proxied_dsn

T0 = (time.time_ns() // 10**9 - 300) * 10**9


def batch(seq0: int, n: int, symbol: str = "PETR4") -> TickBatch:
    k = np.arange(seq0, seq0 + n)
    return TickBatch.from_columns(
        symbol, T0 + k * 1_000_000, k, 38 + (k % 7) / 100, np.full(n, 100.0)
    )


def proxy_for(dsn: str) -> TcpProxy:
    return TcpProxy.for_dsn(dsn)


def tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "select tablename from pg_tables where schemaname = current_schema()"
        ).fetchall()
    return {r[0] for r in rows}


def test_starts_with_the_store_down_serves_memory_then_migrates_and_drains(pg_dsn, tmp_path):
    feed = ScriptedFeed([batch(0, 1000)])
    with proxy_for(pg_dsn) as proxy:
        proxy.cut()  # off before the service starts
        settings = Settings(
            home=tmp_path / "home",
            store_url=proxied_dsn(pg_dsn, proxy.port),
            symbols=("PETR4",),
            persist_retry_initial_s=0.05,
            persist_retry_max_s=0.2,
        )
        with running_service(settings, feed=feed) as svc:
            svc.wait(lambda: svc.service.counters.accepted == 1000)
            health = svc.get("/health")
            assert health.status_code == 503
            [problem] = health.json()["problems"]
            assert problem.startswith("store not reached since start")
            status = svc.get("/status").json()
            assert status["status"] == "degraded"
            assert status["persistence"]["store_connected"] is False
            assert status["persistence"]["pending_ticks"] == 1000
            assert "schema_migrations" not in tables(pg_dsn)  # nothing reached the server
            ticks = svc.get("/ticks/PETR4", limit=3)
            assert ticks.status_code == 200
            body = ticks.json()
            assert body["source"] == "memory" and [r["seq"] for r in body["data"]] == [
                999,
                998,
                997,
            ]
            feed.push(batch(1000, 500))
            subscribed = svc.post("/subscribe", {"symbol": "VALE3", "exchange": "B3"})
            assert subscribed.status_code == 200
            feed.push(batch(0, 200, "VALE3"))
            svc.wait(lambda: svc.service.counters.accepted == 1700)
            assert svc.get("/status").json()["persistence"]["pending_ticks"] == 1700

            proxy.restore()
            svc.wait(lambda: svc.service.store_ready and svc.service.pending_ticks == 0, 60)
            assert svc.get("/health").status_code == 200
            assert svc.get("/status").json()["persistence"]["persisted_ticks"] == 1700
    assert {"schema_migrations", "ticks", "subscriptions"} <= tables(pg_dsn)
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "select s.name, t.seq from ticks t join symbols s on s.id = t.symbol_id "
            "order by s.name, t.seq"
        ).fetchall()
        subs = conn.execute("select symbol, exchange from subscriptions order by 1").fetchall()
    assert [seq for name, seq in rows if name == "PETR4"] == list(range(1500))
    assert [seq for name, seq in rows if name == "VALE3"] == list(range(200))
    assert subs == [("PETR4", "SIM"), ("VALE3", "B3")]


def _start(home, dsn: str, port: int) -> subprocess.Popen:
    args = ("--seed", "11", "--rate", "3000", "--symbols", "PETR4,VALE3")
    return start_ingest(home, dsn, port, *args, ready="/test")  # healthy or not


def _status(port: int) -> dict:
    return requests.get(f"http://127.0.0.1:{port}/status", timeout=5).json()


def _until(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def test_kill_9_during_an_outage_then_restart_while_still_down_loses_nothing(pg_dsn, tmp_path):
    home = tmp_path / "home"
    with proxy_for(pg_dsn) as proxy:
        dsn = proxied_dsn(pg_dsn, proxy.port)
        port = free_port()
        proc = _start(home, dsn, port)
        _until(lambda: _status(port)["persistence"]["persisted_ticks"] > 1000)
        proxy.cut()
        _until(lambda: _status(port)["persistence"]["pending_ticks"] > 3000)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()

        port = free_port()
        proc = _start(home, dsn, port)  # the store is still down: it must start anyway
        status = _status(port)
        assert status["persistence"]["store_connected"] is False
        assert status["recovery"]["replayed_ticks"] > 3000
        before = status["ticks"]["accepted"]
        _until(lambda: _status(port)["ticks"]["accepted"] > before + 1000)  # the feed runs
        health = requests.get(f"http://127.0.0.1:{port}/health", timeout=5)
        assert health.status_code == 503 and "store not reached" in health.json()["problems"][0]

        proxy.restore()
        _until(lambda: _status(port)["persistence"]["store_connected"])
        _until(lambda: _status(port)["persistence"]["pending_ticks"] < 3000)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "stopped cleanly" in out, out
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
            assert len(seqs) > 1000
            assert seqs == list(range(len(seqs))), f"{symbol}: holes or duplicates"
