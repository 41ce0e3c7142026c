"""A database that cannot take a write: another program holds SQLite's lock past the busy
timeout (`sqlite3` in a shell, a backup tool), or PostgreSQL is down. Each refusal is a 503
with Retry-After, in the endpoint's own format, nothing is left behind, and once the
database is back everything works again without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import tempfile
import time
import urllib.parse
from collections.abc import Iterator

import asyncpg
import pytest
from conftest import XSRF, form_body
from helpers import assert_refused, blob_files, multipart_body, temp_files

from hostd import db as queries
from hostd import uploads
from hostd.app import collect_garbage_now_and_then, log_failure_now_and_then
from hostd.db import postgres as postgres_backend
from hostd.db import sqlite as sqlite_backend
from hostd.db.core import is_unavailable
from hostd.throttle import AddressLimiter

UNAVAILABLE = "the database is busy or cannot be reached; the file was not stored, retry soon"
PAGE_MESSAGE = "The database is busy or cannot be reached. Try again in a moment."


@pytest.fixture(autouse=True)
def short_busy_timeout(monkeypatch):
    """Each refusal waits the busy timeout out first: 0.2 s here, not 5; a frozen
    PostgreSQL's, 1 s, not 5."""
    monkeypatch.setattr(sqlite_backend, "BUSY_TIMEOUT_MS", 200)
    monkeypatch.setattr(postgres_backend, "STATEMENT_SECONDS", 1.0)
    monkeypatch.setattr(postgres_backend, "CONNECT_SECONDS", 1.0)


async def upload(client, endpoint: str, data: bytes = b"locked out"):
    if endpoint.startswith("PUT "):
        return await client.fetch(
            endpoint.removeprefix("PUT "), method="PUT", body=data, raise_error=False
        )
    body, headers = multipart_body(files=[("file", "a.txt", data)])
    return await client.fetch(
        endpoint, method="POST", body=body, headers=headers, raise_error=False
    )


ENDPOINTS = ["/api/upload", "PUT /api/upload/a.txt", "/upload?api=1", "/upload"]


@pytest.mark.sqlite_only
@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.gen_test
async def test_an_upload_while_another_program_holds_the_lock_is_a_503_that_leaves_nothing(
    http_client, base_url, config, db, sqlite_lock, endpoint
):
    url = endpoint.replace("/", f"{base_url}/", 1)
    sqlite_lock.take()

    refused = await upload(http_client, url)
    left = temp_files(config), blob_files(config)
    sqlite_lock.give_back()
    accepted = await upload(http_client, url)

    assert_refused(refused, endpoint, 503, UNAVAILABLE)
    assert refused.headers["Retry-After"] == "5"
    assert left == ([], [])  # the bytes were placed, then removed: no row points at them
    assert accepted.code == 200
    assert len(await queries.all_uploads(db)) == 1


@pytest.mark.sqlite_only
@pytest.mark.gen_test
async def test_a_page_that_writes_while_the_lock_is_held_is_a_503_page(
    http_client, base_url, sqlite_lock
):
    fields = {"name": "alice", "password": "long enough", "confirm": "long enough"}
    sqlite_lock.take()

    refused = await http_client.fetch(
        f"{base_url}/register",
        method="POST",
        body=form_body(**fields),
        headers={"Cookie": f"_xsrf={XSRF}"},
        follow_redirects=False,
        raise_error=False,
    )

    assert refused.code == 503
    assert refused.headers["Retry-After"] == "5"
    assert refused.headers["Content-Type"].startswith("text/html")
    assert f'<p class="error-message">{PAGE_MESSAGE}</p>' in refused.body.decode()


@pytest.mark.sqlite_only
@pytest.mark.gen_test
async def test_an_api_call_that_writes_while_the_lock_is_held_is_a_503_in_json(
    http_client, base_url, sqlite_lock, make_api_key
):
    key = await make_api_key()
    stored = await upload(http_client, f"{base_url}/api/upload")
    hash = json.loads(stored.body)["hash"]
    sqlite_lock.take()

    refused = await http_client.fetch(
        f"{base_url}/api/files/{hash}",
        method="DELETE",
        headers={"Authorization": f"Bearer {key}"},
        raise_error=False,
    )

    assert refused.code == 503
    assert refused.headers["Retry-After"] == "5"
    assert json.loads(refused.body) == {"status": False, "error": PAGE_MESSAGE}


