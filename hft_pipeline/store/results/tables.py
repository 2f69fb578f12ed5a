"""The results tables, defined once for SQLite and PostgreSQL (docs/results.md).

Each table here has a migration per backend (`sql/<dialect>/NNN_*.sql`); a test compares this
MetaData with both migrated schemas, so the definitions cannot drift.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

METADATA = sa.MetaData()

#: 64-bit integers on both backends (SQLite's INTEGER is 64-bit already).
Int64 = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
#: IEEE doubles; PostgreSQL keeps NaN and ±inf, SQLite stores NaN as NULL (read back as NaN).
Float64 = sa.Double().with_variant(sa.REAL(), "sqlite")
#: Exact JSON: jsonb on PostgreSQL, text holding JSON on SQLite.
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

#: The metrics of a run, as market.backtest.METRIC_COLUMNS names them, with their storage type.
#: avg_trade_duration is a duration in ns (NULL when a run has no trade).
METRIC_TYPES: dict[str, sa.types.TypeEngine] = {
    "total_return": Float64,
    "cagr": Float64,
    "sharpe": Float64,
    "sortino": Float64,
    "calmar": Float64,
    "max_drawdown": Float64,
    "win_rate": Float64,
    "profit_factor": Float64,
    "expectancy": Float64,
    "n_trades": Int64,
    "avg_trade_duration": Int64,
    "exposure": Float64,
}
METRICS = tuple(METRIC_TYPES)


def _metric_columns() -> list[sa.Column]:
    return [sa.Column(name, kind) for name, kind in METRIC_TYPES.items()]


def _run_row_key() -> list[sa.Column]:
    """Which run, which row of it, and which (strategy, symbol, parameter label) it is."""
    return [
        sa.Column("run_key", sa.Text, primary_key=True),
        sa.Column("row_no", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("strategy", sa.Text, nullable=False),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("params", sa.Text, nullable=False),
    ]


# Written by the tick path (001_init); the results name their symbols through it.
symbols = sa.Table(
    "symbols",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, nullable=False, unique=True),
)

candles = sa.Table(
    "candles",
    METADATA,
    sa.Column("timeframe", sa.Text, nullable=False),
    sa.Column("symbol_id", sa.Integer, nullable=False),
    sa.Column("ts_ns", Int64, nullable=False),
    *(sa.Column(c, Float64, nullable=False) for c in ("open", "high", "low", "close", "volume")),
    sa.Column("ticks", Int64, nullable=False),
    # ts first: a partition run deletes and reads one time range of every symbol.
    sa.PrimaryKeyConstraint("timeframe", "ts_ns", "symbol_id"),
)

indicator_names = sa.Table(
    "indicator_names",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, nullable=False, unique=True),
)

# Long by design: a new indicator is a new name, not a migration. NaN (warm-up) is kept.
indicators = sa.Table(
    "indicators",
    METADATA,
    sa.Column("timeframe", sa.Text, nullable=False),
    sa.Column("symbol_id", sa.Integer, nullable=False),
    sa.Column("ts_ns", Int64, nullable=False),
    sa.Column("name_id", sa.Integer, nullable=False),
    sa.Column("value", Float64),
    sa.PrimaryKeyConstraint("timeframe", "ts_ns", "symbol_id", "name_id"),
)

backtest_runs = sa.Table(
    "backtest_runs",
    METADATA,
    sa.Column("run_key", sa.Text, primary_key=True),
    sa.Column("created_ns", Int64, nullable=False, index=True),
    sa.Column("start_ns", Int64, nullable=False),
    sa.Column("end_ns", Int64, nullable=False),
    sa.Column("timeframe", sa.Text, nullable=False),
    sa.Column("config", Json, nullable=False),
)

# One row per (strategy, parameter set, symbol) run; param_values is {name: value} exactly as
# the sweep ran it (the `params` label is for display only).
backtest_metrics = sa.Table(
    "backtest_metrics",
    METADATA,
    *_run_row_key(),
    sa.Column("param_values", Json, nullable=False),
    *_metric_columns(),
)

backtest_trades = sa.Table(
    "backtest_trades",
    METADATA,
    *_run_row_key(),
    sa.Column("param_values", Json, nullable=False),
    sa.Column("entry_ns", Int64, nullable=False),
    sa.Column("exit_ns", Int64, nullable=False),
    *(sa.Column(c, Float64) for c in ("size", "entry_price", "exit_price", "fees", "pnl")),
    sa.Column("return", Float64),
    sa.Column("status", sa.Text, nullable=False),
)

comparisons = sa.Table(
    "comparisons",
    METADATA,
    sa.Column("run_key", sa.Text, primary_key=True),
    sa.Column("created_ns", Int64, nullable=False),
)

comparison_rows = sa.Table(
    "comparison_rows",
    METADATA,
    *_run_row_key(),
    sa.Column("rank", Int64, nullable=False),
    *_metric_columns(),
)
