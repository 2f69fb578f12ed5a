"""Admission control of the API's store queries: a bounded number run, the rest wait briefly or
get a 429 with Retry-After, and an abandoned query (client gone, timed out) stops in the store
while the persister keeps persisting."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psycopg
import pytest
import requests

from hft_pipeline.ingest import api
from hft_pipeline.ingest.admission import StoreGate, TooManyStoreQueries
from hft_pipeline.market.candles import resample_reference
from hft_pipeline.market.ticks import TickBatch
from hft_pipeline.settings import Settings
from hft_pipeline.store import open_store
from hft_pipeline_tests.ingest.harness import ScriptedFeed, running_service

NOW_S = int(time.time())
# SQLite counts to 10^8 in several seconds; a cancelled one stops at once.
SLOW_SQLITE = (
    "with recursive c(x) as (select 1 union all select x + 1 from c where x < 100000000) "
    "select count(*) from c"
)
SLOW_POSTGRES = "select pg_sleep(10)"


def ticks(symbol: str, n: int, start_s: int, seq0: int = 0) -> TickBatch:
    ts = start_s * 10**9 + np.arange(n) * 250_000_000  # 4 ticks/s
    price = np.round(50 + np.sin(np.arange(n) / 7), 2)
    return TickBatch.from_columns(symbol, ts, np.arange(seq0, seq0 + n), price, np.full(n, 1.5))


@pytest.fixture
def gates(monkeypatch: pytest.MonkeyPatch) -> list[StoreGate]:
    """The StoreGate of every app created during the test."""
    made: list[StoreGate] = []

    class Recorded(StoreGate):
        def __init__(self, **kw) -> None:
            super().__init__(**kw)
            made.append(self)

    monkeypatch.setattr(api, "StoreGate", Recorded)
    return made


def store_settings(kind: str, tmp_path, request: pytest.FixtureRequest, **kw) -> Settings:
    url = request.getfixturevalue("pg_dsn") if kind == "postgres" else ""
    return Settings(home=tmp_path / "home", symbols=("PETR4",), store_url=url, **kw)


def test_store_queries_beyond_the_limit_get_429_with_retry_after_while_persistence_continues(
    tmp_path, gates: list[StoreGate]
) -> None:
    first = ticks("PETR4", 1000, NOW_S - 600)
    feed = ScriptedFeed([first])
    settings = Settings(
        home=tmp_path / "home",
        symbols=("PETR4",),
        api_store_queries=1,
        api_store_queue=1,
        api_store_wait_ms=20_000,
    )
    with running_service(settings, feed=feed) as svc:
        service, gate = svc.service, gates[0]
        svc.wait(lambda: service.counters.accepted == 1000 and service.pending_ticks == 0)
        release, entered = threading.Event(), threading.Semaphore(0)
        read_ticks = service.store.read_ticks

        def slow_read(*args):
            entered.release()
            release.wait(30)
            return read_ticks(*args)

        service.store.read_ticks = slow_read
        # Oldest first: the ticks before memory's oldest come from the store.
        url = f"{svc.url}/ticks/PETR4?limit=10&order=asc"
        with ThreadPoolExecutor(6) as pool:
            running = pool.submit(requests.get, url, timeout=30)
            assert entered.acquire(timeout=10)
            waiting = pool.submit(requests.get, url, timeout=30)
            svc.wait(lambda: gate.waiting == 1)
            started = time.monotonic()
            more = [pool.submit(requests.get, url, timeout=30) for _ in range(3)]
            refused = [f.result() for f in more]
            refused += [requests.get(url, timeout=30) for _ in range(2)]
            assert time.monotonic() - started < 5  # refused at once, not queued
            for answer in refused:
                assert answer.status_code == 429, answer.text
                assert answer.headers["Retry-After"].isdigit()
                assert int(answer.headers["Retry-After"]) >= 1
                assert "store queries are running" in answer.json()["detail"]

            # The persister is not held up by the queries waiting for the store.
            persisted = service.persister.persisted_ticks
            feed.push(ticks("PETR4", 1000, NOW_S - 300, seq0=1000))
            svc.wait(lambda: service.counters.accepted == 2000 and service.pending_ticks == 0)
            assert service.persister.persisted_ticks == persisted + 1000
            assert not running.done() and not waiting.done()

            release.set()
            for answer in (running.result(), waiting.result()):
                assert answer.status_code == 200, answer.text
                assert [r["seq"] for r in answer.json()["data"]] == list(range(10))
        assert gate.stats.refused == 5 and gate.stats.admitted == 2
        assert gate.running == gate.waiting == 0


def _slow_query(store, kind: str, outcome: list) -> None:
    """Run a query that takes ~10 s on `store`'s connection for this thread; record how it ended."""
    try:
        if kind == "sqlite":
            store._conn().execute(SLOW_SQLITE).fetchone()
        else:
            with store._reader() as conn:
                conn.execute(SLOW_POSTGRES)
    except (sqlite3.OperationalError, psycopg.errors.QueryCanceled) as exc:
        outcome.append(exc)
        raise
    outcome.append("finished")


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_client_disconnect_cancels_its_store_query(
    kind: str, tmp_path, request: pytest.FixtureRequest, gates: list[StoreGate]
) -> None:
    first = ticks("PETR4", 1000, NOW_S - 600)
    with running_service(store_settings(kind, tmp_path, request), ScriptedFeed([first])) as svc:
        service, gate = svc.service, gates[0]
        svc.wait(lambda: service.counters.accepted == 1000 and service.pending_ticks == 0)
        store, read_ticks = service.store, service.store.read_ticks
        outcome: list = []
        started = threading.Event()

        def slow_read(*args):
            started.set()
            _slow_query(store, kind, outcome)
            return read_ticks(*args)

        store.read_ticks = slow_read
        path = "/ticks/PETR4?limit=5&order=asc"  # the oldest ticks: the store answers
        client = socket.create_connection(("127.0.0.1", int(svc.url.rsplit(":", 1)[1])))
        client.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        assert started.wait(10)
        time.sleep(0.2)  # the query is running in the store
        client.close()
        deadline = time.monotonic() + 3
        while not outcome and time.monotonic() < deadline:
            time.sleep(0.02)
        assert outcome, "the store query kept running after its client left"
        assert isinstance(outcome[0], sqlite3.OperationalError | psycopg.errors.QueryCanceled)
        svc.wait(lambda: gate.running == 0)
        assert gate.stats.cancelled == 1

        # The same store (connection, pool) answers the next request.
        store.read_ticks = read_ticks
        answer = svc.get("/ticks/PETR4", limit=5, order="asc")
        assert answer.status_code == 200
        assert [r["seq"] for r in answer.json()["data"]] == [0, 1, 2, 3, 4]
        if kind == "postgres":
            with psycopg.connect(store.url) as conn:
                sleeping = conn.execute(
                    "select count(*) from pg_stat_activity where state = 'active' and query = %s",
                    (SLOW_POSTGRES,),
                ).fetchone()[0]
            assert sleeping == 0


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_store_query_past_the_timeout_is_cancelled_with_503(
    kind: str, tmp_path, request: pytest.FixtureRequest, gates: list[StoreGate]
) -> None:
    first = ticks("PETR4", 1000, NOW_S - 600)
    settings = store_settings(kind, tmp_path, request, api_store_timeout_s=0.5)
    with running_service(settings, ScriptedFeed([first])) as svc:
        service, gate = svc.service, gates[0]
        svc.wait(lambda: service.counters.accepted == 1000 and service.pending_ticks == 0)
        store, read_ticks = service.store, service.store.read_ticks
        outcome: list = []

        def slow_read(*args):
            _slow_query(store, kind, outcome)
            return read_ticks(*args)

        store.read_ticks = slow_read
        started = time.monotonic()
        answer = svc.get("/ticks/PETR4", limit=5, order="asc")
        assert time.monotonic() - started < 3
        assert answer.status_code == 503
        assert int(answer.headers["Retry-After"]) >= 1
        assert "longer than 0.5 s" in answer.json()["detail"]
        assert outcome and outcome[0] != "finished"
        assert gate.stats.timed_out == 1 and gate.running == 0
        store.read_ticks = read_ticks
        again = svc.get("/ticks/PETR4", limit=5, order="asc")
        assert again.status_code == 200
        assert [r["seq"] for r in again.json()["data"]] == [0, 1, 2, 3, 4]


