"""The feed interface every tick source (simulator, file replay, WebSocket) implements."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from hft_pipeline.market.ticks import TickBatch


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """The last tick of a symbol the service already holds (from the store and the tick log)."""

    seq: int
    ts: int
    price: float


@runtime_checkable
class Feed(Protocol):
    """A source of multi-symbol tick batches.

    Lifecycle: construct, `subscribe` the symbols, `resume_from` what the service already
    holds (on a restart), then iterate `batches()` until it ends or `close()` is called.
    `subscribe`/`unsubscribe` may also be called while `batches()` runs. Implementations
    write `batches` as an async generator (`async def batches(self): ... yield batch`).
    """

    name: str

    def batches(self) -> AsyncIterator[TickBatch]:
        """Yield batches of ticks as they arrive; ends when the feed is exhausted or closed."""
        ...

    def subscribe(self, symbol: str) -> None:
        """Start producing `symbol` (idempotent)."""
        ...

    def unsubscribe(self, symbol: str) -> None:
        """Stop producing `symbol` (idempotent)."""
        ...

    def resume_from(self, last: dict[str, ResumePoint]) -> None:
        """Continue each symbol after its last known tick; call before `batches()`."""
        ...

    async def close(self) -> None:
        """Stop producing; a running `batches()` iterator ends soon after."""
        ...