@pytest.mark.sqlite_only
@pytest.mark.parametrize("how", ["deleted", "replaced"])
@pytest.mark.parametrize("endpoint", ["/api/upload", "/upload?api=1"])
@pytest.mark.gen_test
async def test_an_upload_after_the_database_file_went_is_a_503_not_a_lost_upload(
    http_client, base_url, config, db, endpoint, how
):
    """The open connections would go on writing to the deleted file: answered 200, and
    gone at the next start."""
    url = endpoint.replace("/", f"{base_url}/", 1)
    path = config.data_dir / "hostd.sqlite3"
    if how == "deleted":
        path.unlink()
    else:
        path.rename(path.with_suffix(".old"))
        sqlite3.connect(path).close()

    refused = await upload(http_client, url)

    assert_refused(refused, endpoint, 503, UNAVAILABLE)
    with pytest.raises(queries.Unavailable, match="database file .* (is gone|was replaced)"):
        await queries.set_quota(db, user_id=1, own=True, quota_bytes=1)


@pytest.mark.sqlite_only
@pytest.mark.gen_test
async def test_a_write_fails_after_one_busy_timeout_not_two(db, sqlite_lock):
    sqlite_lock.take()
    started = time.monotonic()

    with pytest.raises(queries.Unavailable) as refused:
        await queries.set_quota(db, user_id=1, own=True, quota_bytes=1)

    assert isinstance(refused.value.__cause__, sqlite3.OperationalError)
    assert time.monotonic() - started < 0.4  # BEGIN is not tried again with savepoints


# -- PostgreSQL down: its socket reached through a relay that the test cuts ------------------


class SocketRelay:
    """PostgreSQL's Unix socket, relayed through one of our own: cut() is a server that has
    stopped (its socket gone, every connection broken), start() one that is back; freeze()
    one that answers nothing and closes nothing (a stopped VM, a partition), thaw() one that
    goes on."""

    def __init__(self, upstream_dir: str) -> None:
        self.upstream = f"{upstream_dir}/.s.PGSQL.5432"
        self.directory = tempfile.mkdtemp(prefix="hostd-pg-relay-")  # short: a socket path
        self.path = f"{self.directory}/.s.PGSQL.5432"
        self.server: asyncio.Server | None = None
        self.ends: set[asyncio.StreamWriter] = set()
        self.flowing = asyncio.Event()
        self.flowing.set()

    def freeze(self) -> None:
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self.relay, path=self.path)

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        for end in self.ends:
            end.transport.abort()
        self.ends.clear()

    async def relay(self, client_in, client_out) -> None:
        await self.flowing.wait()
        try:
            server_in, server_out = await asyncio.open_unix_connection(self.upstream)
        except OSError:
            client_out.transport.abort()
            return
        self.ends |= {client_out, server_out}

        async def pipe(source, sink) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    await self.flowing.wait()
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(client_in, server_out), pipe(server_in, client_out))


RELAYS: dict[str, SocketRelay] = {}


@pytest.fixture
def database_url(database_url, io_loop) -> Iterator[str | None]:
    """On PostgreSQL, the test's database through a SocketRelay (pg_relay)."""
    if database_url is None:
        yield None
        return
    parts = urllib.parse.urlsplit(database_url)
    query = urllib.parse.parse_qs(parts.query)
    relay = SocketRelay(query["host"][0])
    io_loop.run_sync(relay.start)
    relayed = parts._replace(query=urllib.parse.urlencode({"host": relay.directory})).geturl()
    RELAYS[relayed] = relay
    yield relayed
    del RELAYS[relayed]
    io_loop.run_sync(relay.cut)
    shutil.rmtree(relay.directory, ignore_errors=True)


@pytest.fixture
def pg_relay(database_url) -> SocketRelay:
    return RELAYS[database_url]


