"""Blobs (content, one row per SHA-256) and uploads (registrations pointing at a blob)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from typing import TypeVar

from hostd.db.core import POSTGRESQL, Database, Row, Tx, now, violates_foreign_key
from hostd.db.quotas import ACCOUNT_REMOVED, OwnerGone, check_account
from hostd.hashes import public_hash_candidates

T = TypeVar("T")


class HashSpaceExhausted(Exception):
    """Every public-hash length up to the maximum is taken by other content."""


@dataclass(frozen=True)
class Blob:
    sha256: str
    hash: str
    size_bytes: int
    content_type: str
    created_at: int
    # The latest expiry of its uploads: None while one of them never expires.
    expires_at: int | None = None

    def alive_at(self, now: int) -> bool:
        """Whether the bytes are served at `now`: some upload of them has not expired."""
        return self.expires_at is None or now < self.expires_at


@dataclass(frozen=True)
class Upload:
    id: int
    sha256: str
    original_name: str
    created_at: int
    user_id: int | None
    api_key_id: int | None
    expires_at: int | None = None  # epoch seconds; None: never


def row_as(cls: type[T], row: Row) -> T:
    return cls(**dict(zip(row.keys(), row, strict=True)))


async def get_blob(db: Database, hash: str, *, now: int | None = None) -> Blob | None:
    """The blob with this public hash, or None; known blobs come from memory, unless any
    process has deleted a blob or shortened a blob's life since (db.changes). With `now`, a
    remembered blob that looks expired by then is read again: another process may have
    extended its life (which bumps no counter)."""
    db.changes.check()
    blob: Blob | None = db.blobs.get(hash)
    if blob is not None and (now is None or blob.alive_at(now)):
        return blob
    generation = db.blobs.generation
    row = await db.lookup(lambda tx: tx.fetchone("SELECT * FROM blobs WHERE hash = ?", (hash,)))
    if row is None:
        return None
    blob = row_as(Blob, row)
    db.blobs.put(hash, blob, generation)
    return blob


def forget_blob(db: Database, hash: str) -> None:
    """Drop a blob from memory: its bytes turned out to be gone (taken down elsewhere)."""
    db.blobs.drop(hash)


async def get_blob_by_sha256(db: Database, sha256: str) -> Blob | None:
    row = await db.lookup(lambda tx: tx.fetchone("SELECT * FROM blobs WHERE sha256 = ?", (sha256,)))
    return row_as(Blob, row) if row else None


async def register_upload(
    db: Database,
    *,
    sha256: str,
    size_bytes: int,
    content_type: str,
    original_name: str,
    user_id: int | None = None,
    api_key_id: int | None = None,
    default_quota_bytes: int | None = None,
    at: int | None = None,
    expires_at: int | None = None,
    delete_token_hash: str | None = None,
) -> tuple[Blob, Upload]:
    """Record an upload of bytes that are in the store already, creating the blob row on
    first sight. Same bytes, same public hash: an existing blob keeps its hash; a new one
    takes the shortest candidate that the unique index lets it have. An account's upload
    is recorded only if it fits in the account's quota (else OverQuota), and only while the
    account and the key may upload (else OwnerGone). With
    `delete_token_hash`, the upload's deletion link is recorded in the same unit.

    `at` is the upload's time (default: now), `expires_at` when it expires (None: never);
    the blob's own expiry then moves to the latest of its uploads' (a trigger does it)."""

    async def work(tx: Tx) -> tuple[Blob, Upload, bool]:
        created_at = now() if at is None else at
        if user_id is not None:
            await check_account(
                tx,
                user_id=user_id,
                api_key_id=api_key_id,
                size_bytes=size_bytes,
                default_quota_bytes=default_quota_bytes,
            )
        if tx.dialect == POSTGRESQL:
            done = await _new_blob_in_one_statement(
                tx,
                Blob(
                    sha256,
                    public_hash_candidates(sha256)[0],
                    size_bytes,
                    content_type,
                    created_at,
                    expires_at,
                ),
                Upload(0, sha256, original_name, created_at, user_id, api_key_id, expires_at),
                delete_token_hash,
            )
            if done is not None:
                return done
        row, before = await _insert_blob(tx, sha256, size_bytes, content_type, created_at)
        upload = await tx.fetchone(
            """
            INSERT INTO uploads (sha256, original_name, created_at, user_id, api_key_id,
                                 expires_at)
            VALUES (?, ?, ?, ?, ?, ?)
            RETURNING *
            """,
            (sha256, original_name, created_at, user_id, api_key_id, expires_at),
        )
        assert upload is not None
        if delete_token_hash is not None:
            await tx.execute(
                "INSERT INTO delete_tokens (token_hash, upload_id) VALUES (?, ?)",
                (delete_token_hash, upload["id"]),
            )
        if before is None:
            # A new blob's only upload: the trigger has given it this upload's expiry.
            return replace(row_as(Blob, row), expires_at=expires_at), row_as(Upload, upload), False
        after = await tx.fetchone("SELECT * FROM blobs WHERE sha256 = ?", (sha256,))
        assert after is not None
        changed = before["expires_at"] != after["expires_at"]
        return row_as(Blob, after), row_as(Upload, upload), changed

    try:
        blob, upload, changed = await db.write(work)
    except Exception as exc:
        # The blob's row is the unit's own and the deletion link's upload too: a missing
        # row can only be the owner's.
        if violates_foreign_key(exc) and (user_id is not None or api_key_id is not None):
            raise OwnerGone(ACCOUNT_REMOVED) from exc
        raise
    cached = db.blobs.get(blob.hash)
    if changed or (cached is not None and cached != blob):
        # Memory may hold the old expiry, or a row that another process (`hostd prune`)
        # removed before these bytes came back; dropping also stops a reader that fetched
        # the old row before this commit from putting it back.
        db.blobs.drop(blob.hash)
    return blob, upload


async def _new_blob_in_one_statement(
    tx: Tx, blob: Blob, upload: Upload, delete_token_hash: str | None
) -> tuple[Blob, Upload, bool] | None:
    """PostgreSQL only: new bytes under their first-choice hash, their upload and its
    deletion link in one statement (data-modifying CTEs, which SQLite lacks); None, having
    changed nothing, when the bytes are known or the hash is taken. On PostgreSQL each
    statement is a round trip to another process, and the writer's batch runs its units one
    after the other: this is most uploads' whole unit in one."""
    upload_id = await tx.fetchval(
        """
        WITH new_blob AS (
            INSERT INTO blobs (sha256, hash, size_bytes, content_type, created_at, expires_at)
            VALUES (?, ?, ?, ?, ?, 0)
            ON CONFLICT DO NOTHING
            RETURNING sha256
        ), new_upload AS (
            INSERT INTO uploads (sha256, original_name, created_at, user_id, api_key_id,
                                 expires_at)
            SELECT sha256, ?, ?, ?, ?, ? FROM new_blob
            RETURNING id
        ), link AS (
            INSERT INTO delete_tokens (token_hash, upload_id)
            SELECT CAST(? AS TEXT), id FROM new_upload WHERE CAST(? AS TEXT) IS NOT NULL
        )
        SELECT id FROM new_upload
        """,
        (
            blob.sha256,
            blob.hash,
            blob.size_bytes,
            blob.content_type,
            blob.created_at,
            upload.original_name,
            upload.created_at,
            upload.user_id,
            upload.api_key_id,
            upload.expires_at,
            delete_token_hash,
            delete_token_hash,
        ),
    )
    if upload_id is None:
        return None
    # A new blob's only upload: the trigger has given it this upload's expiry.
    return blob, replace(upload, id=upload_id), False


