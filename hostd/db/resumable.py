"""Resumable (tus) uploads in progress: their rows in resumable_uploads (0010)."""

from __future__ import annotations

from dataclasses import dataclass

from hostd.db.blobs import Blob, Upload, row_as, upload_of
from hostd.db.core import POSTGRESQL, Database, Tx
from hostd.db.quotas import OverQuota

# PostgreSQL: the advisory lock that makes creations count one after the other across
# processes (SQLite's BEGIN IMMEDIATE does that already); one lock, as for sign-ins
# (signins._take_turns), so that no two batches can wait on each other for it.
CREATION_LOCK = 0x747573  # "tus"


@dataclass(frozen=True)
class Resumable:
    id: str
    user_id: int | None
    api_key_id: int | None
    address: str
    length_bytes: int
    offset_bytes: int
    metadata: str  # the Upload-Metadata header as the client sent it
    filename: str
    expires: str  # the file's own expiry as asked ("" for none), applied when it completes
    created_at: int
    expires_at: int  # when the partial upload (and, once complete, this record) goes
    completed_at: int | None
    upload_id: int | None  # the upload it became; None before, or once that is deleted

    @property
    def all_arrived(self) -> bool:
        return self.offset_bytes == self.length_bytes


class TooManyResumable(Exception):
    """The account (or, anonymous, the address) has `args[0]` unfinished uploads already."""


async def _count_unfinished(tx: Tx, *, user_id: int | None, address: str, now: int) -> int:
    if user_id is not None:
        sql = "user_id = ?"
        owner: int | str = user_id
    else:
        sql = "user_id IS NULL AND address = ?"
        owner = address
    count = await tx.fetchval(
        f"""
        SELECT count(*) FROM resumable_uploads
        WHERE {sql} AND completed_at IS NULL AND expires_at > ?
        """,
        (owner, now),
    )
    return int(count)


async def _pending_bytes(tx: Tx, *, user_id: int, now: int) -> int:
    total = await tx.fetchval(
        """
        SELECT coalesce(sum(length_bytes), 0) FROM resumable_uploads
        WHERE user_id = ? AND completed_at IS NULL AND expires_at > ?
        """,
        (user_id, now),
    )
    return int(total or 0)


async def _check_quota(
    tx: Tx, *, user_id: int, length_bytes: int, default_quota_bytes: int | None, now: int
) -> None:
    """OverQuota unless the account's use, its unfinished uploads and this one fit in its
    quota. Creations take turns under CREATION_LOCK; the account's row is read without
    the FOR UPDATE of quotas.check_quota: a batch that holds the row (a registration) and
    waits for CREATION_LOCK, and one that holds CREATION_LOCK and waits for the row, would
    wait on each other. Registration checks the quota again at the end in any case."""
    row = await tx.fetchone(
        """
        SELECT used_bytes, CASE WHEN has_own_quota = 1 THEN quota_bytes ELSE ? END
        FROM users WHERE id = ?
        """,
        (default_quota_bytes, user_id),
    )
    if row is None or row[1] is None:
        return
    used = int(row[0]) + await _pending_bytes(tx, user_id=user_id, now=now)
    if used + length_bytes > int(row[1]):
        raise OverQuota(used_bytes=used, quota_bytes=int(row[1]), size_bytes=length_bytes)


async def insert_resumable(
    db: Database,
    *,
    id: str,
    user_id: int | None,
    api_key_id: int | None,
    address: str,
    length_bytes: int,
    metadata: str,
    filename: str,
    expires: str,
    created_at: int,
    expires_at: int,
    most: int,
    default_quota_bytes: int | None = None,
) -> Resumable:
    """Record a new upload in progress; TooManyResumable when its owner has `most`
    unfinished ones already, OverQuota when an account's quota (its own, else
    `default_quota_bytes`) has no room for it beside its unfinished ones. Both are counted
    in the same unit of work as the insert, so parallel creations are counted one after
    the other."""

    async def work(tx: Tx) -> Resumable:
        if tx.dialect == POSTGRESQL:
            await tx.execute("SELECT pg_advisory_xact_lock(?)", (CREATION_LOCK,))
        unfinished = await _count_unfinished(tx, user_id=user_id, address=address, now=created_at)
        if unfinished >= most:
            raise TooManyResumable(most)
        if user_id is not None:
            await _check_quota(
                tx,
                user_id=user_id,
                length_bytes=length_bytes,
                default_quota_bytes=default_quota_bytes,
                now=created_at,
            )
        row = await tx.fetchone(
            """
            INSERT INTO resumable_uploads (id, user_id, api_key_id, address, length_bytes,
                metadata, filename, expires, created_at, expires_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            RETURNING *
            """,
            (
                id,
                user_id,
                api_key_id,
                address,
                length_bytes,
                metadata,
                filename,
                expires,
                created_at,
                expires_at,
            ),
        )
        assert row is not None
        return row_as(Resumable, row)

    return await db.write(work)


