// Package filter is the SearchRuns filter language: it parses a filter and
// order_by clauses into a typed tree and compiles them, with keyset
// pagination, into one parameterised SELECT for SQLite or PostgreSQL.
//
// # Filters
//
//	metrics.sharpe > 1.5 AND (params.lr = '0.01' OR tags.team IN ('a', 'b'))
//
// A filter is comparisons joined by AND and OR; AND binds tighter than OR and
// parentheses group. Keywords (AND, OR, LIKE, ILIKE, IN, NOT, ASC, DESC),
// prefixes and attribute names are case-insensitive; keys and string values
// are not. An empty or blank filter matches every run.
//
// Operands:
//   - metrics.<key>: the run's latest value of the metric (latest_metrics).
//     Compared with numbers only.
//   - params.<key>, tags.<key>: compared with strings only.
//   - the attributes status, run_name, run_id, start_time and end_time, bare
//     or as attributes.<name>.
//
// The singular prefixes metric., param., tag. and attribute. are accepted
// too. A key is either bare, a run of letters, digits and _ - . / : (so
// metrics.train/loss and metrics.val-loss work), or quoted in backticks or
// double quotes, where a doubled quote stands for one:
//
//	metrics."loss (val)"   tags.`owner's team`   params."say ""hi"""
//
// Keys are 1 to 250 characters of valid UTF-8 without control characters
// (as the service stores them).
//
// A run that lacks the key (or whose end_time is unset) matches no
// comparison on it, != and NOT IN included.
//
// Operators and the values they take:
//   - metrics: = != < <= > >= IN NOT IN, with numbers (optional sign,
//     decimals, exponent: -1, 2.5, 1e-3). Values are float64; a literal out
//     of float64 range is an error.
//   - params, tags, run_name, run_id: = != < <= > >= LIKE ILIKE IN NOT IN,
//     with strings in single quotes, where a doubled single quote stands
//     for one (see the example under Trees).
//     Comparison is bytewise (code point order) on both backends.
//   - status: = != IN NOT IN, with a RunStatus name: 'RUNNING', 'SCHEDULED',
//     'FINISHED', 'FAILED' or 'KILLED' (case-insensitive).
//   - start_time, end_time: = != < <= > >= IN NOT IN, with Unix epoch
//     milliseconds (an integer) or an RFC 3339 string
//     ('2024-05-01T12:00:00Z'; finer than a millisecond is an error).
//
// LIKE patterns use % for any run of characters and _ for exactly one
// character (a code point); a backslash makes the next character literal
// (\%, \_, \\), and a pattern may not end with a lone backslash. LIKE is
// case-sensitive on both backends. ILIKE folds ASCII letters only (É and é
// differ), identically on both backends.
//
// IN lists hold 1 to 1000 values. A mismatched value (a string for a metric,
// a number for a param, LIKE on a metric, an unknown status) is an error at
// its position.
//
// Bounds: a filter is at most 10,000 bytes, with at most 100 comparisons
// and parentheses nested at most 50 deep. Beyond them Parse returns an
// error; it never recurses without bound.
//
// # Order
//
// An order_by clause is an operand followed by ASC (the default) or DESC:
// "metrics.sharpe DESC", "start_time", "params.lr asc". At most 10 clauses,
// each operand at most once. Runs that lack the value (a missing key, an
// unset end_time) sort last in both directions. The order is completed by
// run_id ascending, so it is total. Without clauses the order is
// start_time DESC.
//
// # Trees
//
// Parse returns *Comparison, *And or *Or nodes. Parsed trees are flat: an
// And never has an And term and an Or never has an Or term. Expr.String
// prints a canonical filter that parses back to an equal tree (numbers in
// shortest form, times as epoch milliseconds, keys quoted only when needed):
//
//	tags.owner = 'it''s mine' AND start_time >= 1714564800000
//
// # SQL
//
// Build compiles a Query into one SELECT with bind parameters for every key
// and value; the SQL text is assembled from fixed fragments only. On
// PostgreSQL strings are compared, ordered and matched with COLLATE "C"
// (bytewise, like SQLite's BINARY); on SQLite LIKE becomes GLOB
// (case-sensitive) and ILIKE becomes SQLite's LIKE (ASCII case folding).
//
// The query has two ways to find a page, and picks one as it runs:
//
//   - The walk reads the index of the first order key in order (a metric,
//     param or tag's (key, value) index, or runs by start time) and tests
//     each run against the filter with per-run index probes, stopping when
//     the page is full. Its cost grows with how far it must read, so it is
//     fast when matching runs are dense along the order, whatever the
//     planner believes. The query first tests the filter on a sample of
//     500 entries and walks only when, at that density, the page fills
//     within 100 entries per row asked for (2,000 to 20,000). The walk
//     stops before the last entry it may read, so a full page from it is
//     exactly the first of all matching runs. The sample tests metrics,
//     params and tags on the index entry and reads the run last. On
//     PostgreSQL a walk the sample expects to read more than 2,000
//     entries may test a param or tag compared with = or IN on a hash of
//     its runs, built once from its (key, value, run_key) index, instead
//     of a probe per entry; PostgreSQL chooses by its estimates.
//   - Otherwise (a sparse filter, a walk that did not fill the page, an
//     order by another attribute, a cursor past the runs that have the
//     first key) the plain query finds every matching run and sorts them,
//     order keys LEFT JOINed; the planner starts from the most selective
//     comparison. On PostgreSQL extended statistics on (key, value) of
//     params and tags give the planner how often a pair occurs: key and
//     value apart make params.optimizer = 'adam' look rarer by about the
//     number of keys.
//
// Both parts are in the one statement; the part not needed is cut off by a
// one-time condition (LIMIT 0) and never runs. On PostgreSQL Build makes
// pgx plan the statement for its values on every execution (see Build):
// the generic plan of a reused prepared statement cannot tell a sparse
// filter from a dense one. PostgreSQL's JIT compiler can add tens of
// milliseconds to these statements when its cost estimate for the part not
// run is high; the service is better off with jit = off.
//
// Pages continue after a Cursor, the sort key of the last run returned,
// with an exact keyset predicate: no run is skipped or repeated across
// pages, NULLs included, as long as the runs do not change in between.
package filter
