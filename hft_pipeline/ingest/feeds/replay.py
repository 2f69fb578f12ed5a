"""Tick files (CSV, gzipped CSV, Parquet): a chunked reader for imports and a replaying Feed.

Columns: symbol, ts, price, volume, and optionally bid, ask, seq. `ts` is int64 nanoseconds
since the Unix epoch, or ISO-8601 text / a datetime column (converted to UTC; naive means UTC).

Sequence numbers: with a `seq` column, ticks at or below a symbol's resume point are skipped,
so importing the same file twice (or restarting in the middle of one) adds nothing twice. Without
one, ticks are numbered per symbol in file order after the resume point, so the reader cannot
recognise ticks it has seen: importing such a file twice inserts its ticks twice.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from hft_pipeline.ingest.feeds.base import ResumePoint
from hft_pipeline.market.ticks import TickBatch, is_valid_symbol, validate_symbol

REQUIRED_COLUMNS = ("symbol", "ts", "price", "volume")
OPTIONAL_COLUMNS = ("bid", "ask", "seq")
DEFAULT_CHUNK_ROWS = 100_000


class TickFileError(ValueError):
    """A tick file we cannot read: unknown format, a missing column or a value of the wrong type."""


def file_format(path: str | Path) -> str:
    """'csv' or 'parquet' from the file name (.csv, .csv.gz, .parquet, .pq)."""
    name = str(path).lower()
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise TickFileError(f"{path}: unknown tick file type; use .csv, .csv.gz or .parquet")


def file_columns(path: str | Path) -> list[str]:
    """The column names of a tick file, read from its header or Parquet schema only."""
    if file_format(path) == "parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    return [str(c).strip() for c in pd.read_csv(path, nrows=0).columns]


def count_rows(path: str | Path) -> int:
    """Number of ticks in the file, cheaply (Parquet metadata; CSV line count minus the header)."""
    if file_format(path) == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    opener = gzip.open if str(path).lower().endswith(".gz") else open
    lines, last = 0, b"\n"
    with opener(path, "rb") as fh:
        while block := fh.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    if last != b"\n":
        lines += 1  # a last line without a newline
    return max(0, lines - 1)


def read_tick_file(
    path: str | Path,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    resume: dict[str, ResumePoint] | None = None,
) -> Iterator[TickBatch]:
    """Yield the file's ticks as TickBatches of at most `chunk_rows`, in file order.

    Memory stays bounded by the chunk size. `resume` holds the last known tick per symbol
    (see the module docstring for how it affects seq). Raises TickFileError naming the bad
    column (and row, counting data rows from 1) when the file does not fit.
    """
    columns = file_columns(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise TickFileError(
            f"{path}: missing required column {', '.join(repr(c) for c in missing)}; "
            f"found {columns}; need {list(REQUIRED_COLUMNS)} and optionally {list(OPTIONAL_COLUMNS)}"
        )
    wanted = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in columns]
    numbering = _SeqNumbering(resume or {}, has_seq="seq" in wanted)
    row0 = 0
    for frame in _frames(path, wanted, chunk_rows):
        batch = _frame_to_batch(frame, path, row0, numbering)
        row0 += len(frame)
        if len(batch):
            yield batch


def _frames(path: str | Path, columns: list[str], chunk_rows: int) -> Iterator[pd.DataFrame]:
    if file_format(path) == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        for record_batch in pf.iter_batches(batch_size=chunk_rows, columns=columns):
            yield record_batch.to_pandas()
        return
    # symbol as text: B3-style or numeric-looking names must not turn into integers.
    reader = pd.read_csv(
        path, usecols=columns, dtype={"symbol": str}, chunksize=chunk_rows, skipinitialspace=True
    )
    with reader:
        yield from reader


class _SeqNumbering:
    """Per-symbol seq state across chunks: numbering for files without seq, skipping for files with."""

    def __init__(self, resume: dict[str, ResumePoint], has_seq: bool) -> None:
        self.has_seq = has_seq
        self.last = {s: int(p.seq) for s, p in resume.items()}
        self.skipped = 0

    def apply(
        self, symbols: list[str], codes: np.ndarray, seq: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (seq, keep mask) for one chunk; numbering state advances past it."""
        last = np.array([self.last.get(s, -1) for s in symbols], dtype=np.int64)
        if self.has_seq:
            assert seq is not None
            keep = seq > last[codes]
            self.skipped += int((~keep).sum())
            if keep.any():
                top = np.full(len(symbols), np.iinfo(np.int64).min)
                np.maximum.at(top, codes[keep], seq[keep])
                for i, s in enumerate(symbols):
                    if top[i] > last[i]:
                        self.last[s] = int(top[i])
            return seq, keep
        counts = np.bincount(codes, minlength=len(symbols))
        order = np.argsort(codes, kind="stable")
        rank = np.empty(codes.size, np.int64)
        rank[order] = np.arange(codes.size) - np.repeat(np.cumsum(counts) - counts, counts)
        seq = last[codes] + 1 + rank
        for i, s in enumerate(symbols):
            self.last[s] = int(last[i] + counts[i])
        return seq, np.ones(codes.size, bool)


