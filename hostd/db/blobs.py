"""Blobs (content, one row per SHA-256) and uploads (registrations pointing at a blob)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from hostd.db.core import Database, now
from hostd.db.quotas import check_quota
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


def row_as(cls: type[T], row: sqlite3.Row) -> T:
    return cls(**dict(zip(row.keys(), row, strict=True)))


def _one(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(sql, params).fetchone()
    return row


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
    row = await db.read(lambda conn: _one(conn, "SELECT * FROM blobs WHERE hash = ?", (hash,)))
    if row is None:
        return None
    blob = row_as(Blob, row)
    db.blobs.put(hash, blob, generation)
    return blob


def forget_blob(db: Database, hash: str) -> None:
    """Drop a blob from memory: its bytes turned out to be gone (taken down elsewhere)."""
    db.blobs.drop(hash)


async def get_blob_by_sha256(db: Database, sha256: str) -> Blob | None:
    row = await db.read(lambda conn: _one(conn, "SELECT * FROM blobs WHERE sha256 = ?", (sha256,)))
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
    is recorded only if it fits in the account's quota (else OverQuota). With
    `delete_token_hash`, the upload's deletion link is recorded in the same unit.

    `at` is the upload's time (default: now), `expires_at` when it expires (None: never);
    the blob's own expiry then moves to the latest of its uploads' (a trigger does it)."""

    def work(conn: sqlite3.Connection) -> tuple[Blob, Upload, bool]:
        created_at = now() if at is None else at
        if user_id is not None:
            check_quota(
                conn,
                user_id=user_id,
                size_bytes=size_bytes,
                default_quota_bytes=default_quota_bytes,
            )
        before = _one(conn, "SELECT * FROM blobs WHERE sha256 = ?", (sha256,))
        if before is None:
            _insert_blob(conn, sha256, size_bytes, content_type, created_at)
        upload = _one(
            conn,
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
            conn.execute(
                "INSERT INTO delete_tokens (token_hash, upload_id) VALUES (?, ?)",
                (delete_token_hash, upload["id"]),
            )
        row = _one(conn, "SELECT * FROM blobs WHERE sha256 = ?", (sha256,))
        assert row is not None
        changed = before is not None and before["expires_at"] != row["expires_at"]
        return row_as(Blob, row), row_as(Upload, upload), changed

    blob, upload, changed = await db.write(work)
    cached = db.blobs.get(blob.hash)
    if changed or (cached is not None and cached != blob):
        # Memory may hold the old expiry, or a row that another process (`hostd prune`)
        # removed before these bytes came back; dropping also stops a reader that fetched
        # the old row before this commit from putting it back.
        db.blobs.drop(blob.hash)
    return blob, upload


def _insert_blob(
    conn: sqlite3.Connection, sha256: str, size_bytes: int, content_type: str, created_at: int
) -> sqlite3.Row:
    """Insert with the shortest free public hash: the unique index says which are taken.
    The row starts expired (0: no upload yet), so that its first upload's trigger only ever
    extends its life, which tells no other process anything (see 0009_shared_state.sql)."""
    for candidate in public_hash_candidates(sha256):
        try:
            row = _one(
                conn,
                """
                INSERT INTO blobs (sha256, hash, size_bytes, content_type, created_at,
                                   expires_at)
                VALUES (?, ?, ?, ?, ?, 0)
                RETURNING *
                """,
                (sha256, candidate, size_bytes, content_type, created_at),
            )
        except sqlite3.IntegrityError as exc:
            if "blobs.hash" in str(exc):
                continue  # another blob holds this prefix: try the next length
            raise
        assert row is not None
        return row
    raise HashSpaceExhausted(sha256)


async def count_uploads(db: Database, *, sha256: str) -> int:
    row = await db.read(
        lambda conn: _one(conn, "SELECT count(*) FROM uploads WHERE sha256 = ?", (sha256,))
    )
    return int(row[0]) if row else 0


async def all_uploads(db: Database) -> list[Upload]:
    """Every upload, oldest first (for tests and small admin views)."""
    rows = await db.read(lambda conn: conn.execute("SELECT * FROM uploads ORDER BY id").fetchall())
    return [row_as(Upload, row) for row in rows]


@dataclass(frozen=True)
class UserFile:
    """One of a user's uploads, with the blob it points at."""

    upload: Upload
    blob: Blob


UPLOAD_FIELDS = tuple(field.name for field in fields(Upload))


def upload_of(row: sqlite3.Row) -> Upload:
    """The Upload in a row that selected `uploads.*` (and perhaps more columns)."""
    return Upload(**{name: row[name] for name in UPLOAD_FIELDS})


async def list_user_files(
    db: Database, *, user_id: int, limit: int, offset: int = 0, now: int | None = None
) -> tuple[list[UserFile], int]:
    """A page of the user's uploads, newest first, and how many there are in all; with
    `now`, only those that have not expired by then."""
    unexpired = "" if now is None else "AND (uploads.expires_at IS NULL OR uploads.expires_at > ?)"
    since = () if now is None else (now,)

    def work(conn: sqlite3.Connection) -> tuple[list[sqlite3.Row], int]:
        rows = conn.execute(
            f"""
            SELECT uploads.*, blobs.hash, blobs.size_bytes, blobs.content_type,
                   blobs.created_at AS blob_created_at, blobs.expires_at AS blob_expires_at
            FROM uploads JOIN blobs ON blobs.sha256 = uploads.sha256
            WHERE uploads.user_id = ? {unexpired}
            ORDER BY uploads.created_at DESC, uploads.id DESC
            LIMIT ? OFFSET ?
            """,
            (user_id, *since, limit, offset),
        ).fetchall()
        total = _one(
            conn, f"SELECT count(*) FROM uploads WHERE user_id = ? {unexpired}", (user_id, *since)
        )
        return rows, int(total[0]) if total else 0

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


def _drop_unreferenced_blob(conn: sqlite3.Connection, sha256: str) -> str | None:
    """Delete the blob row when no upload points at it; its public hash, or None."""
    gone = _one(
        conn,
        """
        DELETE FROM blobs WHERE sha256 = ?
        AND NOT EXISTS (SELECT 1 FROM uploads WHERE uploads.sha256 = blobs.sha256)
        RETURNING hash
        """,
        (sha256,),
    )
    return gone[0] if gone else None


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

    def work(conn: sqlite3.Connection) -> tuple[Removal, str | None]:
        row = _one(
            conn,
            "DELETE FROM uploads WHERE id = ? AND user_id = ? RETURNING sha256",
            (upload_id, user_id),
        )
        if row is None:
            return Removal(0, None, False), None
        hash = _drop_unreferenced_blob(conn, row[0])
        removal = Removal(1, row[0], hash is not None)
        if hash is None:  # the blob stays, but it may now expire sooner
            kept = _one(conn, "SELECT hash FROM blobs WHERE sha256 = ?", (row[0],))
            hash = kept[0] if kept else None
        return removal, hash

    removal, hash = await db.write(work)
    if hash is not None:
        db.blobs.drop(hash)
    return removal


async def take_down(db: Database, *, sha256: str) -> Removal:
    """Remove every upload of a blob (anyone's) and its row."""

    removal, hash = await db.write(lambda conn: take_down_rows(conn, sha256))
    if hash is not None:
        db.blobs.drop(hash)
    return removal


def take_down_rows(conn: sqlite3.Connection, sha256: str) -> tuple[Removal, str | None]:
    """In a unit of work: delete every upload of a blob and its row; (the removal, the
    public hash the blob had, or None when there was no blob row)."""
    gone = conn.execute("DELETE FROM uploads WHERE sha256 = ? RETURNING id", (sha256,))
    count = len(gone.fetchall())
    hash = _drop_unreferenced_blob(conn, sha256)
    return Removal(count, sha256, hash is not None), hash


async def is_referenced(db: Database, sha256: str) -> bool:
    """Whether a blob row exists for these bytes (a row exists while an upload does)."""
    row = await db.read(lambda conn: _one(conn, "SELECT 1 FROM blobs WHERE sha256 = ?", (sha256,)))
    return row is not None


async def referenced_among(db: Database, sha256s: Iterable[str]) -> set[str]:
    """Which of these SHA-256s have a blob row."""
    wanted = list(sha256s)

    def work(conn: sqlite3.Connection) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(wanted), 500):
            part = wanted[start : start + 500]
            marks = ",".join("?" * len(part))
            rows = conn.execute(f"SELECT sha256 FROM blobs WHERE sha256 IN ({marks})", part)
            found.update(row[0] for row in rows)
        return found

    return await db.read(work)


async def all_blob_sha256s(db: Database) -> list[str]:
    rows = await db.read(lambda conn: conn.execute("SELECT sha256 FROM blobs").fetchall())
    return [row[0] for row in rows]


@dataclass(frozen=True)
class Registration:
    """One upload of a blob, with the name of the account it belongs to (None: anonymous)."""

    upload: Upload
    user_name: str | None


async def list_registrations(db: Database, *, sha256: str) -> list[Registration]:
    """Every upload of these bytes, oldest first."""
    rows = await db.read(
        lambda conn: conn.execute(
            """
            SELECT uploads.*, users.name AS user_name
            FROM uploads LEFT JOIN users ON users.id = uploads.user_id
            WHERE uploads.sha256 = ?
            ORDER BY uploads.created_at, uploads.id
            """,
            (sha256,),
        ).fetchall()
    )
    return [Registration(upload_of(row), row["user_name"]) for row in rows]
