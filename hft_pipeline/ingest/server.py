"""Runs the ingest service and its HTTP API in one event loop until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import signal
import socket
from pathlib import Path

import uvicorn

from hft_pipeline.ingest.api import create_app
from hft_pipeline.ingest.service import IngestService
from hft_pipeline.observability.redaction import redact_url
from hft_pipeline.settings import Settings

log = logging.getLogger(__name__)


class HomeLockedError(RuntimeError):
    """Another hft process already owns this HFT_HOME (and its tick log)."""


def lock_home(home: Path):
    """Hold an exclusive lock on `home` for this process's lifetime (one writer per tick log)."""
    home.mkdir(parents=True, exist_ok=True)
    handle = open(home / "ingest.lock", "w")  # noqa: SIM115 - kept open to hold the lock
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise HomeLockedError(
            f"{home} is in use by another hft process; stop it or pass a different --home"
        ) from None
    return handle


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}; use --port") from None


async def serve(settings: Settings) -> int:
    """Run until a stop signal; return the process exit code (0 after a clean drain)."""
    lock = lock_home(settings.home)
    check_port_free(settings.api_host, settings.api_port)
    service = IngestService(settings)
    await service.start()
    app = create_app(service)
    config = uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_level="warning",
        lifespan="off",
        access_log=False,
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # we own SIGTERM/SIGINT below
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    api = asyncio.create_task(server.serve(), name="api")
    log.info(
        "ingest running: feed=%s store=%s api=http://%s:%d (docs at /docs)",
        settings.feed,
        redact_url(settings.resolved_store_url),
        settings.api_host,
        settings.api_port,
    )
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({api, stopper}, return_when=asyncio.FIRST_COMPLETED)
    log.info("stopping: draining the persister (deadline %.0fs)", settings.shutdown_deadline_s)
    server.should_exit = True
    await asyncio.gather(api, return_exceptions=True)
    drained = await service.stop()
    pending = service.pending_ticks
    if drained:
        log.info("stopped cleanly: every tick persisted")
    else:
        log.warning(
            "stopped with %d ticks still only in the log; they persist on next start", pending
        )
    lock.close()
    return 0
