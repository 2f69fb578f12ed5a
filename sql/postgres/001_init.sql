-- Initial schema: symbols, ticks (hypertable or native daily partitions), offsets, subscriptions.
-- ts_ns is the exact source of truth; ts (= ts_ns floored to microseconds) exists for
-- partitioning, BRIN and date_bin. No unique index on ticks: exactly-once comes from writing
-- the consumer offset in the same transaction as the ticks (docs/durability.md).

create table if not exists symbols (
    id integer generated always as identity primary key,
    name text not null unique
);

-- The store creates TimescaleDB before this runs, and only where it can load (docs/postgres.md,
-- "Choosing the layout"): without shared_preload_libraries, loading it ends the session with a
-- FATAL error that no exception handler here could catch.
do $$
begin
    if exists (select 1 from pg_extension where extname = 'timescaledb')
       and current_setting('timescaledb.max_background_workers', true) is not null then
        create table if not exists ticks (
            symbol_id integer not null,
            ts timestamptz not null,
            ts_ns bigint not null,
            seq bigint not null,
            price double precision not null,
            volume double precision not null,
            bid double precision,
            ask double precision
        );
        -- No default index on ts: the (symbol_id, ts) btree and the ts BRIN below serve every
        -- query of the store, and it would cost ~27 B and one more btree insert per tick.
        perform create_hypertable('ticks', 'ts', chunk_time_interval => interval '1 day',
                                  create_default_indexes => false, if_not_exists => true);
    else
        -- Partitions (one per UTC day) are created on demand by the store before it writes.
        create table if not exists ticks (
            symbol_id integer not null,
            ts timestamptz not null,
            ts_ns bigint not null,
            seq bigint not null,
            price double precision not null,
            volume double precision not null,
            bid double precision,
            ask double precision
        ) partition by range (ts);
    end if;
end
$$;

create index if not exists ticks_symbol_ts_idx on ticks (symbol_id, ts);
create index if not exists ticks_ts_brin on ticks using brin (ts);

-- Per-symbol running totals written in the same transaction as the ticks, so last_seqs,
-- watermark and symbols answer without scanning ticks.
create table if not exists symbol_stats (
    symbol_id integer primary key references symbols (id),
    rows bigint not null,
    max_ts_ns bigint not null,
    max_seq bigint not null
);

create table if not exists consumer_offsets (
    stream text primary key,
    "offset" bigint not null,
    updated_at timestamptz not null default now()
);

create table if not exists subscriptions (
    symbol text primary key,
    exchange text not null,
    created_ns bigint not null
);
