-- Results of the Dagster assets: stored candles, indicators (long: no migration per indicator),
-- backtest runs with metrics and trades, strategy comparisons. Same logical content as
-- sql/sqlite/002_results.sql. Result frames are stored long (row_no, name, value) with their
-- column names and dtypes kept as JSON on the run, so they round-trip exactly.

create table if not exists candles (
    timeframe text not null,
    symbol_id integer not null,
    ts_ns bigint not null,
    open double precision not null,
    high double precision not null,
    low double precision not null,
    close double precision not null,
    volume double precision not null,
    ticks bigint not null,
    -- ts first: a partition run deletes and reads one time range of every symbol.
    primary key (timeframe, ts_ns, symbol_id)
);

create table if not exists indicator_names (
    id integer generated always as identity primary key,
    name text not null unique
);

-- NaN values are kept (double precision stores NaN): a warm-up NaN is a result too.
create table if not exists indicators (
    timeframe text not null,
    symbol_id integer not null,
    ts_ns bigint not null,
    name_id integer not null,
    value double precision,
    primary key (timeframe, ts_ns, symbol_id, name_id)
);

create table if not exists backtest_runs (
    run_key text primary key,
    created_ns bigint not null,
    start_ns bigint not null,
    end_ns bigint not null,
    timeframe text not null,
    config jsonb not null,
    metric_columns jsonb not null,
    trade_columns jsonb not null
);

create index if not exists backtest_runs_created_idx on backtest_runs (created_ns);

create table if not exists backtest_metrics (
    run_key text not null,
    row_no integer not null,
    strategy text not null,
    symbol text not null,
    params text not null,
    name text not null,
    value double precision,
    primary key (run_key, row_no, name)
);

create table if not exists backtest_trades (
    run_key text not null,
    row_no integer not null,
    strategy text not null,
    symbol text not null,
    params text not null,
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

-- Trade columns beyond the fixed ones (e.g. the parameter levels of market.backtest.trade_list).
create table if not exists backtest_trade_values (
    run_key text not null,
    row_no integer not null,
    name text not null,
    value double precision,
    primary key (run_key, row_no, name)
);

create table if not exists comparisons (
    run_key text primary key,
    created_ns bigint not null,
    columns jsonb not null
);

create table if not exists comparison_rows (
    run_key text not null,
    row_no integer not null,
    strategy text not null,
    symbol text not null,
    params text not null,
    name text not null,
    value double precision,
    primary key (run_key, row_no, name)
);
