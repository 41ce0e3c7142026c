-- Blobs are content: one row per distinct SHA-256, holding the public hash.
-- Uploads are registrations: every time someone uploads, one row points at a blob.
-- Times are integer seconds since the Unix epoch, UTC.
CREATE TABLE blobs (
    sha256       TEXT PRIMARY KEY,
    hash         TEXT NOT NULL UNIQUE,
    size_bytes   INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    created_at   INTEGER NOT NULL
);

CREATE TABLE uploads (
    id            INTEGER PRIMARY KEY,
    sha256        TEXT NOT NULL REFERENCES blobs (sha256),
    original_name TEXT NOT NULL,
    created_at    INTEGER NOT NULL
);

CREATE INDEX uploads_by_sha256 ON uploads (sha256);
