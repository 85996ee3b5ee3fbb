-- Checkpoints written by runs, under a retention policy. Times are Unix
-- epoch milliseconds. model_name is '' and model_version 0 when the
-- checkpoint did not become a model version.
CREATE TABLE checkpoints (
    checkpoint_id TEXT             PRIMARY KEY,
    run_id        TEXT             NOT NULL,
    experiment_id TEXT             NOT NULL,
    step          BIGINT           NOT NULL,
    uri           TEXT             NOT NULL,
    size_bytes    BIGINT           NOT NULL,
    metric_key    TEXT             NOT NULL,
    metric_value  DOUBLE PRECISION NOT NULL,
    model_name    TEXT             NOT NULL DEFAULT '',
    model_version BIGINT           NOT NULL DEFAULT 0,
    create_time   BIGINT           NOT NULL
);
CREATE INDEX checkpoints_experiment ON checkpoints (experiment_id, checkpoint_id);
CREATE INDEX checkpoints_run ON checkpoints (run_id, checkpoint_id);
