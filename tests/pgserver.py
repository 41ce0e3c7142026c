"""A private PostgreSQL server for the tests (and the benchmark): Debian's binaries, a data
dir and a socket dir of its own under /tmp, started once and stopped by its PID.

PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user
(which Debian's package creates). It listens only on a Unix socket in its own directory,
so nothing is shared with other runs on the machine: no port to collide on.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

USER = "hostd"  # the superuser initdb makes; connections are trusted on the socket only


def find_bin_dir() -> Path | None:
    """Debian's /usr/lib/postgresql/<version>/bin (the newest), or wherever pg_ctl is."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version_key)
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def _version_key(path: str) -> int:
    try:
        return int(Path(path).parent.parent.name)
    except ValueError:
        return 0


class PostgresServer:
    """One server; new_database() gives each test a fresh copy of the migrated template."""

    def __init__(self, bin_dir: Path, *, parent: Path | None = None, durable: bool = False) -> None:
        """`durable`: fsync, and commits that wait for their WAL flush, as PostgreSQL does
        by default and as hostd's SQLite does (the bench); else no fsync at all (the
        tests)."""
        self.bin_dir = bin_dir
        self.durable = durable
        self.root = Path(tempfile.mkdtemp(prefix="hostd-pg-", dir=parent))
        self.data = self.root / "data"
        self.pid: int | None = None
        self._names = itertools.count(1)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._admin: Any = None
        self._free: list[str] = []  # emptied databases, ready for the next test
        self._emptying: dict[str, tuple[Any, str]] = {}  # url: (connection, its DELETEs)

    def url(self, database: str) -> str:
        return f"postgresql://{USER}@/{database}?host={self.root}"

    def _as_owner(self, *argv: str) -> list[str]:
        if os.geteuid() != 0:
            return list(argv)
        return ["runuser", "-u", "postgres", "--", *argv]

    def start(self) -> None:
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        subprocess.run(
            self._as_owner(
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ),
            check=True,
            capture_output=True,
        )
        options = f"-k {self.root} -c listen_addresses='' -c max_connections=200"
        if not self.durable:
            options += " -c synchronous_commit=off -c fsync=off -c full_page_writes=off"
        subprocess.run(
            self._as_owner(
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.root / "log"),
                "-o",
                options,
                "-w",
                "start",
            ),
            check=True,
            capture_output=True,
        )
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        self._thread.start()
        import asyncpg

        async def connect() -> None:
            self._admin = await asyncpg.connect(self.url("postgres"))

        self.run(connect())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the server's own admin loop (its thread), and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(60)

    def make_template(self) -> None:
        """Create and migrate `hostd_template`, which each test's database copies."""
        from hostd.db import Database

        async def make() -> None:
            await self._admin.execute("CREATE DATABASE hostd_template")
            database = await Database.open(self.url("hostd_template"))
            await database.close()

        self.run(make())

    def new_database(self) -> str:
        """A migrated database with no rows; its URL. Copying the template costs about half
        a second on a loaded machine, so databases given back are emptied and reused."""
        if self._free:
            return self._free.pop()
        name = f"test_{next(self._names)}"
        self.run(
            self._admin.execute(
                f"CREATE DATABASE {name} TEMPLATE hostd_template STRATEGY FILE_COPY"
            )
        )
        return self.url(name)

    def give_back(self, url: str) -> None:
        """Empty the database (every row, ids from 1 again) for the next test: DELETEs with
        foreign keys and triggers off (replica role; a few ms, TRUNCATE takes ten times
        that), on a connection kept for it. One that cannot be emptied (a connection left
        behind holds a lock) is dropped instead."""
        import asyncpg

        async def empty() -> None:
            if url not in self._emptying:
                conn = await asyncpg.connect(url)
                await conn.execute(
                    "SET lock_timeout = '2s'; SET session_replication_role = replica"
                )
                tables = await conn.fetch(
                    """
                    SELECT tablename FROM pg_tables
                    WHERE schemaname = 'public'
                      AND tablename NOT IN ('hostd_schema', 'changes')
                    """
                )
                sequences = await conn.fetch(
                    "SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'"
                )
                sql = "; ".join(
                    [f'DELETE FROM "{row[0]}"' for row in tables]
                    + [f'ALTER SEQUENCE "{row[0]}" RESTART' for row in sequences]
                    + ["UPDATE changes SET version = 0"]
                )
                self._emptying[url] = (conn, sql)
            conn, sql = self._emptying[url]
            await conn.execute(sql)

        try:
            self.run(empty())
        except Exception:
            self.drop_database(url)
            return
        self._free.append(url)

    def refuse_connections(self, url: str, refuse: bool = True) -> None:
        """Make the database refuse new connections and end those it has (or, with
        refuse=False, take them again): a database that does not answer."""
        name = urllib.parse.urlsplit(url).path.lstrip("/")
        allow = "false" if refuse else "true"
        sql = f"ALTER DATABASE {name} ALLOW_CONNECTIONS {allow}"
        if refuse:
            sql += (
                f"; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
            )
        self.run(self._admin.execute(sql))

    def new_empty_database(self) -> str:
        """A database with no tables at all (for `hostd db migrate`, `hostd db copy`)."""
        name = f"empty_{next(self._names)}"
        self.run(self._admin.execute(f"CREATE DATABASE {name}"))
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = urllib.parse.urlsplit(url).path.lstrip("/")
        emptying = self._emptying.pop(url, None)
        if emptying is not None:
            self.run(emptying[0].close())
        self.run(self._admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))

    def stop(self) -> None:
        """Fast shutdown by PID, then wait for it to go, then remove its files."""
        for conn, _ in self._emptying.values():
            self.run(conn.close())
        if self._admin is not None:
            self.run(self._admin.close())
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._loop.close()
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGINT)
            deadline = time.monotonic() + 30
            while Path(f"/proc/{self.pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        shutil.rmtree(self.root, ignore_errors=True)
