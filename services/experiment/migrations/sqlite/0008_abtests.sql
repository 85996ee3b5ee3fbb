-- A/B tests between versions of a registered model. Times are Unix epoch
-- milliseconds; state, mode and outcome are the proto enum names.
CREATE TABLE ab_tests (
    ab_test_id        TEXT    PRIMARY KEY,
    name              TEXT    NOT NULL,
    model_name        TEXT    NOT NULL,
    control_version   INTEGER  NOT NULL,
    treatment_version INTEGER  NOT NULL,
    treatment_bps     INTEGER NOT NULL CHECK (treatment_bps BETWEEN 0 AND 10000),
    mode              TEXT    NOT NULL,
    salt              TEXT    NOT NULL,
    state             TEXT    NOT NULL,
    max_latency_p95_ratio REAL NOT NULL DEFAULT 0,
    min_agreement_rate    REAL NOT NULL DEFAULT 0,
    min_observations      INTEGER NOT NULL DEFAULT 0,
    outcome           TEXT    NOT NULL,
    description       TEXT    NOT NULL DEFAULT '',
    create_time       INTEGER  NOT NULL,
    start_time        INTEGER,
    stop_time         INTEGER,
    promoted          INTEGER NOT NULL DEFAULT 0,
    revision          INTEGER  NOT NULL,
    CHECK (control_version <> treatment_version)
);
CREATE INDEX ab_tests_model ON ab_tests (model_name, ab_test_id);
CREATE INDEX ab_tests_revision ON ab_tests (revision);
-- At most one running test per model; a second start fails on this index.
CREATE UNIQUE INDEX ab_tests_one_running ON ab_tests (model_name) WHERE state = 'AB_TEST_STATE_RUNNING';

-- One counter for every A/B test change: WatchABTests resumes from it.
CREATE TABLE ab_revision (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER  NOT NULL
);
INSERT INTO ab_revision (id, revision) VALUES (1, 0);

-- Observations from inference, one per request served under a test; the
-- key makes redelivered observations no-ops. action and shadow_action are
-- TradeAction numbers (1 BUY, 2 HOLD, 3 SELL; 0 unpaired).
CREATE TABLE ab_observations (
    ab_test_id        TEXT    NOT NULL REFERENCES ab_tests (ab_test_id) ON DELETE CASCADE,
    observation_id    TEXT    NOT NULL,
    unit_id           TEXT    NOT NULL,
    arm               INTEGER NOT NULL,
    model_version     INTEGER  NOT NULL,
    action            INTEGER NOT NULL,
    confidence        REAL  NOT NULL,
    latency_ms        REAL  NOT NULL,
    paired            INTEGER NOT NULL,
    shadow_action     INTEGER NOT NULL,
    shadow_confidence REAL  NOT NULL,
    shadow_latency_ms REAL  NOT NULL,
    observe_time      INTEGER  NOT NULL,
    PRIMARY KEY (ab_test_id, observation_id)
);
-- Percentiles (ORDER BY latency OFFSET k) and distinct units per arm.
CREATE INDEX ab_observations_latency ON ab_observations (ab_test_id, arm, latency_ms);
CREATE INDEX ab_observations_shadow_latency ON ab_observations (ab_test_id, paired, shadow_latency_ms);
CREATE INDEX ab_observations_units ON ab_observations (ab_test_id, arm, paired, unit_id);

-- Per-minute, per-arm rollups, maintained by the service in the transaction
-- that stores the observations (so they count each observation once). arm
-- is the arm that answered; the shadow_* columns sum the treatment's
-- answers to the same requests (shadow mode).
CREATE TABLE ab_rollups (
    ab_test_id      TEXT    NOT NULL REFERENCES ab_tests (ab_test_id) ON DELETE CASCADE,
    minute          INTEGER  NOT NULL,
    arm             INTEGER NOT NULL,
    requests        INTEGER  NOT NULL,
    buy             INTEGER  NOT NULL,
    hold            INTEGER  NOT NULL,
    sell            INTEGER  NOT NULL,
    confidence_sum  REAL  NOT NULL,
    latency_sum_ms  REAL  NOT NULL,
    paired          INTEGER  NOT NULL,
    agreements      INTEGER  NOT NULL,
    shadow_buy      INTEGER  NOT NULL,
    shadow_hold     INTEGER  NOT NULL,
    shadow_sell     INTEGER  NOT NULL,
    shadow_confidence_sum REAL NOT NULL,
    shadow_latency_sum_ms REAL NOT NULL,
    paired_confidence_sum REAL NOT NULL,
    PRIMARY KEY (ab_test_id, minute, arm)
);
