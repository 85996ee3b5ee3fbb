-- When an A/B test's treatment_bps or mode last changed after it was
-- created (Unix epoch milliseconds), NULL when they never did. The
-- sample-ratio-mismatch check counts only the units observed since: those
-- observed before were assigned under another split.
ALTER TABLE ab_tests ADD COLUMN split_time BIGINT;
