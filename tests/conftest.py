"""Fixtures: a real app on loopback with its own database (a SQLite file, or a PostgreSQL
database: see database_kind) and blob store per test."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import io
import os
import secrets
import sqlite3
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import argon2
import pytest
import tornado.httpclient
import tornado.testing
import tornado.web
from pgserver import PostgresServer, find_bin_dir
from seaweed import ACCESS_KEY, BUCKET, SECRET_KEY, SeaweedFS

from hostd import db as queries
from hostd.accesslog import AccessLog
from hostd.app import make_app, make_server
from hostd.auth import Auth, session_token_hash
from hostd.config import Config
from hostd.db import Database, User
from hostd.handlers.base import SESSION_COOKIE
from hostd.limits import Limits
from hostd.local import LocalBlobStore
from hostd.storage import BlobStore, store_from
from hostd.thumbs import Thumbnails


@pytest.fixture(scope="session", autouse=True)
def _no_implicit_event_loop() -> None:
    """Each pytest-tornado IOLoop asks asyncio.get_event_loop() for the loop to restore after
    it; in the main thread, the first such call makes a new loop that nobody closes. Once an
    asyncio.run() (test_cli, test_crash) has replaced it, the garbage collector finds it and
    its ResourceWarning fails whatever test is running then (a flake, seen in test_download
    and test_pages). With no loop set, get_event_loop() raises instead, which Tornado handles.
    """
    asyncio.set_event_loop(None)


# -- the database (SQLite, PostgreSQL) and the blob store (local, S3 on a real SeaweedFS) -----


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that uses the database (the `db` or `app` fixture) runs on SQLite and on
    PostgreSQL, except those marked sqlite_only (they look at SQLite's file itself) or
    postgresql_only (they look at PostgreSQL's own features: notices, connections). A module
    that sets STORAGE_BACKENDS = ("local", "s3") also runs each test that has a store on S3
    (on the first of those databases), except the tests marked local_storage (they look at
    the local files); one that sets ("s3",) runs them on S3 only."""
    kinds = []
    if "database_kind" in metafunc.fixturenames:
        kinds = ["sqlite", "postgresql"]
        if metafunc.definition.get_closest_marker("sqlite_only") is not None:
            kinds = ["sqlite"]
        elif metafunc.definition.get_closest_marker("postgresql_only") is not None:
            kinds = ["postgresql"]
    backends = getattr(metafunc.module, "STORAGE_BACKENDS", None)
    if not (
        backends
        and "backend" in metafunc.fixturenames
        and metafunc.definition.get_closest_marker("local_storage") is None
    ):
        backends = None
    if kinds and backends:
        pairs = [(kind, "local") for kind in kinds if "local" in backends]
        pairs += [(kinds[0], backend) for backend in backends if backend != "local"]
        ids = [kind if backend == "local" else f"{kind}-{backend}" for kind, backend in pairs]
        metafunc.parametrize("database_kind,backend", pairs, indirect=["database_kind"], ids=ids)
    elif kinds:
        metafunc.parametrize("database_kind", kinds, indirect=True)
    elif backends:
        metafunc.parametrize("backend", backends)


@pytest.fixture
def database_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def backend() -> str:
    """storage.backend of the test's app: "local" unless the module asks for both."""
    return "local"


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One SeaweedFS for the session, started by the first test that needs it (about 10 s),
    with a bucket; each test keeps to a prefix of its own. No `weed`: the test fails."""
    weed = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    try:
        weed.start()
        weed.create_bucket(BUCKET)
        yield weed
    finally:
        weed.stop()


@pytest.fixture
def s3_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """The S3 keys in the environment, as a deployment would give them (and `hostd` runs
    started by a test inherit them)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session, with a migrated template database. Missing
    PostgreSQL fails the tests under CI=true or HOSTD_REQUIRE_BROWSER=1; else skips them."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        reason = "POSTGRESQL TESTS NOT RUN: no pg_ctl (apt-get install postgresql)"
        if os.environ.get("CI") == "true" or os.environ.get("HOSTD_REQUIRE_BROWSER") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    server = PostgresServer(bin_dir)
    try:
        server.start()
        server.make_template()
        yield server
    finally:
        server.stop()


