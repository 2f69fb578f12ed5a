import time

import numpy as np
import pandas as pd

from hft_pipeline.ingest.persister import Persister
from hft_pipeline.ingest.ticklog import TickLog
from hft_pipeline.market.ticks import TickBatch, concat_batches
from hft_pipeline.store.base import StoreUnavailableError
from hft_pipeline.store.sqlite import SqliteStore


def batches(n_batches=20, per_batch=333, symbols=("A", "B", "C")):
    rng = np.random.default_rng(7)
    out, seq = [], dict.fromkeys(symbols, 0)
    t = 1_790_000_000_000_000_000
    for _ in range(n_batches):
        names = rng.choice(symbols, per_batch)
        seqs = []
        for s in names:
            seqs.append(seq[s])
            seq[s] += 1
        ts = t + np.cumsum(rng.integers(1, 10_000_000, per_batch))
        t = int(ts[-1])
        out.append(
            TickBatch.from_columns(
                names,
                ts,
                seqs,
                np.round(rng.uniform(10, 20, per_batch), 2),
                rng.uniform(0, 5, per_batch),
            )
        )
    return out


def stored(store, symbols=("A", "B", "C")):
    frames = []
    for s in symbols:
        f = store.read_ticks(s)
        f.insert(0, "symbol", s)
        frames.append(f)
    return pd.concat(frames).sort_values(["symbol", "seq"]).reset_index(drop=True)


def expected(bs):
    f = concat_batches(bs).to_frame()
    return f.sort_values(["symbol", "seq"]).reset_index(drop=True)


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_persister_writes_every_tick_once_with_the_offset(tmp_path):
    log = TickLog(tmp_path / "log", fsync="off")
    store = SqliteStore(tmp_path / "s.sqlite3")
    store.migrate()
    p = Persister(log, store, batch_size=500, batch_timeout_s=0.02)
    p.start(store.log_offset())
    bs = batches()
    for b in bs:
        log.append(b)
        p.notify()
    assert wait_for(lambda: p.offset == log.end_offset)
    assert p.stop(5)
    assert store.log_offset() == log.end_offset
    got, want = stored(store), expected(bs)
    pd.testing.assert_frame_equal(
        got[want.columns.drop("bid").drop("ask")], want.drop(columns=["bid", "ask"])
    )
    assert p.persisted_ticks == sum(len(b) for b in bs)
    # batches follow the size rule: 6660 ticks in records of 333 -> writes of >= 500 except the tail
    assert p.batches <= len(bs)
    log.close()
    store.close()


def test_small_trickle_is_written_after_the_timeout(tmp_path):
    log = TickLog(tmp_path / "log", fsync="off")
    store = SqliteStore(tmp_path / "s.sqlite3")
    store.migrate()
    p = Persister(log, store, batch_size=2000, batch_timeout_s=0.05)
    p.start(0)
    log.append(batches(1, 10)[0])
    started = time.monotonic()
    assert wait_for(lambda: p.persisted_ticks == 10, timeout=5)
    assert time.monotonic() - started >= 0.04  # waited for more ticks before writing
    p.stop(1)
    log.close()
    store.close()


class FlakyStore:
    """Wraps a store; write_ticks fails while `down` is set (like a cut connection)."""

    def __init__(self, store):
        self.store = store
        self.down = True
        self.attempts = 0

    def write_ticks(self, batch, offset, stream="ticklog"):
        self.attempts += 1
        if self.down:
            raise StoreUnavailableError("connection refused (test)")
        self.store.write_ticks(batch, offset, stream)

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_store_outage_retries_with_backoff_and_loses_nothing(tmp_path):
    log = TickLog(tmp_path / "log", fsync="off")
    inner = SqliteStore(tmp_path / "s.sqlite3")
    inner.migrate()
    store = FlakyStore(inner)
    p = Persister(
        log, store, batch_size=100, batch_timeout_s=0.01, retry_initial_s=0.01, retry_max_s=0.05
    )
    p.start(0)
    bs = batches(5, 100)
    for b in bs:
        log.append(b)
    assert wait_for(lambda: p.retries >= 5)
    assert not p.store_up and inner.log_offset() == 0 and p.persisted_ticks == 0
    assert "connection refused" in p.last_error
    store.down = False
    assert wait_for(lambda: p.offset == log.end_offset)
    assert p.store_up and p.last_error is None
    p.stop(2)
    assert len(stored(inner)) == 500
    log.close()
    inner.close()


def test_stop_while_store_down_keeps_the_backlog_in_the_log(tmp_path):
    log = TickLog(tmp_path / "log", fsync="off")
    inner = SqliteStore(tmp_path / "s.sqlite3")
    inner.migrate()
    store = FlakyStore(inner)
    p = Persister(
        log, store, batch_size=100, batch_timeout_s=0.01, retry_initial_s=0.01, retry_max_s=0.02
    )
    p.start(0)
    log.append(batches(1, 50)[0])
    assert wait_for(lambda: p.retries >= 1)
    assert p.stop(0.2) is False  # deadline passed, nothing persisted, nothing dropped
    assert inner.log_offset() == 0
    store.down = False
    p2 = Persister(log, store, batch_size=100, batch_timeout_s=0.01)
    p2.start(inner.log_offset())
    assert wait_for(lambda: p2.persisted_ticks == 50)
    p2.stop(1)
    log.close()
    inner.close()


