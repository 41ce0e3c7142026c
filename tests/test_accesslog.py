"""The access log: the line `logging` would write, one per request, buffered."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest
from helpers import multipart_body

from hostd.accesslog import FLUSH_EVERY_SECONDS
from hostd.db import sqlite as sqlite_backend

# On SQLite only: the access log, whatever the database.
pytestmark = pytest.mark.sqlite_only


@pytest.mark.gen_test
async def test_each_request_gets_the_line_logging_would_write(http_client, base_url, access_log):
    await http_client.fetch(f"{base_url}/", raise_error=False)
    await http_client.fetch(f"{base_url}/nothing-here", raise_error=False)

    lines = access_log.text.splitlines()

    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(
        rf"{stamp} INFO tornado\.access: 200 GET / \(127\.0\.0\.1\) \d+\.\d\dms", lines[0]
    )
    assert re.fullmatch(
        rf"{stamp} WARNING tornado\.access: 404 GET /nothing-here \(127\.0\.0\.1\) \d+\.\d\dms",
        lines[1],
    )
    # the same shape as a line of hostd's own log (cli.main's logging format)
    record = logging.LogRecord("tornado.access", logging.INFO, "", 0, "200 GET /", None, None)
    formatted = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s").format(record)
    assert re.fullmatch(rf"{stamp} INFO tornado\.access: 200 GET /", formatted)


@pytest.mark.gen_test
async def test_lines_are_written_together_by_a_timer(http_client, base_url, access_log):
    for _ in range(3):
        await http_client.fetch(f"{base_url}/", raise_error=False)

    assert access_log.stream.getvalue() == ""  # not one write per request
    await asyncio.sleep(FLUSH_EVERY_SECONDS + 0.2)  # the timer's turn
    assert len(access_log.stream.getvalue().splitlines()) == 3


@pytest.fixture
def short_busy_timeout(monkeypatch):
    """A write waits 0.5 s for another program's lock, not 5 (set before the database opens)."""
    monkeypatch.setattr(sqlite_backend, "BUSY_TIMEOUT_MS", 500)


@pytest.mark.gen_test(timeout=30)
async def test_an_upload_whose_client_leaves_while_it_waits_on_the_database_is_one_line(
    short_busy_timeout, http_server, http_port, access_log, sqlite_lock
):
    body, headers = multipart_body(files=[("file", "a.txt", b"left before the answer")])
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    head += f"Content-Length: {len(body)}\r\n"
    sqlite_lock.take()  # the upload's write waits for the lock
    reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
    writer.write(f"POST /api/upload HTTP/1.1\r\nHost: hostd\r\n{head}\r\n".encode() + body)
    await writer.drain()
    await asyncio.sleep(0.2)  # the body is in; the write is waiting

    writer.close()  # the client leaves
    await asyncio.sleep(1.0)  # the write has failed after its busy timeout meanwhile
    sqlite_lock.give_back()

    lines = [line for line in access_log.text.splitlines() if "/api/upload" in line]
    assert len(lines) == 1, lines
    assert " 499 POST /api/upload " in lines[0]
