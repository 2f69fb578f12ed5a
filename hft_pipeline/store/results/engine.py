"""SQLAlchemy engines on the stores' databases, and their errors as the store's errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from hft_pipeline.store.base import StoreUnavailableError

# SQLite errors that pass (a lock held beyond the busy timeout, disk trouble); others are bugs.
_SQLITE_TRANSIENT = ("locked", "busy", "disk", "i/o", "unable to open", "readonly")


def sqlite_engine(path: str | Path, timeout_s: float = 30.0) -> sa.Engine:
    """An engine on the SQLite file `path`: WAL, and writes that take the lock up front.

    `begin()` on a connection with execution option `write=True` issues BEGIN IMMEDIATE, so
    a writer waits for the tick persister's lock at its start (busy timeout) instead of
    failing to upgrade a read lock halfway through.
    """
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": timeout_s})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy's begin event emits BEGIN itself
        dbapi_conn.execute("pragma journal_mode = wal")
        dbapi_conn.execute("pragma synchronous = normal")

    @event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        write = conn.get_execution_options().get("write", False)
        conn.exec_driver_sql("begin immediate" if write else "begin")

    return engine


def postgres_engine(dsn: str, pool_size: int = 2, connect_timeout_s: int = 3) -> sa.Engine:
    """A small psycopg 3 pool on the PostgreSQL database of `dsn` (postgresql:// or postgres://)."""
    scheme, sep, rest = dsn.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        raise ValueError("the results engine needs a postgresql://user@host:port/dbname URL")
    return sa.create_engine(
        f"postgresql+psycopg://{rest}",
        pool_size=pool_size,
        max_overflow=2,
        pool_pre_ping=True,
        pool_timeout=5.0,
        connect_args={"connect_timeout": connect_timeout_s, "application_name": "hft_pipeline"},
    )


@contextmanager
def unavailable_as_store_error(engine: sa.Engine, action: str) -> Iterator[None]:
    """Re-raise connection trouble as StoreUnavailableError (retryable); other errors as they are."""
    try:
        yield
    except sa.exc.TimeoutError as exc:
        raise StoreUnavailableError(f"results store unavailable ({action}): {exc}") from exc
    except sa.exc.DBAPIError as exc:
        message = str(exc.orig).lower()
        transient = exc.connection_invalidated or (
            isinstance(exc, sa.exc.OperationalError)
            and (engine.dialect.name != "sqlite" or any(w in message for w in _SQLITE_TRANSIENT))
        )
        if not transient:
            raise
        raise StoreUnavailableError(
            f"results store {engine.url!r} unavailable ({action}): {exc.orig}"
        ) from exc
