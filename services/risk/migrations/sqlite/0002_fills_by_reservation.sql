-- Fills are pruned with their reservation (Engine.pruneClosed), found by it.
CREATE INDEX risk_fills_reservation ON risk_fills (reservation_id);
