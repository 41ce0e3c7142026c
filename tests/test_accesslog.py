"""The access log: the line `logging` would write, one per request, buffered."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

from hostd.accesslog import FLUSH_EVERY_SECONDS

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
