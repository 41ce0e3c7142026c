-- Accounts, their browser sessions and API keys; uploads may now belong to an account.
CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT NOT NULL,
    created_at    INTEGER NOT NULL
);

-- A signed-in browser. The cookie holds a random token; only its SHA-256 is kept here,
-- so signing out (deleting the row) ends the session whatever the cookie still says.
CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL
);

CREATE INDEX sessions_by_user ON sessions (user_id);

-- A key is hk_<key_id>_<secret>: key_id finds the row, secret_hash is Argon2 of the secret.
CREATE TABLE api_keys (
    id             INTEGER PRIMARY KEY,
    key_id         TEXT NOT NULL UNIQUE,
    user_id        INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    secret_hash    TEXT NOT NULL,
    label          TEXT NOT NULL DEFAULT '',
    created_at     INTEGER NOT NULL,
    last_used_at   INTEGER,
    invalidated_at INTEGER
);

CREATE INDEX api_keys_by_user ON api_keys (user_id);

ALTER TABLE uploads ADD COLUMN user_id INTEGER REFERENCES users (id) ON DELETE SET NULL;
ALTER TABLE uploads ADD COLUMN api_key_id INTEGER REFERENCES api_keys (id) ON DELETE SET NULL;

CREATE INDEX uploads_by_user ON uploads (user_id, created_at);
