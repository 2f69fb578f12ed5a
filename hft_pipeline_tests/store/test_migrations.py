"""The migration runner: ordered, recorded, idempotent, safe when several processes start at once."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest

from hft_pipeline.market.ticks import TickBatch
from hft_pipeline.store import migrations
from hft_pipeline.store import postgres as pg_store
from hft_pipeline.store.migrations import (
    MigrationError,
    load_migrations,
    migrate_postgres,
    migrate_sqlite,
)
from hft_pipeline.store.postgres import PostgresStore, choose_ticks_layout, ticks_layout


def versions(dialect: str) -> list[tuple[int, str]]:
    """(version, name) of every migration file of `dialect`, in order."""
    return [(m.version, m.name) for m in load_migrations(dialect)]


def assert_ticks_partitioned_by_day(conn: psycopg.Connection) -> str:
    """Ticks is split by UTC day on ts, by whichever layout is in use; return that layout."""
    layout = ticks_layout(conn)
    if layout == "hypertable":
        row = conn.execute(
            "select column_name, time_interval from timescaledb_information.dimensions "
            "where format('%I.%I', hypertable_schema, hypertable_name)::regclass = 'ticks'::regclass"
        ).fetchall()
        assert row == [("ts", timedelta(days=1))]
    else:
        assert layout == "partitions"
        row = conn.execute(
            "select p.partstrat, a.attname from pg_partitioned_table p join pg_attribute a "
            "on a.attrelid = p.partrelid and a.attnum = p.partattrs[0] "
            "where p.partrelid = 'ticks'::regclass and p.partnatts = 1"
        ).fetchall()
        assert row == [("r", "ts")]  # range on ts; the store adds one partition per UTC day
    return layout


def test_migration_files_are_versioned_in_order() -> None:
    for dialect in ("postgres", "sqlite"):
        found = load_migrations(dialect)
        assert [m.version for m in found] == sorted({m.version for m in found})
        assert found[0].version == 1 and found[0].name == "init"
        assert "consumer_offsets" in found[0].sql and "subscriptions" in found[0].sql


def test_sqlite_migrate_twice(tmp_path) -> None:
    conn = sqlite3.connect(tmp_path / "m.sqlite3", isolation_level=None)
    try:
        assert migrate_sqlite(conn) == [v for v, _ in versions("sqlite")]
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
        assert {
            "symbols",
            "ticks",
            "consumer_offsets",
            "subscriptions",
            "schema_migrations",
            "candles",
            "backtest_runs",
        } <= tables
        before = conn.execute("select * from schema_migrations").fetchall()
        assert migrate_sqlite(conn) == []
        assert conn.execute("select * from schema_migrations").fetchall() == before
    finally:
        conn.close()


def test_postgres_concurrent_runners_apply_each_version_once(pg_dsn: str) -> None:
    results: list[list[int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def runner() -> None:
        try:
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                barrier.wait()
                results.append(migrate_postgres(conn))
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=runner) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sorted(results) == [[], [], [v for v, _ in versions("postgres")]]
    with psycopg.connect(pg_dsn) as conn:
        applied = conn.execute("select version, name from schema_migrations order by 1").fetchall()
        assert applied == versions("postgres")
        assert_ticks_partitioned_by_day(conn)


def test_missing_sql_directory_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(migrations, "SQL_ROOT", tmp_path / "nowhere")
    with pytest.raises(MigrationError, match="sql/"):
        load_migrations("sqlite")


def test_badly_named_migration_is_rejected(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    (tmp_path / "sqlite").mkdir()
    (tmp_path / "sqlite" / "init.sql").write_text("select 1;")
    monkeypatch.setattr(migrations, "SQL_ROOT", tmp_path)
    with pytest.raises(MigrationError, match="NNN_name.sql"):
        load_migrations("sqlite")


def test_failed_migration_rolls_back_and_is_not_recorded(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    (tmp_path / "sqlite").mkdir()
    (tmp_path / "sqlite" / "001_ok.sql").write_text("create table a (x integer);")
    (tmp_path / "sqlite" / "002_bad.sql").write_text(
        "create table b (x integer);\ninsert into missing_table values (1);"
    )
    monkeypatch.setattr(migrations, "SQL_ROOT", tmp_path)
    conn = sqlite3.connect(tmp_path / "f.sqlite3", isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError, match="missing_table"):
            migrate_sqlite(conn)
        assert conn.execute("select version from schema_migrations").fetchall() == [(1,)]
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
        assert "a" in tables and "b" not in tables
    finally:
        conn.close()


# -- the ticks layout: hypertable where TimescaleDB can load, else native partitions --------------

STORE_LOG = "hft_pipeline.store.postgres"
NATIVE = "ticks are stored in native daily range partitions: "
T0 = 1_710_109_800 * 10**9  # 2024-03-10 22:30 UTC


@pytest.mark.parametrize(
    ("available", "preloaded", "installed", "hypertable", "create", "why"),
    [
        (False, False, False, False, False, "is not available on this server"),
        (True, False, False, False, False, "is available but not in shared_preload_libraries"),
        (
            True, False, True, False, False,
            "is installed in this database but not in shared_preload_libraries",
        ),
        (
            False, False, True, False, False,
            "is installed in this database but not in shared_preload_libraries",
        ),
        (True, True, False, True, True, "is preloaded and available"),
        (True, True, True, True, False, "is preloaded and installed in this database"),
        (False, True, True, True, False, "is preloaded and installed in this database"),
        (False, True, False, False, False, "is not available on this server"),
    ],
)  # fmt: skip
def test_layout_choice_for_every_catalog_answer(
    available: bool, preloaded: bool, installed: bool, hypertable: bool, create: bool, why: str
) -> None:
    choice = choose_ticks_layout(available=available, preloaded=preloaded, installed=installed)
    assert (choice.hypertable, choice.create_extension) == (hypertable, create)
    assert choice.reason == f"timescaledb {why}"


def _layout_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == STORE_LOG and r.getMessage().startswith("ticks are stored in ")
    ]


def _with_options(dsn: str, options: str) -> str:
    parts = urlsplit(dsn)
    query = "&".join(q for q in (parts.query, "options=" + quote(options, safe="")) if q)
    return urlunsplit(parts._replace(query=query))


def _migrate_write_read(dsn: str) -> None:
    """Migrate a store on `dsn`, then prove it works: one tick written and read back."""
    store = PostgresStore(dsn, pool_size=2)
    try:
        assert store.migrate() == [v for v, _ in versions("postgres")]
        assert store.migrate() == []
        store.write_ticks(TickBatch.from_columns("PETR4", [T0], [7], [38.5], [100.0]), 1)
        assert store.read_ticks("PETR4")["seq"].tolist() == [7]
        assert store.log_offset() == 1
    finally:
        store.close()


def test_store_on_a_server_without_timescaledb_uses_native_partitions_and_says_why(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    with psycopg.connect(pg_dsn) as conn:
        has_timescaledb = conn.execute(
            "select exists (select 1 from pg_available_extensions where name = 'timescaledb')"
        ).fetchone()[0]
    if has_timescaledb:
        pytest.skip("this server has TimescaleDB: the layout tests above cover it")
    caplog.set_level(logging.INFO, logger=STORE_LOG)
    _migrate_write_read(pg_dsn)
    # Logged once, by the migration that created ticks.
    assert _layout_messages(caplog) == [NATIVE + "timescaledb is not available on this server"]
    with psycopg.connect(pg_dsn) as conn:
        assert assert_ticks_partitioned_by_day(conn) == "partitions"
        assert conn.execute("select extname from pg_extension").fetchall() == [("plpgsql",)]


@pytest.fixture
def fake_timescaledb(pg_server_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An extension whose CREATE ends the session like TimescaleDB's outside preload; its name.

    TimescaleDB's loader raises FATAL when loaded from CREATE EXTENSION without preload; a
    script that terminates its own backend looks the same to the client: the statement fails
    and the connection is gone. It gets a name of its own (nothing else on the server sees a
    broken "timescaledb"); the store looks for it through postgres.TIMESCALEDB.
    """
    with psycopg.connect(pg_server_dsn, autocommit=True) as conn:
        try:
            sharedir = conn.execute(
                "select setting from pg_config where name = 'SHAREDIR'"
            ).fetchone()[0]
        except psycopg.errors.InsufficientPrivilege:
            pytest.skip("reading pg_config needs a superuser: cannot place a test extension")
    directory = Path(sharedir) / "extension"
    if not os.access(directory, os.W_OK):
        pytest.skip(f"{directory} is not writable here: cannot place a test extension")
    name = f"hft_fake_tsdb_{uuid.uuid4().hex[:12]}"
    control, script = directory / f"{name}.control", directory / f"{name}--1.0.sql"
    try:
        control.write_text(
            "comment = 'hft_pipeline test: fails like TimescaleDB without preload'\n"
            "default_version = '1.0'\nrelocatable = true\n"
        )
        script.write_text("select pg_terminate_backend(pg_backend_pid());\n")
        with psycopg.connect(pg_server_dsn) as conn:
            listed = conn.execute(
                "select exists (select 1 from pg_available_extensions where name = %s)", (name,)
            ).fetchone()[0]
        if not listed:
            pytest.skip("the server does not list the test extension (is it another machine?)")
        monkeypatch.setattr(pg_store, "TIMESCALEDB", name)
        yield name
    finally:
        control.unlink(missing_ok=True)
        script.unlink(missing_ok=True)


