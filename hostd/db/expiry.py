"""Expired uploads: finding them, and removing their rows (and their blobs' rows once no
unexpired upload of the bytes is left)."""

from __future__ import annotations

from dataclasses import dataclass

from hostd.db.blobs import Upload, _drop_unreferenced_blob, upload_of
from hostd.db.core import Database, Tx

# LIMIT for "all of them": PostgreSQL refuses SQLite's LIMIT -1.
NO_LIMIT = 2**62


@dataclass(frozen=True)
class Expired:
    """An upload whose time has come, with what `hostd prune` says about it."""

    upload: Upload
    hash: str
    size_bytes: int
    user_name: str | None
    blob_gone: bool  # no unexpired upload of the bytes is left: the blob goes too


async def _expired(tx: Tx, now: int, limit: int) -> list[Expired]:
    rows = await tx.fetchall(
        """
        SELECT uploads.*, blobs.hash, blobs.size_bytes, users.name AS user_name,
               blobs.expires_at IS NOT NULL AND blobs.expires_at <= ? AS blob_gone
        FROM uploads
        JOIN blobs ON blobs.sha256 = uploads.sha256
        LEFT JOIN users ON users.id = uploads.user_id
        WHERE uploads.expires_at <= ?
        ORDER BY uploads.expires_at, uploads.id
        LIMIT ?
        """,
        (now, now, NO_LIMIT if limit < 0 else limit),
    )
    return [
        Expired(
            upload_of(row), row["hash"], row["size_bytes"], row["user_name"], bool(row["blob_gone"])
        )
        for row in rows
    ]


async def list_expired(db: Database, *, now: int, limit: int = -1) -> list[Expired]:
    """Uploads expired by `now`, soonest first (all of them with the default limit)."""
    return await db.read(lambda tx: _expired(tx, now, limit))


async def delete_expired(db: Database, *, now: int, limit: int) -> list[Expired]:
    """Remove up to `limit` uploads expired by `now`, and the rows of the blobs that no
    upload is left for, in one unit of work. The bytes of those (`blob_gone`) are the
    caller's to remove, after this commit."""

    async def work(tx: Tx) -> list[Expired]:
        expired = await _expired(tx, now, limit)
        await tx.executemany(
            "DELETE FROM uploads WHERE id = ?", [(item.upload.id,) for item in expired]
        )
        # A blob whose other expired uploads are past this batch's limit stays till the next.
        gone = {
            sha256
            for sha256 in sorted({item.upload.sha256 for item in expired})
            if await _drop_unreferenced_blob(tx, sha256) is not None
        }
        return [
            Expired(
                item.upload, item.hash, item.size_bytes, item.user_name, item.upload.sha256 in gone
            )
            for item in expired
        ]

    removed = await db.write(work)
    for item in removed:
        db.blobs.drop(item.hash)  # gone, or it may expire sooner now
    return removed