def _bad_row(
    path: str | Path, column: str, row0: int, bad: np.ndarray, values: pd.Series, why: str
) -> TickFileError:
    first = int(np.flatnonzero(bad)[0])
    return TickFileError(
        f"{path}: column {column!r} {why}: row {row0 + first + 1} has {values.iloc[first]!r}"
    )


def _numbers(frame: pd.DataFrame, column: str, path: str | Path, row0: int) -> np.ndarray:
    values = frame[column]
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    parsed = pd.to_numeric(values, errors="coerce")
    bad = (parsed.isna() & values.notna()).to_numpy()
    if bad.any():
        raise _bad_row(path, column, row0, bad, values, "must be numeric")
    return parsed.to_numpy(dtype=np.float64, na_value=np.nan)


def _integers(frame: pd.DataFrame, column: str, path: str | Path, row0: int) -> np.ndarray:
    values = frame[column]
    if pd.api.types.is_integer_dtype(values):
        return values.to_numpy(dtype=np.int64)
    parsed = pd.to_numeric(values, errors="coerce")
    floats = parsed.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(floats) | (floats != np.floor(floats))
    if bad.any():
        raise _bad_row(path, column, row0, bad, values, "must hold whole numbers")
    return parsed.to_numpy(dtype=np.int64)


def _timestamps(frame: pd.DataFrame, path: str | Path, row0: int) -> np.ndarray:
    values = frame["ts"]
    if pd.api.types.is_integer_dtype(values):
        return values.to_numpy(dtype=np.int64)
    if pd.api.types.is_datetime64_any_dtype(values):
        stamps = values
        if getattr(stamps.dt, "tz", None) is not None:
            stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
    elif pd.api.types.is_numeric_dtype(values):
        # Float nanoseconds lose precision past 2**53 (~104 days after 1970); refuse them.
        raise TickFileError(
            f"{path}: column 'ts' is {values.dtype}: use int64 nanoseconds since the epoch "
            "or ISO-8601 text (empty ts cells also make a CSV column float)"
        )
    else:
        try:
            stamps = pd.to_datetime(values, utc=True, format="ISO8601").dt.tz_localize(None)
        except (ValueError, TypeError) as exc:
            raise TickFileError(
                f"{path}: column 'ts' must be int64 ns or ISO-8601 timestamps: {exc}"
            ) from None
    stamps = stamps.astype("datetime64[ns]")
    bad = stamps.isna().to_numpy()
    if bad.any():
        raise _bad_row(path, "ts", row0, bad, values, "has an empty timestamp")
    return stamps.to_numpy().view(np.int64)


def _frame_to_batch(
    frame: pd.DataFrame, path: str | Path, row0: int, numbering: _SeqNumbering
) -> TickBatch:
    raw_symbols = frame["symbol"]
    if raw_symbols.isna().any():
        raise _bad_row(path, "symbol", row0, raw_symbols.isna().to_numpy(), raw_symbols, "is empty")
    codes, uniques = pd.factorize(raw_symbols.astype(str).str.strip())
    symbols = [str(s) for s in uniques]
    for i, s in enumerate(symbols):
        if not is_valid_symbol(s):
            try:
                validate_symbol(s)
            except ValueError as exc:
                bad = codes == i
                raise _bad_row(path, "symbol", row0, bad, raw_symbols, str(exc)) from None
    codes = codes.astype(np.int32)
    ts = _timestamps(frame, path, row0)
    price = _numbers(frame, "price", path, row0)
    volume = _numbers(frame, "volume", path, row0)
    n = len(frame)
    bid = _numbers(frame, "bid", path, row0) if "bid" in frame else np.full(n, np.nan)
    ask = _numbers(frame, "ask", path, row0) if "ask" in frame else np.full(n, np.nan)
    given = _integers(frame, "seq", path, row0) if "seq" in frame else None
    seq, keep = numbering.apply(symbols, codes, given)
    batch = TickBatch(tuple(symbols), codes, ts, seq, price, volume, bid, ask)
    return batch if keep.all() else batch.take(keep)


