-- Experiments: named groups of runs. Times are Unix epoch milliseconds.
CREATE TABLE experiments (
    experiment_id     TEXT    PRIMARY KEY,
    name              TEXT    NOT NULL UNIQUE,
    description       TEXT    NOT NULL DEFAULT '',
    artifact_location TEXT    NOT NULL DEFAULT '',
    lifecycle_stage   TEXT    NOT NULL CHECK (lifecycle_stage IN ('active', 'deleted')),
    tags              TEXT    NOT NULL DEFAULT '{}',
    create_time       INTEGER NOT NULL,
    update_time       INTEGER NOT NULL,
    delete_time       INTEGER
);
CREATE INDEX experiments_stage_id ON experiments (lifecycle_stage, experiment_id);
