-- SearchRuns tests a run's metric, param or tag by (run_key, key) probes,
-- and reads its value: the primary keys carry the value (INCLUDE), so a
-- probe is answered by the index alone, without a visit to the table. The
-- upserts' ON CONFLICT (run_key, key) is unchanged.
ALTER TABLE run_params DROP CONSTRAINT run_params_pkey;
ALTER TABLE run_params ADD CONSTRAINT run_params_pkey PRIMARY KEY (run_key, key) INCLUDE (value);
ALTER TABLE run_tags DROP CONSTRAINT run_tags_pkey;
ALTER TABLE run_tags ADD CONSTRAINT run_tags_pkey PRIMARY KEY (run_key, key) INCLUDE (value);
ALTER TABLE latest_metrics DROP CONSTRAINT latest_metrics_pkey;
ALTER TABLE latest_metrics ADD CONSTRAINT latest_metrics_pkey PRIMARY KEY (run_key, key) INCLUDE (value);

-- Comparisons of params and tags (params.optimizer = 'adam') read the
-- (key, value, run_key) search indexes, index only. The pair indexes
-- (key and value joined) gave the planner statistics of key and value
-- together but cannot answer without the table (PostgreSQL does no
-- index-only scan on an expression index); extended statistics give the
-- same estimates: key and value apart make a pair look rarer by about
-- the number of keys.
DROP INDEX run_params_pair;
DROP INDEX run_tags_pair;
CREATE STATISTICS run_params_key_value (mcv) ON key, value FROM run_params;
CREATE STATISTICS run_tags_key_value (mcv) ON key, value FROM run_tags;
