-- RegimeService state. Times are Unix epoch microseconds.

-- Bars ingested through IngestBars or the bus; per symbol, times strictly
-- increase. volume is NULL when the venue reported none.
CREATE TABLE regime_bars (
    symbol   TEXT             NOT NULL,
    bar_time BIGINT           NOT NULL,
    open     DOUBLE PRECISION NOT NULL,
    high     DOUBLE PRECISION NOT NULL,
    low      DOUBLE PRECISION NOT NULL,
    close    DOUBLE PRECISION NOT NULL,
    volume   DOUBLE PRECISION,
    PRIMARY KEY (symbol, bar_time)
);

-- Fitted models, immutable: model is a serialized quantmesh.regime.v1.Model
-- (FULL view, without active_symbols); mixture is the pkg/dpgmm model;
-- meta is JSON: the standardisation (mean and std per feature, or null) and
-- the mixture component of each regime.
CREATE TABLE regime_models (
    model_id    TEXT   PRIMARY KEY,
    create_time BIGINT NOT NULL,
    model       BYTEA  NOT NULL,
    mixture     BYTEA  NOT NULL,
    meta        TEXT   NOT NULL
);

-- Which model classifies which symbol ("*": the default model).
CREATE TABLE regime_activations (
    symbol        TEXT   PRIMARY KEY,
    model_id      TEXT   NOT NULL REFERENCES regime_models (model_id),
    activate_time BIGINT NOT NULL
);

-- Regime states, by service-wide sequence: the history WatchRegimes replays
-- to a client that resumes. state is a serialized
-- quantmesh.regime.v1.RegimeState. Kept until deleted: the service prunes
-- none itself (Store.PruneStates deletes old ones; regime_latest keeps each
-- symbol's latest).
CREATE TABLE regime_states (
    sequence BIGINT PRIMARY KEY,
    symbol   TEXT   NOT NULL,
    state    BYTEA  NOT NULL
);
CREATE INDEX regime_states_symbol ON regime_states (symbol, sequence);

-- The latest state of each symbol (GetRegime, snapshots, the smoothing
-- filter's restart point), kept with every write.
CREATE TABLE regime_latest (
    symbol   TEXT   PRIMARY KEY,
    sequence BIGINT NOT NULL,
    state    BYTEA  NOT NULL
);
