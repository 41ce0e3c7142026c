"""The Database: one batching writer and bounded reads, on SQLite or PostgreSQL.

Every query is a *unit of work*: `async def work(tx: Tx) -> T`, submitted with
`await database.write(work)`, `await database.read(work)` or, for a row or two by an index,
`await database.lookup(work)`. Its SQL is written once with `?` placeholders; each
dialect's Tx runs it (PostgreSQL's rewrites the marks to $n). One writer takes everything
queued since its last trip and runs it in one transaction (again with a SAVEPOINT per unit
should one fail), then answers each waiter: concurrent uploads share a commit, a lone one
waits for nothing, and a unit that raises fails only its own caller.

On SQLite the Tx's methods are coroutines that never suspend (sqlite3 is synchronous), so
a whole batch, or a read, runs as one coroutine driven to its end on the connection's own
thread: one trip per batch, as before units were coroutines. That thread then takes the
next batch itself (Backend.drain), as soon as one commits: a busy IOLoop, parsing other
uploads' bodies, would otherwise hold the next commit back. On PostgreSQL they are
asyncpg's awaits, and the drain runs on the IOLoop. Units hold no connection, cursor or
lock of their own.

No driver type (sqlite3, aiosqlite, asyncpg) appears in a signature outside hostd/db/;
the dialects live in sqlite.py and postgres.py.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from hostd.config import Config

log = logging.getLogger("hostd")

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")

SQLITE = "sqlite"
POSTGRESQL = "postgresql"
# How long a process trusts its list of banned SHA-256s (BanList), and how many it keeps.
BAN_LIST_SECONDS = 5.0
BAN_LIST_LIMIT = 100_000


class Row(Protocol):
    """A result row (sqlite3.Row or asyncpg.Record): by column name or position; iterating
    gives the values, keys() the column names."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...

    def keys(self) -> Iterable[str]: ...


class Tx(Protocol):
    """What a unit of work may do: SQL with `?` placeholders, in its unit's transaction (a
    write) or in the last commit's view (a read)."""

    dialect: str  # SQLITE or POSTGRESQL, for the few statements that must differ

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    async def fetchval(self, sql: str, params: Sequence[Any] = ()) -> Any: ...


Work = Callable[[Tx], Coroutine[Any, Any, T]]


class Session(Tx, Protocol):
    """A Tx together with what the writer does around the units (inside hostd/db only)."""

    async def begin(self) -> None: ...

    async def savepoint(self) -> None: ...

    async def rollback_to_savepoint(self) -> None: ...

    async def release_savepoint(self) -> None: ...

    async def commit(self) -> None: ...

    async def rollback(self) -> None: ...

    def in_transaction(self) -> bool: ...


class Backend(Protocol):
    """One dialect's connections (sqlite.py, postgres.py)."""

    dialect: str

    async def read(self, work: Work[T], snapshot: bool) -> T: ...

    async def lookup(self, work: Work[T]) -> T: ...

    async def drain(self, take: Callable[[], Batch | None]) -> None:
        """Run each batch `take` hands out in one transaction (run_batch) and settle it,
        until `take` hands out None: in whichever thread the dialect writes."""
        ...

    async def migrate(self) -> int: ...

    async def backup(self, target: Path) -> None: ...

    async def watch(self, changes: Changes) -> None: ...

    async def healthy(self) -> None: ...

    async def check_pages(self) -> None: ...

    async def close(self) -> None: ...


class Unsupported(Exception):
    """This database cannot do that (`hostd backup` on PostgreSQL)."""


class Unavailable(Exception):
    """The database did not take the work: another program held SQLite's write lock past
    the busy timeout, or PostgreSQL could not be reached. Nothing of the work was written;
    it may be tried again. (The driver's error is its __cause__.)"""


class CannotOpen(Exception):
    """The database cannot be opened: a file that is not an SQLite database or is damaged,
    a PostgreSQL server out of reach or refusing the login. The message says which, in a
    line for the admin (no password in it)."""


