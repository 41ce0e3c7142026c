-- Deletion links. Each upload gets a random token, shown once in the upload's answer; only
-- the token's SHA-256 is kept. When the upload goes (by its link, by its owner, by a
-- takedown), upload_id becomes NULL and the row stays: the link then answers "deleted"
-- (410), not "unknown" (404). The unique index on upload_id also serves that SET NULL.
CREATE TABLE delete_tokens (
    token_hash TEXT PRIMARY KEY,
    upload_id  INTEGER UNIQUE REFERENCES uploads (id) ON DELETE SET NULL
);
