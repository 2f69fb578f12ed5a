"""Shared fixtures: a throw-away PostgreSQL database per test, temp HFT_HOME."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_DSN_ENV = "HFT_TEST_PG_DSN"


def pytest_configure(config: pytest.Config) -> None:
    # Every service a test starts has its own HFT_HOME; one shared numba cache (as `make test`
    # sets it) saves each of them the ~2.7 s compile of the live-candle kernel.
    os.environ.setdefault("NUMBA_CACHE_DIR", str(config.rootpath / ".hft" / "numba-cache"))


def _with_dbname(dsn: str, dbname: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def pg_server_dsn() -> str:
    """DSN of a PostgreSQL server from $HFT_TEST_PG_DSN; skip without one, fail under CI."""
    dsn = os.environ.get(PG_DSN_ENV, "")
    reason = None
    if not dsn:
        reason = f"{PG_DSN_ENV} is not set"
    else:
        try:
            import psycopg

            with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
                conn.execute("select 1")
        except Exception as exc:  # noqa: BLE001 - any failure means no usable server
            reason = f"PostgreSQL at {dsn} is unreachable: {exc}"
    if reason:
        if IN_CI:
            pytest.fail(f"CI=true requires PostgreSQL: {reason}")
        pytest.skip(reason)
    return dsn


@pytest.fixture
def pg_dsn(pg_server_dsn: str) -> Iterator[str]:
    """DSN of a fresh database for one test, dropped afterwards."""
    import psycopg

    name = f"hft_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    try:
        yield _with_dbname(pg_server_dsn, name)
    finally:
        with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture
def hft_home(tmp_path):
    home = tmp_path / "hft-home"
    home.mkdir()
    return home