def cannot_open(target: str | Path, exc: BaseException) -> CannotOpen:
    if is_postgresql_url(target):
        url = urllib.parse.urlsplit(str(target))
        where = url.hostname or "its socket"
        return CannotOpen(f"cannot open the database: PostgreSQL at {where}{url.path}: {exc}")
    path = sqlite_path(target)
    if type(exc) is sqlite3.DatabaseError:  # SQLITE_NOTADB, SQLITE_CORRUPT
        return CannotOpen(
            f"cannot open the database: {path}: {exc}; restore the data dir from a backup"
            " (hostd restore), or move the file away to start with an empty database"
        )
    return CannotOpen(f"cannot open the database: {path}: {exc}")


def is_unavailable(exc: BaseException) -> bool:
    """Whether a driver's error says the database is busy or out of reach, rather than that
    the work was wrong."""
    if isinstance(exc, sqlite3.OperationalError):
        code = getattr(exc, "sqlite_errorcode", None)  # extended codes keep it in the low byte
        return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    # PostgreSQL's socket refused, gone, broken or timed out (SQLite's own I/O errors are
    # sqlite3 errors).
    if isinstance(exc, OSError):
        return True
    sqlstate = getattr(exc, "sqlstate", None) or ""
    # 08: connection exceptions; 57P01-57P03: shutting down, crashed, starting; 53300: no
    # connection slot left.
    return sqlstate.startswith("08") or sqlstate in ("57P01", "57P02", "57P03", "53300")


class _DriverErrors:
    """`with self._driver_errors:` lets a busy or unreachable database out as Unavailable,
    whichever driver said so, and remembers the first error that says the database is
    damaged, for healthy() to report from then on. (A class, not @contextmanager: it wraps
    every read and write, and costs two calls where a generator costs several.)"""

    __slots__ = ("damaged",)

    def __init__(self) -> None:
        self.damaged: str | None = None

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if not isinstance(exc, Exception) or isinstance(exc, Unavailable):
            return
        if is_unavailable(exc):
            raise Unavailable(f"the database is busy or cannot be reached: {exc}") from exc
        if is_damaged(exc) and not isinstance(exc, Damaged):
            if self.damaged is None:
                self.damaged = str(exc)
            raise Damaged(str(exc)) from exc


class Damaged(Unavailable):
    """A database whose file or pages are not whole (a backup's copy quick_check finds so,
    or the one served, once a statement has said so); the message says what was found.
    Served, it is out of reach as far as a request is concerned (a 503, one log line), and
    takes no more writes (Database.write)."""


# -- errors, whichever driver raised them ----------------------------------------------

_KEY_COLUMNS = re.compile(r"Key \(([^)]*)\)=")


def is_full(exc: BaseException) -> bool:
    """Whether a database error means the disk (or the database's size limit) is full."""
    if isinstance(exc, sqlite3.Error):  # only errors from SQLite itself carry a code
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return getattr(exc, "sqlstate", None) == "53100"  # PostgreSQL's disk_full


def is_damaged(exc: BaseException) -> bool:
    """Whether a database error means its file or pages are damaged (SQLite's "database disk
    image is malformed", PostgreSQL's data_corrupted and index_corrupted)."""
    if isinstance(exc, Damaged):
        return True
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code is not None and code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    return getattr(exc, "sqlstate", None) in ("XX001", "XX002")


def conflicts(exc: BaseException, table: str, column: str) -> bool:
    """Whether exc is a unique violation that involves `table.column`."""
    if isinstance(exc, sqlite3.IntegrityError):
        message = str(exc)
        return message.startswith("UNIQUE constraint failed") and f"{table}.{column}" in message
    if getattr(exc, "sqlstate", None) != "23505" or getattr(exc, "table_name", None) != table:
        return False
    found = _KEY_COLUMNS.search(getattr(exc, "detail", None) or "")
    if found is None:  # no detail: the constraint's name still says which
        return column in (getattr(exc, "constraint_name", None) or "")
    return column in [name.strip() for name in found.group(1).split(",")]


def is_integrity_error(exc: BaseException) -> bool:
    """A constraint (or a trigger standing for one) refused the statement."""
    if isinstance(exc, sqlite3.IntegrityError):
        return True
    return str(getattr(exc, "sqlstate", "")).startswith("23")