def test_timescaledb_available_but_not_preloaded_is_not_created(
    pg_dsn: str, fake_timescaledb: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=STORE_LOG)
    _migrate_write_read(pg_dsn)
    assert _layout_messages(caplog) == [
        NATIVE + f"{fake_timescaledb} is available but not in shared_preload_libraries"
    ]
    with psycopg.connect(pg_dsn) as conn:
        assert assert_ticks_partitioned_by_day(conn) == "partitions"
        assert conn.execute("select extname from pg_extension").fetchall() == [("plpgsql",)]


def test_create_extension_that_ends_the_session_falls_back_on_a_fresh_connection(
    pg_dsn: str, fake_timescaledb: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The setting TimescaleDB's preloaded loader defines, so the store does try CREATE EXTENSION.
    dsn = _with_options(pg_dsn, "-c timescaledb.max_background_workers=8")
    caplog.set_level(logging.INFO, logger=STORE_LOG)
    _migrate_write_read(dsn)
    assert _layout_messages(caplog) == [
        NATIVE + f"{fake_timescaledb} is preloaded and available, but CREATE EXTENSION failed "
        "(AdminShutdown: terminating connection due to administrator command)"
    ]
    with psycopg.connect(pg_dsn) as conn:
        assert assert_ticks_partitioned_by_day(conn) == "partitions"
        assert conn.execute("select extname from pg_extension").fetchall() == [("plpgsql",)]


def test_only_timescaledb_default_ts_index_is_dropped(pg_dsn: str) -> None:
    (version,) = [v for v, name in versions("postgres") if name == "no_default_ts_index"]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        migrate_postgres(conn)

        def rerun() -> list[str]:
            conn.execute("delete from schema_migrations where version = %s", (version,))
            assert migrate_postgres(conn) == [version]
            rows = conn.execute(
                "select indexrelid::regclass::text from pg_index "
                "where indrelid = 'ticks'::regclass order by 1"
            ).fetchall()
            return [name for (name,) in rows]

        # What create_hypertable made by default before 001 turned it off.
        conn.execute("create index ticks_ts_idx on ticks (ts desc)")
        assert rerun() == ["ticks_symbol_ts_idx", "ticks_ts_brin"]
        conn.execute("create index ticks_ts_idx on ticks (ts)")  # someone's own: kept
        assert rerun() == ["ticks_symbol_ts_idx", "ticks_ts_brin", "ticks_ts_idx"]
