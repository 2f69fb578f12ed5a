-- Results of the Dagster assets: stored candles, indicators (long: no migration per indicator),
-- backtest runs with metrics and trades, strategy comparisons. Same logical content as
-- sql/postgres/002_results.sql. Result frames are stored long (row_no, name, value) with their
-- column names and dtypes kept as JSON on the run, so they round-trip exactly.

create table if not exists candles (
    timeframe text not null,
    symbol_id integer not null,
    ts_ns integer not null,
    open real not null,
    high real not null,
    low real not null,
    close real not null,
    volume real not null,
    ticks integer not null,
    -- ts first: a partition run deletes and reads one time range of every symbol.
    primary key (timeframe, ts_ns, symbol_id)
) without rowid;

create table if not exists indicator_names (
    id integer primary key,
    name text not null unique
);

-- NaN values are kept (SQLite stores them as NULL): a warm-up NaN is a result too.
create table if not exists indicators (
    timeframe text not null,
    symbol_id integer not null,
    ts_ns integer not null,
    name_id integer not null,
    value real,
    primary key (timeframe, ts_ns, symbol_id, name_id)
) without rowid;

create table if not exists backtest_runs (
    run_key text primary key,
    created_ns integer not null,
    start_ns integer not null,
    end_ns integer not null,
    timeframe text not null,
    config text not null,
    metric_columns text not null,
    trade_columns text not null
);

create index if not exists backtest_runs_created_idx on backtest_runs (created_ns);

create table if not exists backtest_metrics (
    run_key text not null,
    row_no integer not null,
    strategy text not null,
    symbol text not null,
    params text not null,
    name text not null,
    value real,
    primary key (run_key, row_no, name)
) without rowid;

create table if not exists backtest_trades (
    run_key text not null,
    row_no integer not null,
    strategy text not null,
    symbol text not null,
    params text not null,
    entry_ns integer not null,
    exit_ns integer not null,
    size real,
    entry_price real,
    exit_price real,
    fees real,
    pnl real,
    "return" real,
    status text not null,
    primary key (run_key, row_no)
) without rowid;

-- Trade columns beyond the fixed ones (e.g. the parameter levels of market.backtest.trade_list).
create table if not exists backtest_trade_values (
    run_key text not null,
    row_no integer not null,
    name text not null,
    value real,
    primary key (run_key, row_no, name)
) without rowid;

create table if not exists comparisons (
    run_key text primary key,
    created_ns integer not null,
    columns text not null
);

create table if not exists comparison_rows (
    run_key text not null,
    row_no integer not null,
    strategy text not null,
    symbol text not null,
    params text not null,
    name text not null,
    value real,
    primary key (run_key, row_no, name)
) without rowid;
