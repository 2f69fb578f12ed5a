"""PostgreSQL outages through a loopback TCP proxy: errors while cut, self-recovery, no partial writes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from hft_pipeline.market.ticks import TickBatch
from hft_pipeline.store import StoreUnavailableError
from hft_pipeline.store.migrations import load_migrations
from hft_pipeline.store.postgres import PostgresStore
from hft_pipeline_tests.store.tcp_proxy import TcpProxy, proxied_dsn

T0 = 1_710_109_800 * 1_000_000_000


def batch(first_seq: int, n: int = 50) -> TickBatch:
    seqs = list(range(first_seq, first_seq + n))
    return TickBatch.from_columns(
        "R_100",
        [T0 + s * 1_000_000 for s in seqs],
        seqs,
        [100.0 + s for s in seqs],
        [1.0] * n,
        [99.0 + s for s in seqs],
        [float("nan")] * n,
    )


def retry(call: Callable[[], object], deadline_s: float = 60.0) -> object:
    """Call until it stops raising StoreUnavailableError, as the ingest persister does."""
    give_up = time.monotonic() + deadline_s
    while True:
        try:
            return call()
        except StoreUnavailableError:
            if time.monotonic() > give_up:
                raise
            time.sleep(0.2)


@pytest.fixture
def proxy(pg_dsn: str) -> Iterator[TcpProxy]:
    with TcpProxy.for_dsn(pg_dsn) as running:
        yield running


@pytest.fixture
def store(pg_dsn: str, proxy: TcpProxy) -> Iterator[PostgresStore]:
    opened = PostgresStore(
        proxied_dsn(pg_dsn, proxy.port), pool_size=4, connect_timeout=2, pool_timeout=2
    )
    opened.migrate()
    try:
        yield opened
    finally:
        opened.close()


def direct(pg_dsn: str, sql: str) -> list[tuple]:
    """Ask the server past the proxy: what is really stored."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def stored(pg_dsn: str) -> tuple[list[int], int]:
    seqs = [row[0] for row in direct(pg_dsn, "select seq from ticks order by seq")]
    offset = direct(pg_dsn, 'select coalesce(max("offset"), 0) from consumer_offsets')[0][0]
    return seqs, offset


def test_cut_raises_unavailable_then_recovers(
    pg_dsn: str, proxy: TcpProxy, store: PostgresStore
) -> None:
    store.write_ticks(batch(1), 1)
    proxy.cut()

    for call in (
        lambda: store.write_ticks(batch(51), 2),
        store.ping,
        store.log_offset,
        lambda: store.read_ticks("R_100"),
        lambda: store.candles("R_100", "1m"),
        store.last_seqs,
        store.watermark,
        store.subscriptions,
    ):
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="unavailable"):
            call()
        assert time.monotonic() - started < 15  # short timeouts, no hang
    assert stored(pg_dsn) == (list(range(1, 51)), 1)

    proxy.restore()
    retry(lambda: store.write_ticks(batch(51), 2))
    assert stored(pg_dsn) == (list(range(1, 101)), 2)
    assert store.log_offset() == 2
    assert store.last_seqs() == {"R_100": 100}
    assert store.read_ticks("R_100")["seq"].tolist() == list(range(1, 101))


def test_connection_lost_before_commit_leaves_nothing(
    pg_dsn: str, proxy: TcpProxy, store: PostgresStore
) -> None:
    store.write_ticks(batch(1), 1)
    fired = proxy.cut_at(b"COMMIT", after=b"copy ticks", deliver=False)
    with pytest.raises(StoreUnavailableError):
        store.write_ticks(batch(51), 2)
    assert fired.is_set()
    # The server saw COPY and the offset upsert but never COMMIT: it rolled everything back.
    assert stored(pg_dsn) == (list(range(1, 51)), 1)
    assert direct(pg_dsn, "select max_seq, rows from symbol_stats") == [(50, 50)]

    proxy.restore()
    retry(lambda: store.write_ticks(batch(51), 2))
    assert stored(pg_dsn) == (list(range(1, 101)), 2)


def test_commit_without_answer_is_not_written_twice(
    pg_dsn: str, proxy: TcpProxy, store: PostgresStore
) -> None:
    store.write_ticks(batch(1), 1)
    fired = proxy.cut_at(b"COMMIT", after=b"copy ticks", deliver=True)
    with pytest.raises(StoreUnavailableError):
        store.write_ticks(batch(51), 2)
    assert fired.is_set()
    # The server committed; the client only saw the connection die.
    assert stored(pg_dsn) == (list(range(1, 101)), 2)

    proxy.restore()
    retry(lambda: store.write_ticks(batch(51), 2))  # the persister's retry of the same batch
    assert stored(pg_dsn) == (list(range(1, 101)), 2)  # exactly once, no duplicates
    assert direct(pg_dsn, "select max_seq, rows from symbol_stats") == [(100, 100)]

    store.write_ticks(batch(101), 3)  # and writing goes on normally
    assert stored(pg_dsn) == (list(range(1, 151)), 3)


def test_store_opened_while_server_is_down_starts_working_later(
    pg_dsn: str, proxy: TcpProxy
) -> None:
    proxy.cut()
    late = PostgresStore(
        proxied_dsn(pg_dsn, proxy.port), pool_size=2, connect_timeout=2, pool_timeout=2
    )
    try:
        with pytest.raises(StoreUnavailableError):
            late.migrate()
        with pytest.raises(StoreUnavailableError):
            late.ping()
        proxy.restore()
        assert retry(late.migrate) == [m.version for m in load_migrations("postgres")]
        late.write_ticks(batch(1, 5), 1)
        assert late.read_ticks("R_100")["seq"].tolist() == [1, 2, 3, 4, 5]
    finally:
        late.close()


def test_proxied_dsn_keeps_credentials_and_database() -> None:
    assert (
        proxied_dsn("postgresql://u:p@db.example:5433/ticks?sslmode=disable", 6000)
        == "postgresql://u:p@127.0.0.1:6000/ticks?sslmode=disable"
    )
    assert proxied_dsn("postgresql://localhost/x", 7) == "postgresql://127.0.0.1:7/x"