@pytest.mark.postgresql_only
@pytest.mark.parametrize("endpoint", ["/api/upload", "/upload?api=1"])
@pytest.mark.gen_test(timeout=60)
async def test_an_upload_while_postgresql_is_down_is_a_503_and_then_works_again(
    http_client, base_url, config, db, pg_relay, endpoint
):
    await upload(http_client, f"{base_url}{endpoint}", b"while it was up")  # connections made
    await pg_relay.cut()

    refused = await upload(http_client, f"{base_url}{endpoint}")
    temps = temp_files(config)
    await pg_relay.start()
    accepted = await upload(http_client, f"{base_url}{endpoint}")

    assert_refused(refused, endpoint, 503, UNAVAILABLE)
    assert refused.headers["Retry-After"] == "5"
    assert temps == []  # (its placed bytes, which no row could be checked for, wait for gc)
    assert accepted.code == 200
    assert len(await queries.all_uploads(db)) == 2


@pytest.mark.postgresql_only
@pytest.mark.gen_test(timeout=60)
async def test_an_upload_refused_while_postgresql_is_down_is_a_line_in_the_log_no_traceback(
    http_client, base_url, db, pg_relay, caplog
):
    await upload(http_client, f"{base_url}/api/upload", b"while it was up")
    await pg_relay.cut()

    refused = await upload(http_client, f"{base_url}/api/upload", b"while it was down")
    await pg_relay.start()

    assert refused.code == 503
    assert caplog.text.count("Traceback") == 0
    (left,) = [r for r in caplog.records if "unreferenced bytes" in r.getMessage()]
    assert left.exc_info is None and "\n" not in left.getMessage()
    assert left.getMessage().startswith("could not remove the unreferenced bytes of ")
    assert "the database is busy or cannot be reached" in left.getMessage()


@pytest.mark.postgresql_only
@pytest.mark.gen_test(timeout=60)
async def test_the_bytes_of_an_upload_refused_while_postgresql_was_down_go_once_it_is_back(
    http_client, base_url, config, db, pg_relay, monkeypatch
):
    # Not left for gc's next round, hours away, on a disk that may be filling up.
    monkeypatch.setattr(uploads, "REMOVAL_RETRY_SECONDS", (0.5, 0.5, 0.5, 0.5))
    await upload(http_client, f"{base_url}/api/upload", b"while it was up")
    await pg_relay.cut()

    refused = await upload(http_client, f"{base_url}/api/upload", b"while it was down")
    left = len(blob_files(config))
    await pg_relay.start()
    deadline = time.monotonic() + 20
    while len(blob_files(config)) > 1:
        assert time.monotonic() < deadline, "the refused upload's bytes are still there"
        await asyncio.sleep(0.1)

    assert refused.code == 503
    assert left == 2
    assert len(await queries.all_uploads(db)) == 1


@pytest.mark.postgresql_only
@pytest.mark.gen_test(timeout=60)
async def test_a_key_not_checked_while_postgresql_was_down_is_not_counted_as_invalid(
    http_client, base_url, app, clock, db, pg_relay
):
    app.settings["hostd_invalid_keys"] = AddressLimiter(1, clock=clock)
    bad = "Bearer hk_0123456789abcdef_" + "A" * 43
    await queries.all_uploads(db)  # connections made
    await pg_relay.cut()

    async def keyed() -> int:
        response = await http_client.fetch(
            f"{base_url}/api/upload/a.txt",
            method="PUT",
            body=b"x",
            headers={"Authorization": bad},
            raise_error=False,
        )
        return response.code

    while_down = await keyed()
    await pg_relay.start()
    after = [await keyed() for _ in range(2)]

    assert while_down == 503
    assert after == [401, 429]  # the outage cost the address none of its one invalid key


