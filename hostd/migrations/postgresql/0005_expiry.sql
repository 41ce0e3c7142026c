-- An upload may expire (see ../0005_expiry.sql): the blob row carries the latest expiry of
-- its uploads (NULL while one never expires, 0 once none is left), kept by a trigger.
ALTER TABLE uploads ADD COLUMN expires_at BIGINT;
ALTER TABLE blobs ADD COLUMN expires_at BIGINT;

CREATE INDEX uploads_by_expiry ON uploads (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX uploads_by_sha256_expiry ON uploads (sha256, expires_at);
DROP INDEX uploads_by_sha256;

CREATE FUNCTION hostd_blob_expiry(blob_sha256 TEXT) RETURNS void LANGUAGE sql AS $$
    UPDATE blobs SET expires_at = CASE
        WHEN EXISTS (SELECT 1 FROM uploads WHERE sha256 = blob_sha256 AND expires_at IS NULL)
        THEN NULL
        ELSE coalesce((SELECT max(expires_at) FROM uploads WHERE sha256 = blob_sha256), 0)
    END
    WHERE sha256 = blob_sha256;
$$;

CREATE FUNCTION hostd_blob_expiry_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM hostd_blob_expiry(NEW.sha256);
    END IF;
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND OLD.sha256 IS DISTINCT FROM NEW.sha256) THEN
        PERFORM hostd_blob_expiry(OLD.sha256);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER blob_expiry AFTER INSERT OR DELETE OR UPDATE OF expires_at, sha256 ON uploads
FOR EACH ROW EXECUTE FUNCTION hostd_blob_expiry_trigger();
