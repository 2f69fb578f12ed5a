"""The one place that speaks SQL: tick stores on SQLite or PostgreSQL behind `TickStore`."""

from __future__ import annotations

from pathlib import Path

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


def open_store(url: str, pool_size: int = 20) -> TickStore:
    """Open the store at `url` (sqlite:///…, postgresql://…, postgres://…) and migrate it."""
    store: TickStore
    if url.startswith("sqlite:"):
        from hft_pipeline.store.sqlite import SqliteStore

        store = SqliteStore(sqlite_path(url))
    elif url.startswith(("postgresql://", "postgres://")):
        from hft_pipeline.store.postgres import PostgresStore

        store = PostgresStore(url, pool_size=pool_size)
    else:
        raise UnsupportedStoreUrlError(
            f"store URL {url!r}: use sqlite:///PATH or postgresql://user@host:port/dbname"
        )
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
    "open_store",
    "sqlite_path",
]
