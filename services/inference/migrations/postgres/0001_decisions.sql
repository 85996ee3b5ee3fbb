-- Decisions persisted by the forensics consumer. Times are Unix epoch
-- microseconds. The key is (decision_time, decision_id) so that the table
-- can become a TimescaleDB hypertable on decision_time; a redelivered
-- decision has the same time and id, so inserts stay idempotent. features
-- is the vector as little-endian float64s.
CREATE TABLE decisions (
    decision_id    TEXT             NOT NULL,
    decision_time  BIGINT           NOT NULL,
    request_id     TEXT             NOT NULL DEFAULT '',
    client_time    BIGINT,
    model_name     TEXT             NOT NULL,
    model_version  BIGINT           NOT NULL,
    alias          TEXT             NOT NULL DEFAULT '',
    symbol         TEXT             NOT NULL DEFAULT '',
    unit_id        TEXT             NOT NULL DEFAULT '',
    features       BYTEA            NOT NULL,
    action         SMALLINT         NOT NULL,
    p_buy          DOUBLE PRECISION NOT NULL,
    p_hold         DOUBLE PRECISION NOT NULL,
    p_sell         DOUBLE PRECISION NOT NULL,
    confidence     DOUBLE PRECISION NOT NULL,
    latency_ms     DOUBLE PRECISION NOT NULL,
    ab_test_id     TEXT             NOT NULL DEFAULT '',
    arm            SMALLINT         NOT NULL DEFAULT 0,
    shadow         BOOLEAN          NOT NULL DEFAULT FALSE,
    pinned         BOOLEAN          NOT NULL DEFAULT FALSE,
    persisted_time BIGINT           NOT NULL,
    PRIMARY KEY (decision_time, decision_id)
);
CREATE INDEX decisions_id ON decisions (decision_id);
CREATE INDEX decisions_symbol ON decisions (symbol, decision_time, decision_id);
CREATE INDEX decisions_model ON decisions (model_name, model_version, decision_time, decision_id);
