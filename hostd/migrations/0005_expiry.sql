-- An upload may expire: uploads.expires_at, in epoch seconds, NULL for never.
-- Several uploads may share a blob, and the blob lives while any of them does, so the blob
-- row carries the latest expiry of its uploads (NULL while one of them never expires, 0 once
-- none is left): serving a known blob then compares one number with the clock. The triggers
-- keep it so whatever adds, removes or changes uploads, from three index seeks each.
ALTER TABLE uploads ADD COLUMN expires_at INTEGER;
ALTER TABLE blobs ADD COLUMN expires_at INTEGER;

-- `hostd prune` and the server's sweep find expired uploads by time.
CREATE INDEX uploads_by_expiry ON uploads (expires_at) WHERE expires_at IS NOT NULL;
-- Serves every lookup by sha256 as the old index did, and the triggers' max() and IS NULL.
CREATE INDEX uploads_by_sha256_expiry ON uploads (sha256, expires_at);
DROP INDEX uploads_by_sha256;

CREATE TRIGGER blob_expiry_after_insert AFTER INSERT ON uploads BEGIN
    UPDATE blobs SET expires_at = CASE
        WHEN EXISTS (SELECT 1 FROM uploads WHERE sha256 = NEW.sha256 AND expires_at IS NULL)
        THEN NULL
        ELSE coalesce((SELECT max(expires_at) FROM uploads WHERE sha256 = NEW.sha256), 0)
    END
    WHERE sha256 = NEW.sha256;
END;

CREATE TRIGGER blob_expiry_after_delete AFTER DELETE ON uploads BEGIN
    UPDATE blobs SET expires_at = CASE
        WHEN EXISTS (SELECT 1 FROM uploads WHERE sha256 = OLD.sha256 AND expires_at IS NULL)
        THEN NULL
        ELSE coalesce((SELECT max(expires_at) FROM uploads WHERE sha256 = OLD.sha256), 0)
    END
    WHERE sha256 = OLD.sha256;
END;

CREATE TRIGGER blob_expiry_after_update AFTER UPDATE OF expires_at, sha256 ON uploads BEGIN
    UPDATE blobs SET expires_at = CASE
        WHEN EXISTS (SELECT 1 FROM uploads WHERE sha256 = blobs.sha256 AND expires_at IS NULL)
        THEN NULL
        ELSE coalesce((SELECT max(expires_at) FROM uploads WHERE sha256 = blobs.sha256), 0)
    END
    WHERE sha256 IN (OLD.sha256, NEW.sha256);
END;
