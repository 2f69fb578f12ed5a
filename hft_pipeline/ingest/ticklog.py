"""The durable tick log: segmented append-only files of CRC-framed TickBatch records (DESIGN §3).

Modelled on the kdb+ tickerplant log and Kafka segments: a batch counts as received once it is
appended here; the persister drains it by global byte offset and retention deletes segments that
are wholly persisted. On open, a torn tail (partial or CRC-bad record) is truncated.
"""

from __future__ import annotations

import bisect
import fcntl
import functools
import os
import re
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from hft_pipeline.market.ticks import TickBatch, concat_batches

if TYPE_CHECKING:
    from hft_pipeline.settings import Settings

__all__ = [
    "FSYNC_POLICIES",
    "CorruptLogError",
    "LogBackend",
    "OffsetError",
    "TickLog",
    "TickLogError",
    "decode_record",
    "encode_record",
]

FSYNC_POLICIES = ("always", "interval", "off")

# Record = 16-byte header + payload.
# header: magic "HTLG", version u8, flags u8 (0), reserved u16 (0), payload length u32, crc32 u32
# payload: tick count u32, symbol count u16, 2 pad bytes, then per symbol u8 length + utf-8 name,
# zero padding to 8 bytes, then the columns ts, seq, price, volume, bid, ask (8 bytes each per
# tick) and sym (int32), zero padding to 8 bytes. Records are 8-byte multiples, so every column
# of a record read into a buffer at a record boundary is naturally aligned for np.frombuffer.
MAGIC = b"HTLG"
VERSION = 1
_HEADER = struct.Struct("<4sBBHII")
HEADER_SIZE = _HEADER.size
_PAYLOAD_HEAD = struct.Struct("<IH2x")
_WIDE_COLUMNS = ("ts", "seq", "price", "volume", "bid", "ask")
_WIDE_DTYPES = (np.int64, np.int64, np.float64, np.float64, np.float64, np.float64)
_BYTES_PER_TICK = 8 * len(_WIDE_COLUMNS) + 4
# A payload length above this cannot have been written by us (u32 framing); it marks garbage.
_MAX_PAYLOAD = 0xFFFFFFFF

_SEGMENT_NAME = re.compile(r"^(\d{20})\.log$")
LOCK_NAME = ".lock"
_READ_CHUNK_MIN = 1 << 16
_READ_CHUNK_MAX = 1 << 24


class TickLogError(Exception):
    """Base class for tick log failures."""


class OffsetError(TickLogError, ValueError):
    """An offset that is not a retained record boundary of the log."""


class CorruptLogError(TickLogError):
    """A record inside the log (not its tail) fails its framing or CRC check."""


def _pad8(n: int) -> int:
    return (n + 7) & ~7


def _datasync(fd: int) -> None:
    """Flush a file's data (and the size needed to read it) to stable storage."""
    # fdatasync skips the mtime update that fsync forces; both persist the file size.
    (getattr(os, "fdatasync", None) or os.fsync)(fd)


def _segment_path(directory: Path, base: int) -> Path:
    return directory / f"{base:020d}.log"


@functools.lru_cache(maxsize=64)
def _symbol_table(symbols: tuple[str, ...]) -> bytes:
    """The length-prefixed UTF-8 names of a batch's symbol table (cached: feeds reuse tables)."""
    names = [s.encode("utf-8") for s in symbols]
    if len(names) > 0xFFFF:
        raise TickLogError(f"a batch may carry at most 65535 symbols, got {len(names)}")
    for raw in names:
        if len(raw) > 0xFF:
            raise TickLogError(f"symbol {raw[:40]!r}... is longer than 255 bytes")
    return b"".join(bytes([len(raw)]) + raw for raw in names)


def encode_record(batch: TickBatch) -> bytearray:
    """One framed record (header + payload) holding every tick and the symbol table of `batch`."""
    n = len(batch)
    table = _symbol_table(batch.symbols)
    n_names = len(batch.symbols)
    columns = [np.asarray(getattr(batch, c)) for c in (*_WIDE_COLUMNS, "sym")]
    for name, col in zip((*_WIDE_COLUMNS, "sym"), columns, strict=True):
        if col.shape != (n,):
            raise TickLogError(f"column {name} has shape {col.shape}, expected ({n},)")
    if n:
        sym = columns[-1]
        # A sym id outside the table would make the record undecodable on replay: refuse it now.
        lo, hi = int(sym.min()), int(sym.max())
        if lo < 0 or hi >= n_names:
            raise TickLogError(f"sym ids span {lo}..{hi} but the batch has {n_names} symbols")
    table_len = _pad8(_PAYLOAD_HEAD.size + len(table))
    payload_len = _pad8(table_len + n * _BYTES_PER_TICK)
    if payload_len > _MAX_PAYLOAD:
        raise TickLogError(f"batch of {n} ticks is too large for one record; split it")
    buf = bytearray(HEADER_SIZE + payload_len)
    _PAYLOAD_HEAD.pack_into(buf, HEADER_SIZE, n, n_names)
    pos = HEADER_SIZE + _PAYLOAD_HEAD.size
    buf[pos : pos + len(table)] = table
    pos = HEADER_SIZE + table_len
    for col, dtype in zip(columns[:-1], _WIDE_DTYPES, strict=True):
        np.frombuffer(buf, dtype=dtype, count=n, offset=pos)[:] = col
        pos += 8 * n
    np.frombuffer(buf, dtype=np.int32, count=n, offset=pos)[:] = columns[-1]
    crc = zlib.crc32(memoryview(buf)[HEADER_SIZE:])
    _HEADER.pack_into(buf, 0, MAGIC, VERSION, 0, 0, payload_len, crc)
    return buf