async def _insert_blob(
    tx: Tx, sha256: str, size_bytes: int, content_type: str, created_at: int
) -> tuple[Row, Row | None]:
    """(the blob's row, the row as it was before: None when this inserted it). A new blob
    takes the shortest free public hash: the unique indexes say which are taken. ON
    CONFLICT DO NOTHING rather than catching the violation, because PostgreSQL aborts a
    transaction on any error; and the INSERT comes first, so that new bytes (the common
    case) cost one statement. The row starts expired (0: no upload yet), so that its first
    upload's trigger only ever extends its life, which tells no other process anything (see
    0009_shared_state.sql)."""
    for candidate in public_hash_candidates(sha256):
        row = await tx.fetchone(
            """
            INSERT INTO blobs (sha256, hash, size_bytes, content_type, created_at, expires_at)
            VALUES (?, ?, ?, ?, ?, 0)
            ON CONFLICT DO NOTHING
            RETURNING *
            """,
            (sha256, candidate, size_bytes, content_type, created_at),
        )
        if row is not None:
            return row, None
        before = await tx.fetchone("SELECT * FROM blobs WHERE sha256 = ?", (sha256,))
        if before is not None:
            return before, before  # known bytes
        # another blob holds this prefix: try the next length
    raise HashSpaceExhausted(sha256)


