"""Ring buffers of the most recent ticks per symbol, columnar numpy, ordered by (ts, seq).

Memory budget and threading: docs/memory.md#ring-buffers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from hft_pipeline.market.candles import run_starts
from hft_pipeline.market.ticks import SymbolIndex, TickBatch, concat_batches

BYTES_PER_TICK = 32
_COLUMNS = ("ts", "seq", "price", "volume")
_DTYPES = (np.int64, np.int64, np.float64, np.float64)
_INITIAL_SLOTS = 1024
#: Small batches are staged and written to the rings together: writing costs a fixed ~8 µs per
#: symbol present, which dominates 50-tick batches spread over 150 symbols. Every read flushes
#: first, so readers never see staging.
STAGE_TICKS = 16_384


class UnknownSymbolError(KeyError):
    """A symbol the buffers have never received a tick for."""


@dataclass(frozen=True, slots=True)
class SymbolStats:
    """What one symbol's buffer holds now."""

    count: int
    first_ts: int | None
    last_ts: int | None
    last_price: float | None


class _Ring:
    """One symbol's columns: logical tick i lives at slot (head + i) % alloc."""

    __slots__ = ("alloc", "cols", "count", "head")

    def __init__(self, alloc: int) -> None:
        self.alloc = alloc
        self.cols = [np.empty(alloc, dt) for dt in _DTYPES]
        self.head = 0
        self.count = 0

    def _segments(self, i: int, j: int) -> Iterator[tuple[int, int]]:
        """Physical [a, b) slices covering logical [i, j)."""
        if j <= i:
            return
        a = (self.head + i) % self.alloc
        n = j - i
        first = min(n, self.alloc - a)
        yield a, a + first
        if first < n:
            yield 0, n - first

    def read(self, i: int, j: int) -> list[np.ndarray]:
        """Copies of logical ticks [i, j) per column."""
        segs = list(self._segments(i, j))
        if len(segs) == 1:
            a, b = segs[0]
            return [c[a:b].copy() for c in self.cols]
        if not segs:
            return [np.empty(0, dt) for dt in _DTYPES]
        return [np.concatenate([c[a:b] for a, b in segs]) for c in self.cols]

    def search(self, ts: int, side: str) -> int:
        """Logical index where `ts` would be inserted (np.searchsorted over the logical order)."""
        end = min(self.head + self.count, self.alloc)
        first = end - self.head
        i = int(np.searchsorted(self.cols[0][self.head : end], ts, side))
        if i < first or first == self.count:
            return i
        return first + int(np.searchsorted(self.cols[0][: self.count - first], ts, side))

    def resize(self, alloc: int) -> None:
        """Reallocate to `alloc` slots keeping the newest ticks, in logical order from slot 0."""
        keep = min(self.count, alloc)
        cols = self.read(self.count - keep, self.count)
        self.cols = [np.empty(alloc, dt) for dt in _DTYPES]
        for dst, src in zip(self.cols, cols, strict=True):
            dst[:keep] = src
        self.alloc, self.head, self.count = alloc, 0, keep

    def push(self, cols: list[np.ndarray], cap: int) -> None:
        """Append ticks ordered after every held tick; the oldest are overwritten beyond `cap`."""
        n = cols[0].shape[0]
        if n >= cap:
            cols = [c[n - cap :] for c in cols]
            n = cap
            self.head = self.count = 0
        if self.count + n > self.alloc and self.alloc < cap:
            self.resize(min(cap, max(2 * self.alloc, self.count + n)))
        done = 0
        for a, b in self._segments(self.count, self.count + n):
            for dst, src in zip(self.cols, cols, strict=True):
                dst[a:b] = src[done : done + b - a]
            done += b - a
        overflow = self.count + n - self.alloc
        if overflow > 0:
            self.head = (self.head + overflow) % self.alloc
            self.count = self.alloc
        else:
            self.count += n

    def last_key(self) -> tuple[int, int]:
        i = (self.head + self.count - 1) % self.alloc
        return int(self.cols[0][i]), int(self.cols[1][i])

    def merge(self, cols: list[np.ndarray], cap: int) -> None:
        """Insert ticks (sorted by (ts, seq)) that start before the newest held tick: the rare path."""
        i0 = self.search(int(cols[0][0]), "left")
        tail = self.read(i0, self.count)
        merged = [np.concatenate([t, c]) for t, c in zip(tail, cols, strict=True)]
        order = np.lexsort((merged[1], merged[0]))
        self.count = i0
        self.push([m[order] for m in merged], cap)


