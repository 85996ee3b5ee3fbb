-- Risk state. Times are Unix epoch microseconds; limits and kill switch
-- state are serialized protobuf messages (quantmesh.risk.v1.Limits and
-- KillSwitchState).
CREATE TABLE risk_accounts (
    account_id  TEXT    PRIMARY KEY,
    created     INTEGER NOT NULL,
    limits      BLOB    NOT NULL,
    kill        BLOB    NOT NULL,
    cash        REAL    NOT NULL,
    day_start   INTEGER NOT NULL,
    day_equity  REAL    NOT NULL,
    high_water  REAL    NOT NULL
);

CREATE TABLE risk_positions (
    account_id TEXT    NOT NULL,
    symbol     TEXT    NOT NULL,
    qty        REAL    NOT NULL,
    avg_price  REAL    NOT NULL,
    realized   REAL    NOT NULL,
    updated    INTEGER NOT NULL,
    PRIMARY KEY (account_id, symbol)
);

-- A reservation stored open whose expires has passed is expired: expiry is
-- not written back (it is implied by the time).
CREATE TABLE risk_reservations (
    reservation_id  TEXT    PRIMARY KEY,
    account_id      TEXT    NOT NULL,
    client_order_id TEXT    NOT NULL,
    symbol          TEXT    NOT NULL,
    side            INTEGER NOT NULL,
    order_type      INTEGER NOT NULL,
    order_qty       REAL    NOT NULL,
    filled_qty      REAL    NOT NULL,
    price           REAL    NOT NULL,
    state           INTEGER NOT NULL,
    created         INTEGER NOT NULL,
    expires         INTEGER NOT NULL,
    closed          INTEGER,
    close_reason    TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX risk_reservations_open ON risk_reservations (account_id, state);
CREATE INDEX risk_reservations_recent ON risk_reservations (created);

CREATE TABLE risk_fills (
    account_id     TEXT    NOT NULL,
    fill_id        TEXT    NOT NULL,
    reservation_id TEXT    NOT NULL,
    quantity       REAL    NOT NULL,
    price          REAL    NOT NULL,
    fee            REAL    NOT NULL,
    fill_time      INTEGER NOT NULL,
    PRIMARY KEY (account_id, fill_id)
);
CREATE INDEX risk_fills_time ON risk_fills (fill_time);

CREATE TABLE risk_prices (
    symbol     TEXT    PRIMARY KEY,
    price      REAL    NOT NULL,
    price_time INTEGER NOT NULL
);

-- The event log behind WatchRiskEvents: payload is a serialized
-- quantmesh.risk.v1.RiskEvent.
CREATE TABLE risk_events (
    sequence   INTEGER PRIMARY KEY,
    account_id TEXT    NOT NULL,
    event_type INTEGER NOT NULL,
    event_time INTEGER NOT NULL,
    payload    BLOB    NOT NULL
);
CREATE INDEX risk_events_time ON risk_events (event_time);
