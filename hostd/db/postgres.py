"""PostgreSQL through asyncpg: a bounded pool for reads, one connection for the writer.

The SQL is the same text as SQLite's, with `?` placeholders rewritten to $1, $2, ... once
per statement (asyncpg then prepares and caches it per connection). The writer's batch is
the same algorithm as on SQLite (core.run_batch), tried first without savepoints (each is a
round trip here): a batch then costs two round trips (BEGIN, COMMIT) more than its units'
own statements, however many units it holds. When a unit fails, the batch runs again with
a savepoint per unit; their BEGIN, SAVEPOINT, RELEASE and COMMIT then ride along with one
another as one simple-protocol message.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from hostd.db.core import (
    POSTGRESQL,
    Batch,
    Changes,
    Row,
    Unsupported,
    Work,
    drain_here,
    migrations,
    now,
    run_batch,
)

T = TypeVar("T")
log = logging.getLogger("hostd")

READ_POOL_SIZE = 8
# pg_advisory_lock's key while migrating: instances that start together take turns.
MIGRATION_LOCK = 0x686F737464  # "hostd"
# The channel 0009_shared_state.sql's triggers notify (core.Changes).
CHANGES_CHANNEL = "hostd_changes"
RECONNECT_SECONDS = (0.1, 0.5, 1.0, 2.0, 5.0)
# How long a statement, or a connection being made, may go unanswered before the database
# counts as out of reach (a 503, as when it is down). A PostgreSQL that is frozen rather
# than down (a stopped VM, a network partition) answers nothing and closes nothing: without
# a limit every request that reads or writes would wait for it forever. Migrations have
# none (MIGRATION_SECONDS): an index over a big table may take long.
STATEMENT_SECONDS = 5.0
CONNECT_SECONDS = 5.0
MIGRATION_SECONDS = 24 * 3600.0


class OneLineFromDriver(logging.Filter):
    """asyncpg's pool logs each failed try to reconnect with the traceback (some 20 lines,
    again and again while PostgreSQL is down): the event is kept, as one line ending with
    the error."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            error = " ".join(str(exc).split()) or "(no message)"
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {error}"
            record.args = None
            record.exc_info = record.exc_text = None
        return True


ONE_LINE_FROM_DRIVER = OneLineFromDriver()  # one instance: addFilter() adds it once


def _connect(url: str, password: str | None) -> Any:
    """asyncpg.connect with hostd's time limits."""
    return asyncpg.connect(
        url, password=password, timeout=CONNECT_SECONDS, command_timeout=STATEMENT_SECONDS
    )


@functools.lru_cache(maxsize=1024)
def dollar_placeholders(sql: str) -> str:
    """`?` -> $1, $2, ... outside quoted strings and identifiers."""
    out: list[str] = []
    number = 0
    quote: str | None = None
    for char in sql:
        if quote is not None:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "?":
            number += 1
            out.append(f"${number}")
            continue
        out.append(char)
    return "".join(out)


class _DroppedAsUnreachable:
    """`with self._dropped:` makes asyncpg's InterfaceError on a connection closed before or
    during a statement what it is, the database out of reach (a ConnectionError, a 503). It
    happens after a statement timed out on a frozen server, as the batch goes on to its
    retry: asyncpg drops the connection when its request to cancel that statement fails,
    maybe while the next statement waits for it. (A class, not @contextmanager: it wraps
    every statement.)"""

    __slots__ = ("conn",)

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, asyncpg.InterfaceError) and self.conn.is_closed():
            raise ConnectionError("the connection to PostgreSQL was closed") from exc


