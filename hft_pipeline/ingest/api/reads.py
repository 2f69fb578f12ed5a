"""The /ticks read path: memory answers what it holds completely, the store (gated) the rest."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
from fastapi import HTTPException

from hft_pipeline.ingest.admission import StoreGate
from hft_pipeline.ingest.api.encoding import (
    CANDLE_FIELDS,
    RAW_FIELDS,
    CandleRow,
    EncodedTicks,
    RawRow,
    TicksBody,
    concat_columns,
    encode_rows,
    frame_columns,
    json_array,
)
from hft_pipeline.ingest.api.params import TicksParams
from hft_pipeline.ingest.service import IngestService
from hft_pipeline.market.timeframes import bucket_start, timeframe_ns
from hft_pipeline.store.base import TickStore


@dataclass(slots=True)
class _StoredCandles:
    """A store answer for candles before `end`, and when it may be reused.

    `settle_offset`: the log end when the symbol's forming bucket of the finest timeframe had
    passed `end`; every tick accepted since with ts < `end` was counted late. Once the persister
    has stored the log up to there and no tick was late since, the store's candles before `end`
    are final (docs/architecture.md#candles: closed candles change only through late ticks)
    and their JSON rows (`encoded`, as `encode_rows` gives them) are kept: encoding is most
    of an answer's cost.
    """

    settle_offset: int
    encoded: list[bytes] | None = None
    rows: int = 0


_MINUTE_NS = timeframe_ns("1m")
_NO_TICK = np.iinfo(np.int64).min


def _stored_candles(
    store: TickStore, symbol: str, tf: str, start: int | None, end: int | None, limit: int,
    descending: bool,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Stored candles as columns: 1m and coarser read from the stored 1m candles (an index read,
    docs/candles.md), finer ones aggregated from the stored ticks."""
    read = store.minute_candles if timeframe_ns(tf) >= _MINUTE_NS else store.candles
    return frame_columns(read(symbol, tf, start, end, limit, descending), CANDLE_FIELDS)


class TickQueries:
    """Answers /ticks: memory serves what it holds completely, the store the rest.

    Every store query goes through `gate` (admission control, docs/candles.md): a bounded number
    run at once on their own threads, the rest wait briefly or get a 429, and an abandoned one is
    cancelled in the store, so API load never starves the persister.

    Stored candles older than what memory completes are cached once final (see _StoredCandles):
    encoding is most of an answer's cost. The cache assumes this process's persister is the
    only writer of its symbols' ticks (one ingest process per symbol,
    docs/architecture.md#scaling-out); any late tick empties it, as the live candles count
    late ticks over all symbols.
    """

    #: Bounds of the stored-candles cache (entries, candles over all entries): oldest go first.
    CACHE_ENTRIES = 2048
    CACHE_ROWS = 1_000_000
    #: Longest wait for the persister before a cache-filling read (see _await_persister).
    SETTLE_WAIT_S = 0.2

    def __init__(self, service: IngestService, gate: StoreGate) -> None:
        self.service = service
        self.gate = gate
        self.encoded_ticks = EncodedTicks()
        self._stored: dict[tuple, _StoredCandles] = {}
        self._stored_rows = 0
        self._late_seen = service.candles.late_total

    async def body(self, params: TicksParams) -> bytes:
        """The /ticks body for `params`; HTTPException for what they cannot answer."""
        service, symbol, limit = self.service, params.symbol, params.limit
        start, end, descending = params.start_ns, params.end_ns, params.descending
        known = symbol in service.exchanges or service.buffers.count(symbol) > 0
        if not known and not await self.has_stored(symbol):
            raise HTTPException(404, f"no subscription and no stored ticks for {symbol}")
        if params.timeframe == "raw":
            columns, source = await self.raw(symbol, start, end, limit, descending)
            if descending and source == "memory":
                rows = self.encoded_ticks.rows(symbol, columns)
            else:
                rows = encode_rows(columns, RawRow)
        else:
            rows, source = await self.candle_rows(
                symbol, params.timeframe, start, end, limit, descending
            )
        body = TicksBody(
            symbol, params.timeframe, params.order, len(rows), source, json_array(rows)
        )
        return msgspec.json.encode(body)

    async def _in_store(self, call: Callable[[TickStore], Any]) -> Any:
        """`call(store)` on a store-query thread, under admission control."""
        store = self.service.store
        return await self.gate.run(store, call, store)

    async def has_stored(self, symbol: str) -> bool:
        """Whether the store holds ticks of `symbol`."""
        return symbol in await self._in_store(lambda store: store.symbols())

    async def raw(
        self, symbol: str, start: int | None, end: int | None, limit: int, descending: bool
    ) -> tuple[dict[str, np.ndarray], str]:
        buffers = self.service.buffers
        oldest = buffers.oldest_ts(symbol) if buffers.count(symbol) else None
        if oldest is None:
            return await self._stored_raw(symbol, start, end, limit, descending), "store"
        cut = oldest + 1  # ticks sharing the oldest ts may have been overwritten in the ring
        lo = cut if start is None else max(start, cut)
        memory = buffers.range(symbol, lo, end, limit, descending)
        if (start is not None and start >= cut) or (descending and len(memory["ts"]) >= limit):
            return {f: memory[f] for f in RAW_FIELDS}, "memory"
        store_end = cut if end is None else min(end, cut)
        stored = await self._stored_raw(symbol, start, store_end, limit, descending)
        parts = [memory, stored] if descending else [stored, memory]
        merged = concat_columns(parts, RAW_FIELDS)
        return {f: v[:limit] for f, v in merged.items()}, "memory+store"

    async def _stored_raw(self, symbol, start, end, limit, descending) -> dict[str, np.ndarray]:
        return await self._in_store(
            lambda store: frame_columns(
                store.read_ticks(symbol, start, end, limit, descending), RAW_FIELDS
            )
        )

    async def candle_rows(
        self, symbol: str, tf: str, start: int | None, end: int | None, limit: int, descending: bool
    ) -> tuple[list[bytes], str]:
        """JSON rows (see `encode_rows`) of the candles asked for, and where they came from."""
        live = self.service.candles
        complete_from = live.complete_from(symbol, tf)
        if complete_from is None:

            def only_stored(store: TickStore) -> list[bytes]:
                stored = _stored_candles(store, symbol, tf, start, end, limit, descending)
                # Closed as live candles are: once a later tick of the symbol exists.
                newest = store.read_ticks(symbol, None, None, 1, True)
                tf_ns = timeframe_ns(tf)
                forming = bucket_start(int(newest["ts"].iloc[0]), tf_ns) if len(newest) else 0
                stored["closed"] = stored["ts"] < forming
                return encode_rows(stored, CandleRow)

            return await self._in_store(only_stored), "store"
        lo = complete_from if start is None else max(start, complete_from)
        frame = live.candles(symbol, tf, lo, end, limit, descending)
        memory = frame_columns(frame, CANDLE_FIELDS)
        memory["closed"] = frame["closed"].to_numpy()
        memory_rows = encode_rows(memory, CandleRow)
        if (start is not None and start >= complete_from) or (
            descending and len(memory_rows) >= limit
        ):
            return memory_rows, "memory"
        store_end = complete_from if end is None else min(end, complete_from)
        forming = self._forming(symbol, tf)
        fresh: list[bytes] = []
        if _NO_TICK < forming < store_end and (start is None or start <= forming):
            # The bucket of memory's first tick, which only the store completes, is still
            # forming (a service's first minute, hour): only it is read each time; the candles
            # before it are final and kept encoded.
            def forming_rows(store: TickStore) -> list[bytes]:
                stored = _stored_candles(store, symbol, tf, forming, store_end, None, descending)
                stored["closed"] = np.zeros(len(stored["ts"]), bool)
                return encode_rows(stored, CandleRow)

            fresh = await self._in_store(forming_rows)
            store_end = forming
        stored_rows = await self._final_stored_rows(symbol, tf, start, store_end, limit, descending)
        if descending:
            rows = memory_rows + fresh + stored_rows
        else:
            rows = stored_rows + fresh + memory_rows
        return rows[:limit], "memory+store"

    async def _final_stored_rows(
        self, symbol: str, tf: str, start: int | None, end: int, limit: int, descending: bool
    ) -> list[bytes]:
        """JSON rows of the stored candles before `end` (which memory does not complete), all
        closed; kept once final (see _StoredCandles)."""
        service = self.service
        late = service.candles.late_total
        persister, log = service.persister, service.log
        if late != self._late_seen and log is not None:
            # A late tick may have changed any stored candle: each is final again once the
            # persister stored the log as it is now (forming buckets only move forward).
            for entry in self._stored.values():
                entry.settle_offset, entry.encoded, entry.rows = log.end_offset, None, 0
            self._stored_rows = 0
            self._late_seen = late
        key = (symbol, tf, start, end, limit, descending)
        entry = self._stored.get(key)
        if entry is not None and entry.encoded is not None:
            return entry.encoded
        if (
            entry is None
            and persister is not None
            and log is not None
            and self._finest_forming(symbol) >= end
        ):
            entry = self._remember(key, _StoredCandles(log.end_offset))
        if entry is not None and persister is not None:
            await self._await_persister(entry.settle_offset)
        settled = (
            entry is not None and persister is not None and persister.offset >= entry.settle_offset
        )
        # Closed once a later tick exists: memory's newest tick is in its finest forming bucket.
        # (The bucket memory does not complete can be the forming one, e.g. the first hour.)
        forming, tf_ns = self._finest_forming(symbol), timeframe_ns(tf)

        def closed_rows(store: TickStore) -> list[bytes]:
            stored = _stored_candles(store, symbol, tf, start, end, limit, descending)
            stored["closed"] = stored["ts"] + tf_ns <= forming
            return encode_rows(stored, CandleRow)

        encoded = await self._in_store(closed_rows)
        if settled and service.candles.late_total == late and self._stored.get(key) is entry:
            entry.encoded, entry.rows = encoded, len(encoded)
            self._stored_rows += entry.rows
            while self._stored_rows > self.CACHE_ROWS and len(self._stored) > 1:
                self._evict_oldest()
        return encoded

    async def _await_persister(self, offset: int) -> None:
        """Wait (briefly) until the persister has stored the log up to `offset`.

        A new entry settles at the log end of its creation, which the persister reaches within
        a batch (50 ms): waiting for that makes the first read final and kept, instead of a
        read that cannot be kept followed by one that can (a cold cache read each candle twice).
        Not when the persister is behind: then the read goes ahead and is not kept.
        """
        service = self.service
        if service.pending_ticks > 2 * service.settings.persist_batch_size:
            return
        deadline = time.monotonic() + self.SETTLE_WAIT_S
        while service.persister.offset < offset and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def _finest_forming(self, symbol: str) -> int:
        """Start of `symbol`'s forming bucket of the finest live timeframe (ticks before are late)."""
        return self._forming(symbol, next(iter(self.service.candles.timeframes)))

    def _forming(self, symbol: str, tf: str) -> int:
        """Start of `symbol`'s forming bucket of `tf` in memory (the newest tick's bucket)."""
        # An index read: LiveCandles.candles builds a DataFrame (~20 % of the event loop under
        # 1m load) and the ring buffer's stats flush its staged writes (~14 %).
        start = self.service.candles.forming_start(symbol, tf)
        return _NO_TICK if start is None else start

    def _remember(self, key: tuple, entry: _StoredCandles) -> _StoredCandles:
        while len(self._stored) >= self.CACHE_ENTRIES:
            self._evict_oldest()
        self._stored[key] = entry
        return entry

    def _evict_oldest(self) -> None:
        oldest = next(iter(self._stored))
        self._stored_rows -= self._stored.pop(oldest).rows