async def count_uploads(db: Database, *, sha256: str) -> int:
    count = await db.read(
        lambda tx: tx.fetchval("SELECT count(*) FROM uploads WHERE sha256 = ?", (sha256,))
    )
    return int(count or 0)


async def all_uploads(db: Database) -> list[Upload]:
    """Every upload, oldest first (for tests and small admin views)."""
    rows = await db.read(lambda tx: tx.fetchall("SELECT * FROM uploads ORDER BY id"))
    return [row_as(Upload, row) for row in rows]


@dataclass(frozen=True)
class UserFile:
    """One of a user's uploads, with the blob it points at."""

    upload: Upload
    blob: Blob


UPLOAD_FIELDS = tuple(field.name for field in fields(Upload))


def upload_of(row: Row) -> Upload:
    """The Upload in a row that selected `uploads.*` (and perhaps more columns)."""
    return Upload(**{name: row[name] for name in UPLOAD_FIELDS})


async def list_user_files(
    db: Database, *, user_id: int, limit: int, offset: int = 0, now: int | None = None
) -> tuple[list[UserFile], int]:
    """A page of the user's uploads, newest first, and how many there are in all; with
    `now`, only those that have not expired by then."""
    unexpired = "" if now is None else "AND (uploads.expires_at IS NULL OR uploads.expires_at > ?)"
    since = () if now is None else (now,)

    async def work(tx: Tx) -> tuple[list[Row], int]:
        rows = await tx.fetchall(
            f"""
            SELECT uploads.*, blobs.hash, blobs.size_bytes, blobs.content_type,
                   blobs.created_at AS blob_created_at, blobs.expires_at AS blob_expires_at
            FROM uploads JOIN blobs ON blobs.sha256 = uploads.sha256
            WHERE uploads.user_id = ? {unexpired}
            ORDER BY uploads.created_at DESC, uploads.id DESC
            LIMIT ? OFFSET ?
            """,
            (user_id, *since, limit, offset),
        )
        total = await tx.fetchval(
            f"SELECT count(*) FROM uploads WHERE user_id = ? {unexpired}", (user_id, *since)
        )
        return rows, int(total or 0)

    rows, total = await db.read(work)
    files = [
        UserFile(
            upload_of(row),
            Blob(
                row["sha256"],
                row["hash"],
                row["size_bytes"],
                row["content_type"],
                row["blob_created_at"],
                row["blob_expires_at"],
            ),
        )
        for row in rows
    ]
    return files, total


