-- State that every hostd process on this database must share, instead of each holding its own.

-- Failed sign-ins (hostd.throttle.SignInLimiter), counted for all processes at once. `key` is
-- "pair:<account> <address>", "addr:<address>" or "acct:<account>". Attempts in flight count
-- too; in_flight_at is when the latest began, so that the attempts of a process that died
-- stop counting a minute later. touched_at (the latest failure or start) finds what to forget.
CREATE TABLE signin_counts (
    key             TEXT PRIMARY KEY,
    failures        INTEGER NOT NULL DEFAULT 0,
    last_failure_at REAL,
    in_flight       INTEGER NOT NULL DEFAULT 0,
    in_flight_at    REAL,
    touched_at      REAL NOT NULL
);

CREATE INDEX signin_counts_by_time ON signin_counts (touched_at);

-- (account, address) pairs that have signed in: their account-wide count does not hold them.
CREATE TABLE signin_known (
    pair         TEXT PRIMARY KEY,
    signed_in_at REAL NOT NULL
);

CREATE INDEX signin_known_by_time ON signin_known (signed_in_at);

-- A new API key waiting to be shown once, on the page a plain form post redirects to (which
-- another process may serve). The browser holds a random one-time token in a cookie; this
-- row holds only the token's SHA-256 and the key encrypted with a pad derived from the token
-- (hostd.auth.seal_key), so the database alone never gives the key away. Taken (deleted) by
-- the first page that shows it; expired rows go with the next new key.
CREATE TABLE key_reveals (
    token_hash TEXT PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    sealed_key TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);

-- Settings every process must agree on: `cookie_secret` holds an Argon2 hash of the secret
-- that signs cookies (never the secret), recorded at the first start.
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- One counter, bumped in the same commit as every change that must reach the other
-- processes' caches (hostd.db.core.Changes): a blob row gone or expiring sooner, a key
-- invalidated or deleted, an account disabled, enabled or removed. A process checks it
-- before trusting what it remembers, and forgets everything when it moved. Triggers do the
-- bumping, so that every writer (a server, `hostd file rm`, a future one) announces alike.
CREATE TABLE changes (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);

INSERT INTO changes (id, version) VALUES (1, 0);

CREATE TRIGGER changes_blob_deleted AFTER DELETE ON blobs BEGIN
    UPDATE changes SET version = version + 1 WHERE id = 1;
END;

-- Only when a blob may now expire sooner: later (or never) is found by re-reading a cached
-- blob that looks expired, so new uploads, which only extend a blob's life, bump nothing.
CREATE TRIGGER changes_blob_expires_sooner AFTER UPDATE OF expires_at ON blobs
WHEN NEW.expires_at IS NOT NULL AND (OLD.expires_at IS NULL OR NEW.expires_at < OLD.expires_at)
BEGIN
    UPDATE changes SET version = version + 1 WHERE id = 1;
END;

CREATE TRIGGER changes_key_invalidated AFTER UPDATE OF invalidated_at ON api_keys
WHEN OLD.invalidated_at IS NOT NEW.invalidated_at
BEGIN
    UPDATE changes SET version = version + 1 WHERE id = 1;
END;

CREATE TRIGGER changes_key_deleted AFTER DELETE ON api_keys BEGIN
    UPDATE changes SET version = version + 1 WHERE id = 1;
END;

CREATE TRIGGER changes_user_disabled AFTER UPDATE OF disabled_at ON users
WHEN OLD.disabled_at IS NOT NEW.disabled_at
BEGIN
    UPDATE changes SET version = version + 1 WHERE id = 1;
END;

CREATE TRIGGER changes_user_deleted AFTER DELETE ON users BEGIN
    UPDATE changes SET version = version + 1 WHERE id = 1;
END;
