-- With TimescaleDB (applied only when the extension is in use): decisions
-- become a hypertable on decision_time (Unix epoch microseconds), one chunk
-- per day, compressed by model once a chunk is 7 days old and dropped after
-- 90 days. On plain PostgreSQL this file is skipped.
CREATE OR REPLACE FUNCTION quantmesh_now_us() RETURNS BIGINT
    LANGUAGE SQL STABLE AS $$ SELECT (EXTRACT(EPOCH FROM now()) * 1000000)::BIGINT $$;

SELECT create_hypertable('decisions', 'decision_time', chunk_time_interval => 86400000000::BIGINT, migrate_data => true);
SELECT set_integer_now_func('decisions', 'quantmesh_now_us');

ALTER TABLE decisions SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'model_name',
    timescaledb.compress_orderby = 'decision_time, decision_id'
);
SELECT add_compression_policy('decisions', compress_after => 604800000000::BIGINT);
SELECT add_retention_policy('decisions', drop_after => 7776000000000::BIGINT);
