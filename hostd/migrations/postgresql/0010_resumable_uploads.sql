-- Resumable uploads (tus) in progress (see ../0010_resumable_uploads.sql).
CREATE TABLE resumable_uploads (
    id           TEXT PRIMARY KEY,
    user_id      BIGINT REFERENCES users (id) ON DELETE CASCADE,
    api_key_id   BIGINT REFERENCES api_keys (id) ON DELETE SET NULL,
    address      TEXT NOT NULL,
    length_bytes BIGINT NOT NULL,
    offset_bytes BIGINT NOT NULL DEFAULT 0,
    metadata     TEXT NOT NULL DEFAULT '',
    filename     TEXT NOT NULL,
    expires      TEXT NOT NULL DEFAULT '',
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    completed_at BIGINT,
    upload_id    BIGINT REFERENCES uploads (id) ON DELETE SET NULL
);

CREATE INDEX resumable_uploads_by_expiry ON resumable_uploads (expires_at);
CREATE INDEX resumable_uploads_by_user ON resumable_uploads (user_id)
    WHERE completed_at IS NULL;
CREATE INDEX resumable_uploads_by_address ON resumable_uploads (address)
    WHERE completed_at IS NULL AND user_id IS NULL;
CREATE INDEX resumable_uploads_by_upload ON resumable_uploads (upload_id);
