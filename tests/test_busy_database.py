"""A database that another program holds locked past the busy timeout (`sqlite3` in a shell,
a backup tool): each refusal is a 503 with Retry-After, in the endpoint's own format, nothing
is left behind, and once the lock is gone everything works again without a restart."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator

import asyncpg
import pytest
from conftest import XSRF, form_body
from helpers import blob_files, multipart_body, temp_files

from hostd import db as queries
from hostd.db import sqlite as sqlite_backend
from hostd.db.core import is_unavailable

# SQLite's own lock; PostgreSQL's unreachable server is the same db.Unavailable (see the
# last test).
pytestmark = pytest.mark.sqlite_only

UNAVAILABLE = "the database is busy or cannot be reached; the file was not stored, retry soon"
PAGE_MESSAGE = "The database is busy or cannot be reached. Try again in a moment."


@pytest.fixture(autouse=True)
def short_busy_timeout(monkeypatch):
    """Each refusal waits the busy timeout out first: 0.2 s here, not 5."""
    monkeypatch.setattr(sqlite_backend, "BUSY_TIMEOUT_MS", 200)


class Lock:
    """SQLite's write lock, held by a connection of another program's."""

    def __init__(self, path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)

    def take(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def give_back(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")


@pytest.fixture
def lock(db, config) -> Iterator[Lock]:
    held = Lock(config.data_dir / "hostd.sqlite3")
    yield held
    held.give_back()
    held.conn.close()


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


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.gen_test
async def test_an_upload_while_another_program_holds_the_lock_is_a_503_that_leaves_nothing(
    http_client, base_url, config, db, lock, endpoint
):
    url = endpoint.replace("/", f"{base_url}/", 1)
    lock.take()

    refused = await upload(http_client, url)
    left = temp_files(config), blob_files(config)
    lock.give_back()
    accepted = await upload(http_client, url)

    assert refused.code == 503
    assert refused.headers["Retry-After"] == "5"
    body = refused.body.decode()
    if "api/upload" in endpoint:
        assert json.loads(body) == {"status": False, "error": UNAVAILABLE}
    elif endpoint.endswith("api=1"):
        assert body == f"ERROR {UNAVAILABLE}\n"
    else:
        assert refused.headers["Content-Type"].startswith("text/html")
        assert "503 Service Unavailable" in body and UNAVAILABLE in body
    assert left == ([], [])  # the bytes were placed, then removed: no row points at them
    assert accepted.code == 200
    assert len(await queries.all_uploads(db)) == 1


@pytest.mark.gen_test
async def test_a_page_that_writes_while_the_lock_is_held_is_a_503_page(http_client, base_url, lock):
    fields = {"name": "alice", "password": "long enough", "confirm": "long enough"}
    lock.take()

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


@pytest.mark.gen_test
async def test_an_api_call_that_writes_while_the_lock_is_held_is_a_503_in_json(
    http_client, base_url, lock, make_api_key
):
    key = await make_api_key()
    stored = await upload(http_client, f"{base_url}/api/upload")
    hash = json.loads(stored.body)["hash"]
    lock.take()

    refused = await http_client.fetch(
        f"{base_url}/api/files/{hash}",
        method="DELETE",
        headers={"Authorization": f"Bearer {key}"},
        raise_error=False,
    )

    assert refused.code == 503
    assert refused.headers["Retry-After"] == "5"
    assert json.loads(refused.body) == {"status": False, "error": PAGE_MESSAGE}


@pytest.mark.gen_test
async def test_a_write_fails_after_one_busy_timeout_not_two(db, lock):
    lock.take()
    started = time.monotonic()

    with pytest.raises(queries.Unavailable) as refused:
        await queries.set_quota(db, user_id=1, own=True, quota_bytes=1)

    assert isinstance(refused.value.__cause__, sqlite3.OperationalError)
    assert time.monotonic() - started < 0.4  # BEGIN is not tried again with savepoints


@pytest.mark.gen_test
async def test_an_unreachable_postgresql_is_unavailable_too(free_port):
    with pytest.raises(OSError) as refused:
        await asyncpg.connect(f"postgresql://hostd@127.0.0.1:{free_port}/hostd", timeout=5)

    assert is_unavailable(refused.value)
    assert is_unavailable(asyncpg.exceptions.ConnectionDoesNotExistError("closed"))
    assert is_unavailable(asyncpg.exceptions.CannotConnectNowError("starting up"))
    assert not is_unavailable(asyncpg.exceptions.UniqueViolationError("taken"))
    assert not is_unavailable(sqlite3.OperationalError("no such table: uploads"))