def test_1m_history_is_read_from_stored_minutes_not_aggregated_from_ticks(tmp_path) -> None:
    """The candles only the store holds come from candles_1m (an index read) and equal the
    resample of the stored ticks; the ticks are never aggregated per request."""
    history = ticks("PETR4", 2400, NOW_S - 1200)
    with running_service(Settings(home=tmp_path / "home", symbols=("PETR4",)),
                         ScriptedFeed([history])) as svc:  # fmt: skip
        service = svc.service
        svc.wait(lambda: service.counters.accepted == 2400 and service.pending_ticks == 0)
        calls = {"candles": 0, "minute_candles": 0}
        for name in calls:
            method = getattr(service.store, name)

            def counted(*args, _method=method, _name=name):
                calls[_name] += 1
                return _method(*args)

            setattr(service.store, name, counted)
        for timeframe in ("1m", "5m", "15m", "1h"):
            body = svc.get("/ticks/PETR4", timeframe=timeframe, limit=1000, order="asc").json()
            assert body["source"] in ("memory+store", "store"), body["source"]
            got = [(r["ts"], r["open"], r["high"], r["low"], r["close"], r["volume"], r["ticks"])
                   for r in body["data"]]  # fmt: skip
            want = resample_reference(service.store.read_ticks("PETR4"), timeframe)
            assert got == list(want.itertuples(index=False, name=None))
        assert calls["candles"] == 0 and calls["minute_candles"] >= 1


