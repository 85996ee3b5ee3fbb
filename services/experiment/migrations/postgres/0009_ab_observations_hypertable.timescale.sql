-- With TimescaleDB (applied only when the extension is in use): A/B
-- observations become a hypertable on observe_time (Unix epoch
-- milliseconds), one chunk per day, so that the per-minute rollups can be a
-- continuous aggregate over them (0010) instead of the ab_rollups table the
-- service maintains on plain PostgreSQL and SQLite.
--
-- A hypertable's unique keys must hold its time column, so the key becomes
-- (ab_test_id, observation_id, observe_time). Deduplication is unchanged: a
-- redelivered observation is the same bus message, with the same
-- observe_time.
ALTER TABLE ab_observations DROP CONSTRAINT ab_observations_pkey;
ALTER TABLE ab_observations ADD PRIMARY KEY (ab_test_id, observation_id, observe_time);

SELECT create_hypertable('ab_observations', 'observe_time', chunk_time_interval => 86400000::BIGINT, migrate_data => true);
-- quantmesh_now_ms() is defined by 0005.
SELECT set_integer_now_func('ab_observations', 'quantmesh_now_ms');
