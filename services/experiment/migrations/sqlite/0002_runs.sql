-- Runs and what they log. Times are Unix epoch milliseconds. run_key is an
-- internal surrogate key (compact and fast to join and copy); run_id is the
-- public identifier.
CREATE TABLE runs (
    run_key         INTEGER PRIMARY KEY,
    run_id          TEXT   NOT NULL UNIQUE,
    experiment_id   TEXT   NOT NULL REFERENCES experiments (experiment_id),
    run_name        TEXT   NOT NULL,
    status          TEXT   NOT NULL CHECK (status IN ('RUNNING', 'SCHEDULED', 'FINISHED', 'FAILED', 'KILLED')),
    start_time      INTEGER NOT NULL,
    end_time        INTEGER,
    lifecycle_stage TEXT   NOT NULL CHECK (lifecycle_stage IN ('active', 'deleted')),
    artifact_uri    TEXT   NOT NULL DEFAULT '',
    delete_time     INTEGER
);
CREATE INDEX runs_experiment ON runs (experiment_id, lifecycle_stage, run_id);
-- SearchRuns' default order (newest first) walks this index.
CREATE INDEX runs_experiment_start ON runs (experiment_id, start_time);

-- Params are immutable once logged.
CREATE TABLE run_params (
    run_key INTEGER NOT NULL REFERENCES runs (run_key),
    key     TEXT   NOT NULL,
    value   TEXT   NOT NULL,
    PRIMARY KEY (run_key, key)
);
CREATE INDEX run_params_search ON run_params (key, value, run_key);

CREATE TABLE run_tags (
    run_key INTEGER NOT NULL REFERENCES runs (run_key),
    key     TEXT   NOT NULL,
    value   TEXT   NOT NULL,
    PRIMARY KEY (run_key, key)
);
CREATE INDEX run_tags_search ON run_tags (key, value, run_key);

-- Every metric point, append-only. No foreign key: the service checks the
-- run before it writes, and bulk copies stay cheap.
CREATE TABLE metrics (
    run_key INTEGER           NOT NULL,
    key     TEXT             NOT NULL,
    step    INTEGER           NOT NULL,
    ts      INTEGER           NOT NULL,
    value   REAL NOT NULL
);
CREATE INDEX metrics_series ON metrics (run_key, key, step, ts);

-- The latest point of each metric of each run (highest step, then
-- timestamp, then value), kept with every write for GetRun and SearchRuns.
CREATE TABLE latest_metrics (
    run_key INTEGER           NOT NULL REFERENCES runs (run_key),
    key     TEXT             NOT NULL,
    value   REAL NOT NULL,
    step    INTEGER           NOT NULL,
    ts      INTEGER           NOT NULL,
    PRIMARY KEY (run_key, key)
);
CREATE INDEX latest_metrics_search ON latest_metrics (key, value, run_key);

-- StreamMetrics deduplication: the highest sequence of each client stream
-- whose message is stored.
CREATE TABLE metric_streams (
    stream_id     TEXT   PRIMARY KEY,
    last_sequence INTEGER NOT NULL,
    update_time   INTEGER NOT NULL
);

-- LogBatch idempotency keys already applied.
CREATE TABLE logbatch_keys (
    run_key         INTEGER NOT NULL REFERENCES runs (run_key),
    idempotency_key TEXT   NOT NULL,
    create_time     INTEGER NOT NULL,
    PRIMARY KEY (run_key, idempotency_key)
);
