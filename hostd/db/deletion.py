"""Deleting uploads: by their deletion link (a token kept only as its SHA-256), or an
account's uploads of one blob."""

from __future__ import annotations

from dataclasses import dataclass

from hostd.db.blobs import (
    Blob,
    Removal,
    Upload,
    UserFile,
    _drop_unreferenced_blob,
    delete_upload_row,
)
from hostd.db.core import Database, Tx


@dataclass(frozen=True)
class DeleteLink:
    """A known deletion link: the upload it deletes, with its blob; None once deleted."""

    file: UserFile | None


async def get_delete_link(db: Database, *, token_hash: str) -> DeleteLink | None:
    """The link with this token hash, or None when there is no such link."""
    row = await db.read(
        lambda tx: tx.fetchone(
            """
            SELECT uploads.id, uploads.sha256, uploads.original_name, uploads.created_at,
                   uploads.user_id, uploads.api_key_id, blobs.hash, blobs.size_bytes,
                   blobs.content_type, blobs.created_at, uploads.expires_at
            FROM delete_tokens
            LEFT JOIN uploads ON uploads.id = delete_tokens.upload_id
            LEFT JOIN blobs ON blobs.sha256 = uploads.sha256
            WHERE delete_tokens.token_hash = ?
            """,
            (token_hash,),
        )
    )
    if row is None:
        return None
    if row[0] is None:
        return DeleteLink(None)
    upload = Upload(row[0], row[1], row[2], row[3], row[4], row[5], expires_at=row[10])
    return DeleteLink(UserFile(upload, Blob(row[1], row[6], row[7], row[8], row[9])))


async def delete_by_link(db: Database, *, token_hash: str) -> Removal | None:
    """Remove the upload this link deletes. None: no such link; Removal(0, ...): its upload
    is gone already. The blob row goes too when no upload, anyone's, points at it."""

    async def work(tx: Tx) -> tuple[Removal | None, str | None]:
        link = await tx.fetchone(
            "SELECT upload_id FROM delete_tokens WHERE token_hash = ?", (token_hash,)
        )
        if link is None:
            return None, None
        if link[0] is None:
            return Removal(0, None, False), None
        # The link's row stays (ON DELETE SET NULL), so that the link says "deleted" later.
        removal, hash = await delete_upload_row(tx, link[0])
        assert removal.uploads == 1  # the foreign key would have cleared upload_id
        return removal, hash

    removal, hash = await db.write(work)
    if hash is not None:
        db.blobs.drop(hash)
    return removal


async def delete_uploads_of_blob(db: Database, *, user_id: int, hash: str) -> Removal:
    """Remove every upload of the blob with this public hash that belongs to the user (none:
    Removal(0, None, False)); the blob row goes when no other upload points at it."""

    async def work(tx: Tx) -> tuple[Removal, str | None]:
        rows = await tx.fetchall(
            """
            DELETE FROM uploads
            WHERE user_id = ? AND sha256 = (SELECT sha256 FROM blobs WHERE hash = ?)
            RETURNING sha256
            """,
            (user_id, hash),
        )
        if not rows:
            return Removal(0, None, False), None
        gone = await _drop_unreferenced_blob(tx, rows[0][0])
        return Removal(len(rows), rows[0][0], gone is not None), gone

    removal, gone = await db.write(work)
    if gone is not None:
        db.blobs.drop(gone)
    return removal
