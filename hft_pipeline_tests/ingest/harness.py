"""Test harness: a scripted feed and the real service + API running on a loopback port."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import requests
import uvicorn

from hft_pipeline.ingest.api import create_app
from hft_pipeline.ingest.feeds.base import ResumePoint
from hft_pipeline.ingest.service import IngestService
from hft_pipeline.market.ticks import TickBatch
from hft_pipeline.settings import Settings


class ScriptedFeed:
    """A Feed that yields the batches it is given (also while running), then waits for more."""

    name = "scripted"

    def __init__(self, batches: list[TickBatch] = ()) -> None:
        self.queue: asyncio.Queue[TickBatch] | None = None
        self.pending = list(batches)
        self.subscribed: list[str] = []
        self.resumed: dict[str, ResumePoint] = {}
        self.closed = False
        self.loop: asyncio.AbstractEventLoop | None = None

    def push(self, batch: TickBatch) -> None:
        """Thread-safe: hand `batch` to the running feed."""
        assert self.loop is not None and self.queue is not None
        self.loop.call_soon_threadsafe(self.queue.put_nowait, batch)

    async def batches(self):
        self.loop = asyncio.get_running_loop()
        self.queue = asyncio.Queue()
        for b in self.pending:
            self.queue.put_nowait(b)
        while not self.closed:
            yield await self.queue.get()

    def subscribe(self, symbol: str) -> None:
        self.subscribed.append(symbol)

    def unsubscribe(self, symbol: str) -> None:
        self.subscribed.remove(symbol) if symbol in self.subscribed else None

    def resume_from(self, last: dict[str, ResumePoint]) -> None:
        self.resumed.update(last)

    async def close(self) -> None:
        self.closed = True


def start_ingest(
    home, dsn: str, port: int, *args: str, env: dict | None = None, ready: str = "/health"
) -> subprocess.Popen:
    """`hft ingest` in a subprocess (stdout and stderr piped, text); returns once `ready`
    answers 200, or for `ready="/test"` once the API answers at all (a degraded service)."""
    env = {**os.environ, "HFT_LOG_FSYNC": "interval", "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [sys.executable, "-m", "hft_pipeline.cli", "ingest", "--home", str(home)]
    cmd += ["--store", dsn, "--port", str(port), *args]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"service exited (code {proc.returncode}):\n{proc.stdout.read()}")
        try:
            if requests.get(f"http://127.0.0.1:{port}{ready}", timeout=1).status_code == 200:
                return proc
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("service did not come up")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Running:
    service: IngestService
    url: str
    loop: asyncio.AbstractEventLoop
    http: requests.Session

    def call(self, fn, *args):
        """Run `fn(*args)` on the service's event loop thread and return its result."""
        fut = asyncio.run_coroutine_threadsafe(_call(fn, *args), self.loop)
        return fut.result(30)

    def get(self, path: str, **params) -> requests.Response:
        return self.http.get(self.url + path, params=params, timeout=30)

    def post(self, path: str, body=None, **kw) -> requests.Response:
        return self.http.post(self.url + path, json=body, timeout=30, **kw)

    def wait(self, predicate, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.call(predicate):
                return
            time.sleep(0.02)
        raise AssertionError("condition not reached in time")


async def _call(fn, *args):
    return fn(*args)


@contextmanager
def running_service(
    settings: Settings, feed=None, store=None, require_drained: bool = True
) -> Iterator[Running]:
    """The service and its API on a free loopback port in a background event loop; on exit
    it asserts the persister drained unless `require_drained` is False."""
    settings = settings.with_(api_port=free_port())
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()
    state: dict = {}

    async def main() -> None:
        service = IngestService(settings, feed=feed, store=store)
        try:
            await service.start()
            server = uvicorn.Server(
                uvicorn.Config(
                    create_app(service),
                    host="127.0.0.1",
                    port=settings.api_port,
                    log_level="warning",
                    lifespan="off",
                )
            )
            server.install_signal_handlers = lambda: None
            api = asyncio.create_task(server.serve())
            while not server.started:
                await asyncio.sleep(0.01)
            state["service"] = service
        except BaseException as exc:
            state["error"] = exc
            ready.set()
            raise
        ready.set()
        await stop.wait()
        server.should_exit = True
        await api
        state["drained"] = await service.stop()

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    ready.wait(60)
    if "error" in state:
        raise state["error"]
    running = Running(
        state["service"], f"http://127.0.0.1:{settings.api_port}", loop, requests.Session()
    )
    try:
        yield running
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(60)
        running.http.close()
        if require_drained:
            assert state.get("drained"), "service did not drain the persister on stop"
