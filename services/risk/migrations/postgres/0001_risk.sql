-- Risk state. Times are Unix epoch microseconds; limits and kill switch
-- state are serialized protobuf messages (quantmesh.risk.v1.Limits and
-- KillSwitchState).
CREATE TABLE risk_accounts (
    account_id  TEXT    PRIMARY KEY,
    created     BIGINT  NOT NULL,
    limits      BYTEA   NOT NULL,
    kill        BYTEA   NOT NULL,
    cash        DOUBLE PRECISION NOT NULL,
    day_start   BIGINT  NOT NULL,
    day_equity  DOUBLE PRECISION NOT NULL,
    high_water  DOUBLE PRECISION NOT NULL
);

CREATE TABLE risk_positions (
    account_id TEXT    NOT NULL,
    symbol     TEXT    NOT NULL,
    qty        DOUBLE PRECISION NOT NULL,
    avg_price  DOUBLE PRECISION NOT NULL,
    realized   DOUBLE PRECISION NOT NULL,
    updated    BIGINT  NOT NULL,
    PRIMARY KEY (account_id, symbol)
);

-- A reservation stored open whose expires has passed is expired: expiry is
-- not written back (it is implied by the time).
CREATE TABLE risk_reservations (
    reservation_id  TEXT    PRIMARY KEY,
    account_id      TEXT    NOT NULL,
    client_order_id TEXT    NOT NULL,
    symbol          TEXT    NOT NULL,
    side            BIGINT  NOT NULL,
    order_type      BIGINT  NOT NULL,
    order_qty       DOUBLE PRECISION NOT NULL,
    filled_qty      DOUBLE PRECISION NOT NULL,
    price           DOUBLE PRECISION NOT NULL,
    state           BIGINT  NOT NULL,
    created         BIGINT  NOT NULL,
    expires         BIGINT  NOT NULL,
    closed          BIGINT,
    close_reason    TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX risk_reservations_open ON risk_reservations (account_id, state);
CREATE INDEX risk_reservations_recent ON risk_reservations (created);

CREATE TABLE risk_fills (
    account_id     TEXT    NOT NULL,
    fill_id        TEXT    NOT NULL,
    reservation_id TEXT    NOT NULL,
    quantity       DOUBLE PRECISION NOT NULL,
    price          DOUBLE PRECISION NOT NULL,
    fee            DOUBLE PRECISION NOT NULL,
    fill_time      BIGINT  NOT NULL,
    PRIMARY KEY (account_id, fill_id)
);
CREATE INDEX risk_fills_time ON risk_fills (fill_time);

CREATE TABLE risk_prices (
    symbol     TEXT    PRIMARY KEY,
    price      DOUBLE PRECISION NOT NULL,
    price_time BIGINT  NOT NULL
);

-- The event log behind WatchRiskEvents: payload is a serialized
-- quantmesh.risk.v1.RiskEvent.
CREATE TABLE risk_events (
    sequence   BIGINT PRIMARY KEY,
    account_id TEXT    NOT NULL,
    event_type BIGINT  NOT NULL,
    event_time BIGINT  NOT NULL,
    payload    BYTEA   NOT NULL
);
CREATE INDEX risk_events_time ON risk_events (event_time);
