"""The durable tick log: segmented append-only files of CRC-framed TickBatch records.

A batch counts as received once it is appended here; the persister drains it by global byte
offset and retention deletes segments that are wholly persisted. On open every segment is checked
record by record: a torn tail is truncated, damage elsewhere is skipped and reported, never cut
(docs/ticklog.md). The record format is `ticklog_format.py`, the open-time check
`ticklog_recovery.py`.
"""

from __future__ import annotations

import bisect
import fcntl
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from hft_pipeline.ingest.ticklog_format import (
    BYTES_PER_TICK,
    HEADER_SIZE,
    CorruptLogError,
    OffsetError,
    TickLogError,
    check_header,
    decode_record,
    encode_record,
)
from hft_pipeline.ingest.ticklog_recovery import (
    DamagedSpan,
    TornTail,
    check_segment,
    report_recovery,
    segment_path,
)
from hft_pipeline.market.ticks import TickBatch, concat_batches

if TYPE_CHECKING:
    from hft_pipeline.settings import Settings

__all__ = [
    "FSYNC_POLICIES",
    "CorruptLogError",
    "DamagedSpan",
    "LogBackend",
    "OffsetError",
    "TickLog",
    "TickLogError",
    "TornTail",
    "decode_record",
    "encode_record",
]

log = logging.getLogger(__name__)

FSYNC_POLICIES = ("always", "interval", "off")


_SEGMENT_NAME = re.compile(r"^(\d{20})\.log$")
LOCK_NAME = ".lock"
# Acknowledged damage and an interrupted reset_to() survive restarts here (docs/ticklog.md §5).
STATE_NAME = "state.json"
_STATE_VERSION = 1
_READ_CHUNK_MIN = 1 << 16
_READ_CHUNK_MAX = 1 << 24


def _datasync(fd: int) -> None:
    """Flush a file's data (and the size needed to read it) to stable storage."""
    # fdatasync skips the mtime update that fsync forces; both persist the file size.
    (getattr(os, "fdatasync", None) or os.fsync)(fd)


def _write_state(directory: Path, state: dict) -> None:
    """Replace the state file atomically: temp file, fsync, rename, directory fsync."""
    tmp = directory / f"{STATE_NAME}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, json.dumps(state, indent=1).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, directory / STATE_NAME)
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _read_state(directory: Path) -> tuple[set[tuple[str, int, int, int]], int | None]:
    """The acknowledged span keys and the pending reset base; a damaged state file is reported
    and read as empty (its damage is then simply unacknowledged again)."""
    path = directory / STATE_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return set(), None
    try:
        state = json.loads(raw)
        acked = {
            (str(a["segment"]), int(a["offset"]), int(a["end"]), int(a["bytes"]))
            for a in state.get("acknowledged", ())
        }
        reset = state.get("reset_base")
        return acked, None if reset is None else int(reset)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning(
            "tick log: state file %s is unreadable (%s); acknowledged damage is reported again",
            path,
            exc,
        )
        return set(), None


@runtime_checkable
class LogBackend(Protocol):
    """What the ingest service and the persister use of a durable log. TickLog is the file
    implementation; a durable broker (NATS JetStream, Kafka) may take its place
    (docs/architecture.md#scaling-out)."""

    #: fsync policy, one of FSYNC_POLICIES: "off" tells the persister nothing is promised.
    fsync: str
    #: What recovery cut off the end of the log on open, None if it ended cleanly.
    torn: TornTail | None
    truncated_bytes: int

    @property
    def end_offset(self) -> int: ...
    @property
    def durable_offset(self) -> int: ...
    @property
    def start_offset(self) -> int: ...
    @property
    def bytes_on_disk(self) -> int: ...
    @property
    def segment_count(self) -> int: ...
    @property
    def damaged(self) -> list[DamagedSpan]: ...
    @property
    def unacknowledged_damage(self) -> list[DamagedSpan]: ...
    def acknowledge_damage(self) -> int: ...
    def append(self, batch: TickBatch) -> int: ...
    def flush(self) -> None: ...
    def read(
        self, offset: int, max_ticks: int, until: int | None = None
    ) -> tuple[TickBatch, int]: ...
    def replay(
        self, offset: int = 0, max_ticks: int = 100_000, until: int | None = None
    ) -> Iterator[tuple[TickBatch, int]]: ...
    def retain(self, persisted_offset: int) -> int: ...
    def reset_to(self, offset: int) -> None: ...
    def close(self) -> None: ...


