-- The model registry. Times are Unix epoch milliseconds; tags and metrics
-- are JSON objects.
CREATE TABLE registered_models (
    name        TEXT   PRIMARY KEY,
    description TEXT   NOT NULL DEFAULT '',
    tags        JSONB  NOT NULL DEFAULT '{}',
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);

-- Versions are immutable apart from description and tags. The weights come
-- last: SQLite stores a row as one record, and reading a column that
-- follows a large BLOB walks the BLOB's overflow pages (listing versions
-- would read every version's weights).
CREATE TABLE model_versions (
    model_name      TEXT   NOT NULL REFERENCES registered_models (name) ON DELETE CASCADE,
    version         BIGINT NOT NULL,
    format          TEXT   NOT NULL,
    checksum_sha256 TEXT   NOT NULL,
    size_bytes      BIGINT NOT NULL,
    source_run_id   TEXT   NOT NULL DEFAULT '',
    metrics         JSONB  NOT NULL DEFAULT '{}',
    tags            JSONB  NOT NULL DEFAULT '{}',
    description     TEXT   NOT NULL DEFAULT '',
    create_time     BIGINT NOT NULL,
    weights         BYTEA  NOT NULL,
    PRIMARY KEY (model_name, version)
);

-- Aliases. A deleted alias (or an alias of a deleted model) keeps its row
-- with version NULL as a tombstone carrying the revision of the deletion, so
-- a watcher that resumes learns of it. No foreign key: tombstones outlive
-- their model.
CREATE TABLE model_aliases (
    model_name TEXT   NOT NULL,
    alias      TEXT   NOT NULL,
    version    BIGINT,
    revision   BIGINT NOT NULL,
    PRIMARY KEY (model_name, alias)
);
CREATE INDEX model_aliases_revision ON model_aliases (revision);

-- One counter for the whole registry: every alias move or deletion takes the
-- next revision, so revisions only grow.
CREATE TABLE registry_revision (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    revision BIGINT  NOT NULL
);
INSERT INTO registry_revision (id, revision) VALUES (1, 0);
