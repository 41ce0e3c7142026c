"""SQLite: the connection, migrations, row types and every query hostd makes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TypeVar

import aiosqlite

from hostd.storage import short_hash_candidates

T = TypeVar("T")
BLOB_CACHE_SIZE = 4096


class HashSpaceExhausted(Exception):
    """Every public-hash length up to the maximum is taken by other content."""


class Database:
    """One aiosqlite connection for the whole process.

    aiosqlite runs each call on the connection's own thread, so statements never overlap;
    but coroutines interleave *between* statements, hence the write lock.
    """

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn
        self._write_lock = asyncio.Lock()
        # Public hash -> Blob, for serving without a trip to SQLite's thread. A blob row
        # never changes, it only goes (delete_upload drops it here too); a miss is not kept.
        self._blobs: OrderedDict[str, Blob] = OrderedDict()

    @classmethod
    async def open(cls, path: Path) -> Database:
        conn = await aiosqlite.connect(path, isolation_level=None)
        conn.row_factory = aiosqlite.Row
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = NORMAL")
        await conn.execute("PRAGMA foreign_keys = ON")
        await conn.execute("PRAGMA busy_timeout = 5000")
        db = cls(conn)
        await db.migrate()
        return db

    async def close(self) -> None:
        await self.conn.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """Serialise writers: any statement run while another coroutine's transaction is
        open would otherwise become part of it."""
        async with self._write_lock:
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                await self.conn.execute("COMMIT")
            except BaseException:
                # A failed COMMIT (a full disk) leaves the transaction open, and SQLite may
                # have rolled back by itself already.
                if self.conn.in_transaction:
                    await self.conn.execute("ROLLBACK")
                raise

    async def migrate(self) -> int:
        """Apply migrations newer than `PRAGMA user_version`, each in its own transaction
        together with its version bump. Returns the version reached."""
        async with self._write_lock:
            version = await self._user_version()
            for number, sql in _migrations():
                if number <= version:
                    continue
                try:
                    await self.conn.executescript(
                        f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {number:d};\nCOMMIT;"
                    )
                except BaseException:
                    if self.conn.in_transaction:
                        await self.conn.execute("ROLLBACK")
                    raise
                version = number
            return version

    async def _user_version(self) -> int:
        row = await _one(self.conn, "PRAGMA user_version")
        return int(row[0]) if row else 0


async def _one(
    conn: aiosqlite.Connection, sql: str, params: tuple[object, ...] = ()
) -> aiosqlite.Row | None:
    """The first row, in one trip to the connection's thread (a cursor takes three: execute,
    fetch and close), which counts most inside the write lock."""
    rows = await conn.execute_fetchall(sql, params)
    return next(iter(rows), None)


def _migrations() -> list[tuple[int, str]]:
    found = []
    for entry in resources.files("hostd.migrations").iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8")))
    return sorted(found)


def latest_version() -> int:
    return _migrations()[-1][0]


def now() -> int:
    return int(time.time())


# -- blobs and uploads --------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    sha256: str
    hash: str
    size_bytes: int
    content_type: str
    created_at: int


@dataclass(frozen=True)
class Upload:
    id: int
    sha256: str
    original_name: str
    created_at: int
    user_id: int | None
    api_key_id: int | None


def _row(cls: type[T], row: aiosqlite.Row) -> T:
    return cls(**dict(zip(row.keys(), row, strict=True)))


def _blob(row: aiosqlite.Row) -> Blob:
    return _row(Blob, row)


async def get_blob(db: Database, hash: str) -> Blob | None:
    """The blob with this public hash, or None."""
    blob = db._blobs.get(hash)
    if blob is not None:
        db._blobs.move_to_end(hash)
        return blob
    row = await _one(db.conn, "SELECT * FROM blobs WHERE hash = ?", (hash,))
    if row is None:
        return None
    blob = db._blobs[hash] = _blob(row)
    if len(db._blobs) > BLOB_CACHE_SIZE:
        db._blobs.popitem(last=False)
    return blob


async def get_blob_by_sha256(db: Database, sha256: str) -> Blob | None:
    row = await _one(db.conn, "SELECT * FROM blobs WHERE sha256 = ?", (sha256,))
    return _blob(row) if row else None


async def register_upload(
    db: Database,
    *,
    sha256: str,
    size_bytes: int,
    content_type: str,
    original_name: str,
    user_id: int | None = None,
    api_key_id: int | None = None,
    place: Callable[[], Awaitable[bool]] | None = None,
    unplace: Callable[[], Awaitable[object]] | None = None,
) -> tuple[Blob, Upload]:
    """Record an upload of durable bytes, creating the blob row on first sight.

    `place` (putting the bytes into the blob store; True when they were not there yet) runs
    inside the transaction, so that it cannot interleave with delete_upload() removing the
    same blob, and so that the rows commit only after the blob is in place. When the rows
    cannot be written (a full disk), `unplace` takes the bytes it put there out again,
    unless a row names them by then: no blob is left without a row.

    Same bytes, same public hash: an existing blob keeps the hash it was given. A new blob
    takes the shortest free candidate from short_hash_candidates(), so a prefix that
    another blob holds is never reused for different content.
    """
    created_at = now()
    placed = False
    try:
        async with db.transaction() as conn:
            if place is not None:
                placed = await place()
            row = await _one(conn, "SELECT * FROM blobs WHERE sha256 = ?", (sha256,))
            if row is None:
                public_hash = await _free_hash(conn, sha256)
                row = await _one(
                    conn,
                    """
                    INSERT INTO blobs (sha256, hash, size_bytes, content_type, created_at)
                    VALUES (?, ?, ?, ?, ?)
                    RETURNING *
                    """,
                    (sha256, public_hash, size_bytes, content_type, created_at),
                )
            upload_row = await _one(
                conn,
                """
                INSERT INTO uploads (sha256, original_name, created_at, user_id, api_key_id)
                VALUES (?, ?, ?, ?, ?)
                RETURNING *
                """,
                (sha256, original_name, created_at, user_id, api_key_id),
            )
    except Exception:
        if placed and unplace is not None:
            async with db.transaction() as conn:
                if await _one(conn, "SELECT 1 FROM blobs WHERE sha256 = ?", (sha256,)) is None:
                    await unplace()
        raise
    assert row is not None and upload_row is not None
    return _blob(row), _row(Upload, upload_row)


async def _free_hash(conn: aiosqlite.Connection, sha256: str) -> str:
    for candidate in short_hash_candidates(sha256):
        if await _one(conn, "SELECT 1 FROM blobs WHERE hash = ?", (candidate,)) is None:
            return candidate
    raise HashSpaceExhausted(sha256)


async def count_uploads(db: Database, *, sha256: str) -> int:
    row = await _one(db.conn, "SELECT count(*) FROM uploads WHERE sha256 = ?", (sha256,))
    return int(row[0]) if row else 0


# -- users and sessions -------------------------------------------------------------


@dataclass(frozen=True)
class User:
    id: int
    name: str
    password_hash: str
    created_at: int


class NameTaken(Exception):
    """An account with this name (in any letter case) exists already."""


async def insert_user(db: Database, *, name: str, password_hash: str) -> User:
    try:
        async with (
            db.transaction() as conn,
            conn.execute(
                "INSERT INTO users (name, password_hash, created_at) VALUES (?, ?, ?) RETURNING *",
                (name, password_hash, now()),
            ) as cur,
        ):
            row = await cur.fetchone()
    except aiosqlite.IntegrityError as exc:
        raise NameTaken(name) from exc
    assert row is not None
    return _row(User, row)


async def get_user(db: Database, *, name: str | None = None, id: int | None = None) -> User | None:
    """By name (any letter case) or by id."""
    column, value = ("name", name) if name is not None else ("id", id)
    row = await _one(db.conn, f"SELECT * FROM users WHERE {column} = ?", (value,))
    return _row(User, row) if row else None


async def list_users(db: Database) -> list[tuple[User, int, int]]:
    """Every user with their count of uploads and of usable keys."""
    async with db.conn.execute(
        """
        SELECT users.*,
               (SELECT count(*) FROM uploads WHERE uploads.user_id = users.id) AS uploads,
               (SELECT count(*) FROM api_keys
                 WHERE api_keys.user_id = users.id AND invalidated_at IS NULL) AS keys
        FROM users ORDER BY users.name
        """
    ) as cur:
        rows = await cur.fetchall()
    return [
        (User(row["id"], row["name"], row["password_hash"], row["created_at"]), row[4], row[5])
        for row in rows
    ]


async def update_password(
    db: Database, *, user_id: int, password_hash: str, end_sessions: bool
) -> None:
    async with db.transaction() as conn:
        await conn.execute(
            "UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id)
        )
        if end_sessions:
            await conn.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,))


async def insert_session(db: Database, *, token_hash: str, user_id: int) -> None:
    async with db.transaction() as conn:
        await conn.execute(
            "INSERT INTO sessions (token_hash, user_id, created_at) VALUES (?, ?, ?)",
            (token_hash, user_id, now()),
        )


async def get_session_user(db: Database, *, token_hash: str) -> User | None:
    row = await _one(
        db.conn,
        """
        SELECT users.* FROM sessions JOIN users ON users.id = sessions.user_id
        WHERE sessions.token_hash = ?
        """,
        (token_hash,),
    )
    return _row(User, row) if row else None


async def delete_session(db: Database, *, token_hash: str) -> None:
    async with db.transaction() as conn:
        await conn.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))


# -- API keys --------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiKey:
    id: int
    key_id: str
    user_id: int
    secret_hash: str
    label: str
    created_at: int
    last_used_at: int | None
    invalidated_at: int | None

    @property
    def usable(self) -> bool:
        return self.invalidated_at is None


class TooManyKeys(Exception):
    """The account holds accounts.max_keys usable keys already."""


async def insert_api_key(
    db: Database,
    *,
    user_id: int,
    key_id: str,
    secret_hash: str,
    label: str,
    max_keys: int | None = None,
) -> ApiKey:
    async with db.transaction() as conn:
        if max_keys is not None:
            async with conn.execute(
                "SELECT count(*) FROM api_keys WHERE user_id = ? AND invalidated_at IS NULL",
                (user_id,),
            ) as cur:
                row = await cur.fetchone()
            if row is not None and row[0] >= max_keys:
                raise TooManyKeys(max_keys)
        async with conn.execute(
            """
            INSERT INTO api_keys (key_id, user_id, secret_hash, label, created_at)
            VALUES (?, ?, ?, ?, ?)
            RETURNING *
            """,
            (key_id, user_id, secret_hash, label, now()),
        ) as cur:
            row = await cur.fetchone()
    assert row is not None
    return _row(ApiKey, row)


async def get_api_key(db: Database, *, key_id: str) -> ApiKey | None:
    row = await _one(db.conn, "SELECT * FROM api_keys WHERE key_id = ?", (key_id,))
    return _row(ApiKey, row) if row else None


async def list_api_keys(db: Database, *, user_id: int) -> list[ApiKey]:
    """Newest first."""
    async with db.conn.execute(
        "SELECT * FROM api_keys WHERE user_id = ? ORDER BY created_at DESC, id DESC", (user_id,)
    ) as cur:
        return [_row(ApiKey, row) for row in await cur.fetchall()]


async def invalidate_api_key(
    db: Database, *, key_id: str, user_id: int | None = None
) -> ApiKey | None:
    """Make a key unusable for good. With user_id, only that user's key. Returns the key as
    it is now, or None when there is no such key (for that user)."""
    async with (
        db.transaction() as conn,
        conn.execute(
            """
            UPDATE api_keys SET invalidated_at = coalesce(invalidated_at, ?)
            WHERE key_id = ? AND (? IS NULL OR user_id = ?)
            RETURNING *
            """,
            (now(), key_id, user_id, user_id),
        ) as cur,
    ):
        row = await cur.fetchone()
    return _row(ApiKey, row) if row else None


async def touch_api_key(db: Database, *, id: int, at: int) -> None:
    async with db.transaction() as conn:
        await conn.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (at, id))


# -- a user's files ---------------------------------------------------------------------


@dataclass(frozen=True)
class UserFile:
    """One of a user's uploads, with the blob it points at."""

    upload: Upload
    blob: Blob


