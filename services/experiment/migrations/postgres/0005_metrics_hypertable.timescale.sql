-- With TimescaleDB (applied only when the extension is in use): metric
-- points become a hypertable on their timestamp (Unix epoch milliseconds),
-- one chunk per day, compressed by run and key once a chunk is 7 days old,
-- and dropped after 90 days (raw retention; latest_metrics keeps every
-- run's latest values). On plain PostgreSQL this file is skipped and the
-- same queries run on the plain table.
CREATE OR REPLACE FUNCTION quantmesh_now_ms() RETURNS BIGINT
    LANGUAGE SQL STABLE AS $$ SELECT (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT $$;

SELECT create_hypertable('metrics', 'ts', chunk_time_interval => 86400000::BIGINT, migrate_data => true);
SELECT set_integer_now_func('metrics', 'quantmesh_now_ms');

ALTER TABLE metrics SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'run_key, key',
    timescaledb.compress_orderby = 'step, ts'
);
SELECT add_compression_policy('metrics', compress_after => 604800000::BIGINT);
SELECT add_retention_policy('metrics', drop_after => 7776000000::BIGINT);