def _check_header(buf: bytes | bytearray | memoryview, pos: int) -> int:
    """The payload length of the record header at `pos`, or -1 if it is not a valid header."""
    magic, version, flags, reserved, length, _crc = _HEADER.unpack_from(buf, pos)
    # Every header byte is checked (the CRC covers only the payload), so any flipped byte of a
    # record is caught either here or by the CRC.
    if (
        magic != MAGIC
        or version != VERSION
        or flags
        or reserved
        or length < _PAYLOAD_HEAD.size
        or length % 8
    ):
        return -1
    return length


def decode_record(buf: bytearray | bytes | memoryview, pos: int = 0) -> tuple[TickBatch, int]:
    """Decode the whole record at `pos` of `buf` (columns are views into `buf`); returns it and
    its size. Raises CorruptLogError if the framing or CRC is wrong or the record is cut short."""
    if len(buf) - pos < HEADER_SIZE:
        raise CorruptLogError(f"record at {pos} is cut short: {len(buf) - pos} bytes")
    length = _check_header(buf, pos)
    if length < 0:
        raise CorruptLogError(f"no valid record header at {pos}")
    start = pos + HEADER_SIZE
    if len(buf) - start < length:
        raise CorruptLogError(f"record at {pos} is cut short: payload {length} bytes")
    crc = _HEADER.unpack_from(buf, pos)[5]
    view = memoryview(buf)[start : start + length]
    if zlib.crc32(view) != crc:
        raise CorruptLogError(f"record at {pos} fails its CRC check")
    n, nsym = _PAYLOAD_HEAD.unpack_from(view, 0)
    p = _PAYLOAD_HEAD.size
    symbols = []
    for _ in range(nsym):
        k = view[p]
        symbols.append(bytes(view[p + 1 : p + 1 + k]).decode("utf-8"))
        p += 1 + k
    p = _pad8(p)
    if p + n * _BYTES_PER_TICK > length:
        raise CorruptLogError(f"record at {pos} declares {n} ticks but holds fewer")
    cols = []
    for dtype in _WIDE_DTYPES:
        cols.append(np.frombuffer(buf, dtype=dtype, count=n, offset=start + p))
        p += 8 * n
    sym = np.frombuffer(buf, dtype=np.int32, count=n, offset=start + p)
    batch = TickBatch(tuple(symbols), sym, *cols)
    return batch, HEADER_SIZE + length


def _valid_prefix(fd: int, size: int) -> int:
    """Length of the longest prefix of the file made of whole records with good CRCs."""
    pos = 0
    while size - pos >= HEADER_SIZE:
        head = os.pread(fd, HEADER_SIZE, pos)
        length = _check_header(head, 0)
        if length < 0 or size - pos - HEADER_SIZE < length:
            break
        payload = os.pread(fd, length, pos + HEADER_SIZE)
        if len(payload) != length or zlib.crc32(payload) != _HEADER.unpack_from(head)[5]:
            break
        pos += HEADER_SIZE + length
    return pos


@runtime_checkable
class LogBackend(Protocol):
    """What the ingest service needs from a durable log; TickLog is the file implementation,
    NATS JetStream or Kafka backends may take its place (DESIGN §3)."""

    @property
    def end_offset(self) -> int: ...
    @property
    def durable_offset(self) -> int: ...
    @property
    def start_offset(self) -> int: ...
    def append(self, batch: TickBatch) -> int: ...
    def flush(self) -> None: ...
    def read(self, offset: int, max_ticks: int) -> tuple[TickBatch, int]: ...
    def replay(
        self, offset: int = 0, max_ticks: int = 100_000
    ) -> Iterator[tuple[TickBatch, int]]: ...
    def retain(self, persisted_offset: int) -> int: ...
    def close(self) -> None: ...