async def _drop_unreferenced_blob(tx: Tx, sha256: str) -> str | None:
    """Delete the blob row when no upload points at it; its public hash, or None."""
    gone: str | None = await tx.fetchval(
        """
        DELETE FROM blobs WHERE sha256 = ?
        AND NOT EXISTS (SELECT 1 FROM uploads WHERE uploads.sha256 = blobs.sha256)
        RETURNING hash
        """,
        (sha256,),
    )
    return gone


@dataclass(frozen=True)
class Removal:
    """What a deletion did: how many uploads went, and the blob when it went too (its
    bytes are then the caller's to remove, after the commit)."""

    uploads: int
    sha256: str | None
    blob_gone: bool


async def delete_upload(db: Database, *, upload_id: int, user_id: int) -> Removal:
    """Remove one of a user's uploads (none: Removal(0, None, False)); the blob row goes
    too when no upload, anyone's, still points at it."""

    async def work(tx: Tx) -> tuple[Removal, str | None]:
        sha256 = await tx.fetchval(
            "DELETE FROM uploads WHERE id = ? AND user_id = ? RETURNING sha256",
            (upload_id, user_id),
        )
        if sha256 is None:
            return Removal(0, None, False), None
        hash = await _drop_unreferenced_blob(tx, sha256)
        removal = Removal(1, sha256, hash is not None)
        if hash is None:  # the blob stays, but it may now expire sooner
            hash = await tx.fetchval("SELECT hash FROM blobs WHERE sha256 = ?", (sha256,))
        return removal, hash

    removal, hash = await db.write(work)
    if hash is not None:
        db.blobs.drop(hash)
    return removal


async def take_down(db: Database, *, sha256: str) -> Removal:
    """Remove every upload of a blob (anyone's) and its row."""

    removal, hash = await db.write(lambda tx: take_down_rows(tx, sha256))
    if hash is not None:
        db.blobs.drop(hash)
    return removal


async def take_down_rows(tx: Tx, sha256: str) -> tuple[Removal, str | None]:
    """In a unit of work: delete every upload of a blob and its row; (the removal, the
    public hash the blob had, or None when there was no blob row)."""
    gone = await tx.fetchall("DELETE FROM uploads WHERE sha256 = ? RETURNING id", (sha256,))
    count = len(gone)
    hash = await _drop_unreferenced_blob(tx, sha256)
    return Removal(count, sha256, hash is not None), hash


async def delete_upload_row(tx: Tx, upload_id: int) -> tuple[Removal, str | None]:
    """In a unit of work: delete an upload, whoever's, and its blob row when no upload is
    left for it; (the removal, the public hash of the blob row that went, if one did)."""
    sha256 = await tx.fetchval("DELETE FROM uploads WHERE id = ? RETURNING sha256", (upload_id,))
    if sha256 is None:
        return Removal(0, None, False), None
    hash = await _drop_unreferenced_blob(tx, sha256)
    return Removal(1, sha256, hash is not None), hash


async def withdraw_upload(db: Database, *, upload_id: int) -> Removal:
    """Remove an upload whoever's it is, and its blob row when no other upload points at
    it: an upload recorded while another process deleted its bytes (uploads.register)."""
    removal, hash = await db.write(lambda tx: delete_upload_row(tx, upload_id))
    if hash is not None:
        db.blobs.drop(hash)
    return removal


@dataclass(frozen=True)
class BlobRemoval:
    """A blob row's deletion (0011_blob_removals.sql): settled once its bytes are dealt
    with, by the process that deleted the row."""

    sha256: str
    started_at: int
    settled_at: int | None


async def get_blob_removal(db: Database, sha256: str) -> BlobRemoval | None:
    row = await db.read(
        lambda tx: tx.fetchone("SELECT * FROM blob_removals WHERE sha256 = ?", (sha256,))
    )
    return None if row is None else row_as(BlobRemoval, row)


