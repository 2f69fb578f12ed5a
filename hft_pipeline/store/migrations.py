"""Versioned schema migrations: `sql/<dialect>/NNN_name.sql` applied in order, once each."""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

import psycopg

#: The migrations as package data, so an installed wheel finds them as a checkout does: in the
#: repository `hft_pipeline/store/sql` is a link to the top-level `sql/` where they are written
#: (docs/layers.md, "Where the migrations live").
SQL_ROOT: Traversable = files(__package__) / "sql"

#: Key of the PostgreSQL advisory lock that serializes concurrent migration runs.
PG_MIGRATION_LOCK = 0x4846_5453_514C  # "HFTSQL"

_FILE_PATTERN = re.compile(r"^(\d+)_([A-Za-z0-9_]+)\.sql$")

_SCHEMA_MIGRATIONS = {
    "postgres": """
        create table if not exists schema_migrations (
            version integer primary key,
            name text not null,
            applied_at timestamptz not null default now()
        )""",
    "sqlite": """
        create table if not exists schema_migrations (
            version integer primary key,
            name text not null,
            applied_at integer not null
        )""",
}


class MigrationError(RuntimeError):
    """The migration files are missing or malformed."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def sql_dir(dialect: str) -> Traversable:
    """The directory holding the migrations of `dialect` ("postgres" or "sqlite")."""
    path = SQL_ROOT / dialect
    if not path.is_dir():
        raise MigrationError(
            f"migration directory {path} not found: the package ships its migrations as "
            "hft_pipeline/store/sql/<dialect>/ (in a checkout, a link to the top-level sql/): "
            "reinstall hft_pipeline, or in a checkout restore the link with "
            "`git checkout -- hft_pipeline/store/sql`"
        )
    return path


def load_migrations(dialect: str) -> list[Migration]:
    """Every migration of `dialect`, ordered by version; versions must be unique."""
    migrations: dict[int, Migration] = {}
    scripts = (p for p in sql_dir(dialect).iterdir() if p.name.endswith(".sql"))
    for path in sorted(scripts, key=lambda p: p.name):
        match = _FILE_PATTERN.match(path.name)
        if not match:
            raise MigrationError(f"{path}: migration files must be named NNN_name.sql")
        version = int(match.group(1))
        if version in migrations:
            raise MigrationError(f"{path}: version {version} is used twice")
        migrations[version] = Migration(version, match.group(2), path.read_text(encoding="utf-8"))
    if not migrations:
        raise MigrationError(f"no migrations found in {sql_dir(dialect)}")
    return [migrations[v] for v in sorted(migrations)]


def migrate_postgres(conn: psycopg.Connection) -> list[int]:
    """Apply pending PostgreSQL migrations on an autocommit `conn`; return the versions applied.

    A session advisory lock serializes concurrent runners (several processes starting at once);
    each migration runs in its own transaction together with its schema_migrations row.
    """
    if not conn.autocommit:
        raise MigrationError("migrate_postgres needs an autocommit connection")
    applied_now: list[int] = []
    conn.execute("select pg_advisory_lock(%s)", (PG_MIGRATION_LOCK,))
    try:
        conn.execute(_SCHEMA_MIGRATIONS["postgres"])
        done = {row[0] for row in conn.execute("select version from schema_migrations")}
        for migration in load_migrations("postgres"):
            if migration.version in done:
                continue
            with conn.transaction():
                # No parameters: psycopg sends the file as one simple query, so several
                # statements and DO blocks are allowed.
                conn.execute(migration.sql.encode())
                conn.execute(
                    "insert into schema_migrations (version, name) values (%s, %s)",
                    (migration.version, migration.name),
                )
            applied_now.append(migration.version)
    finally:
        conn.execute("select pg_advisory_unlock(%s)", (PG_MIGRATION_LOCK,))
    return applied_now


def migrate_sqlite(conn: sqlite3.Connection) -> list[int]:
    """Apply pending SQLite migrations on `conn` (isolation_level=None); return the versions applied.

    BEGIN IMMEDIATE takes the database write lock, so concurrent runners apply each version once.
    """
    if conn.isolation_level is not None:
        raise MigrationError("migrate_sqlite needs a connection with isolation_level=None")
    conn.execute(_SCHEMA_MIGRATIONS["sqlite"])
    applied_now: list[int] = []
    for migration in load_migrations("sqlite"):
        conn.execute("begin immediate")
        try:
            row = conn.execute(
                "select 1 from schema_migrations where version = ?", (migration.version,)
            ).fetchone()
            if row is None:
                for statement in _split_sqlite(migration.sql):
                    conn.execute(statement)
                conn.execute(
                    "insert into schema_migrations (version, name, applied_at) values (?, ?, ?)",
                    (migration.version, migration.name, time.time_ns()),
                )
                applied_now.append(migration.version)
            conn.execute("commit")
        except BaseException:
            conn.execute("rollback")
            raise
    return applied_now


def _split_sqlite(script: str) -> list[str]:
    """Split a script into statements (executescript would commit our transaction first)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if _strip_comments(buffer):
                statements.append(buffer.strip())
            buffer = ""
    if _strip_comments(buffer):
        raise MigrationError(
            f"incomplete SQL statement at the end of a migration: {buffer.strip()!r}"
        )
    return statements


def _strip_comments(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--")).strip()
