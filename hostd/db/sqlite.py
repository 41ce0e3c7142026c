"""SQLite: a file in WAL mode, one connection for reads and one for the writer's batches.

aiosqlite gives each connection its own thread. A read, or a whole batch, is one coroutine
whose SQL never suspends; it is driven to its end on that thread in a single trip. The
writer's thread runs batch after batch in one trip while writes keep coming (_drain).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from hostd.db.core import (
    SQLITE,
    Batch,
    Changes,
    Row,
    Unavailable,
    Work,
    drive,
    migrations,
    run_batch,
)

T = TypeVar("T")
log = logging.getLogger("hostd")

# Password, session and key hashes: the database is its owner's alone.
DATABASE_MODE = 0o600
# How long a failed connect's thread may take to end.
THREAD_END_SECONDS = 5.0
# How long a connection waits for a lock another program holds (`sqlite3` in a shell, a
# backup tool) before its work fails as db.Unavailable.
BUSY_TIMEOUT_MS = 5000


class SqliteTx:
    """The Tx (and writer's Session) over a sqlite3 connection, on its own thread."""

    dialect = SQLITE

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._conn.execute(sql, params).fetchall()  # stepped to the end: no statement stays open

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row: Row | None = self._conn.execute(sql, params).fetchone()
        return row

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        rows: list[Row] = self._conn.execute(sql, params).fetchall()
        return rows

    async def fetchval(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self._conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    async def begin(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    async def savepoint(self) -> None:
        self._conn.execute("SAVEPOINT unit")

    async def rollback_to_savepoint(self) -> None:
        self._conn.execute("ROLLBACK TO unit")

    async def release_savepoint(self) -> None:
        self._conn.execute("RELEASE unit")

    async def commit(self) -> None:
        self._conn.execute("COMMIT")

    async def rollback(self) -> None:
        self._conn.execute("ROLLBACK")

    def in_transaction(self) -> bool:
        return self._conn.in_transaction


class DatabaseFile:
    """The file the connections opened. One deleted or replaced under a running server (a
    restore into the live data dir, a stray `rm`) is still written through the open
    descriptors: its uploads would be answered 200 and gone at the next start. So each
    batch first checks that the path still names that file (a stat, about 2 us)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        found = os.stat(path)
        self.identity = (found.st_dev, found.st_ino)

    def check(self) -> None:
        try:
            found = os.stat(self.path)
        except OSError as exc:
            raise Unavailable(f"the database file {self.path} is gone: {exc.strerror}") from exc
        if (found.st_dev, found.st_ino) != self.identity:
            raise Unavailable(
                f"the database file {self.path} was replaced while the server ran; restart it"
            )


class SqliteBackend:
    dialect = SQLITE

    def __init__(
        self, reader: aiosqlite.Connection, writer: aiosqlite.Connection, path: Path
    ) -> None:
        self.path = path
        self._reader = reader
        self._writer = writer
        self._file = DatabaseFile(path)
        # The IOLoop's own connection, for lookups and the change counter. No busy wait: a
        # WAL reader is not blocked by writers, and should it be (a recovery), a lookup goes
        # to the reader's thread instead of holding up the IOLoop.
        self._here = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._here.row_factory = sqlite3.Row
        self._here.execute("PRAGMA busy_timeout = 0").fetchall()

    @classmethod
    async def open(cls, path: Path) -> SqliteBackend:
        # Password, session and key hashes: readable by hostd's user alone. (SQLite makes
        # its -wal and -shm files with the database file's mode.)
        with contextlib.suppress(OSError):  # there already; else SQLite says what is wrong
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, DATABASE_MODE))
        owner_only(path)
        writer = await _connect(path, "PRAGMA journal_mode = WAL")
        try:
            reader = await _connect(path)
        except BaseException:
            await writer.close()
            raise
        try:
            return cls(reader, writer, path)
        except BaseException:  # the IOLoop's own connection, or the file's stat
            await writer.close()
            await reader.close()
            raise

    async def close(self) -> None:
        self._here.close()
        await self._writer.close()
        await self._reader.close()

    async def read(self, work: Work[T], snapshot: bool) -> T:
        return await _in_thread(self._reader, _read, work, snapshot)

    async def lookup(self, work: Work[T]) -> T:
        try:
            return drive(work(SqliteTx(self._here)))
        except sqlite3.OperationalError:  # busy, or worse: the reader's thread may wait
            return await self.read(work, False)

    async def drain(self, take: Callable[[], Batch | None]) -> None:
        await _in_thread(self._writer, _drain, take, self._file)

    async def migrate(self) -> int:
        return await _in_thread(self._writer, _migrate)

    async def backup(self, target: Path) -> None:
        await _in_thread(self._reader, _backup, target)

    async def watch(self, changes: Changes) -> None:
        changes.watch(self._here)

    async def check_pages(self) -> None:
        """sqlite3.DatabaseError unless quick_check finds every page whole."""
        await _in_thread(self._writer, check_pages)

    async def healthy(self) -> None:
        """The read connection proves its thread answers, but it reads through its own open
        file and page cache, so it would not notice the file being deleted, moved or damaged
        underneath it; a fresh read-only connection reads the file's header afresh."""
        uri = self.path.resolve().as_uri() + "?mode=ro"
        await _in_thread(self._reader, _check_file, uri)


def check_pages(conn: sqlite3.Connection) -> None:
    """sqlite3.DatabaseError, in a line, unless `PRAGMA quick_check` finds every page of the
    file whole: its b-trees, free list and records, without integrity_check's comparison of
    each index with its table (on 600,000 rows, 125 MB: 0.17 s against 2.2 s)."""
    (found,) = conn.execute("PRAGMA quick_check(1)").fetchone()  # (any row factory)
    if found != "ok":
        # "*** in database main ***\nPage 6: btreeInitPage() returns error code 11": one line.
        lines = [line for line in found.splitlines() if not line.startswith("***")]
        raise sqlite3.DatabaseError("quick_check: " + "; ".join(lines))


def owner_only(path: Path) -> None:
    """Take group and others' access away from the database and its -wal and -shm files: a
    copy made with the umask's 0644 (an old backup, an admin's cp) holds the same hashes."""
    for each in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if os.stat(each).st_mode & 0o077:
                os.chmod(each, DATABASE_MODE)
        except FileNotFoundError:
            pass
        except OSError as exc:  # another user's file: SQLite will say if it cannot be used
            log.warning("cannot make %s readable by its owner alone: %s", each, exc.strerror)


def _check_file(conn: sqlite3.Connection, uri: str) -> None:
    conn.execute("SELECT 1").fetchone()
    fresh = sqlite3.connect(uri, uri=True)
    try:
        fresh.execute("SELECT count(*) FROM sqlite_master").fetchone()
    finally:
        fresh.close()


def _batch(
    conn: sqlite3.Connection, works: list[Work[Any]], file: DatabaseFile
) -> list[tuple[bool, Any]]:
    file.check()
    try:
        return drive(run_batch(SqliteTx(conn), works))
    except BaseException:
        # A unit that suspended (drive refuses it) leaves its transaction open: end it, so
        # that the next batch can begin.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _drain(conn: sqlite3.Connection, take: Callable[[], Batch | None], file: DatabaseFile) -> None:
    """Batch after batch in this thread, each answered as it commits, until none is left:
    the next batch starts without waiting for the IOLoop to hear of the last."""
    while (batch := take()) is not None:
        try:
            outcomes = _batch(conn, batch.works, file)
        except Exception as exc:  # the connection itself failed: every unit fails
            outcomes = [(False, exc)] * len(batch.works)
        batch.settle(outcomes)


def _read(conn: sqlite3.Connection, work: Work[T], snapshot: bool) -> T:
    if not snapshot:
        return drive(work(SqliteTx(conn)))
    conn.execute("BEGIN")
    try:
        return drive(work(SqliteTx(conn)))
    finally:
        conn.execute("ROLLBACK")


async def _in_thread(conn: aiosqlite.Connection, fn: Callable[..., T], *args: Any) -> T:
    """Run fn(sqlite3 connection, *args) on the connection's own thread, in one trip.

    aiosqlite offers a trip per statement; a unit of work needs several statements in one
    trip, which its (long-stable) `_execute` and `_conn` give. This and _connect (its
    `_thread`) are the places that rely on its private parts.
    """
    return await conn._execute(fn, conn._conn, *args)


async def _connect(path: Path, *more_pragmas: str) -> aiosqlite.Connection:
    conn = aiosqlite.connect(path, isolation_level=None)
    try:
        await conn
    except BaseException:
        # aiosqlite stops its thread after a failed connect (a directory, no permission)
        # without waiting for it: its last answer, posted to a loop that asyncio.run() may
        # have closed meanwhile, would print "RuntimeError: Event loop is closed".
        await asyncio.to_thread(conn._thread.join, THREAD_END_SECONDS)
        raise
    conn.row_factory = sqlite3.Row
    pragmas = (
        f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",
        # Each commit waits for its fsync: an upload answered 200 survives a power loss. With
        # NORMAL, WAL mode's commits are not synced: a power loss could take the rows of the
        # last seconds' uploads, whose bytes, fsynced, would then go to gc. The writer's
        # batch shares the one fsync between every upload it commits.
        "PRAGMA synchronous = FULL",
        "PRAGMA foreign_keys = ON",
        *more_pragmas,
    )
    try:
        await _in_thread(conn, _set_pragmas, pragmas)
    except BaseException:
        await conn.close()
        raise
    return conn


def _set_pragmas(conn: sqlite3.Connection, pragmas: tuple[str, ...]) -> None:
    for pragma in pragmas:
        conn.execute(pragma).fetchall()  # stepped to the end, so no statement stays open


def _backup(conn: sqlite3.Connection, target: Path) -> None:
    with contextlib.suppress(FileExistsError):  # made before SQLite writes a byte of it
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, DATABASE_MODE))
    copy = sqlite3.connect(target)
    try:
        conn.backup(copy)
    finally:
        copy.close()


def _migrate(conn: sqlite3.Connection) -> int:
    """Apply migrations newer than `PRAGMA user_version`, each with its bump."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    for number, sql in migrations(SQLITE):
        if number <= version:
            continue
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {number:d};\nCOMMIT;"
            )
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        version = number
    return version