@pytest.fixture
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None on SQLite (the data dir's file); on PostgreSQL, a fresh migrated database."""
    if "database_kind" not in request.fixturenames:
        yield None
        return
    if request.getfixturevalue("database_kind") != "postgresql":
        yield None
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    url = server.new_database()
    yield url
    server.give_back(url)


@pytest.fixture
def config(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str, database_url: str | None
) -> Config:
    # A test that asks for small_disk gets its data dir on that tmpfs.
    root = (
        request.getfixturevalue("small_disk").path
        if "small_disk" in request.fixturenames
        else tmp_path
    )
    if database_url is not None:
        # The admin commands the tests run (helpers.hostd, cwd=tmp_path) read hostd.toml
        # from their working directory, as an admin's do: there they find the database.
        (tmp_path / "hostd.toml").write_text(f'[database]\nurl = "{database_url}"\n')
    config = Config(
        data_dir=root / "data",
        max_upload_bytes=8 * 1024 * 1024,
        cookie_secret="test-secret",
        database_url=database_url,
    )
    if backend == "s3":
        weed: SeaweedFS = request.getfixturevalue("seaweedfs")
        request.getfixturevalue("s3_environ")
        config = dataclasses.replace(config, **s3_settings(weed))
    return config


def s3_settings(weed: SeaweedFS, **more: Any) -> dict[str, Any]:
    """Config fields for the session's SeaweedFS, under a prefix no other test uses."""
    return {
        "backend": "s3",
        "s3_endpoint": weed.endpoint,
        "s3_bucket": BUCKET,
        "s3_prefix": f"test-{secrets.token_hex(6)}/",
        "s3_path_style": True,
        **more,
    }


@pytest.fixture
def parts(config: Config, io_loop: Any, database_kind: str) -> Iterator[tuple[Database, BlobStore]]:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = store_from(config)
    db = io_loop.run_sync(lambda: Database.open_config(config))
    yield db, store
    io_loop.run_sync(db.close)
    store.close()


@pytest.fixture
def db(parts: tuple[Database, LocalBlobStore]) -> Database:
    return parts[0]


@pytest.fixture
def store(parts: tuple[Database, LocalBlobStore]) -> LocalBlobStore:
    return parts[1]


@pytest.fixture
def thumbs(app: tornado.web.Application) -> Thumbnails:
    """The app's thumbnails (uploads.* take them, to drop a removed blob's thumbnail)."""
    thumbnails: Thumbnails = app.settings["hostd_thumbs"]
    return thumbnails


@pytest.fixture
def other_process(config: Config, db: Database, io_loop: Any) -> Iterator[Database]:
    """A second Database on the test's database (SQLite file or PostgreSQL database), as
    another hostd process holds it."""
    other = io_loop.run_sync(lambda: Database.open_config(config))
    yield other
    io_loop.run_sync(other.close)


@pytest.fixture
def auth() -> Iterator[Auth]:
    """Argon2 at its cheapest, so tests do not spend seconds hashing (test_auth checks the
    production parameters once)."""
    cheap = argon2.PasswordHasher.from_parameters(argon2.profiles.CHEAPEST)
    auth = Auth(password_hasher=cheap, key_hasher=cheap)
    yield auth
    auth.close()


class GatedHasher(argon2.PasswordHasher):
    """The cheapest real Argon2, except that each job waits at a gate while the test holds it
    shut: the password lane then stays as full as the test has made it. `jobs` lists what
    reached the lane's thread, in order ("hash <password>", "verify <password>")."""

    def __init__(self) -> None:
        cheapest = argon2.profiles.CHEAPEST
        super().__init__(
            time_cost=cheapest.time_cost,
            memory_cost=cheapest.memory_cost,
            parallelism=cheapest.parallelism,
            hash_len=cheapest.hash_len,
            salt_len=cheapest.salt_len,
            type=cheapest.type,
        )
        self.gate = threading.Event()
        self.gate.set()
        self.jobs: list[str] = []

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        self.jobs.append(f"hash {password!s}")
        self.gate.wait(10)
        return super().hash(password, salt=salt)

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.jobs.append(f"verify {password!s}")
        self.gate.wait(10)
        return super().verify(hash, password)


class Clock:
    """A clock that moves only when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    """The app's throttles run on this clock: tests move time on instead of sleeping."""
    return Clock()


@pytest.fixture
def wall_clock() -> Clock:
    """The app's wall clock (expiry: epoch seconds): now, then moved on by the test."""
    return Clock(float(int(time.time())))


@pytest.fixture
def app(
    config: Config,
    db: Database,
    store: LocalBlobStore,
    auth: Auth,
    clock: Clock,
    wall_clock: Clock,
    access_log: Any,
) -> Any:
    return make_app(
        config, db, store, auth, clock=clock, wall_clock=wall_clock, access_log=access_log.writer
    )


@pytest.fixture
def limit(app: Any, clock: Clock) -> Callable[..., Limits]:
    """Set limits on the running app, as hostd.toml would: limit(quota_bytes=...)."""

    def set_limits(**changes: Any) -> Limits:
        changed = dataclasses.replace(app.settings["hostd_config"], **changes)
        app.settings["hostd_config"] = changed
        app.settings["hostd_limits"] = Limits(changed, clock=clock)
        return app.settings["hostd_limits"]

    return set_limits


class AccessLines:
    """The test app's access log, kept in memory."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.writer = AccessLog(self.stream)

    @property
    def text(self) -> str:
        self.writer.flush()
        return self.stream.getvalue()


@pytest.fixture
def access_log() -> AccessLines:
    return AccessLines()


@pytest.fixture
def http_server(request: Any, io_loop: Any, _unused_port: Any, app: Any, config: Config) -> Any:
    """The server as `hostd serve` builds it (pytest-tornado's has other limits)."""
    server = make_server(config, app)
    server.add_socket(_unused_port[0])
    yield server
    server.stop()
    io_loop.run_sync(server.close_all_connections, timeout=5)


@pytest.fixture
def base_url(http_port: int) -> str:
    return f"http://127.0.0.1:{http_port}"


@pytest.fixture
def http_client(http_server: Any) -> Iterator[tornado.httpclient.AsyncHTTPClient]:
    # A private client with room for the concurrency tests' 200 requests at once.
    client = tornado.httpclient.AsyncHTTPClient(force_instance=True, max_clients=256)
    yield client
    client.close()


@pytest.fixture
def free_port() -> int:
    sock, port = tornado.testing.bind_unused_port()
    sock.close()
    return port


XSRF = "0123456789abcdef0123456789abcdef"


@dataclass
class SignedIn:
    """A user with a live session, as a browser holds it."""

    user: User
    token: str
    cookie: str

    @property
    def headers(self) -> dict[str, str]:
        """Cookie and xsrf header, as htmx sends them."""
        return {"Cookie": self.cookie, "X-XSRFToken": XSRF}


@pytest.fixture
def login(db: Database, auth: Auth, config: Config) -> Callable[..., Awaitable[SignedIn]]:
    """Create a user and a session without going through the sign-in form or Argon2."""
    counter = iter(range(1, 1000))

    async def make(name: str | None = None, password: str = "correct horse") -> SignedIn:
        password_hash = await auth.hash_password(password)
        name = name or f"user{next(counter)}"
        user = await queries.insert_user(db, name=name, password_hash=password_hash)
        token = secrets.token_urlsafe(16)
        await queries.insert_session(db, token_hash=session_token_hash(token), user_id=user.id)
        signed = tornado.web.create_signed_value(config.cookie_secret, SESSION_COOKIE, token)
        return SignedIn(user, token, f"{SESSION_COOKIE}={signed.decode()}; _xsrf={XSRF}")

    return make


@pytest.fixture
def another_session(db: Database, config: Config) -> Callable[[SignedIn], Awaitable[str]]:
    """A second session of a signed-in user (another browser's): its Cookie header."""

    async def make(signed_in: SignedIn) -> str:
        token = secrets.token_urlsafe(16)
        user_id = signed_in.user.id
        await queries.insert_session(db, token_hash=session_token_hash(token), user_id=user_id)
        signed = tornado.web.create_signed_value(config.cookie_secret, SESSION_COOKIE, token)
        return f"{SESSION_COOKIE}={signed.decode()}; _xsrf={XSRF}"

    return make


@pytest.fixture
def make_api_key(
    db: Database, auth: Auth, login: Callable[..., Awaitable[SignedIn]]
) -> Callable[..., Awaitable[str]]:
    """An API key (the token a client sends) for `user`, or for a new account."""

    async def make(user: User | None = None) -> str:
        owner = user or (await login()).user
        minted = await auth.mint_key()
        await queries.insert_api_key(
            db, user_id=owner.id, key_id=minted.key_id, secret_hash=minted.secret_hash, label="t"
        )
        return minted.token

    return make


def form_body(**fields: str) -> str:
    return urllib.parse.urlencode({"_xsrf": XSRF, **fields})


# -- a busy database ------------------------------------------------------------------------


class SqliteLock:
    """SQLite's write lock, taken and given back by a connection of another program's (as
    `sqlite3` in a shell holds it): hostd's writes wait out their busy timeout, then fail."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)

    def take(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def give_back(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")


@pytest.fixture
def sqlite_lock(db: Database, config: Config) -> Iterator[SqliteLock]:
    held = SqliteLock(config.data_dir / "hostd.sqlite3")
    yield held
    held.give_back()
    held.conn.close()


# -- full disks ---------------------------------------------------------------------------

SMALL_DISK_BYTES = 20 * 1024 * 1024


@dataclass
class SmallDisk:
    """A real tmpfs: fill() takes its free space away, empty() gives it back."""

    path: Path

    def free_bytes(self) -> int:
        stat = os.statvfs(self.path)
        return stat.f_bavail * stat.f_frsize

    def fill(self, leave: int = 0) -> None:
        """Leave `leave` bytes free (whole pages), in a filler file beside the data dir."""
        fd, _ = tempfile.mkstemp(prefix="filler-", dir=self.path)
        try:
            os.posix_fallocate(fd, 0, self.free_bytes() - leave)
        finally:
            os.close(fd)
        assert self.free_bytes() == leave

    def empty(self) -> None:
        for filler in self.path.glob("filler-*"):
            filler.unlink()

    @contextlib.contextmanager
    def read_only(self) -> Iterator[None]:
        """Files opened from now on cannot be written (EROFS), as on a disk ext4 remounted
        read-only after errors; the database's open files stay writable (a read-only bind
        mount over the disk: a remount itself is refused while files are open to write)."""
        path = str(self.path)
        subprocess.run(["mount", "--bind", path, path], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", path], check=True)
            yield
        finally:
            subprocess.run(["umount", path], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 20 MiB tmpfs under tmp_path; the `config` fixture then puts the data dir on it.

    Mounting needs root, as in CI; elsewhere the tests that need it are skipped, loudly,
    unless CI=true or HOSTD_REQUIRE_BROWSER=1 makes that a failure. Name it first in a
    test's arguments, so that a skip comes before the server has taken a port."""
    path = tmp_path / "small-disk"
    path.mkdir()
    size = f"size={SMALL_DISK_BYTES // 1024}k"
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", size, "tmpfs", str(path)], capture_output=True, text=True
        )
        error = mounted.stderr.strip() if mounted.returncode else ""
    except OSError as exc:
        error = str(exc)
    if error:
        reason = f"FULL-DISK TESTS NOT RUN: cannot mount a tmpfs (run as root): {error}"
        if os.environ.get("CI") == "true" or os.environ.get("HOSTD_REQUIRE_BROWSER") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    try:
        yield SmallDisk(path)
    finally:
        # Lazy: a file the test left open must not keep the mount alive after it.
        subprocess.run(["umount", "--lazy", str(path)], check=True)


class CrampedBlobStore(LocalBlobStore):
    """A blob store whose disk has `room` bytes left: a write past it writes what fits,
    then fails with ENOSPC, as the kernel's does."""

    def __init__(self, root: Path, room: int) -> None:
        super().__init__(root)
        self.room = room

    def write_temp(self, fd: int, chunks: list[bytes]) -> None:
        for chunk in chunks:
            fits = min(len(chunk), self.room)
            os.write(fd, chunk[:fits])
            self.room -= fits
            if fits < len(chunk):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def cramped_store(app: tornado.web.Application, config: Config) -> Iterator[CrampedBlobStore]:
    """Put the app's uploads on a disk with no room left (set `room` to give it some)."""
    store = CrampedBlobStore(config.blobs_dir, room=0)
    app.settings["hostd_store"] = store
    yield store
    store.close()
