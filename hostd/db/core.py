"""The Database: SQLite in WAL mode, a read connection, and one batching writer.

Every write is a *unit of work*: a plain function of a sqlite3 connection, submitted with
`await database.write(work)`. One writer takes everything queued since its last trip and
runs it in ONE trip to the write connection's thread, in one transaction with a SAVEPOINT
per unit, then answers each waiter. Concurrent uploads so share a commit, a lone one waits
for nothing, and a unit that raises fails only its own caller. Reads run on a second
connection, so they never queue behind a batch (WAL lets them see the last commit).

No caller holds a connection, a cursor or a lock; aiosqlite appears only in this module.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Generic, TypeVar

import aiosqlite

log = logging.getLogger("hostd")

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")
Work = Callable[[sqlite3.Connection], T]


def is_full(exc: BaseException) -> bool:
    """Whether a database error means the disk (or the database's size limit) is full."""
    return isinstance(exc, sqlite3.Error) and exc.sqlite_errorcode == sqlite3.SQLITE_FULL


def now() -> int:
    return int(time.time())


class Cache(Generic[K, V]):
    """A bounded map that a concurrent deletion can always win against.

    A reader that missed the cache fetches the row on another thread; if a deletion lands
    meanwhile, putting the fetched row in would bring back what was just removed. So a
    reader takes the generation before its fetch and keeps the row only if no deletion has
    happened since.
    """

    def __init__(self, size: int) -> None:
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._size = size
        self.generation = 0

    def get(self, key: K) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V, generation: int) -> None:
        if generation != self.generation:
            return
        self._entries[key] = value
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def drop(self, key: K) -> None:
        self.generation += 1
        self._entries.pop(key, None)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class Changes:
    """Tells this process's caches when another process may have changed what they hold.

    What a process remembers (blob rows, verified keys) must be refused "at once" when any
    process deletes or invalidates it. The schema's triggers bump one counter, `changes`, in
    the same commit as each such change (0009_shared_state.sql); check() reads it before a
    cache is trusted and, when it has moved, calls every subscriber to drop all it holds.
    The read is one indexed row on a connection of this thread's own, run right here on
    the IOLoop: a few microseconds, where a trip to a database thread costs tens.

    That is SQLite's way, with every process on one file. A PostgreSQL implementation backs
    the same two methods with LISTEN/NOTIFY: its triggers call pg_notify, and the listener
    calls the subscribers.
    """

    def __init__(self) -> None:
        self._drops: list[Callable[[], None]] = []
        self._conn: sqlite3.Connection | None = None
        self._seen: int | None = None

    def watch(self, path: Path) -> None:
        """Start reading the counter of the database at `path` (migrated already)."""
        # No busy wait: a WAL reader is not blocked by writers; should it ever be (a
        # recovery), check() assumes a change rather than hold up the IOLoop.
        self._conn = sqlite3.connect(path, isolation_level=None)
        self._conn.execute("PRAGMA busy_timeout = 0").fetchall()

    def subscribe(self, drop: Callable[[], None]) -> None:
        """Call `drop` (which forgets a whole cache) whenever something may have changed."""
        self._drops.append(drop)

    def check(self) -> None:
        """Before trusting a cache: drop every cache if the counter moved since last time."""
        if self._conn is None:
            return
        try:
            # fetchall(): stepped to the end, so no read transaction stays open
            version: int | None = self._conn.execute(
                "SELECT version FROM changes WHERE id = 1"
            ).fetchall()[0][0]
        except sqlite3.Error:
            version = None  # cannot tell: as if everything had changed
        if version is None or version != self._seen:
            self._seen = version
            for drop in self._drops:
                drop()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass
class WriterStats:
    """What the writer has done, for the benchmark's batch-size row and the tests."""

    commits: int = 0
    units: int = 0

    @property
    def mean_batch(self) -> float:
        return self.units / self.commits if self.commits else 0.0


class _Unit:
    __slots__ = ("dropped", "future", "taken", "work")

    def __init__(self, work: Work[Any], future: asyncio.Future[Any]) -> None:
        self.work = work
        self.future = future
        self.taken = False  # the writer has it: it will run, whatever its caller does
        self.dropped = False  # its caller went away before the writer took it


