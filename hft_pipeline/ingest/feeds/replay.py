"""The replay feed: plays a tick file (`ingest/tickfile.py` reads and checks it) as a Feed."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from hft_pipeline.ingest.feeds.base import ResumePoint
from hft_pipeline.ingest.tickfile import (
    DEFAULT_CHUNK_ROWS,
    TickFileReader,
    file_format,
    read_tick_file,
)
from hft_pipeline.market.ticks import TickBatch, validate_symbol

log = logging.getLogger(__name__)


class ReplayFeed:
    """A Feed that plays a tick file: as fast as possible (speed 0) or `speed` times real time.

    All symbols in the file are produced unless `symbols` restricts them; `unsubscribe` drops
    a symbol, `subscribe` brings it back. The iterator ends at the end of the file. Rows the
    reader rejects are counted in `rejected` by reason and logged at the end.
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
        self.rejected: dict[str, int] = {}

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
        file = TickFileReader(self.path, chunk_rows=self.chunk_rows)
        self.rejected = file.rejected
        reader = read_tick_file(self.path, resume=dict(self._resume), reader=file)
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
            if any(self.rejected.values()):
                log.warning(
                    "%s: rows rejected: %s",
                    self.name,
                    ", ".join(f"{k}={v}" for k, v in self.rejected.items() if v),
                )

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