class TickLog:
    """A segmented append-only log of TickBatch records addressed by global byte offsets.

    Thread-safe: one thread may append while another reads and retains. Locks, always taken in
    this order: `_read_lock` -> `_sync_lock` -> `_state_lock` -> `_lock`, each step optional
    (only reset_to() holds both `_read_lock` and `_sync_lock`).
    """

    def __init__(
        self,
        directory: Path,
        fsync: str = "interval",
        fsync_interval_ms: int = 50,
        segment_bytes: int = 64 * 1024**2,
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES}, got {fsync!r}")
        if fsync_interval_ms <= 0:
            raise ValueError(f"fsync_interval_ms must be > 0, got {fsync_interval_ms}")
        if segment_bytes <= HEADER_SIZE:
            raise ValueError(f"segment_bytes must exceed {HEADER_SIZE}, got {segment_bytes}")
        self.directory = Path(directory)
        self.fsync = fsync
        self.fsync_interval_ms = fsync_interval_ms
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._read_fds: dict[int, int] = {}
        # fds of rolled segments: closed only under _sync_lock, so a concurrent fsync of a
        # segment that was active a moment ago never hits a closed (or reused) descriptor.
        self._retired: list[int] = []
        self._dir_dirty = False
        self._closed = False
        self._flush_error: BaseException | None = None
        #: What recovery cut off the end of the log on open (None: the log ended cleanly).
        self.torn: TornTail | None = None
        #: Bytes cut by that truncation (0 if none); kept for callers that count bytes only.
        self.truncated_bytes = 0
        # Damage known since open, sorted by offset; replaced, never mutated, so a reader can
        # take the current list without a lock. The skip bounds are what read() jumps over.
        self._damaged: list[DamagedSpan] = []
        self._skip_starts: list[int] = []
        self._skip_ends: list[int] = []
        self._acked: set[tuple[str, int, int, int]] = set()
        self._reset_base: int | None = None
        self._state_lock = threading.Lock()

        self.directory.mkdir(parents=True, exist_ok=True)
        # Two writers interleaving records in one segment would corrupt it: hold an exclusive
        # advisory lock for as long as the log is open (released by the OS if the process dies).
        self._lock_fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise TickLogError(
                f"tick log {self.directory} is already open (by this or another process); "
                "close it first or use another directory"
            ) from None
        try:
            self._bases = self._recover()
        except BaseException:
            os.close(self._lock_fd)
            raise
        report_recovery(self._damaged, self._acked, self.torn)
        active = segment_path(self.directory, self._bases[-1])
        self._fd = os.open(active, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._active_size = os.fstat(self._fd).st_size
        self._end = self._bases[-1] + self._active_size
        # The truncation must reach disk before new records land behind it, whatever the policy.
        _datasync(self._fd)
        self._sync_directory()
        self._durable = self._end

        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        if fsync == "interval":
            self._flusher = threading.Thread(
                target=self._flush_loop, name=f"ticklog-flusher:{self.directory.name}", daemon=True
            )
            self._flusher.start()

    @classmethod
    def from_settings(cls, settings: Settings) -> TickLog:
        """The log under `settings.log_dir` with the configured fsync policy and segment size."""
        return cls(
            settings.log_dir,
            fsync=settings.log_fsync,
            fsync_interval_ms=settings.log_fsync_interval_ms,
            segment_bytes=settings.log_segment_bytes,
        )

    # ------------------------------------------------------------------ recovery
    def _recover(self) -> list[int]:
        """Segment bases after checking every segment (docs/ticklog.md §3): cuts the torn tail,
        records damaged spans, finishes an interrupted reset_to(); creates the first segment in
        an empty directory."""
        self._acked, self._reset_base = _read_state(self.directory)
        stored_acks = set(self._acked)
        bases = sorted(
            int(m.group(1))
            for p in self.directory.iterdir()
            if (m := _SEGMENT_NAME.match(p.name)) and p.is_file()
        )
        if self._reset_base is not None:
            # reset_to() stores its target first, then deletes the old segments: any segment
            # still wholly below the target was persisted before the reset and goes now.
            for base in list(bases):
                path = segment_path(self.directory, base)
                if base < self._reset_base and base + path.stat().st_size <= self._reset_base:
                    path.unlink()
                    bases.remove(base)
                    self._dir_dirty = True
        if not bases:
            first = self._reset_base or 0
            segment_path(self.directory, first).touch()
            self._dir_dirty = True
            bases = [first]
        spans: list[DamagedSpan] = []
        for i, base in enumerate(bases):
            found, torn = check_segment(
                self.directory, base, bases[i + 1] if i + 1 < len(bases) else None
            )
            spans.extend(found)
            if torn is not None:
                self.torn, self.truncated_bytes = torn, torn.bytes
        self._set_damage(sorted(spans, key=lambda s: (s.offset, s.end)))
        # Acknowledgements of spans that no longer exist (segment deleted, damage changed or cut
        # as the torn tail) are dropped, so the state file never holds stale entries.
        self._acked &= {s.key for s in self._damaged}
        if self._acked != stored_acks:
            self._save_state()
        return bases

    def _set_damage(self, spans: list[DamagedSpan]) -> None:
        """Install the known spans and the read-skip bounds derived from them."""
        skips = [s for s in spans if s.end > s.offset]
        self._damaged = spans
        self._skip_starts = [s.offset for s in skips]
        self._skip_ends = [s.end for s in skips]

    def _save_state(self) -> None:
        fields = ("segment", "offset", "end", "bytes")
        acked = [dict(zip(fields, k, strict=True)) for k in sorted(self._acked)]
        _write_state(
            self.directory,
            {"version": _STATE_VERSION, "reset_base": self._reset_base, "acknowledged": acked},
        )

    # ------------------------------------------------------------------ damage
    @property
    def damaged(self) -> list[DamagedSpan]:
        """Every damaged span of the retained segments, acknowledged or not, by offset."""
        return list(self._damaged)

    @property
    def unacknowledged_damage(self) -> list[DamagedSpan]:
        """The damaged spans nobody has acknowledged yet (what alerts and /status should show)."""
        acked = self._acked
        return [s for s in self._damaged if s.key not in acked]

    def acknowledge_damage(self) -> int:
        """Mark every known damaged span acknowledged, durably; returns how many were new."""
        if self._closed:
            raise TickLogError(f"tick log {self.directory} is closed")
        with self._state_lock:
            new = {s.key for s in self._damaged} - self._acked
            if new:
                self._acked = self._acked | new
                self._save_state()
            return len(new)

    # ------------------------------------------------------------------ properties
    @property
    def end_offset(self) -> int:
        """Offset just past the last appended record."""
        return self._end

    @property
    def durable_offset(self) -> int:
        """Offset up to which every record has been fsynced."""
        return self._durable

    @property
    def start_offset(self) -> int:
        """Offset of the first retained byte (the base of the oldest segment)."""
        return self._bases[0]

    @property
    def bytes_on_disk(self) -> int:
        """Total size of the retained segments."""
        with self._lock:
            return self._end - self._bases[0]

    @property
    def segment_count(self) -> int:
        """Number of segment files on disk, the active one included."""
        return len(self._bases)

    # ------------------------------------------------------------------ writing
    def append(self, batch: TickBatch) -> int:
        """Append `batch` as one record and return the end offset after it; with fsync="always"
        the record is on stable storage when this returns. An empty batch writes nothing."""
        if self._flush_error is not None:
            raise TickLogError("a background fsync failed; the log is not durable") from (
                self._flush_error
            )
        if not len(batch):
            return self._end
        record = encode_record(batch)
        with self._lock:
            if self._closed:
                raise TickLogError(f"tick log {self.directory} is closed")
            if self._active_size and self._active_size + len(record) > self.segment_bytes:
                self._roll()
            self._write_all(record)
            self._active_size += len(record)
            self._end += len(record)
            end = self._end
        if self.fsync == "always":
            self._sync()
        return end

    def _write_all(self, record: bytearray) -> None:
        view = memoryview(record)
        written = os.write(self._fd, view)
        # Regular files write everything at once barring ENOSPC-like edge cases; loop for those.
        while written < len(view):
            written += os.write(self._fd, view[written:])

    def _roll(self) -> None:
        """Start a new segment at the current end (caller holds `_lock`)."""
        base = self._end
        fd = os.open(
            segment_path(self.directory, base), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
        )
        self._retired.append(self._fd)
        self._fd = fd
        self._active_size = 0
        self._bases.append(base)
        self._dir_dirty = True
        if self.fsync == "off" and self._sync_lock.acquire(blocking=False):
            # No fsync is running, so no one holds the retired descriptors: close them now
            # rather than keep one open per segment until the next flush().
            try:
                for old in self._retired:
                    os.close(old)
                self._retired.clear()
            finally:
                self._sync_lock.release()

    def flush(self) -> None:
        """fsync everything appended so far (the group commit point)."""
        self._sync()

    def _sync(self) -> None:
        with self._sync_lock:
            with self._lock:
                if self._closed:
                    return
                retired = list(self._retired)
                self._retired.clear()
                fd = self._fd
                end = self._end
                dir_dirty = self._dir_dirty
                self._dir_dirty = False
            if end <= self._durable and not retired and not dir_dirty:
                return
            for old in retired:
                _datasync(old)
                os.close(old)
            if dir_dirty:
                self._sync_directory()
            _datasync(fd)
            with self._lock:
                if end > self._durable:
                    self._durable = end

    def _sync_directory(self) -> None:
        # A new segment file survives a crash only once its directory entry is on disk.
        dfd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _flush_loop(self) -> None:
        interval = self.fsync_interval_ms / 1000.0
        while not self._stop.wait(interval):
            if self._end > self._durable or self._retired:
                try:
                    self._sync()
                except BaseException as exc:  # noqa: BLE001 - surfaced by the next append
                    self._flush_error = exc
                    return

    # ------------------------------------------------------------------ reading
    def _read_fd(self, base: int) -> int:
        fd = self._read_fds.get(base)
        if fd is None:
            fd = os.open(segment_path(self.directory, base), os.O_RDONLY)
            self._read_fds[base] = fd
        return fd

    def read(self, offset: int, max_ticks: int, until: int | None = None) -> tuple[TickBatch, int]:
        """Whole records from `offset` (a record boundary) until at least `max_ticks` ticks or the
        end (or `until`, an end offset seen earlier), concatenated, and the offset after them;
        (empty batch, offset) at the end. Damaged spans found on open are skipped: a read that
        starts in one or reaches one goes on at its end, and the offset returned is never inside
        one."""
        if max_ticks <= 0:
            raise ValueError(f"max_ticks must be > 0, got {max_ticks}")
        with self._read_lock:
            with self._lock:
                end = self._end if until is None else min(self._end, until)
                bases = list(self._bases)
            starts, ends = self._skip_starts, self._skip_ends
            if offset < bases[0]:
                raise OffsetError(
                    f"offset {offset} is below the log start {bases[0]}: those segments were "
                    "deleted by retention"
                )
            if offset > end:
                raise OffsetError(f"offset {offset} is beyond the log end {end}")
            parts: list[TickBatch] = []
            ticks = 0
            pos = offset
            # Enough bytes for max_ticks ticks in one pread, bounded so a huge max_ticks does
            # not allocate the whole segment up front.
            want = min(max(max_ticks * BYTES_PER_TICK + 4096, _READ_CHUNK_MIN), _READ_CHUNK_MAX)
            while pos < end and ticks < max_ticks:
                stop = end
                if starts:  # damage is rare: an undamaged log pays this one test per chunk
                    k = bisect.bisect_right(starts, pos) - 1
                    if k >= 0 and pos < ends[k]:
                        pos = ends[k]
                        continue
                    if k + 1 < len(starts):
                        stop = starts[k + 1]
                i = bisect.bisect_right(bases, pos) - 1
                base = bases[i]
                seg_end = bases[i + 1] if i + 1 < len(bases) else end
                stop = min(stop, seg_end)
                if pos >= stop:  # an empty segment (possible right after a roll)
                    pos = seg_end
                    continue
                fd = self._read_fd(base)
                buf = self._pread(fd, min(want, stop - pos), pos - base)
                at = 0
                while ticks < max_ticks and len(buf) - at >= HEADER_SIZE:
                    length = check_header(buf, at)
                    if length < 0:
                        raise self._bad_offset(pos + at, offset)
                    size = HEADER_SIZE + length
                    if pos + at + size > stop:
                        raise self._bad_offset(pos + at, offset)
                    if len(buf) - at < size:
                        if at:
                            break  # re-read from this record's start in the next round
                        buf = self._pread(fd, size, pos - base)
                    try:
                        batch, size = decode_record(buf, at)
                    except CorruptLogError as exc:
                        raise CorruptLogError(
                            f"the record at offset {pos + at} is damaged: {exc}; it went bad "
                            "after the log was opened: reopen the log to skip and report it"
                        ) from exc
                    parts.append(batch)
                    ticks += len(batch)
                    at += size
                if at == 0 and len(buf) < HEADER_SIZE:
                    raise self._bad_offset(pos, offset)
                pos += at
            if starts:  # never hand out an offset at a span's start: the next read skips it
                k = bisect.bisect_right(starts, pos) - 1
                while k >= 0 and k < len(starts) and starts[k] <= pos < ends[k]:
                    pos = ends[k]
                    k += 1
        if not parts:
            return TickBatch.empty(), pos
        return concat_batches(parts), pos

    @staticmethod
    def _pread(fd: int, size: int, at: int) -> bytearray:
        # preadv into a bytearray: decoded columns are writable views, no extra copy.
        buf = bytearray(size)
        got = os.preadv(fd, [buf], at)
        if got != size:
            raise CorruptLogError(f"short read: {got} of {size} bytes at segment position {at}")
        return buf

    @staticmethod
    def _bad_offset(pos: int, offset: int) -> TickLogError:
        if pos == offset:
            return OffsetError(
                f"offset {offset} is not a record boundary of the log (no valid record starts "
                "there); pass an offset returned by append() or read()"
            )
        return CorruptLogError(
            f"the record at offset {pos} is damaged (bad framing); it went bad after the log was "
            "opened: reopen the log to skip and report it"
        )

    def replay(
        self, offset: int = 0, max_ticks: int = 100_000, until: int | None = None
    ) -> Iterator[tuple[TickBatch, int]]:
        """Batches of about `max_ticks` ticks with the offset after each, from `offset` to the end
        (or to `until`, an end offset seen earlier)."""
        while True:
            batch, nxt = self.read(offset, max_ticks, until)
            if not len(batch):  # the end (past any damage that ends the log)
                return
            yield batch, nxt
            offset = nxt

    # ------------------------------------------------------------------ retention and close
    def retain(self, persisted_offset: int) -> int:
        """Delete the segments that lie wholly below `persisted_offset` (never the active one),
        and their damaged spans; returns how many segments were deleted."""
        with self._read_lock:
            with self._lock:
                doomed = []
                while len(self._bases) > 1 and self._bases[1] <= persisted_offset:
                    doomed.append(self._bases.pop(0))
            for base in doomed:
                fd = self._read_fds.pop(base, None)
                if fd is not None:
                    os.close(fd)
                segment_path(self.directory, base).unlink()
            if doomed:
                gone = {segment_path(self.directory, base).name for base in doomed}
                with self._state_lock:
                    if any(s.segment in gone for s in self._damaged):
                        self._set_damage([s for s in self._damaged if s.segment not in gone])
                        acked = {k for k in self._acked if k[0] not in gone}
                        if acked != self._acked:
                            self._acked = acked
                            self._save_state()
        return len(doomed)

    def reset_to(self, offset: int) -> None:
        """Restart the log empty at `offset`, for a store that persisted up to an offset at or
        beyond the log's end (every record here is then persisted): deletes every segment and
        opens a new one whose base is `offset`. Crash-safe: the target is stored first, and a
        reopen finishes an interrupted reset (docs/ticklog.md §6)."""
        with self._read_lock, self._sync_lock, self._state_lock, self._lock:
            if self._closed:
                raise TickLogError(f"tick log {self.directory} is closed")
            if offset < self._end:
                raise ValueError(
                    f"reset_to({offset}) would drop records: the log ends at {self._end}; "
                    "reset only to an offset the store has persisted at or beyond the log's end"
                )
            self._reset_base = offset
            self._acked = set()
            self._save_state()
            for fd in (*self._retired, self._fd, *self._read_fds.values()):
                os.close(fd)
            self._retired.clear()
            self._read_fds.clear()
            for base in self._bases:
                segment_path(self.directory, base).unlink(missing_ok=True)
            self._fd = os.open(
                segment_path(self.directory, offset), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
            )
            self._bases = [offset]
            self._active_size = 0
            self._end = self._durable = offset
            self._set_damage([])
            self._dir_dirty = False
            self._sync_directory()

    def close(self) -> None:
        """Flush and fsync everything, stop the flusher thread and close the files."""
        if self._closed:
            return
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
        self._sync()
        with self._lock:
            self._closed = True
            os.close(self._fd)
            self._fd = -1
        with self._read_lock:
            for fd in self._read_fds.values():
                os.close(fd)
            self._read_fds.clear()
        os.close(self._lock_fd)  # releases the flock

    def __enter__(self) -> TickLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"TickLog({str(self.directory)!r}, fsync={self.fsync!r}, start={self.start_offset}, "
            f"end={self._end}, durable={self._durable}, segments={self.segment_count})"
        )