class Database:
    """SQLite for the whole process: reads on one connection, batched writes on another."""

    def __init__(
        self, reader: aiosqlite.Connection, writer: aiosqlite.Connection, path: Path
    ) -> None:
        self.path = path
        self._reader = reader
        self._writer = writer
        self._queue: list[_Unit] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.stats = WriterStats()
        # Public hash -> Blob, so that serving a known file needs no trip to SQLite's
        # thread. A blob row changes only in its expiry (as uploads of it come and go) and
        # goes with its last upload: every write that adds or removes uploads drops the
        # entry here (after its commit) when the blob changed or went. Its expiry is
        # checked against the clock on every request, cached or not. Other processes' changes
        # reach it through `changes`, checked before each use.
        self.blobs: Cache[str, Any] = Cache(4096)
        self.changes = Changes()
        self.changes.subscribe(self.blobs.clear)

    @classmethod
    async def open(cls, path: Path) -> Database:
        writer = await _connect(path, "PRAGMA journal_mode = WAL")
        try:
            reader = await _connect(path)
        except BaseException:
            await writer.close()
            raise
        database = cls(reader, writer, path)
        try:
            await database.migrate()
            database.changes.watch(path)
        except BaseException:
            await database.close()
            raise
        database._task = asyncio.get_running_loop().create_task(database._run())
        return database

    async def close(self) -> None:
        """Finish what is queued, then close both connections. Closing twice is fine."""
        if self._closing:
            return
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        await self._writer.close()
        await self._reader.close()
        self.changes.close()

    @property
    def waiting(self) -> int:
        """Writes submitted that the writer has not yet taken."""
        return sum(1 for unit in self._queue if not unit.dropped)

    # -- reads

    async def read(self, work: Work[T]) -> T:
        """Run `work` on the read connection's thread, in one trip; it sees the last commit."""
        return await _in_thread(self._reader, work)

    async def healthy(self) -> None:
        """Return when the database answers a read; raise (sqlite3.Error, OSError) when not.

        The read connection proves its thread answers, but it reads through its own open
        file and page cache, so it would not notice the file being deleted, moved or damaged
        underneath it; a fresh read-only connection reads the file's header afresh.
        """
        uri = self.path.resolve().as_uri() + "?mode=ro"
        await self.read(lambda conn: _check_file(conn, uri))

    # -- writes

    async def write(self, work: Work[T]) -> T:
        """Run `work` in the writer's next transaction, inside its own SAVEPOINT; its
        result, or its exception, comes back here.

        Cancelling the wait before the writer has taken the unit drops it unrun; after,
        the cancellation waits until the unit's transaction has ended, so that a caller
        who cleans up on cancellation sees what was committed.
        """
        if self._closing:
            raise RuntimeError("the database is closing")
        unit = _Unit(work, asyncio.get_running_loop().create_future())
        self._queue.append(unit)
        self._wakeup.set()
        try:
            return await asyncio.shield(unit.future)
        except asyncio.CancelledError:
            if not unit.taken:
                unit.dropped = True
            elif not unit.future.done():
                await asyncio.wait([unit.future])
            if unit.future.done() and not unit.future.cancelled():
                unit.future.exception()  # retrieved: nobody else will look at it
            raise

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            batch = [unit for unit in self._queue if not unit.dropped]
            self._queue = []
            for unit in batch:
                unit.taken = True
            if batch:
                try:
                    works = [unit.work for unit in batch]
                    outcomes = await _in_thread(self._writer, _run_batch, works)
                except Exception as exc:  # the thread itself failed: every unit fails
                    outcomes = [(False, exc)] * len(batch)
                self.stats.commits += 1
                self.stats.units += len(batch)
                for unit, (ok, value) in zip(batch, outcomes, strict=True):
                    if ok:
                        unit.future.set_result(value)
                    else:
                        unit.future.set_exception(value)
            if self._closing and not self._queue:
                return

    async def backup(self, target: Path) -> None:
        """A consistent copy of the whole database at `target`, while others keep writing
        (SQLite's online backup API, on the read connection's thread)."""
        await self.read(lambda conn: _backup(conn, target))

    # -- migrations

    async def migrate(self) -> int:
        """Apply migrations newer than `PRAGMA user_version`, each in its own transaction
        together with its version bump. Returns the version reached."""
        return await _in_thread(self._writer, _migrate)


