-- Experiments: named groups of runs. Times are Unix epoch milliseconds.
CREATE TABLE experiments (
    experiment_id     TEXT   PRIMARY KEY,
    name              TEXT   NOT NULL UNIQUE,
    description       TEXT   NOT NULL DEFAULT '',
    artifact_location TEXT   NOT NULL DEFAULT '',
    lifecycle_stage   TEXT   NOT NULL CHECK (lifecycle_stage IN ('active', 'deleted')),
    tags              JSONB  NOT NULL DEFAULT '{}',
    create_time       BIGINT NOT NULL,
    update_time       BIGINT NOT NULL,
    delete_time       BIGINT
);
CREATE INDEX experiments_stage_id ON experiments (lifecycle_stage, experiment_id);