class ReplayFeed:
    """A Feed that plays a tick file: as fast as possible (speed 0) or `speed` times real time.

    All symbols in the file are produced unless `symbols` restricts them; `unsubscribe` drops
    a symbol, `subscribe` brings it back. The iterator ends at the end of the file.
    """

    def __init__(
        self,
        path: str | Path,
        speed: float = 0.0,
        *,
        symbols: Iterable[str] | None = None,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        emit_interval_s: float = 0.005,
        clock: Callable[[], float] = time.monotonic,
        name: str | None = None,
    ) -> None:
        if not speed >= 0:
            raise ValueError(f"speed must be >= 0 (0 = as fast as possible), got {speed!r}")
        self.path = Path(path)
        file_format(self.path)  # fail early on an unknown extension
        self.speed = float(speed)
        self.chunk_rows = int(chunk_rows)
        self.emit_interval_s = float(emit_interval_s)
        self.name = name or f"replay:{self.path.name}"
        self._clock = clock
        self._only: set[str] | None = (
            None if symbols is None else {validate_symbol(s) for s in symbols}
        )
        self._excluded: set[str] = set()
        self._resume: dict[str, ResumePoint] = {}
        self._closed = False
        self.rows_read = 0  # ticks produced from the file so far, before subscription filtering

    def subscribe(self, symbol: str) -> None:
        """Produce `symbol` again if it was unsubscribed (or add it to an explicit symbol list)."""
        validate_symbol(symbol)
        self._excluded.discard(symbol)
        if self._only is not None:
            self._only.add(symbol)

    def unsubscribe(self, symbol: str) -> None:
        """Stop producing `symbol` from the rest of the file."""
        self._excluded.add(symbol)

    def resume_from(self, last: dict[str, ResumePoint]) -> None:
        """Number (files without seq) or skip (files with seq) ticks relative to `last`."""
        self._resume.update(last)

    async def close(self) -> None:
        """End the `batches()` iterator at its next step."""
        self._closed = True

    async def batches(self) -> AsyncIterator[TickBatch]:
        """Yield the file's ticks in file order, paced by `speed`."""
        reader = read_tick_file(self.path, chunk_rows=self.chunk_rows, resume=self._resume)
        pacer = _Pacer(self.speed, self.emit_interval_s, self._clock)
        try:
            while not self._closed:
                # File reading and parsing block; keep them off the event loop.
                batch = await asyncio.to_thread(next, reader, None)
                if batch is None:
                    break
                self.rows_read += len(batch)
                batch = self._subscribed(batch)
                if not len(batch):
                    continue
                if self.speed <= 0:
                    yield batch
                    continue
                for part, due in pacer.parts(batch):
                    delay = due - self._clock()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if self._closed:
                        return
                    yield part
        finally:
            reader.close()

    def _subscribed(self, batch: TickBatch) -> TickBatch:
        allowed = np.array(
            [
                s not in self._excluded and (self._only is None or s in self._only)
                for s in batch.symbols
            ],
            dtype=bool,
        )
        if allowed.all():
            return batch
        return batch.take(allowed[batch.sym])


class _Pacer:
    """Maps file time to wall time for speed > 0 and cuts batches into emit-interval slices."""

    def __init__(self, speed: float, emit_interval_s: float, clock: Callable[[], float]) -> None:
        self.speed = speed
        self.slot_ns = max(1.0, emit_interval_s * speed * 1e9)  # file time per emitted slice
        self.clock = clock
        self.file_start: int | None = None
        self.wall_start = 0.0
        self.high = np.iinfo(np.int64).min  # newest file time seen: out-of-order ticks go at once

    def parts(self, batch: TickBatch) -> Iterator[tuple[TickBatch, float]]:
        """Slices of `batch` with the wall-clock time (clock units) each is due."""
        if self.file_start is None:
            self.file_start = int(batch.ts[0])
            self.wall_start = self.clock()
        file_time = np.maximum.accumulate(np.maximum(batch.ts, self.high))
        self.high = int(file_time[-1])
        elapsed = (file_time - self.file_start).astype(np.float64)
        slot = np.floor(elapsed / self.slot_ns).astype(np.int64)
        cuts = np.flatnonzero(np.diff(slot)) + 1
        starts = np.concatenate(([0], cuts))
        ends = np.concatenate((cuts, [len(batch)]))
        for lo, hi in zip(starts, ends, strict=True):
            due = self.wall_start + elapsed[lo] / 1e9 / self.speed
            yield batch.take(slice(int(lo), int(hi))), due