class PostgresTx:
    """The Tx (and writer's Session) over one asyncpg connection."""

    dialect = POSTGRESQL

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self._pending: list[str] = []  # transaction control not yet sent
        self._dropped = _DroppedAsUnreachable(conn)

    async def _flush(self, *then: str) -> None:
        commands, self._pending = [*self._pending, *then], []
        if commands:
            with self._dropped:
                await self._conn.execute("; ".join(commands))

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        await self._flush()
        with self._dropped:
            await self._conn.execute(dollar_placeholders(sql), *params)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._flush()
        with self._dropped:
            await self._conn.executemany(dollar_placeholders(sql), rows)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        await self._flush()
        with self._dropped:
            row: Row | None = await self._conn.fetchrow(dollar_placeholders(sql), *params)
        return row

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        await self._flush()
        with self._dropped:
            rows: list[Row] = await self._conn.fetch(dollar_placeholders(sql), *params)
        return rows

    async def fetchval(self, sql: str, params: Sequence[Any] = ()) -> Any:
        await self._flush()
        with self._dropped:
            return await self._conn.fetchval(dollar_placeholders(sql), *params)

    async def begin(self) -> None:
        self._pending.append("BEGIN")

    async def savepoint(self) -> None:
        self._pending.append("SAVEPOINT unit")

    async def rollback_to_savepoint(self) -> None:
        await self._flush("ROLLBACK TO SAVEPOINT unit")

    async def release_savepoint(self) -> None:
        self._pending.append("RELEASE SAVEPOINT unit")

    async def commit(self) -> None:
        await self._flush("COMMIT")

    async def rollback(self) -> None:
        self._pending = []
        with self._dropped:
            await self._conn.execute("ROLLBACK")

    def in_transaction(self) -> bool:
        if self._conn.is_closed():  # asyncpg drops a connection whose statement timed out
            return False
        return bool(self._pending) or self._conn.is_in_transaction()


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Units of work leave no session state behind (no SET, LISTEN, cursor or lock), so a
    connection going back to the pool needs no reset: asyncpg's default would cost every
    read a second round trip. (An open transaction is still rolled back by asyncpg.)"""


class ChangeListener:
    """A connection of its own that LISTENs on hostd_changes and tells `changes` of every
    notice (see core.Changes). When the connection is lost, the caches are dropped and
    kept blind until it is back: a change made meanwhile would otherwise go unheard."""

    def __init__(self, url: str, password: str | None, changes: Changes) -> None:
        self._url = url
        self._password = password
        self._changes = changes
        self._conn: asyncpg.Connection | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        self._conn = await self._listen()

    async def _listen(self) -> asyncpg.Connection:
        conn = await _connect(self._url, self._password)
        try:
            conn.add_termination_listener(self._lost)
            await conn.add_listener(CHANGES_CHANNEL, self._notified)
        except BaseException:
            await conn.close()
            raise
        return conn

    def _notified(self, conn: object, pid: int, channel: str, payload: object) -> None:
        self._changes.heard()

    def _lost(self, conn: object) -> None:
        if self._closing or conn is not self._conn:
            return
        self._conn = None
        self._changes.losses += 1
        self._changes.blind = True
        self._changes.drop_all()
        log.warning("database: the change listener's connection was lost; reconnecting")
        self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        attempt = 0
        while not self._closing:
            try:
                conn = await self._listen()
            except (OSError, asyncpg.PostgresError, TimeoutError):
                await asyncio.sleep(RECONNECT_SECONDS[min(attempt, len(RECONNECT_SECONDS) - 1)])
                attempt += 1
                continue
            if self._closing:
                await conn.close()
                return
            self._conn = conn
            # Listening again: what changed while blind is no longer in any cache, and
            # what a read begun before now would put in is refused (Cache.generation).
            self._changes.blind = False
            self._changes.drop_all()
            log.info("database: the change listener is back")
            return

    async def close(self) -> None:
        self._closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnecting
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await conn.close(timeout=5)


class PostgresBackend:
    dialect = POSTGRESQL

    def __init__(
        self, reads: asyncpg.Pool, writer: asyncpg.Connection, url: str, password: str | None
    ) -> None:
        self._reads = reads
        self._writer: asyncpg.Connection | None = writer
        self._url = url
        self._password = password
        self._changes: Changes | None = None
        self._listener: ChangeListener | None = None

    @classmethod
    async def open(cls, url: str, *, password: str | None = None) -> PostgresBackend:
        """A password not given here comes from PGPASSWORD or ~/.pgpass (asyncpg reads
        both, as libpq does)."""
        logging.getLogger("asyncpg.pool").addFilter(ONE_LINE_FROM_DRIVER)
        reads = await asyncpg.create_pool(
            url,
            password=password,
            min_size=1,
            max_size=READ_POOL_SIZE,
            reset=_keep_session,
            timeout=CONNECT_SECONDS,
            command_timeout=STATEMENT_SECONDS,
        )
        try:
            writer = await _connect(url, password)
        except BaseException:
            await reads.close()
            raise
        return cls(reads, writer, url, password)

    async def _writer_connection(self) -> asyncpg.Connection:
        """The writer's own connection, opened again after a failure. Once watching, it
        LISTENs too: PostgreSQL hands a session its own notices after its COMMIT and before
        the COMMIT's answer, so this process's caches are dropped before the unit that
        changed something returns to its caller (other processes hear it from their
        listener, a few milliseconds later)."""
        conn = self._writer
        if conn is None or conn.is_closed():
            self._writer = None
            conn = await _connect(self._url, self._password)
            try:
                if self._changes is not None:
                    await conn.add_listener(CHANGES_CHANNEL, self._own_notice)
            except BaseException:
                await conn.close()
                raise
            self._writer = conn
        return conn

    def _own_notice(self, conn: object, pid: int, channel: str, payload: object) -> None:
        if self._changes is not None:
            self._changes.drop_all()

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()
        if self._writer is not None:
            conn, self._writer = self._writer, None
            await conn.close()
        await self._reads.close()

    async def watch(self, changes: Changes) -> None:
        self._changes = changes
        if self._writer is not None and not self._writer.is_closed():
            await self._writer.add_listener(CHANGES_CHANNEL, self._own_notice)
        # (else the next batch's new connection listens from the start)
        self._listener = ChangeListener(self._url, self._password, changes)
        await self._listener.start()

    async def healthy(self) -> None:
        await self.read(lambda tx: tx.fetchval("SELECT 1"), False)

    async def check_pages(self) -> None:
        """Nothing to do: PostgreSQL checks its pages as it reads them (and with
        data_checksums, their checksums), and the admin runs its own amcheck."""

    async def lookup(self, work: Work[T]) -> T:
        return await self.read(work, False)

    async def read(self, work: Work[T], snapshot: bool) -> T:
        try:
            async with self._reads.acquire() as conn:  # each holder is bounded by timeouts
                try:
                    if not snapshot:
                        return await work(PostgresTx(conn))
                    async with conn.transaction(isolation="repeatable_read", readonly=True):
                        return await work(PostgresTx(conn))
                except (TimeoutError, asyncio.CancelledError):
                    # A statement still in flight: the pool would wait for its answer (to
                    # reset the connection) as long as the server gives none. Dropped instead.
                    conn.terminate()
                    raise
        except asyncpg.InternalClientError as exc:
            # A connection lost during the read is handed back to the pool by asyncpg as
            # it goes, and the release at the end of `acquire` then fails: the database
            # was out of reach, which is what to say (a 503), not asyncpg's inner state.
            raise ConnectionError("the connection to PostgreSQL was lost") from exc

    async def drain(self, take: Callable[[], Batch | None]) -> None:
        await drain_here(self.run_batch, take)

    async def run_batch(self, works: list[Work[Any]]) -> list[tuple[bool, Any]]:
        conn = await self._writer_connection()
        try:
            return await run_batch(PostgresTx(conn), works)
        finally:
            if not conn.is_closed() and conn.is_in_transaction():  # a rollback failed too
                conn.terminate()

    async def migrate(self) -> int:
        """Apply what is newer than hostd_schema's last version, each migration in its own
        transaction with its row there, under an advisory lock: instances starting at the
        same time migrate one after the other, and the later ones find nothing to do."""
        conn = await self._writer_connection()
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK, timeout=MIGRATION_SECONDS)
        try:
            await conn.execute(
                """
                CREATE TABLE IF NOT EXISTS hostd_schema (
                    version    INTEGER PRIMARY KEY,
                    applied_at BIGINT NOT NULL
                )
                """
            )
            version = await conn.fetchval("SELECT coalesce(max(version), 0) FROM hostd_schema")
            for number, sql in migrations(POSTGRESQL):
                if number <= version:
                    continue
                async with conn.transaction():
                    await conn.execute(sql, timeout=MIGRATION_SECONDS)
                    await conn.execute(
                        "INSERT INTO hostd_schema (version, applied_at) VALUES ($1, $2)",
                        number,
                        now(),
                    )
                version = number
            return int(version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)

    async def backup(self, target: Path) -> None:
        raise Unsupported(
            "hostd backup copies a SQLite database; on PostgreSQL back the database up with"
            " pg_dump (and the blob store with its own tools), or copy it to a SQLite file"
            " with hostd db copy"
        )
