"""The durable tick log: framing, segments, torn tails, restart, retention, fsync, concurrency.

Damage beyond the torn tail (skipped spans, acknowledgement, reset_to) is in test_ticklog_damage.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import hft_pipeline
from hft_pipeline.ingest import ticklog as ticklog_module
from hft_pipeline.ingest.ticklog import (
    HEADER_SIZE,
    DamagedSpan,
    LogBackend,
    OffsetError,
    TickLog,
    TickLogError,
    TornTail,
    decode_record,
    encode_record,
)
from hft_pipeline.market.ticks import TickBatch, concat_batches

SYMBOLS = ("R_100", "frxEURUSD", "PETR4", "R_50", "BTC-USD", "a.b_c")


def make_batch(rng: np.random.Generator, n: int, first_seq: int = 0) -> TickBatch:
    """A random batch of `n` ticks over a random subset of symbols, some bid/ask missing."""
    k = int(rng.integers(1, len(SYMBOLS) + 1))
    table = tuple(rng.permutation(np.array(SYMBOLS, dtype=object))[:k].tolist())
    bid = rng.uniform(90, 110, n)
    ask = bid + rng.uniform(0, 1, n)
    bid[rng.random(n) < 0.2] = np.nan
    ask[rng.random(n) < 0.2] = np.nan
    return TickBatch(
        symbols=table,
        sym=rng.integers(0, k, n).astype(np.int32),
        ts=rng.integers(1_600_000_000 * 10**9, 1_800_000_000 * 10**9, n).astype(np.int64),
        seq=np.arange(first_seq, first_seq + n, dtype=np.int64),
        price=rng.uniform(1, 1000, n),
        volume=rng.uniform(0, 50, n),
        bid=bid,
        ask=ask,
    )


def assert_same_ticks(got: TickBatch, want: TickBatch) -> None:
    assert len(got) == len(want)
    np.testing.assert_array_equal(got.symbol_names(), want.symbol_names())
    for name, dtype in [
        ("ts", np.int64),
        ("seq", np.int64),
        ("price", np.float64),
        ("volume", np.float64),
        ("bid", np.float64),
        ("ask", np.float64),
    ]:
        col = getattr(got, name)
        assert col.dtype == dtype, name
        # assert_array_equal treats NaN == NaN; float bits must round-trip exactly.
        np.testing.assert_array_equal(col, getattr(want, name), err_msg=name)
    assert got.sym.dtype == np.int32


def append_all(log: TickLog, batches: list[TickBatch]) -> list[int]:
    """Append every batch; returns the record boundaries [start, end of 1st, end of 2nd, ...]."""
    offsets = [log.end_offset]
    for b in batches:
        offsets.append(log.append(b))
    return offsets


def test_encode_decode_round_trip_is_exact() -> None:
    rng = np.random.default_rng(1)
    batch = make_batch(rng, 257)
    record = encode_record(batch)
    assert len(record) % 8 == 0
    got, size = decode_record(record)
    assert size == len(record)
    assert got.symbols == batch.symbols
    np.testing.assert_array_equal(got.sym, batch.sym)
    assert_same_ticks(got, batch)


def test_encode_rejects_sym_ids_outside_the_table() -> None:
    batch = TickBatch.from_columns("R_100", [1, 2], [1, 2], [1.0, 2.0], [0.0, 0.0])
    batch.sym[1] = 3
    with pytest.raises(TickLogError, match="sym ids"):
        encode_record(batch)


def test_round_trip_of_random_batches(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    batches = [make_batch(rng, int(rng.integers(1, 600))) for _ in range(40)]
    with TickLog(tmp_path, fsync="off") as log:
        assert isinstance(log, LogBackend)
        offsets = append_all(log, batches)
        assert offsets[0] == 0 and log.end_offset == offsets[-1]
        # Each record alone, read from its own boundary, comes back exactly.
        for i, batch in enumerate(batches):
            got, nxt = log.read(offsets[i], 1)
            assert nxt == offsets[i + 1]
            assert got.symbols == batch.symbols
            assert_same_ticks(got, batch)
            got.price[:1] = -1.0  # decoded columns are writable and do not alias the log
        everything, nxt = log.read(0, 10**9)
        assert nxt == log.end_offset
        assert_same_ticks(everything, concat_batches(batches))


def test_empty_batch_writes_nothing_and_read_at_end_is_empty(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    with TickLog(tmp_path, fsync="off") as log:
        end = log.append(make_batch(rng, 10))
        assert log.append(TickBatch.empty()) == end == log.end_offset
        got, nxt = log.read(end, 100)
        assert len(got) == 0 and nxt == end
        assert list(log.replay(end)) == []


def test_many_segments_and_reads_across_segment_boundaries(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    batches = [make_batch(rng, int(rng.integers(5, 40))) for _ in range(80)]
    with TickLog(tmp_path, fsync="off", segment_bytes=4096) as log:
        offsets = append_all(log, batches)
        assert log.segment_count > 10
        files = sorted(p.name for p in tmp_path.glob("*.log"))
        bases = [int(name[:20]) for name in files]
        assert all(name.endswith(".log") and len(name) == 24 for name in files)
        assert bases[0] == 0 and set(bases) <= set(offsets)
        sizes = [(tmp_path / name).stat().st_size for name in files]
        # Contiguous global offsets; a segment exceeds segment_bytes only by holding one record.
        assert [b + s for b, s in zip(bases, sizes, strict=True)] == bases[1:] + [offsets[-1]]
        assert all(s <= 4096 for s in sizes)
        assert log.bytes_on_disk == offsets[-1] == sum(sizes)

        lengths = np.array([len(b) for b in batches])
        for i in range(len(batches)):
            for max_ticks in (1, 50, 137, 10**6):
                got, nxt = log.read(offsets[i], max_ticks)
                # whole records until >= max_ticks ticks or the end
                cum = np.cumsum(lengths[i:])
                j = i + min(int(np.searchsorted(cum, max_ticks)), len(cum) - 1) + 1
                assert nxt == offsets[j]
                assert_same_ticks(got, concat_batches(batches[i:j]))

        replayed = list(log.replay(0, max_ticks=100))
        assert [nxt for _, nxt in replayed][-1] == offsets[-1]
        assert_same_ticks(concat_batches([b for b, _ in replayed]), concat_batches(batches))


def test_bad_offsets_raise_clear_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    with TickLog(tmp_path, fsync="off", segment_bytes=2048) as log:
        offsets = append_all(log, [make_batch(rng, 20) for _ in range(20)])
        first, second = offsets[0], offsets[1]
        for inside in (
            first + 1,
            first + 8,
            first + HEADER_SIZE,
            (first + second) // 2,
            second - 8,
        ):
            with pytest.raises(OffsetError, match="not a record boundary"):
                log.read(inside, 10)
        with pytest.raises(OffsetError, match="beyond the log end"):
            log.read(log.end_offset + 8, 10)
        with pytest.raises(ValueError, match="max_ticks"):
            log.read(0, 0)
        assert log.retain(offsets[10]) > 0
        with pytest.raises(OffsetError, match="below the log start"):
            log.read(0, 10)


def _write_log(directory: Path, batches: list[TickBatch], **kwargs) -> list[int]:
    with TickLog(directory, fsync="off", **kwargs) as log:
        return append_all(log, batches)


def test_torn_tail_at_every_byte_is_truncated_to_the_previous_record(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    batches = [make_batch(rng, 3) for _ in range(4)]
    source = tmp_path / "source"
    offsets = _write_log(source, batches)
    data = (source / f"{0:020d}.log").read_bytes()
    prev, last = offsets[-2], offsets[-1]
    assert len(data) == last
    extra = make_batch(rng, 5)
    # The tick count is reported once the payload head and symbol table are on disk.
    head_end = prev + HEADER_SIZE + 8 + sum(1 + len(s.encode()) for s in batches[-1].symbols)
    for cut in range(prev + 1, last):
        case = tmp_path / f"cut{cut}"
        case.mkdir()
        (case / f"{0:020d}.log").write_bytes(data[:cut])
        with TickLog(case, fsync="off") as log:
            ticks = 3 if cut >= head_end else None
            assert log.torn == TornTail(f"{0:020d}.log", prev, cut - prev, 1, ticks)
            assert log.truncated_bytes == cut - prev
            assert log.damaged == []
            assert log.end_offset == prev == (case / f"{0:020d}.log").stat().st_size
            assert log.append(extra) > prev
            got, _ = log.read(0, 10**6)
            assert_same_ticks(got, concat_batches([*batches[:-1], extra]))
        with TickLog(case, fsync="off") as log:  # the repaired log reopens clean
            assert log.truncated_bytes == 0 and log.torn is None


def test_any_flipped_byte_of_the_last_record_is_truncated(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    batches = [make_batch(rng, 2) for _ in range(3)]
    source = tmp_path / "source"
    offsets = _write_log(source, batches)
    data = (source / f"{0:020d}.log").read_bytes()
    prev, last = offsets[-2], offsets[-1]
    for pos in range(prev, last):
        corrupt = bytearray(data)
        corrupt[pos] ^= 0x41
        case = tmp_path / f"flip{pos}"
        case.mkdir()
        (case / f"{0:020d}.log").write_bytes(bytes(corrupt))
        with TickLog(case, fsync="off") as log:
            assert log.end_offset == prev, f"flipped byte {pos - prev} of the record"
            assert log.truncated_bytes == last - prev
            assert log.torn is not None and log.torn.records == 1 and log.damaged == []
            assert (log.torn.offset, log.torn.bytes) == (prev, last - prev)
            got, _ = log.read(0, 10**6)
            assert_same_ticks(got, concat_batches(batches[:-1]))


def test_corruption_inside_a_closed_segment_is_skipped_and_reported(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    batches = [make_batch(rng, 10) for _ in range(12)]
    offsets = _write_log(tmp_path, batches, segment_bytes=2048)
    path = tmp_path / f"{0:020d}.log"
    second_segment = min(int(p.name[:20]) for p in tmp_path.glob("*.log") if p != path)
    assert offsets[2] < second_segment  # the damaged record is in the first, closed segment
    data = bytearray(path.read_bytes())
    data[offsets[2] + HEADER_SIZE + 72] ^= 0xFF  # inside the third record's columns
    path.write_bytes(bytes(data))
    with TickLog(tmp_path, fsync="off", segment_bytes=2048) as log:
        assert log.truncated_bytes == 0 and log.end_offset == offsets[-1]
        assert log.damaged == [
            DamagedSpan(f"{0:020d}.log", offsets[2], offsets[3], offsets[3] - offsets[2], 1, 10)
        ]
        got, nxt = log.read(0, 20)  # the two good records before the damage, then past it
        assert nxt == offsets[3]
        assert_same_ticks(got, concat_batches(batches[:2]))
        got, nxt = log.read(0, 10**6)
        assert nxt == offsets[-1]
        assert_same_ticks(got, concat_batches(batches[:2] + batches[3:]))
        got, nxt = log.read(offsets[2], 1)  # a reader at the span's start goes on at its end
        assert nxt == offsets[4]
        assert_same_ticks(got, batches[3])


def test_a_bad_region_in_the_tail_segment_keeps_every_record_after_it(tmp_path: Path) -> None:
    # After a power loss, unsynced pages land in any order, so whole records may follow a torn
    # one; they are intact, and the log keeps them (the bad region becomes a damaged span).
    rng = np.random.default_rng(16)
    batches = [make_batch(rng, 10) for _ in range(5)]
    offsets = _write_log(tmp_path, batches)
    path = tmp_path / f"{0:020d}.log"
    data = bytearray(path.read_bytes())
    # Zero the third record's columns: its header, payload head and symbol table survive.
    zero_from = offsets[2] + HEADER_SIZE + 64
    data[zero_from : offsets[3]] = bytes(offsets[3] - zero_from)
    path.write_bytes(bytes(data))
    with TickLog(tmp_path, fsync="off") as log:
        assert log.end_offset == offsets[-1]
        assert log.truncated_bytes == 0 and log.torn is None
        assert [(s.offset, s.end, s.records, s.ticks) for s in log.damaged] == [
            (offsets[2], offsets[3], 1, 10)
        ]
        got, _ = log.read(0, 10**6)
        assert_same_ticks(got, concat_batches(batches[:2] + batches[3:]))


def test_torn_tail_in_a_later_segment_and_a_short_older_segment(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    batches = [make_batch(rng, 15) for _ in range(30)]
    offsets = _write_log(tmp_path, batches, segment_bytes=3000)
    bases = sorted(int(p.name[:20]) for p in tmp_path.glob("*.log"))
    assert len(bases) >= 4
    last_path = tmp_path / f"{bases[-1]:020d}.log"
    os.truncate(last_path, last_path.stat().st_size - 7)
    with TickLog(tmp_path, fsync="off", segment_bytes=3000) as log:
        assert log.end_offset == offsets[-2]
        assert log.truncated_bytes == offsets[-1] - offsets[-2] - 7
        assert log.torn == TornTail(
            f"{bases[-1]:020d}.log", offsets[-2], offsets[-1] - offsets[-2] - 7, 1, 15
        )
        got, _ = log.read(0, 10**6)
        assert_same_ticks(got, concat_batches(batches[:-1]))
    # An older segment that lost bytes (power loss before its fsync): its cut record becomes a
    # "missing" span up to the next segment's base, and every later segment is kept.
    short = tmp_path / f"{bases[1]:020d}.log"
    size = short.stat().st_size
    os.truncate(short, size - 3)
    with TickLog(tmp_path, fsync="off", segment_bytes=3000) as log:
        cut = offsets.index(max(o for o in offsets if o <= bases[1] + size - 3))
        assert log.end_offset == offsets[-2]
        assert log.segment_count == len(bases)
        assert log.truncated_bytes == 0 and log.torn is None
        assert [(s.offset, s.end, s.kind) for s in log.damaged] == [
            (offsets[cut], bases[2], "missing")
        ]
        got, _ = log.read(0, 10**6)
        assert_same_ticks(got, concat_batches(batches[:cut] + batches[cut + 1 : -1]))


def test_restart_resumes_offsets_and_reads_old_records(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    first = [make_batch(rng, int(rng.integers(1, 100))) for _ in range(12)]
    second = [make_batch(rng, int(rng.integers(1, 100))) for _ in range(12)]
    log = TickLog(tmp_path, fsync="interval", segment_bytes=5000)
    offsets = append_all(log, first)
    log.close()
    log = TickLog(tmp_path, fsync="interval", segment_bytes=5000)
    try:
        assert log.truncated_bytes == 0
        assert log.end_offset == log.durable_offset == offsets[-1]
        more = append_all(log, second)
        assert more[0] == offsets[-1] and more[-1] > offsets[-1]
        for i, off in enumerate(offsets[:-1]):
            got, _ = log.read(off, 1)
            assert_same_ticks(got, first[i])
        got, nxt = log.read(0, 10**6)
        assert nxt == more[-1]
        assert_same_ticks(got, concat_batches(first + second))
    finally:
        log.close()


def test_retention_deletes_only_segments_wholly_below_the_persisted_offset(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    batches = [make_batch(rng, 20) for _ in range(40)]
    with TickLog(tmp_path, fsync="off", segment_bytes=4000) as log:
        offsets = append_all(log, batches)
        bases = sorted(int(p.name[:20]) for p in tmp_path.glob("*.log"))
        assert len(bases) >= 6
        assert log.retain(bases[0]) == 0
        # persisted offset inside the third segment: the first two go, the third stays
        inside = next(o for o in offsets if bases[2] < o < bases[3])
        assert log.retain(inside) == 2
        assert log.start_offset == bases[2]
        remaining = sorted(int(p.name[:20]) for p in tmp_path.glob("*.log"))
        assert remaining == bases[2:]
        assert log.bytes_on_disk == offsets[-1] - bases[2]
        got, _ = log.read(bases[2], 10**6)
        assert_same_ticks(got, concat_batches(batches[offsets.index(bases[2]) :]))
        # exactly at a segment's end: that segment is wholly persisted
        assert log.retain(bases[4]) == 2 and log.start_offset == bases[4]
        # everything persisted: the active segment is never deleted
        assert log.retain(log.end_offset + 10**9) == len(bases) - 5
        assert log.segment_count == 1
        assert [int(p.name[:20]) for p in tmp_path.glob("*.log")] == [bases[-1]]
        end = log.append(batches[0])
        got, nxt = log.read(offsets[-1], 10**6)
        assert nxt == end
        assert_same_ticks(got, batches[0])
    with TickLog(tmp_path, fsync="off", segment_bytes=4000) as log:
        assert log.start_offset == bases[-1] and log.end_offset == end


@pytest.fixture
def sync_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the log's data fsyncs (they still happen)."""
    calls: list[int] = []
    real = ticklog_module._datasync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(ticklog_module, "_datasync", counting)
    return calls