class RecordingStore:
    """Wraps a store and records the size of every write_ticks call."""

    def __init__(self, store):
        self.store = store
        self.sizes = []

    def write_ticks(self, batch, offset, stream="ticklog"):
        self.sizes.append(len(batch))
        self.store.write_ticks(batch, offset, stream)

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_backlog_is_written_in_transactions_up_to_max_batch(tmp_path):
    log = TickLog(tmp_path / "log", fsync="off")
    store = RecordingStore(SqliteStore(tmp_path / "s.sqlite3"))
    store.migrate()
    bs = batches(60, 500)  # 30,000 ticks already in the log when the persister starts
    for b in bs:
        log.append(b)
    p = Persister(log, store, batch_size=1000, batch_timeout_s=0.02, max_batch=8000)
    p.start(0)
    assert wait_for(lambda: p.offset == log.end_offset)
    assert p.stop(5)
    # 30,000 ticks in records of 500: writes of 8,000 while behind, never above max_batch
    assert store.sizes[:3] == [8000, 8000, 8000]
    assert sum(store.sizes) == 30_000 and max(store.sizes) <= 8000
    got, want = stored(store), expected(bs)
    pd.testing.assert_frame_equal(
        got[want.columns.drop("bid").drop("ask")], want.drop(columns=["bid", "ask"])
    )
    # once caught up, a live trickle goes back to batch_size writes
    store.sizes.clear()
    p2 = Persister(log, store, batch_size=1000, batch_timeout_s=0.02, max_batch=8000)
    p2.start(log.end_offset)
    for b in batches(4, 500, symbols=("D", "E")):
        log.append(b)
        p2.notify()
        time.sleep(0.1)
    assert wait_for(lambda: p2.offset == log.end_offset)
    p2.stop(5)
    assert max(store.sizes) <= 1000
    log.close()
    store.close()


def test_max_batch_below_batch_size_is_refused(tmp_path):
    import pytest

    log = TickLog(tmp_path / "log", fsync="off")
    with pytest.raises(ValueError, match="max_batch"):
        Persister(log, None, batch_size=2000, max_batch=100)
    log.close()


def test_retention_makes_the_store_durable_and_saves_the_checkpoint_before_deleting(tmp_path):
    """SQLite commits with synchronous=normal are not fsynced: a segment may go only after a
    checkpoint made the store durable, and the resume checkpoint holds its last ticks."""
    from hft_pipeline.ingest import persister as persister_module
    from hft_pipeline.ingest.checkpoint import Checkpoint

    events: list[str] = []

    class Recording(SqliteStore):
        def make_durable(self) -> None:
            events.append("durable")
            super().make_durable()

    class RecordingLog(TickLog):
        def retain(self, persisted_offset: int) -> int:
            deleted = super().retain(persisted_offset)
            events.append(f"retain:{deleted}")
            return deleted

    store = Recording(tmp_path / "s.sqlite3")
    store.migrate()
    checkpoint = Checkpoint(tmp_path / "checkpoint.json")
    saved = checkpoint.save

    def save() -> None:
        events.append("checkpoint")
        saved()

    checkpoint.save = save
    old_interval = persister_module.RETENTION_INTERVAL_S
    persister_module.RETENTION_INTERVAL_S = 0.0
    try:
        with RecordingLog(tmp_path / "log", segment_bytes=20_000) as log:
            p = Persister(log, store, batch_size=100, batch_timeout_s=0.01, checkpoint=checkpoint)
            p.start(0)
            for b in batches(20, 333):
                log.append(b)
                p.notify()
            deadline = time.monotonic() + 30
            while p.offset < log.end_offset and time.monotonic() < deadline:
                time.sleep(0.01)
            assert p.stop(10)
    finally:
        persister_module.RETENTION_INTERVAL_S = old_interval
    deleting = [i for i, e in enumerate(events) if e.startswith("retain:") and e != "retain:0"]
    assert deleting, events
    for i in deleting:
        assert events[i - 2 : i] == ["checkpoint", "durable"], events[: i + 1]
    loaded = Checkpoint.load(tmp_path)
    assert loaded.last_seqs() == {
        s: int(v) for s, v in stored(store).groupby("symbol").seq.max().items()
    }
    store.close()


def test_a_stop_during_a_long_backoff_returns_within_its_deadline(tmp_path):
    log = TickLog(tmp_path / "log", fsync="off")
    inner = SqliteStore(tmp_path / "s.sqlite3")
    inner.migrate()
    store = FlakyStore(inner)
    p = Persister(
        log, store, batch_size=10, batch_timeout_s=0.01, retry_initial_s=5.0, retry_max_s=30.0
    )
    p.start(0)
    log.append(batches(1, 50)[0])
    p.notify()
    deadline = time.monotonic() + 10
    while p.retries < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert p.retries >= 1
    thread = p._thread
    started = time.monotonic()
    assert p.stop(0.5) is False  # the store never came back: nothing could be drained
    assert time.monotonic() - started < 0.9
    assert not thread.is_alive()
    assert inner.log_offset() == 0
    log.close()
    inner.close()
