"""The results tables: SQLAlchemy MetaData equals the migrated schema of both backends, and the
migration from the long-cell schema (002) keeps candles and indicators and drops old backtests.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest
import sqlalchemy as sa

from hft_pipeline.market.backtest import METRIC_COLUMNS
from hft_pipeline.store import open_store
from hft_pipeline.store.migrations import _SCHEMA_MIGRATIONS, _split_sqlite, load_migrations
from hft_pipeline.store.results import METADATA
from hft_pipeline.store.results.tables import METRICS
from hft_pipeline_tests.store.conftest import Backend

#: The migration that moved the results to typed columns; older versions are the old schema.
RESULTS_COLUMNS_VERSION = 5
NS = 1_000_000_000
T0 = 1_710_109_800 * NS


def test_metric_columns_are_the_ones_market_computes() -> None:
    assert METRICS == METRIC_COLUMNS


def _reflected(engine: sa.Engine, table: str) -> tuple[list[tuple[str, str, bool]], list[str]]:
    inspector = sa.inspect(engine)
    primary_key = list(inspector.get_pk_constraint(table)["constrained_columns"])
    # SQLite reports its `integer primary key` (the rowid) as nullable; it never holds NULL.
    columns = [
        (
            c["name"],
            c["type"].compile(dialect=engine.dialect),
            bool(c["nullable"]) and c["name"] not in primary_key,
        )
        for c in inspector.get_columns(table)
    ]
    return columns, primary_key


def test_metadata_matches_the_migrated_schema(backend: Backend) -> None:
    engine = backend.store.results.engine
    for table in METADATA.sorted_tables:
        declared = [
            (c.name, c.type.compile(dialect=engine.dialect), bool(c.nullable))
            for c in table.columns
        ]
        primary_key = [c.name for c in table.primary_key.columns]
        assert _reflected(engine, table.name) == (declared, primary_key), table.name
    # Nothing the migrations made is missing from the MetaData but the old long-cell table.
    names = set(sa.inspect(engine).get_table_names())
    assert "backtest_trade_values" not in names
    assert set(METADATA.tables) <= names


# -- from the old schema -------------------------------------------------------------------

_OLD_ROWS = [
    "insert into symbols (name) values ('R_100')",
    "insert into candles values ('1m', 1, {t0}, 10.5, 11.0, 10.0, 10.75, 3.25, 7)",
    "insert into indicator_names (name) values ('rsi_14')",
    "insert into indicators values ('1m', 1, {t0}, 1, 55.5)",
    "insert into backtest_runs values ('2026-11-21T00:10', 1, 0, 60, '1m', '{{}}', "
    '\'[["strategy", "object"], ["symbol", "object"], ["params", "object"], '
    '["sharpe", "float64"]]\', \'[]\')',
    "insert into backtest_metrics values ('2026-11-21T00:10', 0, 'sma_crossover', 'R_100', "
    "'fast=0.3, slow=123457', 'sharpe', 1.5)",
    "insert into backtest_trades values ('2026-11-21T00:10', 0, 'sma_crossover', 'R_100', "
    "'fast=0.3, slow=123457', 0, 60, 1.0, 10.0, 11.0, 0.01, 0.99, 0.099, 'Closed')",
    "insert into backtest_trade_values values ('2026-11-21T00:10', 0, 'fast', 0.3)",
    "insert into comparisons values ('2026-11-21T00:10', 1, '[]')",
    "insert into comparison_rows values ('2026-11-21T00:10', 0, 'sma_crossover', 'R_100', "
    "'fast=0.3, slow=123457', 'sharpe', 1.5)",
]


def _old_sqlite(path: Path) -> tuple[str, Callable[[str], list[tuple]]]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(_SCHEMA_MIGRATIONS["sqlite"])
    for migration in load_migrations("sqlite"):
        if migration.version < RESULTS_COLUMNS_VERSION:
            for statement in _split_sqlite(migration.sql):
                conn.execute(statement)
            conn.execute(
                "insert into schema_migrations values (?, ?, 0)",
                (migration.version, migration.name),
            )
    for statement in _OLD_ROWS:
        conn.execute(statement.format(t0=T0))
    conn.close()

    def query(sql: str) -> list[tuple]:
        with sqlite3.connect(path) as c:
            return c.execute(sql).fetchall()

    return f"sqlite:///{path}", query


def _old_postgres(dsn: str) -> tuple[str, Callable[[str], list[tuple]]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_SCHEMA_MIGRATIONS["postgres"])
        for migration in load_migrations("postgres"):
            if migration.version < RESULTS_COLUMNS_VERSION:
                conn.execute(migration.sql.encode())
                conn.execute(
                    "insert into schema_migrations (version, name) values (%s, %s)",
                    (migration.version, migration.name),
                )
        for statement in _OLD_ROWS:
            conn.execute(statement.format(t0=T0).encode())

    def query(sql: str) -> list[tuple]:
        with psycopg.connect(dsn, autocommit=True) as c:
            return c.execute(sql.encode()).fetchall()

    return dsn, query


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_migration_from_the_long_cell_schema(
    dialect: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if dialect == "sqlite":
        url, query = _old_sqlite(tmp_path / "old.sqlite3")
    else:
        url, query = _old_postgres(request.getfixturevalue("pg_dsn"))
    assert query("select count(*) from backtest_metrics") == [(1,)]

    store = open_store(url, pool_size=2)
    try:
        versions = [v for (v,) in query("select version from schema_migrations order by 1")]
        assert versions[-1] == RESULTS_COLUMNS_VERSION
        # Candles and indicators are kept, row for row.
        candles = store.stored_candles("1m")
        assert candles.to_dict("records") == [
            {"symbol": "R_100", "ts": T0, "open": 10.5, "high": 11.0, "low": 10.0,
             "close": 10.75, "volume": 3.25, "ticks": 7}
        ]  # fmt: skip
        pd.testing.assert_frame_equal(
            store.stored_indicators("1m"),
            pd.DataFrame({"symbol": np.array(["R_100"], object), "ts": [T0], "rsi_14": [55.5]}),
        )
        # Old backtests and comparisons are dropped (their parameters were labels only);
        # materializing `backtests` again rebuilds them.
        assert store.backtest_runs() == []
        assert store.results.latest_comparison() is None
        tables = {n for (n,) in query(_TABLES[dialect])}
        assert "backtest_trade_values" not in tables
        assert {"backtest_runs", "backtest_metrics", "backtest_trades"} <= tables
        columns = {n for (n,) in query(_COLUMNS[dialect].format(table="backtest_metrics"))}
        assert {"param_values", *METRIC_COLUMNS} <= columns and "name" not in columns
        # New results land beside the kept rows: the symbol ids the old rows use still hold.
        store.replace_candles(
            pd.DataFrame({"timeframe": ["1m"], "symbol": ["R_100"], "ts": [T0 + 60 * NS],
                          "open": [1.0], "high": [2.0], "low": [0.5], "close": [1.5],
                          "volume": [0.1 + 0.2], "ticks": [2]}),
            T0 + 60 * NS, T0 + 120 * NS, ["1m"],
        )  # fmt: skip
        assert store.stored_candles("1m")["volume"].tolist() == [3.25, 0.30000000000000004]
        assert store.stored_candles("1m")["symbol"].tolist() == ["R_100", "R_100"]
    finally:
        store.close()


_TABLES = {
    "sqlite": "select name from sqlite_master where type = 'table'",
    "postgres": "select tablename from pg_tables where schemaname = 'public'",
}
_COLUMNS = {
    "sqlite": "select name from pragma_table_info('{table}')",
    "postgres": "select column_name from information_schema.columns where table_name = '{table}'",
}
