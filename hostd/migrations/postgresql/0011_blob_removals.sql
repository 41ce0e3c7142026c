-- See ../0011_blob_removals.sql.
CREATE TABLE blob_removals (
    sha256     TEXT PRIMARY KEY,
    started_at BIGINT NOT NULL,
    settled_at BIGINT
);

CREATE FUNCTION hostd_blob_removal_started() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO blob_removals (sha256, started_at)
    VALUES (OLD.sha256, CAST(extract(epoch FROM now()) AS BIGINT))
    ON CONFLICT (sha256) DO UPDATE SET started_at = excluded.started_at, settled_at = NULL;
    RETURN NULL;
END;
$$;

CREATE TRIGGER blob_removal_started AFTER DELETE ON blobs
FOR EACH ROW EXECUTE FUNCTION hostd_blob_removal_started();
