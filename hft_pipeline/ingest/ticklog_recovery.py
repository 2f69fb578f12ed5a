"""The tick log's open-time recovery: checks a segment record by record, finds damaged spans
and the torn tail (docs/ticklog.md §3), and reports them.
"""

from __future__ import annotations

import logging
import mmap
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hft_pipeline.ingest.ticklog_format import (
    BYTES_PER_TICK,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    PAYLOAD_HEAD,
    VERSION,
    check_header,
    pad8,
)

log = logging.getLogger("hft_pipeline.ingest.ticklog")  # recovery reports as the log


def segment_path(directory: Path, base: int) -> Path:
    """The file of the segment whose first byte is global offset `base`."""
    return directory / f"{base:020d}.log"


@dataclass(frozen=True, slots=True)
class TornTail:
    """The final record of the last segment, cut short or failing its check, truncated on open."""

    segment: str  # file name of the last segment
    offset: int  # global offset where the torn record started (the log's end after the cut)
    bytes: int
    records: int = 1
    ticks: int | None = None  # declared by the record's payload head, None if unreadable


@dataclass(frozen=True, slots=True)
class DamagedSpan:
    """Bytes of a segment in which no valid record starts, found on open and skipped by reads.

    kind "corrupt": records failing their framing or CRC check; "shifted": the same, but intact
    records sit at unaligned positions inside (bytes were inserted or deleted; they stay on disk,
    unread); "missing": the segment file ends before the next segment's base (bytes never reached
    the disk); "overlap": the file holds bytes past the next segment's base, which no offset can
    address (offset == end, `bytes` counts them).
    """

    segment: str  # file name of the segment holding the span
    offset: int  # global start
    end: int  # global end, exclusive; the next valid record (or the segment's end) starts here
    bytes: int
    records: int  # best effort: record headers that still parse inside the span, at least 1
    ticks: int | None  # ticks the damaged records declared, None unless they tile the span
    kind: str = "corrupt"

    @property
    def key(self) -> tuple[str, int, int, int]:
        """What identifies the span across restarts (acknowledgements are stored by it)."""
        return (self.segment, self.offset, self.end, self.bytes)


def _valid_at(view: memoryview, pos: int, limit: int) -> int:
    """Size of the whole, CRC-valid record at `pos` that ends by `limit`, else 0."""
    if limit - pos < HEADER_SIZE:
        return 0
    length = check_header(view, pos)
    if length < 0 or limit - pos - HEADER_SIZE < length:
        return 0
    start = pos + HEADER_SIZE
    if zlib.crc32(view[start : start + length]) != HEADER.unpack_from(view, pos)[5]:
        return 0
    return HEADER_SIZE + length


def _magic_positions(data: mmap.mmap, start: int, stop: int) -> Iterator[int]:
    """Every position in [start, stop) where the frame magic begins (found by mmap.find, in C)."""
    at = start
    while (q := data.find(MAGIC, at, stop)) >= 0:
        yield q
        at = q + 1


def _resync(data: mmap.mmap, view: memoryview, pos: int, limit: int) -> int:
    """The first 8-aligned position after `pos` where a valid record starts, or -1 if none.

    Records are written at 8-aligned positions of their segment, so only those are candidates;
    a candidate must pass the header check and its payload CRC."""
    for q in _magic_positions(data, pos + 1, limit):
        if q % 8 == 0 and _valid_at(view, q, limit):
            return q
    return -1


def _scan(data: mmap.mmap, view: memoryview, limit: int) -> tuple[list[tuple[int, int]], int]:
    """Walk the first `limit` bytes of a segment record by record: the bad regions [(start,
    stop)] after each of which a valid record resumes, and where the trailing region with no
    valid record in it starts (`limit` when the segment ends with a valid record)."""
    bad: list[tuple[int, int]] = []
    pos = 0
    unpack, crc32, head = HEADER.unpack_from, zlib.crc32, PAYLOAD_HEAD.size
    while pos < limit:
        # _valid_at inlined: this loop runs once per record of the whole log on every open.
        if limit - pos >= HEADER_SIZE:
            magic, version, flags, reserved, length, crc = unpack(view, pos)
            start = pos + HEADER_SIZE
            end = start + length
            if (
                magic == MAGIC
                and version == VERSION
                and not (flags or reserved or length % 8)
                and head <= length
                and end <= limit
                and crc32(view[start:end]) == crc
            ):
                pos = end
                continue
        resume = _resync(data, view, pos, limit)
        if resume < 0:
            return bad, pos
        bad.append((pos, resume))
        pos = resume
    return bad, limit


def _record_head(view: memoryview, pos: int, avail: int) -> tuple[int, int] | None:
    """(ticks, record size) declared by the payload head of the record at `pos`, if the head
    lies within `avail` and is self-consistent: a tick count and symbol table whose framed size
    equals the header's length (or, when the header itself is damaged, any size). None if not."""
    head = pos + HEADER_SIZE
    if avail - head < PAYLOAD_HEAD.size:
        return None
    n, nsym = PAYLOAD_HEAD.unpack_from(view, head)
    if not n or not nsym:  # we never write an empty record: zeros are no head
        return None
    p = head + PAYLOAD_HEAD.size
    for _ in range(nsym):
        if p >= avail:
            return None
        p += 1 + view[p]
    if p > avail:
        return None
    payload = pad8(pad8(p - head) + n * BYTES_PER_TICK)
    length = check_header(view, pos) if avail - pos >= HEADER_SIZE else -1
    if length >= 0 and length != payload:
        return None
    return n, HEADER_SIZE + payload


