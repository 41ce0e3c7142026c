-- Bans (see ../0006_moderation.sql): banned bytes get no row, whichever process tries.
CREATE TABLE bans (
    sha256     TEXT PRIMARY KEY,
    hash       TEXT NOT NULL,
    reason     TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL
);

CREATE INDEX bans_by_hash ON bans (hash);

-- The message is the one SQLite's triggers raise (db.moderation.BANNED_MESSAGE).
CREATE FUNCTION hostd_not_banned() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM bans WHERE bans.sha256 = NEW.sha256) THEN
        RAISE EXCEPTION 'hostd: these bytes are banned'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER blobs_not_banned BEFORE INSERT ON blobs
FOR EACH ROW EXECUTE FUNCTION hostd_not_banned();

CREATE TRIGGER uploads_not_banned BEFORE INSERT ON uploads
FOR EACH ROW EXECUTE FUNCTION hostd_not_banned();

ALTER TABLE users ADD COLUMN disabled_at BIGINT;
