-- Deletion links (see ../0008_delete_tokens.sql): only the token's SHA-256 is kept; the
-- row outlives its upload (SET NULL), so the link answers "deleted", not "unknown".
CREATE TABLE delete_tokens (
    token_hash TEXT PRIMARY KEY,
    upload_id  BIGINT UNIQUE REFERENCES uploads (id) ON DELETE SET NULL
);