async def settle_blob_removal(db: Database, sha256: str, *, at: int | None = None) -> None:
    """The bytes of a deleted blob row are dealt with (removed, or kept for a new upload)."""
    settled_at = now() if at is None else at
    await db.write(
        lambda tx: tx.execute(
            "UPDATE blob_removals SET settled_at = ? WHERE sha256 = ? AND settled_at IS NULL",
            (settled_at, sha256),
        )
    )


async def forget_blob_removals(db: Database, *, before: int) -> int:
    """Forget removals started before `before` (settled or not: a process that died in
    one): no upload still being recorded can have raced them. How many went."""

    async def work(tx: Tx) -> int:
        gone = await tx.fetchall(
            "DELETE FROM blob_removals WHERE started_at < ? RETURNING sha256", (before,)
        )
        return len(gone)

    return await db.write(work)


async def is_referenced(db: Database, sha256: str) -> bool:
    """Whether a blob row exists for these bytes (a row exists while an upload does)."""
    row = await db.read(lambda tx: tx.fetchone("SELECT 1 FROM blobs WHERE sha256 = ?", (sha256,)))
    return row is not None


async def referenced_among(db: Database, sha256s: Iterable[str]) -> set[str]:
    """Which of these SHA-256s have a blob row."""
    wanted = list(sha256s)

    async def work(tx: Tx) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(wanted), 500):
            part = wanted[start : start + 500]
            marks = ",".join("?" * len(part))
            rows = await tx.fetchall(f"SELECT sha256 FROM blobs WHERE sha256 IN ({marks})", part)
            found.update(row[0] for row in rows)
        return found

    return await db.read(work)


async def blob_sizes(db: Database, *, prefix: str = "") -> dict[str, int]:
    """The size recorded for each blob whose SHA-256 starts with `prefix` (hex digits), by
    SHA-256: for `hostd gc` to check the store's, and for backups."""
    where, params = _sha256_range(prefix)
    rows = await db.read(
        lambda tx: tx.fetchall(f"SELECT sha256, size_bytes FROM blobs{where}", params)
    )
    return {row[0]: row[1] for row in rows}


async def blob_times(db: Database, *, prefix: str = "", since: int | None = None) -> dict[str, int]:
    """When each blob was recorded (its created_at), by SHA-256: those whose SHA-256 starts
    with `prefix`, or with `since`, those recorded at or after it (a scan: there is no index
    on the time, which every upload would pay for). For `hostd storage migrate`, which walks
    the blobs a group at a time, then takes those recorded meanwhile."""
    where, params = _sha256_range(prefix)
    if since is not None:
        where += " AND created_at >= ?" if where else " WHERE created_at >= ?"
        params.append(since)
    rows = await db.read(
        lambda tx: tx.fetchall(f"SELECT sha256, created_at FROM blobs{where}", params)
    )
    return {row[0]: row[1] for row in rows}


def _sha256_range(prefix: str) -> tuple[str, list[object]]:
    """The WHERE clause of the SHA-256s that start with `prefix`: a range, which the primary
    key's index answers, where LIKE may scan."""
    if not prefix:
        return "", []
    params: list[object] = [prefix]
    where = " WHERE sha256 >= ?"
    after = int(prefix, 16) + 1
    if after < 16 ** len(prefix):
        where += " AND sha256 < ?"
        params.append(f"{after:0{len(prefix)}x}")
    return where, params


@dataclass(frozen=True)
class Registration:
    """One upload of a blob, with the name of the account it belongs to (None: anonymous)."""

    upload: Upload
    user_name: str | None


async def list_registrations(db: Database, *, sha256: str) -> list[Registration]:
    """Every upload of these bytes, oldest first."""
    rows = await db.read(
        lambda tx: tx.fetchall(
            """
            SELECT uploads.*, users.name AS user_name
            FROM uploads LEFT JOIN users ON users.id = uploads.user_id
            WHERE uploads.sha256 = ?
            ORDER BY uploads.created_at, uploads.id
            """,
            (sha256,),
        )
    )
    return [Registration(upload_of(row), row["user_name"]) for row in rows]