def violates_foreign_key(exc: BaseException) -> bool:
    """A row named another that is not there (any longer): SQLite's FOREIGN KEY constraint,
    PostgreSQL's foreign_key_violation."""
    if isinstance(exc, sqlite3.IntegrityError):
        return str(exc).startswith("FOREIGN KEY constraint failed")
    return getattr(exc, "sqlstate", None) == "23503"


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


class BanList:
    """The banned SHA-256s, as this process last read them, so that an upload need not ask
    the database before it places its bytes. Trusted for BAN_LIST_SECONDS: a ban made
    meanwhile by another process (`hostd file rm --ban`) still stops the upload's row (the
    schema's triggers, 0006_moderation.sql), and a ban lifted meanwhile is looked up again
    before anything is refused (moderation.find_ban). None: over BAN_LIST_LIMIT bans, too
    many to keep; each upload asks the database."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._banned: frozenset[str] | None = None
        self._expires = clock()  # when to read them again
        self._reading: asyncio.Future[None] | None = None

    async def get(
        self, read: Callable[[], Coroutine[Any, Any, frozenset[str] | None]]
    ) -> frozenset[str] | None:
        """The list, read again with `read` (one read at a time) when it is out of date."""
        if self._clock() >= self._expires:
            if self._reading is None:
                self._reading = asyncio.ensure_future(self._read(read))
            await asyncio.shield(self._reading)
        return self._banned

    async def _read(self, read: Callable[[], Coroutine[Any, Any, frozenset[str] | None]]) -> None:
        try:
            started = self._clock()
            self._banned = await read()
            self._expires = started + BAN_LIST_SECONDS
        finally:
            self._reading = None

    def forget(self) -> None:
        """This process banned or lifted a ban: read the list again before its next use."""
        self._expires = self._clock()


class Changes:
    """Tells this process's caches when another process may have changed what they hold.

    What a process remembers (blob rows, verified keys) must be refused "at once" when any
    process deletes or invalidates it. The schema's triggers announce each such change in
    the same commit (0009_shared_state.sql); every subscriber then drops all it holds.

    On SQLite the triggers bump one counter, `changes`; check() reads it before a cache is
    trusted and drops everything when it has moved. The read is one indexed row on a
    connection of this thread's own, run right here on the IOLoop: a few microseconds, where
    a trip to a database thread costs tens. It is made once per turn of the event loop, for
    every request that checks in that turn: a request whose bytes arrive after another
    process's commit is read by a later turn's select, and its check comes after the
    callback that ends the turn's reading (scheduled when it was made), so it still sees
    the change. (sqlite3 lets go of the GIL for the read: the IOLoop then waited its turn
    for the GIL, and py-spy put the check at 3% of its time with an API key.)

    On PostgreSQL the triggers also call pg_notify('hostd_changes'); a connection of its own
    LISTENs (postgres.ChangeListener) and calls drop_all() as each commit's notice arrives,
    so check() costs nothing. The writer's connection listens too, so that this process's
    own changes drop its caches before the unit that made them returns. While the listener's
    connection is lost, the caches cannot be told anything: `blind` is set, and check()
    drops everything every time until it is back.
    """

    def __init__(self) -> None:
        self._drops: list[Callable[[], None]] = []
        self._conn: sqlite3.Connection | None = None
        self._seen: int | None = None
        self._read_in: asyncio.AbstractEventLoop | None = None  # this turn's, if read in it
        self.blind = False
        self.notices = 0  # PostgreSQL: how many notices the listener has heard
        self.losses = 0  # PostgreSQL: how often the listener's connection was lost

    def heard(self) -> None:
        """PostgreSQL's listener heard a change notice."""
        self.notices += 1
        self.drop_all()

    def watch(self, conn: sqlite3.Connection) -> None:
        """Start reading the counter through `conn`, the SQLite backend's IOLoop connection
        (with no busy wait: a WAL reader is not blocked by writers; should it ever be, in a
        recovery, check() assumes a change rather than hold up the IOLoop)."""
        self._conn = conn

    def subscribe(self, drop: Callable[[], None]) -> None:
        """Call `drop` (which forgets a whole cache) whenever something may have changed."""
        self._drops.append(drop)

    def drop_all(self) -> None:
        for drop in self._drops:
            drop()

    def check(self) -> None:
        """Before trusting a cache: drop every cache if anything may have changed since."""
        if self.blind:
            self.drop_all()
            return
        if self._conn is None:
            return
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            if self._read_in is loop:
                return  # read in this turn of the loop already
            self._read_in = loop
            loop.call_soon(self._next_turn)
        try:
            # fetchall(): stepped to the end, so no read transaction stays open
            version: int | None = self._conn.execute(
                "SELECT version FROM changes WHERE id = 1"
            ).fetchall()[0][0]
        except sqlite3.Error:
            version = None  # cannot tell: as if everything had changed
        if version is None or version != self._seen:
            self._seen = version
            self.drop_all()

    def _next_turn(self) -> None:
        self._read_in = None

    def close(self) -> None:
        self._conn = None  # the backend's, which closes it


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