def test_fsync_always_is_durable_when_append_returns(tmp_path: Path, sync_calls) -> None:
    rng = np.random.default_rng(12)
    with TickLog(tmp_path, fsync="always", segment_bytes=3000) as log:
        for _ in range(30):
            before = len(sync_calls)
            end = log.append(make_batch(rng, 10))
            assert log.durable_offset == end == log.end_offset
            assert len(sync_calls) > before
        assert log.segment_count > 3


def test_fsync_off_never_syncs_until_flush(tmp_path: Path, sync_calls) -> None:
    rng = np.random.default_rng(13)
    with TickLog(tmp_path, fsync="off", segment_bytes=3000) as log:
        opened = len(sync_calls)
        for _ in range(30):
            log.append(make_batch(rng, 10))
        assert len(sync_calls) == opened
        assert log.durable_offset == 0 < log.end_offset
        log.flush()
        assert log.durable_offset == log.end_offset
        assert len(sync_calls) > opened


def test_fsync_interval_group_commits_in_the_background(tmp_path: Path, sync_calls) -> None:
    rng = np.random.default_rng(14)
    batch = make_batch(rng, 5)
    # A long interval: nothing is synced right after append, flush() syncs at once.
    with TickLog(tmp_path / "slow", fsync="interval", fsync_interval_ms=60_000) as log:
        end = log.append(batch)
        assert log.durable_offset < end
        log.flush()
        assert log.durable_offset == end
    log = TickLog(tmp_path / "fast", fsync="interval", fsync_interval_ms=20)
    try:
        opened = len(sync_calls)
        appends = 500
        for _ in range(appends):
            end = log.append(batch)
        deadline = time.monotonic() + 10
        while log.durable_offset < end and time.monotonic() < deadline:
            time.sleep(0.005)
        assert log.durable_offset == end
        # group commit: far fewer fsyncs than appends
        assert 1 <= len(sync_calls) - opened < appends // 2
        flusher = log._flusher
        assert flusher is not None and flusher.is_alive()
    finally:
        log.close()
    assert not flusher.is_alive()


