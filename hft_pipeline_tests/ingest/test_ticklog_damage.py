"""The tick log under damage at rest: resync, skipped spans, torn tails, acknowledgement, reset_to."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hft_pipeline.ingest import ticklog as ticklog_module
from hft_pipeline.ingest.ticklog import HEADER_SIZE, CorruptLogError, TickLog
from hft_pipeline.market.ticks import TickBatch, concat_batches
from hft_pipeline_tests.ingest.test_ticklog import append_all, assert_same_ticks, make_batch

# Where the payload's columns start in a record of make_batch(): past the header, the payload
# head (tick count, symbol count) and the symbol table, so flips there leave the head readable.
COLUMNS_AT = HEADER_SIZE + 64


def seg_name(base: int) -> str:
    return f"{base:020d}.log"


def bases_of(directory: Path) -> list[int]:
    return sorted(int(p.name[:20]) for p in directory.glob("*.log"))


def write_log(directory: Path, batches: list[TickBatch], segment_bytes: int = 64 * 1024**2):
    """The log of `batches`, closed; returns the record boundaries and the segment bases."""
    with TickLog(directory, fsync="off", segment_bytes=segment_bytes) as log:
        offsets = append_all(log, batches)
    return offsets, bases_of(directory)


def batches_with_seqs(rng: np.random.Generator, sizes: list[int]) -> list[TickBatch]:
    """Random batches whose seq numbers run 0, 1, 2, ... across all of them."""
    out, seq = [], 0
    for n in sizes:
        out.append(make_batch(rng, n, first_seq=seq))
        seq += n
    return out


def damage(directory: Path, offset: int, data: bytes, bases: list[int]) -> None:
    """Overwrite bytes at global `offset` in whichever segment holds it."""
    base = max(b for b in bases if b <= offset)
    with open(directory / seg_name(base), "r+b") as f:
        f.seek(offset - base)
        f.write(data)


def flip(directory: Path, offset: int, bases: list[int], count: int = 1) -> None:
    base = max(b for b in bases if b <= offset)
    path = directory / seg_name(base)
    raw = bytearray(path.read_bytes())
    for k in range(count):
        raw[offset - base + k] ^= 0xA5
    path.write_bytes(bytes(raw))


def replay_all(log: TickLog, max_ticks: int = 1000) -> tuple[TickBatch, list[int]]:
    got, nexts = [], []
    for batch, nxt in log.replay(log.start_offset, max_ticks):
        got.append(batch)
        nexts.append(nxt)
    return concat_batches(got) if got else TickBatch.empty(), nexts


def assert_never_inside(offsets: list[int], spans) -> None:
    for o in offsets:
        for s in spans:
            assert not s.offset <= o < s.end, (o, s)


def test_flipped_bytes_in_a_middle_record_of_the_tail_segment_keep_every_later_record(
    tmp_path: Path,
) -> None:
    # H2: 4 flipped bytes in record 738 of 1,477 cut every later record on reopen.
    rng = np.random.default_rng(20)
    sizes = [int(n) for n in rng.integers(1, 41, 1477)]
    batches = batches_with_seqs(rng, sizes)
    offsets, bases = write_log(tmp_path, batches)
    assert bases == [0]
    k = 738
    flip(tmp_path, offsets[k] + COLUMNS_AT + 16, bases, count=4)
    with TickLog(tmp_path, fsync="off") as log:
        got, nexts = replay_all(log)
        kept = batches[:k] + batches[k + 1 :]
        assert len(got) == sum(sizes) - sizes[k]
        assert log.end_offset == offsets[-1]
        assert_same_ticks(got, concat_batches(kept))
        assert log.truncated_bytes == 0 and log.torn is None
        assert log.damaged == [
            ticklog_module.DamagedSpan(
                segment=seg_name(0),
                offset=offsets[k],
                end=offsets[k + 1],
                bytes=offsets[k + 1] - offsets[k],
                records=1,
                ticks=sizes[k],
                kind="corrupt",
            )
        ]
        assert_never_inside(nexts, log.damaged)
        # A reader that reaches the span goes on past it; one that starts there does too.
        batch, nxt = log.read(offsets[k - 1], 1)
        assert_same_ticks(batch, batches[k - 1])
        assert nxt == offsets[k + 1]
        batch, nxt = log.read(offsets[k], 1)
        assert_same_ticks(batch, batches[k + 1])
        assert nxt == offsets[k + 2]
        # New appends go after the later records, as usual.
        extra = make_batch(rng, 7, first_seq=sum(sizes))
        end = log.append(extra)
        batch, nxt = log.read(offsets[-1], 100)
        assert nxt == end
        assert_same_ticks(batch, extra)


def test_crc_bad_record_in_an_older_segment_opens_and_replays_every_other_record(
    tmp_path: Path,
) -> None:
    # H4: read() raised CorruptLogError at the bad record, so start-up replay died on it.
    rng = np.random.default_rng(21)
    sizes = [int(n) for n in rng.integers(5, 30, 120)]
    batches = batches_with_seqs(rng, sizes)
    offsets, bases = write_log(tmp_path, batches, segment_bytes=8192)
    assert len(bases) >= 5
    k = next(i for i, o in enumerate(offsets) if o > bases[1]) + 1  # in the 2nd segment
    assert bases[1] < offsets[k] and offsets[k + 1] < bases[2]
    flip(tmp_path, offsets[k] + COLUMNS_AT + 8, bases)
    with TickLog(tmp_path, fsync="off", segment_bytes=8192) as log:
        got, nexts = replay_all(log, max_ticks=100_000)
        assert_same_ticks(got, concat_batches(batches[:k] + batches[k + 1 :]))
        assert nexts == [offsets[-1]]
        (span,) = log.damaged
        assert span == ticklog_module.DamagedSpan(
            seg_name(bases[1]),
            offsets[k],
            offsets[k + 1],
            offsets[k + 1] - offsets[k],
            1,
            sizes[k],
        )
        assert log.unacknowledged_damage == [span]
        assert log.end_offset == offsets[-1] and log.torn is None


def test_garbage_inserted_in_the_tail_segment_is_skipped_and_later_records_are_kept(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(22)
    batches = batches_with_seqs(rng, [int(n) for n in rng.integers(1, 50, 60)])
    offsets, _ = write_log(tmp_path, batches)
    path = tmp_path / seg_name(0)
    raw = path.read_bytes()
    garbage = rng.integers(0, 256, 13 * 8, dtype=np.uint8).tobytes()
    k = 30
    path.write_bytes(raw[: offsets[k]] + garbage + raw[offsets[k] :])
    with TickLog(tmp_path, fsync="off") as log:
        assert log.end_offset == offsets[-1] + len(garbage)
        got, nexts = replay_all(log, max_ticks=10)
        assert_same_ticks(got, concat_batches(batches))
        assert log.damaged == [
            ticklog_module.DamagedSpan(
                seg_name(0), offsets[k], offsets[k] + len(garbage), len(garbage), 1, None
            )
        ]
        assert_never_inside(nexts, log.damaged)


def test_bytes_inserted_off_the_8_byte_grid_are_never_cut_from_the_tail_segment(
    tmp_path: Path,
) -> None:
    # The resync looks at 8-aligned positions only, so records shifted by 5 bytes cannot be
    # read; they are intact, so the region is kept on disk and reported, not cut as a torn tail.
    rng = np.random.default_rng(40)
    sizes = [int(n) for n in rng.integers(1, 50, 30)]
    batches = batches_with_seqs(rng, sizes)
    offsets, _ = write_log(tmp_path, batches)
    path = tmp_path / seg_name(0)
    raw = path.read_bytes()
    k = 20
    path.write_bytes(raw[: offsets[k]] + b"\x00" * 5 + raw[offsets[k] :])
    with TickLog(tmp_path, fsync="off") as log:
        assert log.torn is None and log.truncated_bytes == 0
        assert log.end_offset == offsets[-1] + 5 == path.stat().st_size
        (span,) = log.damaged
        assert (span.offset, span.end, span.kind) == (offsets[k], offsets[-1] + 5, "shifted")
        assert (span.records, span.ticks) == (len(sizes) - k, None)  # every shifted header
        got, _ = replay_all(log)
        assert_same_ticks(got, concat_batches(batches[:k]))
        extra = make_batch(rng, 4, first_seq=sum(sizes))
        end = log.append(extra)
        batch, nxt = log.read(offsets[k - 1], 10**6)
        assert_same_ticks(batch, concat_batches([batches[k - 1], extra]))
        assert nxt == end


def test_garbage_over_records_of_an_older_segment_is_one_span_with_its_header_count(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(23)
    sizes = [int(n) for n in rng.integers(5, 20, 80)]
    batches = batches_with_seqs(rng, sizes)
    offsets, bases = write_log(tmp_path, batches, segment_bytes=16384)
    k = next(i for i, o in enumerate(offsets) if o > bases[0] + 100)
    assert offsets[k + 4] < bases[1]
    # From inside record k's columns to inside record k+3's: the headers of k+1..k+3 are gone.
    start, stop = offsets[k] + COLUMNS_AT, offsets[k + 3] + COLUMNS_AT
    damage(tmp_path, start, rng.integers(0, 256, stop - start, dtype=np.uint8).tobytes(), bases)
    with TickLog(tmp_path, fsync="off", segment_bytes=16384) as log:
        got, _ = replay_all(log)
        assert_same_ticks(got, concat_batches(batches[:k] + batches[k + 4 :]))
        (span,) = log.damaged
        assert (span.offset, span.end) == (offsets[k], offsets[k + 4])
        # Only record k's header still parses; the damaged records do not tile the span.
        assert (span.records, span.ticks) == (1, None)


def test_flipped_header_magic_is_one_record_with_exact_ticks(tmp_path: Path) -> None:
    rng = np.random.default_rng(24)
    sizes = [int(n) for n in rng.integers(1, 60, 50)]
    batches = batches_with_seqs(rng, sizes)
    offsets, bases = write_log(tmp_path, batches, segment_bytes=16384)
    assert len(bases) >= 3
    older = next(i for i, o in enumerate(offsets) if o > bases[0])  # first segment
    tail = offsets.index(bases[-1])  # first record of the last segment, which holds more
    assert offsets[tail + 1] < offsets[-1]
    for k in (older, tail):
        flip(tmp_path, offsets[k], bases)  # the "H" of "HTLG"
    with TickLog(tmp_path, fsync="off", segment_bytes=16384) as log:
        got, _ = replay_all(log)
        kept = [b for i, b in enumerate(batches) if i not in (older, tail)]
        assert_same_ticks(got, concat_batches(kept))
        # The header no longer parses, but the payload head still frames the record exactly.
        assert [(s.offset, s.end, s.records, s.ticks) for s in log.damaged] == [
            (offsets[k], offsets[k + 1], 1, sizes[k]) for k in (older, tail)
        ]


def test_damage_spanning_several_records_reports_them_all(tmp_path: Path) -> None:
    rng = np.random.default_rng(25)
    sizes = [int(n) for n in rng.integers(1, 60, 40)]
    batches = batches_with_seqs(rng, sizes)
    offsets, bases = write_log(tmp_path, batches)
    for k in (10, 11, 12):  # three neighbours, each with its header and payload head intact
        flip(tmp_path, offsets[k] + COLUMNS_AT + 8, bases, count=3)
    with TickLog(tmp_path, fsync="off") as log:
        got, _ = replay_all(log)
        assert_same_ticks(got, concat_batches(batches[:10] + batches[13:]))
        assert log.damaged == [
            ticklog_module.DamagedSpan(
                seg_name(0),
                offsets[10],
                offsets[13],
                offsets[13] - offsets[10],
                3,
                sizes[10] + sizes[11] + sizes[12],
            )
        ]


def test_torn_tail_is_the_final_partial_record_only_in_records_and_ticks(tmp_path: Path) -> None:
    # L6: a cut torn tail was reported in bytes only.
    rng = np.random.default_rng(26)
    batches = batches_with_seqs(rng, [11, 12, 13, 14])
    source = tmp_path / "source"
    offsets, _ = write_log(source, batches)
    raw = (source / seg_name(0)).read_bytes()
    prev, last = offsets[-2], offsets[-1]
    for cut in (prev + 1, prev + HEADER_SIZE, prev + COLUMNS_AT, last - 8):
        case = tmp_path / f"cut{cut}"
        case.mkdir()
        (case / seg_name(0)).write_bytes(raw[:cut])
        with TickLog(case, fsync="off") as log:
            readable = cut >= prev + COLUMNS_AT  # the payload head and symbol table are there
            assert log.torn == ticklog_module.TornTail(
                segment=seg_name(0),
                offset=prev,
                bytes=cut - prev,
                records=1,
                ticks=14 if readable else None,
            )
            assert log.truncated_bytes == cut - prev
            assert log.damaged == []
            assert log.end_offset == prev
            got, _ = replay_all(log)
            assert_same_ticks(got, concat_batches(batches[:-1]))
        with TickLog(case, fsync="off") as log:  # cut once, reopens clean
            assert log.torn is None and log.damaged == []


def test_a_bad_record_before_the_torn_tail_is_damage_and_stays_damage_once_records_follow(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(27)
    sizes = [9, 10, 11, 12, 13]
    batches = batches_with_seqs(rng, sizes)
    offsets, bases = write_log(tmp_path, batches)
    flip(tmp_path, offsets[3] + COLUMNS_AT, bases)  # CRC-bad 4th record
    os.truncate(tmp_path / seg_name(0), offsets[-1] - 5)  # partial 5th record
    span = ticklog_module.DamagedSpan(
        seg_name(0), offsets[3], offsets[4], offsets[4] - offsets[3], 1, 12
    )
    extra = make_batch(rng, 6, first_seq=sum(sizes))
    with TickLog(tmp_path, fsync="off") as log:
        assert log.torn == ticklog_module.TornTail(
            seg_name(0), offsets[4], offsets[5] - 5 - offsets[4], 1, 13
        )
        assert log.damaged == [span]
        assert log.end_offset == offsets[4]
        batch, nxt = log.read(offsets[0], 10**6)
        assert_same_ticks(batch, concat_batches(batches[:3]))
        assert nxt == offsets[4]  # past the damage, never at its start
        end = log.append(extra)
    with TickLog(tmp_path, fsync="off") as log:
        assert log.torn is None and log.damaged == [span]
        got, nexts = replay_all(log)
        assert_same_ticks(got, concat_batches([*batches[:3], extra]))
        assert nexts[-1] == end


def test_the_bytes_an_older_segment_lost_are_a_missing_span_and_later_segments_stay(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(28)
    sizes = [15] * 30
    batches = batches_with_seqs(rng, sizes)
    offsets, bases = write_log(tmp_path, batches, segment_bytes=3000)
    assert len(bases) >= 4
    short = tmp_path / seg_name(bases[1])
    size = short.stat().st_size
    os.truncate(short, size - 3)  # power loss before this segment's last page was synced
    with TickLog(tmp_path, fsync="off", segment_bytes=3000) as log:
        last_whole = max(i for i, o in enumerate(offsets) if o <= bases[1] + size - 3)
        assert log.end_offset == offsets[-1] and log.segment_count == len(bases)
        assert log.damaged == [
            ticklog_module.DamagedSpan(
                seg_name(bases[1]),
                offsets[last_whole],
                bases[2],
                bases[2] - offsets[last_whole],
                1,
                15,  # the cut record's head still frames it up to the next base: exact
                "missing",
            )
        ]
        got, _ = replay_all(log)
        assert_same_ticks(got, concat_batches(batches[:last_whole] + batches[last_whole + 1 :]))


def test_an_emptied_older_segment_is_one_missing_span(tmp_path: Path) -> None:
    rng = np.random.default_rng(41)
    batches = batches_with_seqs(rng, [15] * 30)
    offsets, bases = write_log(tmp_path, batches, segment_bytes=3000)
    os.truncate(tmp_path / seg_name(bases[2]), 0)
    with TickLog(tmp_path, fsync="off", segment_bytes=3000) as log:
        gap = bases[3] - bases[2]
        assert log.damaged == [
            ticklog_module.DamagedSpan(
                seg_name(bases[2]), bases[2], bases[3], gap, 1, None, "missing"
            )
        ]
        got, _ = replay_all(log)
        kept = [b for b, o in zip(batches, offsets, strict=False) if not bases[2] <= o < bases[3]]
        assert_same_ticks(got, concat_batches(kept))
        assert log.end_offset == offsets[-1]


def test_a_segment_longer_than_the_gap_to_the_next_base_opens_and_reads_its_range(
    tmp_path: Path,
) -> None:
    # _recover() used to raise CorruptLogError here, so the service could not start.
    rng = np.random.default_rng(29)
    batches = batches_with_seqs(rng, [20] * 30)
    offsets, bases = write_log(tmp_path, batches, segment_bytes=4000)
    first = tmp_path / seg_name(bases[0])
    spare = ticklog_module.encode_record(make_batch(rng, 3, first_seq=10**6))
    with open(first, "ab") as f:
        f.write(bytes(spare))
    with TickLog(tmp_path, fsync="off", segment_bytes=4000) as log:
        assert log.end_offset == offsets[-1]
        got, _ = replay_all(log)
        assert_same_ticks(got, concat_batches(batches))
        assert log.damaged == [
            ticklog_module.DamagedSpan(
                seg_name(bases[0]), bases[1], bases[1], len(spare), 1, 3, "overlap"
            )
        ]
        assert first.stat().st_size == bases[1] + len(spare)  # kept on disk, never read


def test_a_record_that_goes_bad_while_open_raises_and_is_skipped_after_reopen(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(30)
    batches = batches_with_seqs(rng, [10] * 8)
    with TickLog(tmp_path, fsync="off") as log:
        offsets = append_all(log, batches)
        flip(tmp_path, offsets[4] + COLUMNS_AT, [0])
        with pytest.raises(CorruptLogError, match="reopen the log"):
            log.read(0, 10**6)
    with TickLog(tmp_path, fsync="off") as log:
        got, _ = replay_all(log)
        assert_same_ticks(got, concat_batches(batches[:4] + batches[5:]))
        assert [(s.offset, s.ticks) for s in log.damaged] == [(offsets[4], 10)]


def test_a_read_from_inside_a_span_goes_on_at_its_end(tmp_path: Path) -> None:
    rng = np.random.default_rng(31)
    batches = batches_with_seqs(rng, [10] * 8)
    offsets, bases = write_log(tmp_path, batches)
    for k in (3, 4):
        flip(tmp_path, offsets[k] + COLUMNS_AT, bases)
    with TickLog(tmp_path, fsync="off") as log:
        # A store offset taken before the damage may be the start of record 4, inside the span.
        batch, nxt = log.read(offsets[4], 1)
        assert_same_ticks(batch, batches[5])
        assert nxt == offsets[6]


def test_damage_that_ends_the_log_is_skipped_to_the_end(tmp_path: Path) -> None:
    # Two bad records at the end: the final one is the torn tail, the one before is a span the
    # persister must be able to move its offset past.
    rng = np.random.default_rng(32)
    batches = batches_with_seqs(rng, [10] * 6)
    offsets, bases = write_log(tmp_path, batches)
    for k in (4, 5):
        flip(tmp_path, offsets[k] + COLUMNS_AT, bases)
    with TickLog(tmp_path, fsync="off") as log:
        assert log.end_offset == offsets[5]
        assert [(s.offset, s.end) for s in log.damaged] == [(offsets[4], offsets[5])]
        assert log.torn is not None and log.torn.offset == offsets[5]
        batch, nxt = log.read(offsets[4], 100)
        assert len(batch) == 0 and nxt == offsets[5] == log.end_offset
        assert list(log.replay(offsets[4])) == []


def test_start_up_warns_once_per_span_and_once_for_the_torn_tail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(33)
    batches = batches_with_seqs(rng, [10, 11, 12, 13, 14, 15, 16])
    offsets, bases = write_log(tmp_path, batches, segment_bytes=1500)
    assert len(bases) >= 3
    flip(tmp_path, offsets[1] + COLUMNS_AT, bases)
    os.truncate(tmp_path / seg_name(bases[-1]), (tmp_path / seg_name(bases[-1])).stat().st_size - 9)
    caplog.set_level(logging.INFO, logger="hft_pipeline.ingest.ticklog")
    with TickLog(tmp_path, fsync="off", segment_bytes=1500):
        pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert (
        seg_name(bases[0]) in warnings[0] and f"offsets {offsets[1]}..{offsets[2]}" in warnings[0]
    )
    assert "1 record(s) and 11 tick(s)" in warnings[0]
    assert "torn tail" in warnings[1] and f"offset {offsets[-2]}" in warnings[1]
    assert "1 record and 16 tick(s) lost" in warnings[1]


def test_acknowledgement_persists_across_reopen_and_goes_with_retention(tmp_path: Path) -> None:
    rng = np.random.default_rng(34)
    sizes = [12] * 60
    batches = batches_with_seqs(rng, sizes)
    offsets, bases = write_log(tmp_path, batches, segment_bytes=3000)
    assert len(bases) >= 6

    def record_in(segment: int) -> int:
        return next(i for i, o in enumerate(offsets) if o > bases[segment])

    first, third, fifth = record_in(0), record_in(2), record_in(4)
    flip(tmp_path, offsets[first] + COLUMNS_AT, bases)
    flip(tmp_path, offsets[third] + COLUMNS_AT, bases)
    with TickLog(tmp_path, fsync="off", segment_bytes=3000) as log:
        known = log.damaged
        assert [s.offset for s in known] == [offsets[first], offsets[third]]
        assert log.unacknowledged_damage == known
        assert log.acknowledge_damage() == 2
        assert log.acknowledge_damage() == 0
        assert log.unacknowledged_damage == [] and log.damaged == known
    state = json.loads((tmp_path / ticklog_module.STATE_NAME).read_text())
    assert [a["offset"] for a in state["acknowledged"]] == [offsets[first], offsets[third]]
    flip(tmp_path, offsets[fifth] + COLUMNS_AT, bases)  # new damage after the acknowledgement
    with TickLog(tmp_path, fsync="off", segment_bytes=3000) as log:
        assert log.damaged[:2] == known
        assert [s.offset for s in log.unacknowledged_damage] == [offsets[fifth]]
        assert log.acknowledge_damage() == 1
        # Retention of the first two segments takes the first span with them.
        assert log.retain(bases[2]) == 2
        assert [s.offset for s in log.damaged] == [offsets[third], offsets[fifth]]
        assert log.unacknowledged_damage == []
        state = json.loads((tmp_path / ticklog_module.STATE_NAME).read_text())
        assert [a["offset"] for a in state["acknowledged"]] == [offsets[third], offsets[fifth]]
    with TickLog(tmp_path, fsync="off", segment_bytes=3000) as log:
        assert [s.offset for s in log.damaged] == [offsets[third], offsets[fifth]]
        assert log.unacknowledged_damage == []
        got, _ = replay_all(log)
        keep = [b for i, b in enumerate(batches) if offsets[i] >= bases[2] and i != third]
        assert_same_ticks(got, concat_batches([b for b in keep if b is not batches[fifth]]))


def test_an_unreadable_state_file_does_not_stop_start_up(tmp_path: Path) -> None:
    rng = np.random.default_rng(35)
    batches = batches_with_seqs(rng, [10] * 5)
    offsets, bases = write_log(tmp_path, batches)
    flip(tmp_path, offsets[2] + COLUMNS_AT, bases)
    (tmp_path / ticklog_module.STATE_NAME).write_text("{not json")
    with TickLog(tmp_path, fsync="off") as log:
        assert [s.offset for s in log.unacknowledged_damage] == [offsets[2]]
        assert log.acknowledge_damage() == 1
    with TickLog(tmp_path, fsync="off") as log:
        assert log.unacknowledged_damage == [] and len(log.damaged) == 1


def test_reset_to_restarts_the_log_at_the_store_offset_and_reopens(tmp_path: Path) -> None:
    rng = np.random.default_rng(36)
    batches = batches_with_seqs(rng, [25] * 40)
    with TickLog(tmp_path, fsync="interval", segment_bytes=4000) as log:
        offsets = append_all(log, batches)
        assert log.segment_count > 3
        with pytest.raises(ValueError, match="would drop records"):
            log.reset_to(offsets[-1] - 8)
        target = offsets[-1] + 4096  # the store committed a tail the log lost
        log.reset_to(target)
        assert log.end_offset == log.durable_offset == log.start_offset == target
        assert log.segment_count == 1 and bases_of(tmp_path) == [target]
        assert log.damaged == [] and log.bytes_on_disk == 0
        more = batches_with_seqs(rng, [7, 8, 9])
        after = append_all(log, more)
        assert after[0] == target
        batch, nxt = log.read(target, 10**6)
        assert_same_ticks(batch, concat_batches(more))
        assert nxt == after[-1]
    with TickLog(tmp_path, fsync="off", segment_bytes=4000) as log:
        assert (log.start_offset, log.end_offset) == (target, after[-1])
        assert log.damaged == [] and log.torn is None
        extra = make_batch(rng, 5)
        end = log.append(extra)
        got, nexts = replay_all(log)
        assert_same_ticks(got, concat_batches([*more, extra]))
        assert nexts[-1] == end
        log.reset_to(end)  # exactly at the end (a clean stop after the store caught up)
        assert log.start_offset == log.end_offset == end and bases_of(tmp_path) == [end]
    with TickLog(tmp_path, fsync="off") as log:
        assert log.start_offset == log.end_offset == end


def test_a_reset_interrupted_before_the_old_segments_were_deleted_is_finished_on_open(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(37)
    batches = batches_with_seqs(rng, [25] * 20)
    offsets, bases = write_log(tmp_path, batches, segment_bytes=4000)
    saved = {b: (tmp_path / seg_name(b)).read_bytes() for b in bases}
    target = offsets[-1] + 800
    with TickLog(tmp_path, fsync="off", segment_bytes=4000) as log:
        log.reset_to(target)
    for b, raw in saved.items():  # as if the crash came right after the target was stored
        (tmp_path / seg_name(b)).write_bytes(raw)
    (tmp_path / seg_name(target)).unlink()
    with TickLog(tmp_path, fsync="off", segment_bytes=4000) as log:
        assert bases_of(tmp_path) == [target]
        assert log.start_offset == log.end_offset == target
        assert log.damaged == [] and log.torn is None


def test_a_persister_drains_past_damage_to_the_store(tmp_path: Path) -> None:
    from hft_pipeline.ingest.persister import Persister
    from hft_pipeline.store.sqlite import SqliteStore

    rng = np.random.default_rng(38)
    sizes = [int(n) for n in rng.integers(5, 40, 50)]
    batches = []
    seq = 0
    for n in sizes:
        b = make_batch(rng, n, first_seq=seq)
        batches.append(TickBatch.from_columns("R_100", b.ts, b.seq, b.price, b.volume))
        seq += n
    offsets, bases = write_log(tmp_path / "log", batches, segment_bytes=4000)
    flip(tmp_path / "log", offsets[7] + HEADER_SIZE + 40, bases)
    store = SqliteStore(tmp_path / "store.db")
    store.migrate()
    log = TickLog(tmp_path / "log", fsync="off", segment_bytes=4000)
    persister = Persister(log, store, batch_size=100, batch_timeout_s=0.01)
    try:
        persister.start(0)
        assert persister.stop(deadline_s=20)
        assert store.log_offset("ticklog") == offsets[-1]
        want = np.concatenate([b.seq for i, b in enumerate(batches) if i != 7])
        got = np.sort(store.read_ticks("R_100")["seq"].to_numpy())  # the store orders by ts
        np.testing.assert_array_equal(got, want)
    finally:
        log.close()
        store.close()


@pytest.fixture(scope="module")
def source_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, list, list]:
    """One multi-segment log, written once: (directory, record offsets, bases, tick counts)."""
    rng = np.random.default_rng(39)
    sizes = [int(n) for n in rng.integers(1, 30, 45)]
    directory = tmp_path_factory.mktemp("source")
    offsets, bases = write_log(directory, batches_with_seqs(rng, sizes), segment_bytes=5000)
    return directory, offsets, bases, sizes


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_flips_in_a_random_record_spare_every_other_record(source_log, data) -> None:
    source, offsets, bases, sizes = source_log
    k = data.draw(st.integers(0, len(sizes) - 1), label="record")
    size = offsets[k + 1] - offsets[k]
    # Distinct bytes: the same byte flipped twice by one mask could undo the damage.
    spots = data.draw(
        st.lists(st.integers(0, size - 1), min_size=1, max_size=8, unique=True), label="bytes"
    )
    masks = data.draw(st.lists(st.integers(1, 255), min_size=8, max_size=8), label="masks")
    with tempfile.TemporaryDirectory(prefix="ticklog-damage-") as tmp:
        case = Path(tmp) / "log"
        shutil.copytree(source, case)
        base = max(b for b in bases if b <= offsets[k])
        path = case / seg_name(base)
        raw = bytearray(path.read_bytes())
        for spot, mask in zip(spots, masks, strict=False):
            raw[offsets[k] - base + spot] ^= mask
        path.write_bytes(bytes(raw))
        with TickLog(case, fsync="off", segment_bytes=5000) as log:
            got, nexts = replay_all(log, max_ticks=int(data.draw(st.integers(1, 200))))
            seqs = np.concatenate(
                [
                    np.arange(sum(sizes[:i]), sum(sizes[: i + 1]))
                    for i in range(len(sizes))
                    if i != k
                ]
            )
            np.testing.assert_array_equal(got.seq, seqs)
            assert_never_inside(nexts, log.damaged)
            if log.torn is not None:  # only ever the final record of the last segment
                assert k == len(sizes) - 1 and log.damaged == []
                assert (log.torn.offset, log.torn.records) == (offsets[k], 1)
                assert log.torn.ticks in (sizes[k], None)
            else:
                (span,) = log.damaged
                assert (span.offset, span.end, span.bytes) == (offsets[k], offsets[k + 1], size)
                assert span.records == 1 and span.ticks in (sizes[k], None)
                assert log.end_offset == offsets[-1]
