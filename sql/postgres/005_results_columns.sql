-- Backtest results in typed columns, one row per run (hft_pipeline/store/results/tables.py is
-- the same schema, checked by a test): metrics as columns, the parameters of a run as exact
-- JSON {name: value}, trades with typed columns. Replaces the long (row_no, name, value) cells
-- of 002_results. Candles and indicators keep their tables and rows.
--
-- Old backtest runs and comparisons are dropped, not moved: their parameter values were kept
-- only as display labels ("fast=10, slow=50", rounded to 6 digits), so they cannot be moved
-- exactly. They are derived from the stored candles: materializing `backtests` and
-- `strategy_comparison` again rebuilds them (docs/results.md#upgrading-from-002).

drop table if exists backtest_trade_values;
drop table if exists backtest_trades;
drop table if exists backtest_metrics;
drop table if exists backtest_runs;
drop table if exists comparison_rows;
drop table if exists comparisons;

create table backtest_runs (
    run_key text not null primary key,
    created_ns bigint not null,
    start_ns bigint not null,
    end_ns bigint not null,
    timeframe text not null,
    config jsonb not null
);

create index ix_backtest_runs_created_ns on backtest_runs (created_ns);

create table backtest_metrics (
    run_key text not null,
    row_no integer not null,
    strategy text not null,
    symbol text not null,
    params text not null,
    param_values jsonb not null,
    total_return double precision,
    cagr double precision,
    sharpe double precision,
    sortino double precision,
    calmar double precision,
    max_drawdown double precision,
    win_rate double precision,
    profit_factor double precision,
    expectancy double precision,
    n_trades bigint,
    avg_trade_duration bigint,
    exposure double precision,
    primary key (run_key, row_no)
);

create table backtest_trades (
    run_key text not null,
    row_no integer not null,
    strategy text not null,
    symbol text not null,
    params text not null,
    param_values jsonb not null,
    entry_ns bigint not null,
    exit_ns bigint not null,
    size double precision,
    entry_price double precision,
    exit_price double precision,
    fees double precision,
    pnl double precision,
    "return" double precision,
    status text not null,
    primary key (run_key, row_no)
);

create table comparisons (
    run_key text not null primary key,
    created_ns bigint not null
);

create table comparison_rows (
    run_key text not null,
    row_no integer not null,
    strategy text not null,
    symbol text not null,
    params text not null,
    "rank" bigint not null,
    total_return double precision,
    cagr double precision,
    sharpe double precision,
    sortino double precision,
    calmar double precision,
    max_drawdown double precision,
    win_rate double precision,
    profit_factor double precision,
    expectancy double precision,
    n_trades bigint,
    avg_trade_duration bigint,
    exposure double precision,
    primary key (run_key, row_no)
);
