"""SQLite: the connection, migrations, row types and every query hostd makes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import aiosqlite

from hostd.storage import short_hash_candidates


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
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise
            else:
                await self.conn.execute("COMMIT")

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
        async with self.conn.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0


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


def _blob(row: aiosqlite.Row) -> Blob:
    return Blob(**dict(zip(row.keys(), row, strict=True)))


async def get_blob(db: Database, hash: str) -> Blob | None:
    """The blob with this public hash, or None."""
    async with db.conn.execute("SELECT * FROM blobs WHERE hash = ?", (hash,)) as cur:
        row = await cur.fetchone()
    return _blob(row) if row else None


async def get_blob_by_sha256(db: Database, sha256: str) -> Blob | None:
    async with db.conn.execute("SELECT * FROM blobs WHERE sha256 = ?", (sha256,)) as cur:
        row = await cur.fetchone()
    return _blob(row) if row else None


async def register_upload(
    db: Database, *, sha256: str, size_bytes: int, content_type: str, original_name: str
) -> tuple[Blob, Upload]:
    """Record an upload of durable bytes, creating the blob row on first sight.

    Same bytes, same public hash: an existing blob keeps the hash it was given. A new blob
    takes the shortest free candidate from short_hash_candidates(), so a prefix that
    another blob holds is never reused for different content.
    """
    created_at = now()
    async with db.transaction() as conn:
        async with conn.execute("SELECT * FROM blobs WHERE sha256 = ?", (sha256,)) as cur:
            row = await cur.fetchone()
        if row is None:
            public_hash = await _free_hash(conn, sha256)
            async with conn.execute(
                """
                INSERT INTO blobs (sha256, hash, size_bytes, content_type, created_at)
                VALUES (?, ?, ?, ?, ?)
                RETURNING *
                """,
                (sha256, public_hash, size_bytes, content_type, created_at),
            ) as cur:
                row = await cur.fetchone()
        async with conn.execute(
            """
            INSERT INTO uploads (sha256, original_name, created_at)
            VALUES (?, ?, ?)
            RETURNING *
            """,
            (sha256, original_name, created_at),
        ) as cur:
            upload_row = await cur.fetchone()
    assert row is not None and upload_row is not None
    return _blob(row), Upload(**dict(zip(upload_row.keys(), upload_row, strict=True)))


async def _free_hash(conn: aiosqlite.Connection, sha256: str) -> str:
    for candidate in short_hash_candidates(sha256):
        async with conn.execute("SELECT 1 FROM blobs WHERE hash = ?", (candidate,)) as cur:
            if await cur.fetchone() is None:
                return candidate
    raise HashSpaceExhausted(sha256)


async def count_uploads(db: Database, *, sha256: str) -> int:
    async with db.conn.execute("SELECT count(*) FROM uploads WHERE sha256 = ?", (sha256,)) as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0
