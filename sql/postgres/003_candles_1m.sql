-- One-minute candles kept by write_ticks in the same transaction as the ticks (docs/candles.md):
-- 1m and coarser candles of stored history are index reads of this table, not aggregations of
-- ticks. first/last (ts_ns, seq) decide open/close when later batches (late or out-of-order
-- ticks) merge into a row; volume is an exact sum kept as three floats (volume_s + volume_c +
-- volume_d, see market/candles.py), merged error-free by the upsert. Same logical content as
-- sql/sqlite/003_candles_1m.sql.

-- The forming minute of every symbol is updated by each persister batch: free space on the
-- page keeps those updates HOT (no index entry per update).
create table if not exists candles_1m (
    symbol_id integer not null,
    ts_ns bigint not null,
    open double precision not null,
    high double precision not null,
    low double precision not null,
    close double precision not null,
    volume_s double precision not null,
    volume_c double precision not null,
    volume_d double precision not null,
    ticks bigint not null,
    first_ts_ns bigint not null,
    first_seq bigint not null,
    last_ts_ns bigint not null,
    last_seq bigint not null,
    primary key (symbol_id, ts_ns)
) with (fillfactor = 80);

-- Backfill from the ticks already stored (floor buckets, as the store's candle queries).
-- SQL has no exact sum, so a backfilled minute's volume is PostgreSQL's sum() of its ticks;
-- every tick written from now on is added exactly.
insert into candles_1m (
    symbol_id, ts_ns, open, high, low, close, volume_s, volume_c, volume_d, ticks,
    first_ts_ns, first_seq, last_ts_ns, last_seq
)
select symbol_id, b,
       (array_agg(price order by ts_ns, seq))[1], max(price), min(price),
       (array_agg(price order by ts_ns desc, seq desc))[1],
       sum(volume), 0, 0, count(*),
       (min(array[ts_ns, seq]))[1], (min(array[ts_ns, seq]))[2],
       (max(array[ts_ns, seq]))[1], (max(array[ts_ns, seq]))[2]
from (
    select symbol_id, ts_ns - mod(mod(ts_ns, 60000000000) + 60000000000, 60000000000) as b,
           ts_ns, seq, price, volume
    from ticks
) as t
group by symbol_id, b;
