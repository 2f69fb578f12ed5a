-- Initial schema, same logical content as sql/postgres/001_init.sql (no ts column: SQLite
-- has no timestamptz, ts_ns is the source of truth and the only time column).

create table if not exists symbols (
    id integer primary key,
    name text not null unique
);

create table if not exists ticks (
    symbol_id integer not null,
    ts_ns integer not null,
    seq integer not null,
    price real not null,
    volume real not null,
    bid real,
    ask real
);

-- (symbol_id, ts_ns, seq) is exactly the read order, so "newest N" reads stop after N rows.
create index if not exists ticks_symbol_ts_idx on ticks (symbol_id, ts_ns, seq);

create table if not exists symbol_stats (
    symbol_id integer primary key references symbols (id),
    rows integer not null,
    max_ts_ns integer not null,
    max_seq integer not null
);

create table if not exists consumer_offsets (
    stream text primary key,
    "offset" integer not null,
    updated_at integer not null
);

create table if not exists subscriptions (
    symbol text primary key,
    exchange text not null,
    created_ns integer not null
);
