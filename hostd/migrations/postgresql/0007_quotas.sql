-- Storage quotas (see ../0007_quotas.sql): users.used_bytes is kept by a trigger, whatever
-- statement adds, moves or removes an upload.
ALTER TABLE users ADD COLUMN has_own_quota INTEGER NOT NULL DEFAULT 0
    CHECK (has_own_quota IN (0, 1));
ALTER TABLE users ADD COLUMN quota_bytes BIGINT CHECK (quota_bytes IS NULL OR quota_bytes >= 0);
ALTER TABLE users ADD COLUMN used_bytes BIGINT NOT NULL DEFAULT 0;

UPDATE users SET used_bytes = (
    SELECT coalesce(sum(blobs.size_bytes), 0)
    FROM uploads JOIN blobs ON blobs.sha256 = uploads.sha256
    WHERE uploads.user_id = users.id
);

CREATE FUNCTION hostd_uploads_use() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') AND OLD.user_id IS NOT NULL THEN
        UPDATE users
        SET used_bytes = used_bytes
            - coalesce((SELECT size_bytes FROM blobs WHERE sha256 = OLD.sha256), 0)
        WHERE id = OLD.user_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.user_id IS NOT NULL THEN
        UPDATE users
        SET used_bytes = used_bytes
            + coalesce((SELECT size_bytes FROM blobs WHERE sha256 = NEW.sha256), 0)
        WHERE id = NEW.user_id;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER uploads_use AFTER INSERT OR DELETE ON uploads
FOR EACH ROW EXECUTE FUNCTION hostd_uploads_use();

-- An upload given to another account (or to nobody) moves its size with it.
CREATE TRIGGER uploads_use_on_move AFTER UPDATE OF user_id, sha256 ON uploads
FOR EACH ROW
WHEN (OLD.user_id IS DISTINCT FROM NEW.user_id OR OLD.sha256 IS DISTINCT FROM NEW.sha256)
EXECUTE FUNCTION hostd_uploads_use();
