"""The one place that speaks SQL: tick stores on SQLite or PostgreSQL behind `TickStore`."""

from __future__ import annotations

from pathlib import Path

from hft_pipeline.observability.redaction import redact_url
from hft_pipeline.store.base import (
    BacktestRun,
    StoreUnavailableError,
    Subscription,
    TickStore,
    Watermark,
)


class UnsupportedStoreUrlError(ValueError):
    """A store URL whose scheme is neither sqlite nor postgresql."""


def sqlite_path(url: str) -> Path:
    """The file of a `sqlite:///relative/path` or `sqlite:////absolute/path` URL."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise UnsupportedStoreUrlError(
            f"store URL {url!r}: write sqlite:///relative/file.sqlite3 or "
            "sqlite:////absolute/file.sqlite3"
        )
    return Path(url[len(prefix) :])


def make_store(url: str, pool_size: int = 20) -> TickStore:
    """The store at `url` (sqlite:///…, postgresql://…, postgres://…), not yet migrated.

    Creating it needs no reachable server: PostgreSQL connections are opened on first use, so
    the ingest service can start while its store is down and migrate once it is reachable.
    """
    store: TickStore
    if url.startswith("sqlite:"):
        from hft_pipeline.store.sqlite import SqliteStore

        store = SqliteStore(sqlite_path(url))
    elif url.startswith(("postgresql://", "postgres://")):
        from hft_pipeline.store.postgres import PostgresStore

        store = PostgresStore(url, pool_size=pool_size)
    else:
        raise UnsupportedStoreUrlError(
            f"store URL {redact_url(url)!r}: use sqlite:///PATH or "
            "postgresql://user@host:port/dbname"
        )
    return store


def open_store(url: str, pool_size: int = 20) -> TickStore:
    """Open the store at `url` and migrate it (see `make_store`)."""
    store = make_store(url, pool_size)
    try:
        store.migrate()
    except BaseException:
        store.close()
        raise
    return store


__all__ = [
    "BacktestRun",
    "StoreUnavailableError",
    "Subscription",
    "TickStore",
    "UnsupportedStoreUrlError",
    "Watermark",
    "make_store",
    "open_store",
    "sqlite_path",
]
