-- Resumable uploads (tus): one row per upload in progress, its bytes so far in
-- <data_dir>/partials/<id>. offset_bytes is what has been written and fsynced; the file may
-- hold more after a crash, and is cut back to it before the next write. Once the last byte
-- is in, the file goes through the normal upload path and upload_id names the upload it
-- became (NULL again if that upload is deleted); the row stays until expires_at, so that a
-- client that lost the last answer can still ask for it.
CREATE TABLE resumable_uploads (
    id           TEXT PRIMARY KEY,
    user_id      INTEGER REFERENCES users (id) ON DELETE CASCADE,
    api_key_id   INTEGER REFERENCES api_keys (id) ON DELETE SET NULL,
    address      TEXT NOT NULL,
    length_bytes INTEGER NOT NULL,
    offset_bytes INTEGER NOT NULL DEFAULT 0,
    metadata     TEXT NOT NULL DEFAULT '',
    filename     TEXT NOT NULL,
    expires      TEXT NOT NULL DEFAULT '',
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    completed_at INTEGER,
    upload_id    INTEGER REFERENCES uploads (id) ON DELETE SET NULL
);

CREATE INDEX resumable_uploads_by_expiry ON resumable_uploads (expires_at);
CREATE INDEX resumable_uploads_by_user ON resumable_uploads (user_id)
    WHERE completed_at IS NULL;
CREATE INDEX resumable_uploads_by_address ON resumable_uploads (address)
    WHERE completed_at IS NULL AND user_id IS NULL;
CREATE INDEX resumable_uploads_by_upload ON resumable_uploads (upload_id);
