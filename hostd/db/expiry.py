"""Expired uploads: finding them, and removing their rows (and their blobs' rows once no
unexpired upload of the bytes is left)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from hostd.db.blobs import Upload, _drop_unreferenced_blob, upload_of
from hostd.db.core import Database


@dataclass(frozen=True)
class Expired:
    """An upload whose time has come, with what `hostd prune` says about it."""

    upload: Upload
    hash: str
    size_bytes: int
    user_name: str | None
    blob_gone: bool  # no unexpired upload of the bytes is left: the blob goes too


def _expired(conn: sqlite3.Connection, now: int, limit: int) -> list[Expired]:
    rows = conn.execute(
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
        (now, now, limit),
    ).fetchall()
    return [
        Expired(
            upload_of(row), row["hash"], row["size_bytes"], row["user_name"], bool(row["blob_gone"])
        )
        for row in rows
    ]


async def list_expired(db: Database, *, now: int, limit: int = -1) -> list[Expired]:
    """Uploads expired by `now`, soonest first (all of them with the default limit)."""
    return await db.read(lambda conn: _expired(conn, now, limit))


async def delete_expired(db: Database, *, now: int, limit: int) -> list[Expired]:
    """Remove up to `limit` uploads expired by `now`, and the rows of the blobs that no
    upload is left for, in one unit of work. The bytes of those (`blob_gone`) are the
    caller's to remove, after this commit."""

    def work(conn: sqlite3.Connection) -> list[Expired]:
        expired = _expired(conn, now, limit)
        conn.executemany(
            "DELETE FROM uploads WHERE id = ?", [(item.upload.id,) for item in expired]
        )
        # A blob whose other expired uploads are past this batch's limit stays till the next.
        gone = {
            sha256
            for sha256 in {item.upload.sha256 for item in expired}
            if _drop_unreferenced_blob(conn, sha256) is not None
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
