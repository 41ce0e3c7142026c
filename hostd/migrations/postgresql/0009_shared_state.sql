-- State that every hostd process on this database must share (see ../0009_shared_state.sql).
-- Times that SQLite keeps as REAL are double precision here: sign-in counts work in
-- fractions of a second.
CREATE TABLE signin_counts (
    key             TEXT PRIMARY KEY,
    failures        INTEGER NOT NULL DEFAULT 0,
    last_failure_at DOUBLE PRECISION,
    in_flight       INTEGER NOT NULL DEFAULT 0,
    in_flight_at    DOUBLE PRECISION,
    touched_at      DOUBLE PRECISION NOT NULL
);

CREATE INDEX signin_counts_by_time ON signin_counts (touched_at);

CREATE TABLE signin_known (
    pair         TEXT PRIMARY KEY,
    signed_in_at DOUBLE PRECISION NOT NULL
);

CREATE INDEX signin_known_by_time ON signin_known (signed_in_at);

CREATE TABLE key_reveals (
    token_hash TEXT PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    sealed_key TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- The same counter as SQLite's, bumped by the same changes; here the triggers also notify
-- hostd_changes, which every process LISTENs on (hostd.db.postgres.ChangeListener), so a
-- process hears of a change as its commit lands instead of reading the counter. A
-- transaction's notices of one channel and payload arrive as one, after its commit.
CREATE TABLE changes (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);

INSERT INTO changes (id, version) VALUES (1, 0);

CREATE FUNCTION hostd_announce_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE changes SET version = version + 1 WHERE id = 1;
    PERFORM pg_notify('hostd_changes', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER changes_blob_deleted AFTER DELETE ON blobs
FOR EACH ROW EXECUTE FUNCTION hostd_announce_change();

-- Only when a blob may now expire sooner (see ../0009_shared_state.sql).
CREATE TRIGGER changes_blob_expires_sooner AFTER UPDATE OF expires_at ON blobs
FOR EACH ROW
WHEN (NEW.expires_at IS NOT NULL AND (OLD.expires_at IS NULL OR NEW.expires_at < OLD.expires_at))
EXECUTE FUNCTION hostd_announce_change();

CREATE TRIGGER changes_key_invalidated AFTER UPDATE OF invalidated_at ON api_keys
FOR EACH ROW WHEN (OLD.invalidated_at IS DISTINCT FROM NEW.invalidated_at)
EXECUTE FUNCTION hostd_announce_change();

CREATE TRIGGER changes_key_deleted AFTER DELETE ON api_keys
FOR EACH ROW EXECUTE FUNCTION hostd_announce_change();

CREATE TRIGGER changes_user_disabled AFTER UPDATE OF disabled_at ON users
FOR EACH ROW WHEN (OLD.disabled_at IS DISTINCT FROM NEW.disabled_at)
EXECUTE FUNCTION hostd_announce_change();

CREATE TRIGGER changes_user_deleted AFTER DELETE ON users
FOR EACH ROW EXECUTE FUNCTION hostd_announce_change();