async def _in_thread(conn: aiosqlite.Connection, fn: Callable[..., T], *args: Any) -> T:
    """Run fn(sqlite3 connection, *args) on the connection's own thread, in one trip.

    aiosqlite offers a trip per statement; a unit of work needs several statements in one
    trip, which its (long-stable) `_execute` and `_conn` give. This is the one place that
    relies on them.
    """
    return await conn._execute(fn, conn._conn, *args)


async def _connect(path: Path, *more_pragmas: str) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    pragmas = (
        "PRAGMA busy_timeout = 5000",
        "PRAGMA synchronous = NORMAL",
        "PRAGMA foreign_keys = ON",
        *more_pragmas,
    )
    try:
        await _in_thread(conn, _set_pragmas, pragmas)
    except BaseException:
        await conn.close()
        raise
    return conn


def _check_file(conn: sqlite3.Connection, uri: str) -> None:
    conn.execute("SELECT 1").fetchone()
    fresh = sqlite3.connect(uri, uri=True)
    try:
        fresh.execute("SELECT count(*) FROM sqlite_master").fetchone()
    finally:
        fresh.close()


def _set_pragmas(conn: sqlite3.Connection, pragmas: tuple[str, ...]) -> None:
    for pragma in pragmas:
        conn.execute(pragma).fetchall()  # stepped to the end, so no statement stays open


def _run_batch(conn: sqlite3.Connection, works: list[Work[Any]]) -> list[tuple[bool, Any]]:
    """Run the units in one transaction, each inside a SAVEPOINT; (ok, result or error)
    for each. A unit that raises is rolled back alone. If SQLite ends the whole
    transaction itself (it may, on a full disk or an I/O error), the units that had
    succeeded run again in a fresh one, without the one that failed. If BEGIN or COMMIT
    fails, every unit of that transaction fails with it."""
    outcomes: dict[int, tuple[bool, Any]] = {}
    pending = list(range(len(works)))
    while pending:
        try:
            conn.execute("BEGIN IMMEDIATE")
            again = _run_units(conn, works, pending, outcomes)
            if again is None:
                conn.execute("COMMIT")
                break
            pending = again
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for index in pending:
                outcomes[index] = (False, exc)
            break
    return [outcomes[index] for index in range(len(works))]


def _run_units(
    conn: sqlite3.Connection,
    works: list[Work[Any]],
    pending: list[int],
    outcomes: dict[int, tuple[bool, Any]],
) -> list[int] | None:
    """None when every pending unit has run; else the units to run again, because SQLite
    ended the transaction when one of them failed."""
    for index in pending:
        conn.execute("SAVEPOINT unit")
        try:
            outcomes[index] = (True, works[index](conn))
        except Exception as exc:
            outcomes[index] = (False, exc)
            if not conn.in_transaction:
                again = [i for i in pending if i != index and outcomes.get(i, (True,))[0]]
                for i in again:
                    outcomes.pop(i, None)
                return again
            conn.execute("ROLLBACK TO unit")
        conn.execute("RELEASE unit")
    return None


def _backup(conn: sqlite3.Connection, target: Path) -> None:
    copy = sqlite3.connect(target)
    try:
        conn.backup(copy)
    finally:
        copy.close()


def _migrations() -> list[tuple[int, str]]:
    found = []
    for entry in resources.files("hostd.migrations").iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8")))
    return sorted(found)


def latest_version() -> int:
    return _migrations()[-1][0]


def _migrate(conn: sqlite3.Connection) -> int:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    for number, sql in _migrations():
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


def schema_version(conn: sqlite3.Connection) -> int:
    """`PRAGMA user_version`: the last migration applied (for `database.read`)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])