@pytest.mark.postgresql_only
@pytest.mark.gen_test(timeout=60)
async def test_a_periodic_task_while_postgresql_is_down_is_a_line_in_the_log_no_traceback(
    db, store, thumbs, pg_relay, caplog
):
    await queries.all_uploads(db)  # connections made
    await pg_relay.cut()

    collecting = asyncio.ensure_future(collect_garbage_now_and_then(db, store, thumbs))
    deadline = time.monotonic() + 20
    while not any("garbage collection" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "no line from the failed round"
        await asyncio.sleep(0.05)
    collecting.cancel()
    await pg_relay.start()

    (line,) = [r for r in caplog.records if "garbage collection" in r.getMessage()]
    assert line.levelname == "WARNING" and line.exc_info is None
    assert line.getMessage().startswith(
        "garbage collection failed; trying again later: the database is busy or cannot be reached"
    )


def test_a_periodic_tasks_own_mistake_is_logged_with_its_traceback(caplog):
    try:
        raise KeyError("a bug")
    except KeyError as exc:
        log_failure_now_and_then("garbage collection", exc)

    (line,) = caplog.records
    assert line.levelname == "ERROR" and line.exc_info is not None
    assert line.getMessage() == "garbage collection failed; trying again later"


@pytest.mark.postgresql_only
@pytest.mark.gen_test(timeout=30)
async def test_a_statement_on_a_connection_dropped_before_it_is_the_database_out_of_reach(
    db, database_url
):
    # A batch's statement timed out on a frozen server: asyncpg drops the connection, and
    # the batch's retry with savepoints must not then end as a 500.
    conn = await asyncpg.connect(database_url)
    conn.terminate()

    with pytest.raises(ConnectionError) as raised:
        await postgres_backend.PostgresTx(conn).fetchval("SELECT 1")

    assert is_unavailable(raised.value)  # what the writer answers as a 503


@pytest.mark.postgresql_only
@pytest.mark.gen_test(timeout=30)
async def test_a_statement_waiting_on_a_connection_dropped_meanwhile_is_the_database_out_of_reach(
    db, database_url, pg_relay
):
    # The same, when asyncpg drops the connection while the retry's statement waits for the
    # request to cancel the one that timed out.
    conn = await asyncpg.connect(database_url, command_timeout=1)
    tx = postgres_backend.PostgresTx(conn)
    pg_relay.freeze()
    with pytest.raises(TimeoutError):
        await tx.fetchval("SELECT 1")
    retry = asyncio.ensure_future(tx.fetchval("SELECT 1"))
    await asyncio.sleep(0.2)  # waiting on the cancel request
    conn.terminate()
    (raised,) = await asyncio.gather(retry, return_exceptions=True)
    pg_relay.thaw()

    assert isinstance(raised, ConnectionError)
    assert is_unavailable(raised)


@pytest.mark.postgresql_only
@pytest.mark.gen_test(timeout=60)
async def test_a_frozen_postgresql_is_a_503_in_seconds_and_then_works_again(
    http_client, base_url, db, pg_relay, monkeypatch
):
    await upload(http_client, f"{base_url}/api/upload", b"while it answered")
    pg_relay.freeze()

    started = time.monotonic()
    health = await http_client.fetch(f"{base_url}/healthz", raise_error=False)
    health_took = time.monotonic() - started
    refused = await upload(http_client, f"{base_url}/api/upload", b"while it was frozen")
    refused_took = time.monotonic() - started - health_took
    pg_relay.thaw()
    accepted = await upload(http_client, f"{base_url}/api/upload", b"after")

    assert (health.code, health.body) == (503, b"database: no answer in 2 s\n")
    assert health_took < 4
    assert_refused(refused, "/api/upload", 503, UNAVAILABLE)
    assert refused_took < 5 * postgres_backend.STATEMENT_SECONDS
    assert accepted.code == 200
    assert len(await queries.all_uploads(db)) == 2


@pytest.mark.postgresql_only
@pytest.mark.gen_test(timeout=60)
async def test_the_pools_tries_to_reconnect_while_postgresql_is_down_are_one_line_each(
    http_client, base_url, db, pg_relay, caplog
):
    await upload(http_client, f"{base_url}/api/upload", b"while it was up")
    await pg_relay.cut()

    await http_client.fetch(f"{base_url}/files", raise_error=False)  # a read: the pool's turn
    deadline = time.monotonic() + 10
    while not any(r.name == "asyncpg.pool" for r in caplog.records):
        assert time.monotonic() < deadline, "the pool never tried to reconnect"
        await asyncio.sleep(0.1)
    await pg_relay.start()

    tries = [r for r in caplog.records if r.name == "asyncpg.pool"]
    assert tries[0].exc_info is None
    assert caplog.text.count("Traceback") == 0
    line = tries[0].getMessage()
    assert line.startswith("Failed to restore the pool connection floor; retrying: ")
    assert "\n" not in line
