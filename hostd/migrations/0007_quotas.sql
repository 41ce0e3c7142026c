-- Storage quotas. An account's use is the sum of the sizes of its uploads (as /files lists
-- them): the same bytes uploaded twice count twice, though stored once, and deleting an
-- upload always gives its size back. users.used_bytes is kept by the triggers below,
-- whatever statement adds, moves or removes an upload, so the unit of work that records an
-- upload reads it in O(1).
--
-- has_own_quota = 0: accounts.quota_bytes (the config) applies; 1: quota_bytes applies,
-- NULL meaning no quota for this account (`hostd user quota NAME BYTES|none|default`).
ALTER TABLE users ADD COLUMN has_own_quota INTEGER NOT NULL DEFAULT 0
    CHECK (has_own_quota IN (0, 1));
ALTER TABLE users ADD COLUMN quota_bytes INTEGER CHECK (quota_bytes IS NULL OR quota_bytes >= 0);
ALTER TABLE users ADD COLUMN used_bytes INTEGER NOT NULL DEFAULT 0;

UPDATE users SET used_bytes = (
    SELECT coalesce(sum(blobs.size_bytes), 0)
    FROM uploads JOIN blobs ON blobs.sha256 = uploads.sha256
    WHERE uploads.user_id = users.id
);

CREATE TRIGGER uploads_use_on_insert AFTER INSERT ON uploads
WHEN NEW.user_id IS NOT NULL
BEGIN
    UPDATE users
    SET used_bytes = used_bytes
        + coalesce((SELECT size_bytes FROM blobs WHERE sha256 = NEW.sha256), 0)
    WHERE id = NEW.user_id;
END;

CREATE TRIGGER uploads_use_on_delete AFTER DELETE ON uploads
WHEN OLD.user_id IS NOT NULL
BEGIN
    UPDATE users
    SET used_bytes = used_bytes
        - coalesce((SELECT size_bytes FROM blobs WHERE sha256 = OLD.sha256), 0)
    WHERE id = OLD.user_id;
END;

-- An upload given to another account (or to nobody) moves its size with it.
CREATE TRIGGER uploads_use_on_move AFTER UPDATE OF user_id, sha256 ON uploads
WHEN OLD.user_id IS NOT NEW.user_id OR OLD.sha256 IS NOT NEW.sha256
BEGIN
    UPDATE users
    SET used_bytes = used_bytes
        - coalesce((SELECT size_bytes FROM blobs WHERE sha256 = OLD.sha256), 0)
    WHERE id = OLD.user_id;
    UPDATE users
    SET used_bytes = used_bytes
        + coalesce((SELECT size_bytes FROM blobs WHERE sha256 = NEW.sha256), 0)
    WHERE id = NEW.user_id;
END;