class _FakeStore:
    """A store whose queries block until released (StoreGate needs only query_scope)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.active = 0
        self.most_active = 0
        self.lock = threading.Lock()

    def query_scope(self, scope):
        from contextlib import nullcontext

        return nullcontext()

    def query(self) -> str:
        with self.lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        self.release.wait(10)
        with self.lock:
            self.active -= 1
        return "rows"


def test_gate_runs_at_most_max_running_and_queues_at_most_max_waiting() -> None:
    store = _FakeStore()
    gate = StoreGate(max_running=2, max_waiting=3, max_wait_s=10, timeout_s=10)

    async def main() -> list:
        calls = [asyncio.ensure_future(gate.run(store, store.query)) for _ in range(9)]
        await asyncio.sleep(0.2)
        assert (gate.running, gate.waiting) == (2, 3)
        store.release.set()
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(main())
    assert results.count("rows") == 5
    refused = [r for r in results if isinstance(r, TooManyStoreQueries)]
    assert len(refused) == 4 and all(r.status_code == 429 for r in refused)
    assert store.most_active == 2
    assert gate.stats.admitted == 5 and gate.stats.refused == 4
    gate.close()


def test_while_the_first_minute_forms_only_it_is_read_again(tmp_path) -> None:
    """Memory never completes the bucket of its first tick; while that bucket is the forming
    one, each answer reads just that bucket from the store, the older candles are kept."""
    minute = 60 * 10**9
    if time.time_ns() % minute > 45 * 10**9:  # room for the test inside one minute
        time.sleep((minute - time.time_ns() % minute) / 1e9 + 0.5)
    now = time.time_ns()
    forming = now // minute * minute
    settings = Settings(home=tmp_path / "home", symbols=("PETR4",))
    history = TickBatch.from_columns(
        "PETR4", forming - (30 - np.arange(30)) * minute, np.arange(30), 50.0 + np.arange(30),
        np.full(30, 2.0),
    )  # fmt: skip
    store = open_store(settings.resolved_store_url)
    store.write_ticks(history, len(history), stream="history")
    store.close()
    live = TickBatch.from_columns(
        "PETR4", np.linspace(forming, now, 20).astype(np.int64), np.arange(30, 50),
        np.linspace(60.0, 70.0, 20), np.full(20, 1.0),
    )  # fmt: skip
    with running_service(settings, ScriptedFeed([live])) as svc:
        service = svc.service
        svc.wait(lambda: service.counters.accepted == 20 and service.pending_ticks == 0)
        reads: list[tuple] = []
        minute_candles = service.store.minute_candles

        def counted(*args):
            reads.append(args)
            return minute_candles(*args)

        service.store.minute_candles = counted
        want = resample_reference(service.store.read_ticks("PETR4"), "1m")
        want = list(want.itertuples(index=False, name=None))[::-1]
        for answers in range(1, 4):
            body = svc.get("/ticks/PETR4", timeframe="1m", limit=1000).json()
            got = [(r["ts"], r["open"], r["high"], r["low"], r["close"], r["volume"], r["ticks"])
                   for r in body["data"]]  # fmt: skip
            assert got == want and len(got) == 31
            assert [r["closed"] for r in body["data"]] == [False] + [True] * 30
            # The first answer reads the forming minute and the 30 before; then only the former.
            assert [a[2] for a in reads] == [forming, None] + [forming] * (answers - 1)
