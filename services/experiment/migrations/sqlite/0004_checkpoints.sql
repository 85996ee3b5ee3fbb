-- Checkpoints written by runs, under a retention policy. Times are Unix
-- epoch milliseconds. model_name is '' and model_version 0 when the
-- checkpoint did not become a model version.
CREATE TABLE checkpoints (
    checkpoint_id TEXT             PRIMARY KEY,
    run_id        TEXT             NOT NULL,
    experiment_id TEXT             NOT NULL,
    step          INTEGER           NOT NULL,
    uri           TEXT             NOT NULL,
    size_bytes    INTEGER           NOT NULL,
    metric_key    TEXT             NOT NULL,
    metric_value  REAL             NOT NULL,
    model_name    TEXT             NOT NULL DEFAULT '',
    model_version INTEGER           NOT NULL DEFAULT 0,
    create_time   INTEGER           NOT NULL
);
CREATE INDEX checkpoints_experiment ON checkpoints (experiment_id, checkpoint_id);
CREATE INDEX checkpoints_run ON checkpoints (run_id, checkpoint_id);
