-- Hypertables made before 001 passed create_default_indexes => false carry TimescaleDB's
-- default index ticks_ts_idx on (ts DESC): the (symbol_id, ts) btree and the ts BRIN serve every
-- query of the store, and it cost ~27 B and one more btree insert per tick (docs/postgres.md).
-- Only that exact index goes; native partitions never had one.
do $$
declare
    idx regclass := to_regclass('ticks_ts_idx');
begin
    if idx is not null
       and exists (select 1 from pg_index where indexrelid = idx and indrelid = to_regclass('ticks'))
       and pg_get_indexdef(idx) like '% USING btree (ts DESC)' then
        execute format('drop index %s', idx);
    end if;
end
$$;