class Batch:
    """Units the writer took together: their works, and where their outcomes go."""

    __slots__ = ("_loop", "_stats", "_units", "works")

    def __init__(
        self, units: list[_Unit], stats: WriterStats, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._units = units
        self._stats = stats
        self._loop = loop
        self.works = [unit.work for unit in units]

    def settle(self, outcomes: list[tuple[bool, Any]]) -> None:
        """Answer each unit's caller, from any thread (the IOLoop does it)."""
        self._loop.call_soon_threadsafe(self._answer, outcomes)

    def _answer(self, outcomes: list[tuple[bool, Any]]) -> None:
        self._stats.commits += 1
        self._stats.units += len(self._units)
        for unit, (ok, value) in zip(self._units, outcomes, strict=True):
            if ok:
                unit.future.set_result(value)
            else:
                unit.future.set_exception(value)


async def drain_here(
    run_batch: Callable[[list[Work[Any]]], Coroutine[Any, Any, list[tuple[bool, Any]]]],
    take: Callable[[], Batch | None],
) -> None:
    """A backend's drain on the IOLoop: run each batch `take` hands out until it has none."""
    while (batch := take()) is not None:
        try:
            outcomes = await run_batch(batch.works)
        except Exception as exc:  # the connection itself failed: every unit fails
            outcomes = [(False, exc)] * len(batch.works)
        batch.settle(outcomes)


def is_postgresql_url(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def sqlite_path(target: str | Path) -> Path:
    """The file of a SQLite target: a path, or a sqlite:///path URL."""
    if isinstance(target, Path):
        return target
    if target.startswith("sqlite:///"):
        return Path(target[len("sqlite://") :])
    if target.startswith("sqlite://"):
        raise ValueError(f"{target}: a SQLite URL is sqlite:///path (three slashes)")
    return Path(target)


class Database:
    """The process's database: reads through its backend, writes through one batching
    writer. `open()` picks the dialect from the target (a path or a URL)."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self.dialect = backend.dialect
        # The queue, between the IOLoop and a drain that may run in the writer's thread.
        self._lock = threading.Lock()
        self._queue: list[_Unit] = []
        self._draining = False
        self._closing = False
        self._drain: asyncio.Task[None] | None = None
        self.stats = WriterStats()
        # Public hash -> Blob, so that serving a known file needs no trip to the
        # database. A blob row changes only in its expiry (as uploads of it come and go) and
        # goes with its last upload: every write that adds or removes uploads drops the
        # entry here (after its commit) when the blob changed or went. Its expiry is
        # checked against the clock on every request, cached or not. Other processes' changes
        # reach it through `changes`, checked before each use.
        self.blobs: Cache[str, Any] = Cache(4096)
        self.changes = Changes()
        self.changes.subscribe(self.blobs.clear)
        self.bans = BanList()
        self._driver_errors = _DriverErrors()

    @classmethod
    async def open(
        cls,
        target: str | Path,
        *,
        password: str | None = None,
        migrate: bool = True,
        check_pages: bool = False,
    ) -> Database:
        """Open (and unless told otherwise, migrate) the database at `target`: a SQLite
        file's path, sqlite:///path, or postgresql://user@host:port/name. `check_pages`:
        first make sure every page of a SQLite file is whole (quick_check, 0.17 s on 125
        MB), as `hostd serve` does: a server writing into a damaged b-tree spreads the
        damage, and its requests fail one by one where it could say so once."""
        backend: Backend
        try:
            if is_postgresql_url(target):
                from hostd.db.postgres import PostgresBackend

                backend = await PostgresBackend.open(str(target), password=password)
            else:
                from hostd.db.sqlite import SqliteBackend

                backend = await SqliteBackend.open(sqlite_path(target))
        except Exception as exc:  # whatever the driver says, it is the one line to show
            raise cannot_open(target, exc) from exc
        if check_pages:
            try:
                await backend.check_pages()
            except BaseException as exc:
                await backend.close()
                if type(exc) is sqlite3.DatabaseError:
                    raise cannot_open(target, sqlite3.DatabaseError(f"damaged, {exc}")) from exc
                raise
        database = cls(backend)
        try:
            if migrate:
                await database.migrate()
            await backend.watch(database.changes)
        except BaseException as exc:
            await database.close()
            if type(exc) is sqlite3.DatabaseError:  # damage found past the first page
                raise cannot_open(target, exc) from exc
            raise
        return database

    @classmethod
    async def open_config(
        cls, config: Config, *, migrate: bool = True, check_pages: bool = False
    ) -> Database:
        """The configured database: database.url, or the data dir's SQLite file."""
        return await cls.open(
            config.database,
            password=config.database_password(),
            migrate=migrate,
            check_pages=check_pages,
        )

    async def close(self) -> None:
        """Finish what is queued, then close the connections. Closing twice is fine."""
        if self._closing:
            return
        self._closing = True
        if self._drain is not None:
            await self._drain
        await self._backend.close()
        self.changes.close()

    @property
    def waiting(self) -> int:
        """Writes submitted that the writer has not yet taken."""
        return sum(1 for unit in self._queue if not unit.dropped)

    # -- reads

    async def read(self, work: Work[T], *, snapshot: bool = False) -> T:
        """Run `work` outside the writer; it sees the last commit. With snapshot, all its
        statements see the same one (a read transaction)."""
        with self._driver_errors:
            return await self._backend.read(work, snapshot)

    async def lookup(self, work: Work[T]) -> T:
        """A read of a row or two by an index (a ban, an account, a blob by its hash), which
        the hot paths make on every request. On SQLite it runs right here on the IOLoop, on a
        connection of this thread's own: a few microseconds, where a trip to the reader's
        thread costs tens and hands the GIL back and forth. Never give it a scan. On
        PostgreSQL it is read()."""
        with self._driver_errors:
            return await self._backend.lookup(work)

    async def healthy(self) -> None:
        """Return when the database answers a read; raise (the driver's error, OSError)
        when not, and Damaged once any statement has found the database damaged."""
        if self._driver_errors.damaged is not None:
            raise Damaged(self._driver_errors.damaged)
        await self._backend.healthy()

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
        if self._driver_errors.damaged is not None:  # writes into the damage would spread it
            raise Damaged(self._driver_errors.damaged)
        loop = asyncio.get_running_loop()
        unit = _Unit(work, loop.create_future())
        with self._lock:
            self._queue.append(unit)
            start, self._draining = not self._draining, True
        if start:
            self._drain = loop.create_task(self._run(loop))
        try:
            with self._driver_errors:
                return await asyncio.shield(unit.future)
        except asyncio.CancelledError:
            with self._lock:
                if not unit.taken:
                    unit.dropped = True
            if not unit.dropped and not unit.future.done():
                await asyncio.wait([unit.future])
            if unit.future.done() and not unit.future.cancelled():
                unit.future.exception()  # retrieved: nobody else will look at it
            raise

    async def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        """A drain: the backend runs batches until the queue is empty."""

        def take() -> Batch | None:
            with self._lock:
                units = [unit for unit in self._queue if not unit.dropped]
                self._queue = []
                for unit in units:
                    unit.taken = True
                if not units:
                    self._draining = False
                    return None
            return Batch(units, self.stats, loop)

        try:
            await self._backend.drain(take)
        except BaseException:
            with self._lock:
                self._draining = False
            raise

    async def backup(self, target: Path) -> None:
        """A consistent copy of the whole database in a SQLite file at `target`, while
        others keep writing (SQLite only: Unsupported on PostgreSQL)."""
        await self._backend.backup(target)

    # -- migrations

    async def migrate(self) -> int:
        """Apply the dialect's migrations newer than the database's version, each in its
        own transaction together with its version bump. Returns the version reached."""
        return await self._backend.migrate()


# -- the batch, the same on both dialects ----------------------------------------------


async def run_batch(session: Session, works: list[Work[Any]]) -> list[tuple[bool, Any]]:
    """Run the units in one transaction; (ok, result or error) for each.

    First without savepoints: failing units are rare (a quota reached, banned bytes), and
    a savepoint costs two statements per unit (on PostgreSQL two round trips; on SQLite two
    steps, each handing the GIL to the IOLoop and back). Only if a unit fails is that
    transaction rolled back and the batch run again with a SAVEPOINT per unit, so that the
    failing unit is rolled back alone; units are functions of their Tx alone, so running
    one twice is safe. If the database ends the whole transaction itself (SQLite may, on a
    full disk or an I/O error), the units that had succeeded run again in a fresh one,
    without the one that failed. If BEGIN or COMMIT fails, every unit of that transaction
    fails with it."""
    results = await _run_without_savepoints(session, works)
    if results is not None:
        return results
    outcomes: dict[int, tuple[bool, Any]] = {}
    pending = list(range(len(works)))
    while pending:
        try:
            await session.begin()
            again = await _run_units(session, works, pending, outcomes)
            if again is None:
                await session.commit()
                break
            pending = again
        except Exception as exc:
            if session.in_transaction():
                try:
                    await session.rollback()
                except Exception:
                    log.exception("database: rolling back a failed batch failed too")
            for index in pending:
                outcomes[index] = (False, exc)
            break
    return [outcomes[index] for index in range(len(works))]


async def _run_without_savepoints(
    session: Session, works: list[Work[Any]]
) -> list[tuple[bool, Any]] | None:
    """Every unit's result, committed together; None (rolled back) if anything failed. A
    BEGIN that fails (the database busy or gone) fails them all, without a second try."""
    results = []
    await session.begin()
    try:
        for work in works:
            results.append((True, await work(session)))
        await session.commit()
    except Exception:
        if session.in_transaction():
            try:
                await session.rollback()
            except Exception:
                log.exception("database: rolling back a failed batch failed too")
        return None
    return results


async def _run_units(
    session: Session,
    works: list[Work[Any]],
    pending: list[int],
    outcomes: dict[int, tuple[bool, Any]],
) -> list[int] | None:
    """None when every pending unit has run; else the units to run again, because the
    database ended the transaction when one of them failed."""
    for index in pending:
        await session.savepoint()
        try:
            outcomes[index] = (True, await works[index](session))
        except Exception as exc:
            outcomes[index] = (False, exc)
            if not session.in_transaction():
                again = [i for i in pending if i != index and outcomes.get(i, (True,))[0]]
                for i in again:
                    outcomes.pop(i, None)
                return again
            await session.rollback_to_savepoint()
        await session.release_savepoint()
    return None


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (SQLite's units) to its end, here and now."""
    try:
        coro.send(None)
    except StopIteration as stop:
        value: T = stop.value
        return value
    coro.close()
    raise RuntimeError("a unit of work suspended on SQLite: it may await only its Tx")


# -- migrations ------------------------------------------------------------------------


def migrations(dialect: str) -> list[tuple[int, str]]:
    """(number, SQL) of each migration of the dialect, in order: SQLite's are
    hostd/migrations/NNNN_*.sql, PostgreSQL's hostd/migrations/postgresql/NNNN_*.sql."""
    folder = resources.files("hostd.migrations")
    if dialect == POSTGRESQL:
        folder = folder / "postgresql"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8")))
    return sorted(found)


def latest_version() -> int:
    return migrations(SQLITE)[-1][0]


async def schema_version(tx: Tx) -> int:
    """The last migration applied (for `database.read`)."""
    if tx.dialect == SQLITE:
        return int(await tx.fetchval("PRAGMA user_version"))
    version = await tx.fetchval("SELECT max(version) FROM hostd_schema")
    return int(version or 0)