def test_invalid_settings_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fsync must be one of"):
        TickLog(tmp_path, fsync="sometimes")
    with pytest.raises(ValueError, match="segment_bytes"):
        TickLog(tmp_path, segment_bytes=8)
    log = TickLog(tmp_path, fsync="off")
    log.close()
    with pytest.raises(TickLogError, match="closed"):
        log.append(make_batch(np.random.default_rng(0), 3))


def test_concurrent_writer_and_reader_see_every_tick_once_in_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(15)
    sizes = rng.integers(1, 300, 400)
    total = int(sizes.sum())
    batches = []
    seq = 0
    for n in sizes:
        batches.append(make_batch(rng, int(n), first_seq=seq))
        seq += int(n)
    log = TickLog(tmp_path, fsync="interval", fsync_interval_ms=5, segment_bytes=64 * 1024)
    seen: list[np.ndarray] = []
    errors: list[BaseException] = []
    deleted: list[int] = []

    def writer() -> None:
        try:
            for b in batches:
                log.append(b)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    def reader() -> None:
        try:
            offset, got, reads = 0, 0, 0
            deadline = time.monotonic() + 60
            while got < total and time.monotonic() < deadline:
                batch, offset = log.read(offset, int(rng.integers(1, 2000)))
                seen.append(batch.seq.copy())
                got += len(batch)
                reads += 1
                if reads % 5 == 0:
                    deleted.append(log.retain(offset))  # the persister deletes what it drained
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    try:
        assert not errors, errors
        assert not any(t.is_alive() for t in threads)
        np.testing.assert_array_equal(np.concatenate(seen), np.arange(total))
        assert sum(deleted) > 10  # retention ran while the writer rolled segments
        assert log.read(log.end_offset, 10)[1] == log.end_offset
    finally:
        log.close()


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import numpy as np

    from hft_pipeline.ingest.ticklog import TickLog
    from hft_pipeline.market.ticks import TickBatch

    log = TickLog(Path(sys.argv[1]), fsync="always", segment_bytes=1 << 20)
    n = 4000
    k = 0
    while True:
        seq = np.arange(k * n, (k + 1) * n, dtype=np.int64)
        batch = TickBatch.from_columns("R_100", seq * 1000, seq, 100.0 + seq * 0.25, seq % 7)
        end = log.append(batch)
        print(k, end, log.durable_offset, flush=True)
        k += 1
    """
)


def test_sigkill_mid_append_loses_nothing_durable_and_yields_no_corrupt_record(
    tmp_path: Path,
) -> None:
    env = dict(os.environ)
    root = str(Path(hft_pipeline.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    lines: list[bytes] = []
    buf = b""
    deadline = time.monotonic() + 60
    try:
        # Kill once the writer is well into its loop: appends are back to back, so the kill
        # lands at an arbitrary point of an append (encode, write or fsync).
        while len(lines) < 40 and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                buf += chunk
                *done, buf = buf.split(b"\n")
                lines.extend(done)
        assert len(lines) >= 40, proc.stderr.read().decode() if proc.poll() is not None else ""
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        rest = proc.stdout.read()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    lines.extend((buf + rest).split(b"\n"))
    reported = [tuple(int(x) for x in line.split()) for line in lines if line.strip()]
    last_k, last_end, last_durable = reported[-1]
    assert last_end == last_durable  # fsync="always": acknowledged means durable

    with TickLog(tmp_path, fsync="off", segment_bytes=1 << 20) as log:
        assert log.end_offset >= last_durable
        k = 0
        offset = 0
        for batch, nxt in log.replay(0, max_ticks=1):  # one record at a time
            seq = np.arange(k * 4000, (k + 1) * 4000, dtype=np.int64)
            assert batch.symbols == ("R_100",)
            np.testing.assert_array_equal(batch.seq, seq)
            np.testing.assert_array_equal(batch.ts, seq * 1000)
            np.testing.assert_array_equal(batch.price, 100.0 + seq * 0.25)
            np.testing.assert_array_equal(batch.volume, (seq % 7).astype(np.float64))
            k += 1
            offset = nxt
        assert offset == log.end_offset
        assert k >= last_k + 1  # every acknowledged record is back (maybe one more)
        end = log.append(TickBatch.from_columns("R_100", [1], [k * 4000], [1.0], [1.0]))
        got, nxt = log.read(offset, 10)
        assert nxt == end and got.seq.tolist() == [k * 4000]


def test_a_directory_can_be_open_by_one_log_at_a_time(tmp_path: Path) -> None:
    rng = np.random.default_rng(17)
    log = TickLog(tmp_path, fsync="off")
    try:
        with pytest.raises(TickLogError, match="already open"):
            TickLog(tmp_path, fsync="off")
        end = log.append(make_batch(rng, 4))
    finally:
        log.close()
    with TickLog(tmp_path, fsync="off") as again:  # the lock goes with close()
        assert again.end_offset == end


def test_from_settings_uses_the_configured_directory_and_policy(tmp_path: Path) -> None:
    from hft_pipeline.settings import Settings

    settings = Settings.from_env(
        {"HFT_HOME": str(tmp_path), "HFT_LOG_FSYNC": "always", "HFT_LOG_SEGMENT_BYTES": "4096"}
    )
    with TickLog.from_settings(settings) as log:
        assert log.directory == tmp_path / "ticklog"
        assert (log.fsync, log.segment_bytes) == ("always", 4096)
        end = log.append(make_batch(np.random.default_rng(18), 3))
        assert log.durable_offset == end
    assert (tmp_path / "ticklog" / f"{0:020d}.log").stat().st_size == end


def test_read_and_replay_stop_at_an_end_offset_seen_earlier(tmp_path):
    """What a backlog count relies on while appends go on: nothing past `until` is read."""
    rng = np.random.default_rng(5)
    first = [make_batch(rng, 700, 700 * i) for i in range(3)]
    later = make_batch(rng, 500, 2100)
    with TickLog(tmp_path / "log") as log:
        for b in first:
            log.append(b)
        until = log.end_offset
        log.append(later)
        got = [b for b, _ in log.replay(log.start_offset, max_ticks=100_000, until=until)]
        assert sum(len(b) for b in got) == 2100
        assert_same_ticks(concat_batches(got), concat_batches(first))
        batch, nxt = log.read(log.start_offset, 100_000, until=until)
        assert (len(batch), nxt) == (2100, until)
        assert len(log.read(until, 100_000)[0]) == 500  # without until, the rest is there
