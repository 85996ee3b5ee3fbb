package store

// WithTimescaleExtension makes Open treat the extension ext as TimescaleDB.
func WithTimescaleExtension(cfg Config, ext string) Config {
	cfg.timescaleExtension = ext
	return cfg
}

// SetAfterNoTxSQL makes f run between a no-transaction migration's SQL and
// its record.
func SetAfterNoTxSQL(db *DB, f func()) { db.afterNoTxSQL = f }