async def get_resumable(db: Database, *, id: str) -> Resumable | None:
    row = await db.read(
        lambda tx: tx.fetchone("SELECT * FROM resumable_uploads WHERE id = ?", (id,))
    )
    return row_as(Resumable, row) if row else None


async def update_resumable_offset(db: Database, *, id: str, offset_bytes: int) -> bool:
    """Record what has been written (and fsynced); False when the row is gone."""
    row = await db.write(
        lambda tx: tx.fetchone(
            """
            UPDATE resumable_uploads SET offset_bytes = ?
            WHERE id = ? AND completed_at IS NULL
            RETURNING id
            """,
            (offset_bytes, id),
        )
    )
    return row is not None


async def complete_resumable(db: Database, *, id: str, upload_id: int, at: int) -> None:
    await db.write(
        lambda tx: tx.execute(
            "UPDATE resumable_uploads SET completed_at = ?, upload_id = ? WHERE id = ?",
            (at, upload_id, id),
        )
    )


async def delete_resumable(db: Database, *, id: str) -> bool:
    row = await db.write(
        lambda tx: tx.fetchone("DELETE FROM resumable_uploads WHERE id = ? RETURNING id", (id,))
    )
    return row is not None


async def list_expired_resumables(db: Database, *, now: int, limit: int) -> list[str]:
    rows = await db.read(
        lambda tx: tx.fetchall(
            "SELECT id FROM resumable_uploads WHERE expires_at <= ? ORDER BY expires_at LIMIT ?",
            (now, limit),
        )
    )
    return [row[0] for row in rows]


async def count_expired_resumables(db: Database, *, now: int) -> int:
    count = await db.read(
        lambda tx: tx.fetchval(
            "SELECT count(*) FROM resumable_uploads WHERE expires_at <= ?", (now,)
        )
    )
    return int(count or 0)


async def delete_expired_resumables(db: Database, *, ids: list[str], now: int) -> list[str]:
    """Remove these rows if they have expired by `now`; the ids removed."""

    async def work(tx: Tx) -> list[str]:
        gone = []
        for id in ids:
            row = await tx.fetchone(
                "DELETE FROM resumable_uploads WHERE id = ? AND expires_at <= ? RETURNING id",
                (id, now),
            )
            if row is not None:
                gone.append(row[0])
        return gone

    return await db.write(work)


async def unfinished_resumable_ids(db: Database) -> set[str]:
    rows = await db.read(
        lambda tx: tx.fetchall("SELECT id FROM resumable_uploads WHERE completed_at IS NULL")
    )
    return {row[0] for row in rows}


async def get_upload_with_blob(db: Database, *, upload_id: int) -> tuple[Blob, Upload] | None:
    """An upload and its blob, or None when the upload is gone."""
    row = await db.read(
        lambda tx: tx.fetchone(
            """
            SELECT uploads.*, blobs.hash, blobs.size_bytes, blobs.content_type,
                   blobs.created_at AS blob_created_at, blobs.expires_at AS blob_expires_at
            FROM uploads JOIN blobs ON blobs.sha256 = uploads.sha256
            WHERE uploads.id = ?
            """,
            (upload_id,),
        )
    )
    if row is None:
        return None
    blob = Blob(
        row["sha256"],
        row["hash"],
        row["size_bytes"],
        row["content_type"],
        row["blob_created_at"],
        row["blob_expires_at"],
    )
    return blob, upload_of(row)
