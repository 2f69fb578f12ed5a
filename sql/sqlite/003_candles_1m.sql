-- One-minute candles kept by write_ticks in the same transaction as the ticks (docs/candles.md):
-- 1m and coarser candles of stored history are index reads of this table, not aggregations of
-- ticks. first/last (ts_ns, seq) decide open/close when later batches (late or out-of-order
-- ticks) merge into a row; volume is an exact sum kept as three floats (volume_s + volume_c +
-- volume_d, see market/candles.py), merged error-free by the upsert.

create table if not exists candles_1m (
    symbol_id integer not null,
    ts_ns integer not null,
    open real not null,
    high real not null,
    low real not null,
    close real not null,
    volume_s real not null,
    volume_c real not null,
    volume_d real not null,
    ticks integer not null,
    first_ts_ns integer not null,
    first_seq integer not null,
    last_ts_ns integer not null,
    last_seq integer not null,
    primary key (symbol_id, ts_ns)
) without rowid;

-- Backfill from the ticks already stored (same floor buckets as the store's candle queries).
-- SQL has no exact sum, so a backfilled minute's volume is SQLite's sum() of its ticks; every
-- tick written from now on is added exactly.
insert into candles_1m (
    symbol_id, ts_ns, open, high, low, close, volume_s, volume_c, volume_d, ticks,
    first_ts_ns, first_seq, last_ts_ns, last_seq
)
select symbol_id, b, max(o), max(price), min(price), max(c), sum(volume), 0.0, 0.0, count(*),
       max(f_ts), max(f_seq), max(l_ts), max(l_seq)
from (
    select symbol_id, b, price, volume,
        first_value(price) over w as o,
        last_value(price) over w as c,
        first_value(ts_ns) over w as f_ts,
        first_value(seq) over w as f_seq,
        last_value(ts_ns) over w as l_ts,
        last_value(seq) over w as l_seq
    from (
        select symbol_id, ts_ns - (((ts_ns % 60000000000) + 60000000000) % 60000000000) as b,
               ts_ns, seq, price, volume
        from ticks
    )
    window w as (partition by symbol_id, b order by ts_ns, seq
                 rows between unbounded preceding and unbounded following)
)
group by symbol_id, b;