def _census(
    data: mmap.mmap, view: memoryview, start: int, stop: int, avail: int
) -> tuple[int, int | None]:
    """(records, ticks) of a damaged region [start, stop) of a segment whose bytes end at
    `avail` (before `stop` when bytes are missing). Ticks are summed only when the records'
    declared sizes tile the region exactly, so a number is never a guess."""
    readable = min(stop, avail)
    # Any position, not only aligned ones: shifted records are counted too.
    headers = sum(
        1
        for q in _magic_positions(data, start, readable)
        if readable - q >= HEADER_SIZE and check_header(view, q) >= 0
    )
    ticks, steps, pos = 0, 0, start
    while pos < stop:
        head = _record_head(view, pos, readable)
        if head is None:
            return max(1, headers), None
        ticks += head[0]
        steps += 1
        pos += head[1]
    if pos != stop:
        return max(1, headers), None
    return max(steps, headers), ticks


def _misaligned_records(data: mmap.mmap, view: memoryview, start: int, stop: int) -> int:
    """Valid records starting at positions that are not 8-aligned in [start, stop): evidence
    that bytes were inserted or deleted, which the aligned resync cannot follow."""
    return sum(1 for q in _magic_positions(data, start, stop) if q % 8 and _valid_at(view, q, stop))


def check_segment(
    directory: Path, base: int, next_base: int | None
) -> tuple[list[DamagedSpan], TornTail | None]:
    """The damaged spans of one segment, found in one read pass; for the last segment
    (`next_base` None) also its torn tail, truncated here."""
    path = segment_path(directory, base)
    torn: TornTail | None = None
    name = path.name
    with open(path, "rb" if next_base is not None else "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        room = size if next_base is None else next_base - base
        if not size:
            if room:  # an empty file where records should be
                return [DamagedSpan(name, base, base + room, room, 1, None, "missing")], None
            return [], None
        limit = min(size, room)
        spans: list[DamagedSpan] = []
        cut = -1
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if hasattr(data, "madvise") and hasattr(mmap, "MADV_SEQUENTIAL"):
            data.madvise(mmap.MADV_SEQUENTIAL)  # one forward pass: read ahead, drop behind
        try:
            with memoryview(data) as view:

                def span(start: int, stop: int, kind: str = "corrupt") -> DamagedSpan:
                    records, ticks = _census(data, view, start, stop, limit)
                    if kind == "corrupt" and _misaligned_records(
                        data, view, start, min(stop, limit)
                    ):
                        kind = "shifted"
                    return DamagedSpan(
                        name, base + start, base + stop, stop - start, records, ticks, kind
                    )

                bad, tail = _scan(data, view, limit)
                spans.extend(span(start, stop) for start, stop in bad)
                if next_base is None:
                    if tail < size:
                        cut, torn = _tear(data, view, name, base, tail, size, spans, span)
                else:
                    if room > size:
                        spans.append(span(tail, room, "missing"))
                    elif tail < limit:
                        spans.append(span(tail, limit))
                    if size > room:
                        # Bytes past the next segment's base: no offset can address them, so
                        # they are reported (and kept on disk), never read.
                        records, ticks = _census(data, view, room, size, size)
                        spans.append(
                            DamagedSpan(
                                name,
                                next_base,
                                next_base,
                                size - room,
                                records,
                                ticks,
                                "overlap",
                            )
                        )
        finally:
            data.close()
        if cut >= 0:
            os.ftruncate(f.fileno(), cut)
    return spans, torn


def _tear(
    data: mmap.mmap,
    view: memoryview,
    name: str,
    base: int,
    tail: int,
    size: int,
    spans: list[DamagedSpan],
    span: Callable[[int, int], DamagedSpan],
) -> tuple[int, TornTail | None]:
    """Split the trailing region [tail, size) of the last segment, in which no valid record
    starts: its final record is the torn tail, anything before it a damaged span. Returns
    where to truncate (and the torn tail), or -1 to keep the whole region (as a damaged span)."""
    if _misaligned_records(data, view, tail, size):
        # Intact records at positions the aligned scan cannot reach: never cut them.
        spans.append(span(tail, size))
        return -1, None
    # The final record starts at the last record header still standing; with none, the
    # whole region is what is left of one record whose header is damaged too.
    final = tail
    for q in _magic_positions(data, tail, size):
        if q % 8 == 0 and size - q >= HEADER_SIZE and check_header(view, q) >= 0:
            final = q
    if final > tail:
        spans.append(span(tail, final))
    head = _record_head(view, final, size)
    torn = TornTail(name, base + final, size - final, 1, None if head is None else head[0])
    return final, torn


def report_recovery(
    damaged: list[DamagedSpan], acked: set[tuple[str, int, int, int]], torn: TornTail | None
) -> None:
    """One warning per damaged span and one for a torn tail, each in records and ticks."""
    for s in damaged:
        log.warning(
            "tick log: damaged span (%s) in segment %s at offsets %d..%d, %d bytes: %d "
            "record(s) and %s tick(s) unreadable, skipped by reads%s",
            s.kind,
            s.segment,
            s.offset,
            s.end,
            s.bytes,
            s.records,
            "an unknown number of" if s.ticks is None else s.ticks,
            " (acknowledged earlier)" if s.key in acked else "",
        )
    if torn is not None:
        t = torn
        log.warning(
            "tick log: torn tail cut from segment %s at offset %d, %d bytes: %d record and "
            "%s tick(s) lost",
            t.segment,
            t.offset,
            t.bytes,
            t.records,
            "an unknown number of" if t.ticks is None else t.ticks,
        )
