-- With TimescaleDB (applied only when the extension is in use): bars become
-- a hypertable on bar_time (Unix epoch microseconds), one chunk per 30 days,
-- compressed by symbol once a chunk is 7 days old. Bars are the models'
-- training data, so no retention policy drops them. On plain PostgreSQL
-- this file is skipped.
CREATE OR REPLACE FUNCTION quantmesh_now_us() RETURNS BIGINT
    LANGUAGE SQL STABLE AS $$ SELECT (EXTRACT(EPOCH FROM now()) * 1000000)::BIGINT $$;

SELECT create_hypertable('regime_bars', 'bar_time', chunk_time_interval => 2592000000000::BIGINT, migrate_data => true);
SELECT set_integer_now_func('regime_bars', 'quantmesh_now_us');

ALTER TABLE regime_bars SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'symbol',
    timescaledb.compress_orderby = 'bar_time'
);
SELECT add_compression_policy('regime_bars', compress_after => 604800000000::BIGINT);
