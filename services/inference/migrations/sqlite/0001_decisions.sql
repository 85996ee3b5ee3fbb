-- Decisions persisted by the forensics consumer. Times are Unix epoch
-- microseconds. The key is (decision_time, decision_id) so that the table
-- can become a TimescaleDB hypertable on decision_time; a redelivered
-- decision has the same time and id, so inserts stay idempotent. features
-- is the vector as little-endian float64s.
CREATE TABLE decisions (
    decision_id    TEXT             NOT NULL,
    decision_time  INTEGER           NOT NULL,
    request_id     TEXT             NOT NULL DEFAULT '',
    client_time    INTEGER,
    model_name     TEXT             NOT NULL,
    model_version  INTEGER           NOT NULL,
    alias          TEXT             NOT NULL DEFAULT '',
    symbol         TEXT             NOT NULL DEFAULT '',
    unit_id        TEXT             NOT NULL DEFAULT '',
    features       BLOB             NOT NULL,
    action         INTEGER          NOT NULL,
    p_buy          REAL             NOT NULL,
    p_hold         REAL             NOT NULL,
    p_sell         REAL             NOT NULL,
    confidence     REAL             NOT NULL,
    latency_ms     REAL             NOT NULL,
    ab_test_id     TEXT             NOT NULL DEFAULT '',
    arm            INTEGER          NOT NULL DEFAULT 0,
    shadow         INTEGER          NOT NULL DEFAULT 0,
    pinned         INTEGER          NOT NULL DEFAULT 0,
    persisted_time INTEGER           NOT NULL,
    PRIMARY KEY (decision_time, decision_id)
);
CREATE INDEX decisions_id ON decisions (decision_id);
CREATE INDEX decisions_symbol ON decisions (symbol, decision_time, decision_id);
CREATE INDEX decisions_model ON decisions (model_name, model_version, decision_time, decision_id);
