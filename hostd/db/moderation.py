"""Moderation: banned bytes, disabled accounts, removing an account."""

from __future__ import annotations

from dataclasses import dataclass

from hostd.db.blobs import Removal, _drop_unreferenced_blob, row_as, take_down_rows
from hostd.db.core import BAN_LIST_LIMIT, Database, Tx, is_integrity_error, now
from hostd.hashes import public_hash_candidates

# What the triggers of 0006_moderation.sql say when banned bytes would get a row.
BANNED_MESSAGE = "hostd: these bytes are banned"


@dataclass(frozen=True)
class Ban:
    sha256: str
    hash: str  # the public hash the blob had, or would have had
    reason: str
    created_at: int


class AlreadyBanned(Exception):
    """These bytes are banned already (args[0] is the Ban)."""


def refused_as_banned(exc: BaseException) -> bool:
    """Whether a write failed because the bytes were banned meanwhile (the schema's
    triggers refuse them, whichever process banned them)."""
    return is_integrity_error(exc) and BANNED_MESSAGE in str(exc)


async def get_ban(
    db: Database, *, sha256: str | None = None, hash: str | None = None
) -> Ban | None:
    """The ban of these bytes, by SHA-256 or by public hash (the newest, should two banned
    blobs ever have had the same one)."""
    sql = "SELECT * FROM bans WHERE sha256 = ?"
    if sha256 is None:
        sql = "SELECT * FROM bans WHERE hash = ? ORDER BY created_at DESC LIMIT 1"
    value = sha256 if sha256 is not None else hash
    row = await db.lookup(lambda tx: tx.fetchone(sql, (value,)))
    return row_as(Ban, row) if row else None


async def find_ban(db: Database, sha256: str) -> Ban | None:
    """The ban of these bytes, for an upload about to place them: from this process's list
    of banned SHA-256s (core.BanList), confirmed by the database when they are on it."""
    banned = await db.bans.get(lambda: _read_banned(db))
    if banned is not None and sha256 not in banned:
        return None
    return await get_ban(db, sha256=sha256)


async def _read_banned(db: Database) -> frozenset[str] | None:
    rows = await db.read(
        lambda tx: tx.fetchall("SELECT sha256 FROM bans LIMIT ?", (BAN_LIST_LIMIT + 1,))
    )
    return None if len(rows) > BAN_LIST_LIMIT else frozenset(row[0] for row in rows)


async def list_bans(db: Database) -> list[Ban]:
    """Oldest first."""
    rows = await db.read(lambda tx: tx.fetchall("SELECT * FROM bans ORDER BY created_at, sha256"))
    return [row_as(Ban, row) for row in rows]


async def insert_ban(db: Database, *, sha256: str, reason: str) -> tuple[Ban, Removal]:
    """Ban these bytes and, in the same commit, take down every upload of them and their
    blob row: no moment where they are banned and still recorded, or taken down and not
    yet banned. The bytes are then the caller's to remove (uploads.remove_bytes)."""

    async def work(tx: Tx) -> tuple[Ban, Removal, str | None]:
        existing = await tx.fetchone("SELECT * FROM bans WHERE sha256 = ?", (sha256,))
        if existing is not None:
            raise AlreadyBanned(row_as(Ban, existing))
        removal, hash = await take_down_rows(tx, sha256)
        row = await tx.fetchone(
            "INSERT INTO bans (sha256, hash, reason, created_at) VALUES (?, ?, ?, ?) RETURNING *",
            (sha256, hash or public_hash_candidates(sha256)[0], reason, now()),
        )
        assert row is not None
        return row_as(Ban, row), removal, hash

    ban, removal, hash = await db.write(work)
    db.bans.forget()
    if hash is not None:
        db.blobs.drop(hash)
    return ban, removal


async def delete_ban(db: Database, *, sha256: str) -> Ban | None:
    """Lift a ban; the ban it was, or None when these bytes were not banned."""
    row = await db.write(
        lambda tx: tx.fetchone("DELETE FROM bans WHERE sha256 = ? RETURNING *", (sha256,))
    )
    db.bans.forget()
    return row_as(Ban, row) if row else None


async def set_user_disabled(db: Database, *, user_id: int, disabled: bool) -> int | None:
    """Disable (or enable) an account; returns when it was disabled (None: enabled). A
    second disable keeps the first time."""
    row = await db.write(
        lambda tx: tx.fetchone(
            """
            UPDATE users SET disabled_at = CASE WHEN ? THEN coalesce(disabled_at, ?) END
            WHERE id = ? RETURNING disabled_at
            """,
            (disabled, now(), user_id),
        )
    )
    return row[0] if row else None


async def delete_user(db: Database, *, user_id: int, delete_files: bool) -> list[Removal]:
    """Remove an account, its sessions and keys. Its uploads become anonymous (the schema's
    ON DELETE SET NULL), or with delete_files go too: then one Removal per blob they
    pointed at, whose bytes are the caller's to remove after this commit."""

    async def work(tx: Tx) -> tuple[list[Removal], list[str]]:
        removals: list[Removal] = []
        hashes: list[str] = []
        if delete_files:
            counts: dict[str, int] = {}
            for (sha256,) in await tx.fetchall(
                "DELETE FROM uploads WHERE user_id = ? RETURNING sha256", (user_id,)
            ):
                counts[sha256] = counts.get(sha256, 0) + 1
            for sha256, count in sorted(counts.items()):
                hash = await _drop_unreferenced_blob(tx, sha256)
                removals.append(Removal(count, sha256, hash is not None))
                if hash is not None:
                    hashes.append(hash)
        await tx.execute("DELETE FROM users WHERE id = ?", (user_id,))
        return removals, hashes

    removals, hashes = await db.write(work)
    for hash in hashes:
        db.blobs.drop(hash)
    return removals
