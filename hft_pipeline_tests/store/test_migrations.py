"""The migration runner: ordered, recorded, idempotent, safe when several processes start at once."""

from __future__ import annotations

import sqlite3
import threading

import psycopg
import pytest

from hft_pipeline.store import migrations
from hft_pipeline.store.migrations import (
    MigrationError,
    load_migrations,
    migrate_postgres,
    migrate_sqlite,
)


def versions(dialect: str) -> list[tuple[int, str]]:
    """(version, name) of every migration file of `dialect`, in order."""
    return [(m.version, m.name) for m in load_migrations(dialect)]


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
        kind = conn.execute("select relkind from pg_class where relname = 'ticks'").fetchone()[0]
        assert kind == "p"  # no TimescaleDB here: native partitioning


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