class TickBuffers:
    """Most recent ticks per symbol within a global memory budget (docs/memory.md#ring-buffers)."""

    def __init__(self, capacity_per_symbol: int = 5_000_000, max_bytes: int = 2 * 1024**3) -> None:
        if capacity_per_symbol < 1:
            raise ValueError(f"capacity_per_symbol must be >= 1, got {capacity_per_symbol}")
        if max_bytes < BYTES_PER_TICK:
            raise ValueError(f"max_bytes must hold at least one tick ({BYTES_PER_TICK} bytes)")
        self.capacity_per_symbol = capacity_per_symbol
        self.max_bytes = max_bytes
        self._index = SymbolIndex()
        self._rings: list[_Ring] = []
        self._capacity = capacity_per_symbol
        self._staged: list[TickBatch] = []
        self._staged_ticks = 0

    # --- writes ---------------------------------------------------------------------------------

    def _add_symbols(self) -> None:
        n = len(self._index)
        self._capacity = max(
            1, min(self.capacity_per_symbol, self.max_bytes // (BYTES_PER_TICK * n))
        )
        for ring in self._rings:
            if ring.alloc > self._capacity:
                ring.resize(self.capacity)
        while len(self._rings) < n:
            self._rings.append(_Ring(min(_INITIAL_SLOTS, self._capacity)))

    def append(self, batch: TickBatch) -> None:
        """Add a multi-symbol batch (any order); each symbol's buffer stays ordered by (ts, seq)."""
        if not len(batch):
            return
        self._staged.append(batch)
        self._staged_ticks += len(batch)
        if self._staged_ticks >= STAGE_TICKS:
            self.flush()

    def flush(self) -> None:
        """Write staged batches into the rings (reads do this themselves)."""
        if not self._staged:
            return
        batch = concat_batches(self._staged)
        self._staged, self._staged_ticks = [], 0
        self._write(batch)

    def _write(self, batch: TickBatch) -> None:
        n = len(batch)
        ids = self._index.ids_for(batch)
        if len(self._index) > len(self._rings):
            self._add_symbols()
        order = np.argsort(ids, kind="stable")
        sid = ids[order]
        cols = [batch.ts[order], batch.seq[order], batch.price[order], batch.volume[order]]
        ts, seq = cols[0], cols[1]
        starts = run_starts(sid)
        # A chunk is ordered when every tick follows the previous one of the same symbol.
        disorder = np.zeros(n, np.int64)
        same = sid[1:] == sid[:-1]
        disorder[1:] = same & ((ts[1:] < ts[:-1]) | ((ts[1:] == ts[:-1]) & (seq[1:] <= seq[:-1])))
        bad = np.add.reduceat(disorder, starts).tolist()
        ends = np.append(starts[1:], n).tolist()
        cap = self._capacity
        for s, a, b, unordered in zip(
            sid[starts].tolist(), starts.tolist(), ends, bad, strict=True
        ):
            ring = self._rings[s]
            chunk = [c[a:b] for c in cols]
            if unordered:
                o = np.lexsort((chunk[1], chunk[0]))
                chunk = [c[o] for c in chunk]
            if ring.count and (int(chunk[0][0]), int(chunk[1][0])) <= ring.last_key():
                ring.merge(chunk, cap)
            else:
                ring.push(chunk, cap)

    # --- reads ----------------------------------------------------------------------------------

    def _ring(self, symbol: str) -> _Ring:
        s = self._index.get(symbol)
        if s is None:
            raise UnknownSymbolError(f"no ticks buffered for symbol {symbol!r}")
        return self._rings[s]

    @property
    def capacity(self) -> int:
        """Ticks each symbol's buffer may hold now (the budget split between symbols)."""
        self.flush()
        return self._capacity

    def symbols(self) -> list[str]:
        """Every symbol with a buffer, in order of first appearance."""
        self.flush()
        return list(self._index.names)

    def __contains__(self, symbol: object) -> bool:
        self.flush()
        return symbol in self._index

    @property
    def nbytes(self) -> int:
        """Bytes allocated for tick storage across all symbols."""
        self.flush()
        return sum(r.alloc for r in self._rings) * BYTES_PER_TICK

    def count(self, symbol: str) -> int:
        """Ticks held for `symbol` (0 if unknown)."""
        self.flush()
        return self._ring(symbol).count if symbol in self._index else 0

    def oldest_ts(self, symbol: str) -> int | None:
        """ts of the oldest tick held for `symbol`, None if none."""
        self.flush()
        if symbol not in self._index or not self._ring(symbol).count:
            return None
        ring = self._ring(symbol)
        return int(ring.cols[0][ring.head])

    def stats(self, symbol: str) -> SymbolStats:
        """Count, first/last ts and last price of what `symbol`'s buffer holds."""
        self.flush()
        if symbol not in self._index or not self._ring(symbol).count:
            return SymbolStats(0, None, None, None)
        ring = self._ring(symbol)
        last = (ring.head + ring.count - 1) % ring.alloc
        return SymbolStats(
            ring.count,
            int(ring.cols[0][ring.head]),
            int(ring.cols[0][last]),
            float(ring.cols[2][last]),
        )

    def all_stats(self) -> dict[str, SymbolStats]:
        """`stats` of every symbol."""
        return {name: self.stats(name) for name in self._index.names}

    def range(
        self,
        symbol: str,
        start_ns: int | None = None,
        end_ns: int | None = None,
        limit: int | None = None,
        descending: bool = False,
    ) -> dict[str, np.ndarray]:
        """Ticks with start_ns <= ts < end_ns as columns ts, seq, price, volume (copies).

        With `limit`, the oldest `limit` ticks of the range, or the newest when descending=True
        (then rows come newest first).
        """
        self.flush()
        ring = self._ring(symbol)
        i = 0 if start_ns is None else ring.search(int(start_ns), "left")
        j = ring.count if end_ns is None else ring.search(int(end_ns), "left")
        j = max(i, j)
        if limit is not None:
            limit = max(int(limit), 0)
            if descending:
                i = max(i, j - limit)
            else:
                j = min(j, i + limit)
        cols = ring.read(i, j)
        if descending:
            cols = [c[::-1] for c in cols]
        return dict(zip(_COLUMNS, cols, strict=True))

    def last(self, symbol: str, n: int, descending: bool = True) -> dict[str, np.ndarray]:
        """The most recent `n` ticks by (ts, seq), newest first unless descending=False."""
        cols = self.range(symbol, limit=n, descending=True)
        return cols if descending else {k: v[::-1] for k, v in cols.items()}
