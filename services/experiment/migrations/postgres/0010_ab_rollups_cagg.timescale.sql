-- quantmesh:no-transaction
-- With TimescaleDB: the per-minute, per-arm rollups as a continuous
-- aggregate over ab_observations, with the columns of the ab_rollups table
-- that the service maintains without TimescaleDB (0008), so results read
-- either with the same query. Real-time aggregation (materialized_only =
-- false) adds the minutes not yet materialised, so results include every
-- stored observation. A continuous aggregate cannot be created inside a
-- transaction block, hence this file holds this one statement only.
--
-- The defining query is also run on plain PostgreSQL by the tests
-- (TestABRollupsCaggQueryMatchesMaintained), with time_bucket replaced by
-- its integer arithmetic, against the maintained rollups.
CREATE MATERIALIZED VIEW IF NOT EXISTS ab_rollups_cagg
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT ab_test_id,
       time_bucket(60000::BIGINT, observe_time) AS minute,
       arm,
       COUNT(*)                                                          AS requests,
       SUM(CASE WHEN action = 1 THEN 1 ELSE 0 END)                       AS buy,
       SUM(CASE WHEN action = 2 THEN 1 ELSE 0 END)                       AS hold,
       SUM(CASE WHEN action = 3 THEN 1 ELSE 0 END)                       AS sell,
       SUM(confidence)                                                   AS confidence_sum,
       SUM(latency_ms)                                                   AS latency_sum_ms,
       SUM(paired)                                                       AS paired,
       SUM(CASE WHEN paired = 1 AND action = shadow_action THEN 1 ELSE 0 END) AS agreements,
       SUM(CASE WHEN paired = 1 AND shadow_action = 1 THEN 1 ELSE 0 END) AS shadow_buy,
       SUM(CASE WHEN paired = 1 AND shadow_action = 2 THEN 1 ELSE 0 END) AS shadow_hold,
       SUM(CASE WHEN paired = 1 AND shadow_action = 3 THEN 1 ELSE 0 END) AS shadow_sell,
       SUM(CASE WHEN paired = 1 THEN shadow_confidence ELSE 0 END)       AS shadow_confidence_sum,
       SUM(CASE WHEN paired = 1 THEN shadow_latency_ms ELSE 0 END)       AS shadow_latency_sum_ms,
       SUM(CASE WHEN paired = 1 THEN confidence ELSE 0 END)              AS paired_confidence_sum
FROM ab_observations
GROUP BY ab_test_id, time_bucket(60000::BIGINT, observe_time), arm
WITH NO DATA