async def list_user_files(
    db: Database, *, user_id: int, limit: int, offset: int = 0
) -> tuple[list[UserFile], int]:
    """A page of the user's uploads, newest first, and how many there are in all."""
    async with db.conn.execute(
        """
        SELECT uploads.id, uploads.sha256, uploads.original_name, uploads.created_at,
               uploads.user_id, uploads.api_key_id,
               blobs.hash, blobs.size_bytes, blobs.content_type, blobs.created_at AS blob_created_at
        FROM uploads JOIN blobs ON blobs.sha256 = uploads.sha256
        WHERE uploads.user_id = ?
        ORDER BY uploads.created_at DESC, uploads.id DESC
        LIMIT ? OFFSET ?
        """,
        (user_id, limit, offset),
    ) as cur:
        rows = await cur.fetchall()
    async with db.conn.execute("SELECT count(*) FROM uploads WHERE user_id = ?", (user_id,)) as cur:
        total = await cur.fetchone()
    files = [
        UserFile(
            Upload(row[0], row[1], row[2], row[3], row[4], row[5]),
            Blob(row[1], row[6], row[7], row[8], row[9]),
        )
        for row in rows
    ]
    return files, int(total[0]) if total else 0


async def delete_upload(
    db: Database,
    *,
    upload_id: int,
    user_id: int,
    remove_blob: Callable[[str], Awaitable[object]],
) -> bool:
    """Remove one of a user's registrations; False when they have no such upload.

    When no registration (anyone's, anonymous ones included) still points at the blob, the
    blob row goes too and `remove_blob(sha256)` deletes its bytes, inside the transaction,
    so an upload of the same bytes cannot slip in between (see register_upload).
    """
    async with db.transaction() as conn:
        async with conn.execute(
            "DELETE FROM uploads WHERE id = ? AND user_id = ? RETURNING sha256",
            (upload_id, user_id),
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return False
        sha256 = row[0]
        still_used = (
            await _one(conn, "SELECT 1 FROM uploads WHERE sha256 = ? LIMIT 1", (sha256,))
        ) is not None
        if not still_used:
            gone = await _one(conn, "DELETE FROM blobs WHERE sha256 = ? RETURNING hash", (sha256,))
            if gone is not None:
                db._blobs.pop(gone[0], None)
            await remove_blob(sha256)
    return True


# -- an admin's view of one file ---------------------------------------------------------


@dataclass(frozen=True)
class Registration:
    """One upload of a blob, with the name of the account it belongs to (None: anonymous)."""

    upload: Upload
    user_name: str | None


async def list_registrations(db: Database, *, sha256: str) -> list[Registration]:
    """Every upload of these bytes, oldest first."""
    rows = await db.conn.execute_fetchall(
        """
        SELECT uploads.id, uploads.sha256, uploads.original_name, uploads.created_at,
               uploads.user_id, uploads.api_key_id, users.name
        FROM uploads LEFT JOIN users ON users.id = uploads.user_id
        WHERE uploads.sha256 = ?
        ORDER BY uploads.created_at, uploads.id
        """,
        (sha256,),
    )
    return [Registration(Upload(*row[:6]), row[6]) for row in rows]


async def take_down(
    db: Database, *, sha256: str, remove_bytes: Callable[[str], Awaitable[object]]
) -> int:
    """Remove a blob for good: every registration (anyone's), its row and its bytes, all in
    one transaction, so no upload of the same bytes can slip in between, not even from a
    server running in another process (BEGIN IMMEDIATE waits for it). Returns how many
    registrations there were."""
    async with db.transaction() as conn:
        gone = await conn.execute_fetchall(
            "DELETE FROM uploads WHERE sha256 = ? RETURNING id", (sha256,)
        )
        blob = await _one(conn, "DELETE FROM blobs WHERE sha256 = ? RETURNING hash", (sha256,))
        if blob is not None:
            db._blobs.pop(blob[0], None)
        await remove_bytes(sha256)
    return len(list(gone))
