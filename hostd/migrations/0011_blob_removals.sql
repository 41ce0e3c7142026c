-- A blob row's deletion, from its commit until its bytes are dealt with
-- (hostd.uploads.remove_bytes sets settled_at). An upload that found its bytes in the store
-- already, placed by another process, may have raced such a removal: the store's bytes
-- were there when it looked, and another process (an instance on the same bucket, `hostd
-- file rm`) may delete them right after, having seen no row. Such an upload looks here
-- after its commit, waits for the removal to settle and checks the bytes again
-- (hostd.uploads.register). Rows are forgotten an hour after they settle.
CREATE TABLE blob_removals (
    sha256     TEXT PRIMARY KEY,
    started_at INTEGER NOT NULL,
    settled_at INTEGER
);

CREATE TRIGGER blob_removal_started AFTER DELETE ON blobs BEGIN
    INSERT INTO blob_removals (sha256, started_at)
    VALUES (OLD.sha256, CAST(strftime('%s', 'now') AS INTEGER))
    ON CONFLICT (sha256) DO UPDATE SET started_at = excluded.started_at, settled_at = NULL;
END;
