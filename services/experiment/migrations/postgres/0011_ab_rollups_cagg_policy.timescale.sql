-- With TimescaleDB: materialise the rollups of 0010 every minute, up to the
-- last complete minute; real-time aggregation covers the rest.
SELECT add_continuous_aggregate_policy('ab_rollups_cagg',
    start_offset => NULL,
    end_offset => 60000::BIGINT,
    schedule_interval => INTERVAL '1 minute');
