"""Admission control for the API's store queries: persistence has priority (docs/candles.md).

At most `max_running` store queries run at once, on their own threads; at most `max_waiting`
more wait for one, each for at most `max_wait_s`. Anything beyond is refused at once with a 429
and a Retry-After, never queued without bound. A query that outlives `timeout_s`, or whose client
disconnected, is cancelled in the store (SQLite `interrupt()`, a PostgreSQL cancel request) and
its slot is free again as soon as the store gives up, not when the query would have finished.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from hft_pipeline.store.base import CancelScope, TickStore

T = TypeVar("T")

#: How often a cancelled query is interrupted again until the store gives up: SQLite ignores an
#: interrupt between two statements of one store call, and a cancel request can race the query.
_CANCEL_REPEAT_S = 0.05

#: The ASGI `receive` of the request being answered, when its disconnect can be watched.
_client: contextvars.ContextVar[Receive | None] = contextvars.ContextVar("client", default=None)


class TooManyStoreQueries(HTTPException):
    """429: every store-query slot is taken and the wait queue is full (or waited too long)."""

    def __init__(self, detail: str, retry_after_s: float) -> None:
        seconds = max(1, math.ceil(retry_after_s))
        super().__init__(429, f"{detail}; retry in {seconds} s", {"Retry-After": str(seconds)})


class StoreQueryTimeout(HTTPException):
    """503: the store query ran longer than allowed and was cancelled."""

    def __init__(self, detail: str, retry_after_s: float) -> None:
        seconds = max(1, math.ceil(retry_after_s))
        super().__init__(503, f"{detail}; retry in {seconds} s", {"Retry-After": str(seconds)})


class ClientDisconnected(HTTPException):
    """The client went away while its store query ran; the query was cancelled (499, unsent)."""

    def __init__(self) -> None:
        super().__init__(499, "the client closed the connection; its store query was cancelled")


@dataclass(slots=True)
class AdmissionStats:
    """Counters for /status and the tests."""

    admitted: int = 0
    refused: int = 0
    timed_out: int = 0
    cancelled: int = 0  # client gone or timed out: the store was told to stop


class StoreGate:
    """Runs store queries for the API under admission control (see the module docstring)."""

    def __init__(
        self,
        *,
        max_running: int = 2,
        max_waiting: int = 32,
        max_wait_s: float = 1.0,
        timeout_s: float = 5.0,
    ) -> None:
        if max_running < 1 or max_waiting < 0:
            raise ValueError("max_running must be >= 1 and max_waiting >= 0")
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.max_wait_s = max_wait_s
        self.timeout_s = timeout_s
        self.stats = AdmissionStats()
        self.running = 0
        self.waiting = 0
        self._slots: asyncio.Semaphore | None = None
        self._executor = ThreadPoolExecutor(max_running, thread_name_prefix="api-store")

    def status(self) -> dict[str, Any]:
        s = self.stats
        return {
            "running": self.running,
            "waiting": self.waiting,
            "max_running": self.max_running,
            "max_waiting": self.max_waiting,
            "admitted": s.admitted,
            "refused": s.refused,
            "timed_out": s.timed_out,
            "cancelled": s.cancelled,
        }

    async def run(self, store: TickStore, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)`, which queries `store`, on a store-query thread, admitted or refused (see
        the module docstring)."""
        await self._admit()
        try:
            return await self._execute(store, fn, args)
        finally:
            self.running -= 1
            assert self._slots is not None
            self._slots.release()

    async def _admit(self) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_running)
        if self._slots.locked():
            if self.waiting >= self.max_waiting:
                self.stats.refused += 1
                raise TooManyStoreQueries(
                    f"{self.running} store queries are running and {self.waiting} waiting "
                    f"(limits {self.max_running} and {self.max_waiting})",
                    self.max_wait_s,
                )
            self.waiting += 1
            try:
                async with asyncio.timeout(self.max_wait_s):
                    await self._slots.acquire()
            except TimeoutError:
                self.stats.refused += 1
                raise TooManyStoreQueries(
                    f"no store-query slot came free within {self.max_wait_s:g} s",
                    self.max_wait_s,
                ) from None
            finally:
                self.waiting -= 1
        else:
            await self._slots.acquire()
        self.running += 1
        self.stats.admitted += 1

    async def _execute(self, store: TickStore, fn: Callable[..., T], args: tuple) -> T:
        scope = CancelScope()
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._executor, _in_scope, store, scope, fn, args)
        receive = _client.get()
        gone = asyncio.ensure_future(_disconnected(receive)) if receive is not None else None
        try:
            waiting_for = {work} if gone is None else {work, gone}
            done, _ = await asyncio.wait(
                waiting_for, timeout=self.timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
            if work in done:
                return work.result()
            reason: HTTPException
            if gone is not None and gone in done:
                reason = ClientDisconnected()
            else:
                self.stats.timed_out += 1
                reason = StoreQueryTimeout(
                    f"the store query ran longer than {self.timeout_s:g} s and was cancelled",
                    self.max_wait_s,
                )
            await self._cancel(scope, work)
            raise reason
        except asyncio.CancelledError:
            # The request itself was cancelled (server shutdown, a caller's timeout).
            await self._cancel(scope, work)
            raise
        finally:
            if gone is not None:
                gone.cancel()

    async def _cancel(self, scope: CancelScope, work: asyncio.Future) -> None:
        """Stop the query and wait until its thread is free (the slot is held until then)."""
        self.stats.cancelled += 1
        while not work.done():
            await asyncio.to_thread(scope.cancel)
            await asyncio.wait({work}, timeout=_CANCEL_REPEAT_S)
        with suppress(BaseException):
            work.result()  # the store's error for the interrupted query; nobody waits for it

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _in_scope(store: TickStore, scope: CancelScope, fn: Callable[..., T], args: tuple) -> T:
    with store.query_scope(scope):
        return fn(*args)


async def _disconnected(receive: Receive) -> None:
    """Return once the client has closed the connection (ASGI http.disconnect)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class WatchDisconnect:
    """ASGI middleware: store queries of an HTTP request are cancelled if its client leaves.

    It only makes the request's `receive` known to StoreGate; nothing is read unless a store
    query runs, so answers from memory cost nothing extra.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD"):
            # A request with a body: its receive belongs to whoever reads the body.
            await self.app(scope, receive, send)
            return
        token = _client.set(receive)
        try:
            await self.app(scope, receive, send)
        finally:
            _client.reset(token)