class TickLog:
    """A segmented append-only log of TickBatch records addressed by global byte offsets.

    Thread-safe: one thread may append while another reads and retains. Locks, always taken in
    this order: `_read_lock` -> `_lock` and `_sync_lock` -> `_lock` (never read and sync together).
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
        self.truncated_bytes = 0

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
        active = _segment_path(self.directory, self._bases[-1])
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
        """Segment bases after cutting the torn tail; creates segment 0 in an empty directory."""
        bases = sorted(
            int(m.group(1))
            for p in self.directory.iterdir()
            if (m := _SEGMENT_NAME.match(p.name)) and p.is_file()
        )
        if not bases:
            _segment_path(self.directory, 0).touch()
            self._dir_dirty = True
            return [0]
        sizes = [_segment_path(self.directory, b).stat().st_size for b in bases]
        # The tail to scan is the first segment that does not reach its successor's base: after a
        # power loss an older segment may have lost unsynced bytes while a newer one kept some.
        # Nothing behind such a hole was acknowledged as durable, so later segments are dropped.
        tail = len(bases) - 1
        for i in range(len(bases) - 1):
            expected = bases[i + 1] - bases[i]
            if sizes[i] > expected:
                raise CorruptLogError(
                    f"segment {_segment_path(self.directory, bases[i])} holds {sizes[i]} bytes, "
                    f"more than the {expected} before the next segment; the log is damaged"
                )
            if sizes[i] < expected:
                tail = i
                break
        for i in range(tail + 1, len(bases)):
            self.truncated_bytes += sizes[i]
            _segment_path(self.directory, bases[i]).unlink()
        del bases[tail + 1 :]
        path = _segment_path(self.directory, bases[tail])
        fd = os.open(path, os.O_RDWR)
        try:
            good = _valid_prefix(fd, sizes[tail])
            if good < sizes[tail]:
                os.ftruncate(fd, good)
                self.truncated_bytes += sizes[tail] - good
        finally:
            os.close(fd)
        return bases

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
            _segment_path(self.directory, base), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
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
            fd = os.open(_segment_path(self.directory, base), os.O_RDONLY)
            self._read_fds[base] = fd
        return fd

    def read(self, offset: int, max_ticks: int) -> tuple[TickBatch, int]:
        """Whole records from `offset` (a record boundary) until at least `max_ticks` ticks or the
        end, concatenated, and the offset after them; (empty batch, offset) at the end."""
        if max_ticks <= 0:
            raise ValueError(f"max_ticks must be > 0, got {max_ticks}")
        with self._read_lock:
            with self._lock:
                end = self._end
                bases = list(self._bases)
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
            want = min(max(max_ticks * _BYTES_PER_TICK + 4096, _READ_CHUNK_MIN), _READ_CHUNK_MAX)
            while pos < end and ticks < max_ticks:
                i = bisect.bisect_right(bases, pos) - 1
                base = bases[i]
                seg_end = bases[i + 1] if i + 1 < len(bases) else end
                if pos >= seg_end:  # an empty segment (possible right after a roll)
                    pos = seg_end
                    continue
                fd = self._read_fd(base)
                buf = self._pread(fd, min(want, seg_end - pos), pos - base)
                at = 0
                while ticks < max_ticks and len(buf) - at >= HEADER_SIZE:
                    length = _check_header(buf, at)
                    if length < 0:
                        raise self._bad_offset(pos + at, offset)
                    size = HEADER_SIZE + length
                    if pos + at + size > seg_end:
                        raise self._bad_offset(pos + at, offset)
                    if len(buf) - at < size:
                        if at:
                            break  # re-read from this record's start in the next round
                        buf = self._pread(fd, size, pos - base)
                    try:
                        batch, size = decode_record(buf, at)
                    except CorruptLogError as exc:
                        raise CorruptLogError(
                            f"the record at offset {pos + at} is damaged: {exc}"
                        ) from exc
                    parts.append(batch)
                    ticks += len(batch)
                    at += size
                if at == 0 and len(buf) < HEADER_SIZE:
                    raise self._bad_offset(pos, offset)
                pos += at
        if not parts:
            return TickBatch.empty(), offset
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
        return CorruptLogError(f"the record at offset {pos} is damaged (bad framing)")

    def replay(self, offset: int = 0, max_ticks: int = 100_000) -> Iterator[tuple[TickBatch, int]]:
        """Batches of about `max_ticks` ticks with the offset after each, from `offset` to the end."""
        while True:
            batch, nxt = self.read(offset, max_ticks)
            if nxt == offset:
                return
            yield batch, nxt
            offset = nxt

    # ------------------------------------------------------------------ retention and close
    def retain(self, persisted_offset: int) -> int:
        """Delete the segments that lie wholly below `persisted_offset` (never the active one);
        returns how many were deleted."""
        with self._read_lock:
            with self._lock:
                doomed = []
                while len(self._bases) > 1 and self._bases[1] <= persisted_offset:
                    doomed.append(self._bases.pop(0))
            for base in doomed:
                fd = self._read_fds.pop(base, None)
                if fd is not None:
                    os.close(fd)
                _segment_path(self.directory, base).unlink()
        return len(doomed)

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
