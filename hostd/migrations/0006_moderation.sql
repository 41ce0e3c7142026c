-- Bans: bytes that may never be stored again, by SHA-256. `hash` is the public hash the
-- blob had (or would have had), so that its URLs answer 451 rather than 404.
CREATE TABLE bans (
    sha256     TEXT PRIMARY KEY,
    hash       TEXT NOT NULL,
    reason     TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL
);

CREATE INDEX bans_by_hash ON bans (hash);

-- Banned bytes get no row, whichever process or code path tries: the check that an upload
-- makes before placing its bytes cannot see a ban committed a moment later; these can.
CREATE TRIGGER blobs_not_banned BEFORE INSERT ON blobs
WHEN EXISTS (SELECT 1 FROM bans WHERE bans.sha256 = NEW.sha256)
BEGIN
    SELECT RAISE(ABORT, 'hostd: these bytes are banned');
END;

CREATE TRIGGER uploads_not_banned BEFORE INSERT ON uploads
WHEN EXISTS (SELECT 1 FROM bans WHERE bans.sha256 = NEW.sha256)
BEGIN
    SELECT RAISE(ABORT, 'hostd: these bytes are banned');
END;

-- A disabled account cannot sign in, and its sessions and keys stop working; enabling it
-- gives them back.
ALTER TABLE users ADD COLUMN disabled_at INTEGER;
