"""The HTTP server's rules for connections, over raw sockets: heads, framing, chunk sizes,
slow and stalled bodies, uploads per address, what SIGTERM does to uploads in flight, and
which CPUs a server's threads run on."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import (
    blob_files,
    cpus_of_threads,
    hostd,
    multipart_body,
    start,
    stop,
    temp_files,
    wait_for_line,
)
from tornado import netutil

from hostd import affinity
from hostd.app import BODY_LIMIT_BYTES
from hostd.config import Config
from hostd.server import MAX_HEAD_BYTES, MIN_AVERAGE_CHUNK_BYTES, valid_ip

# On SQLite only: the HTTP connection's handling, whatever the database.
pytestmark = pytest.mark.sqlite_only

IDLE_SECONDS = 1.0
PER_ADDRESS = 2


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """Short body timeouts, two uploads per address, behind a trusted proxy."""
    return Config(
        data_dir=tmp_path / "data",
        max_upload_bytes=8 * 1024 * 1024,
        cookie_secret="test-secret",
        body_idle_seconds=IDLE_SECONDS,
        uploads_in_flight_per_address=PER_ADDRESS,
        trust_proxy=True,
    )


FILE_PART = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n\r\n'
FORM_END = b"\r\n--b--\r\n"


def upload_head(length: int | None, *, path: str = "/api/upload", extra: str = "") -> bytes:
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\n{framing}\r\n{extra}\r\n"
    ).encode()


def chunked(data: bytes, size: int) -> bytes:
    pieces = (data[i : i + size] for i in range(0, len(data), size))
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


class Raw:
    """One client connection over loopback, written and read by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    opened: list[Raw] = []

    @classmethod
    async def open(cls, port: int) -> Raw:
        client = cls(*await asyncio.open_connection("127.0.0.1", port))
        cls.opened.append(client)
        return client

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, within: float = 15) -> bytes:
        """Everything the server sends until it closes; fails if it has not in `within` s."""
        received = bytearray()
        async with asyncio.timeout(within):
            try:
                while data := await self.reader.read(65536):
                    received += data
            except ConnectionResetError:
                received += b"<reset>"
        return bytes(received)

    def close(self) -> None:
        self.writer.close()


@pytest.fixture(autouse=True)
def close_raw_clients(io_loop):
    yield

    async def close_all() -> None:
        while Raw.opened:
            writer = Raw.opened.pop().writer
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    io_loop.run_sync(close_all)


def split(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


async def until(condition, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.02)


# -- heads and framing -----------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_header_fields_over_the_limit_get_a_431_before_the_close(http_server, http_port):
    client = await Raw.open(http_port)
    await client.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * MAX_HEAD_BYTES)

    status, headers, body = split(await client.answer())

    assert status == 431
    assert headers["Connection"] == "close"
    assert body == f"ERROR the request's header fields are over {MAX_HEAD_BYTES} bytes\n".encode()


@pytest.mark.gen_test(timeout=30)
async def test_a_whole_head_over_the_limit_gets_a_431_too(http_server, http_port):
    client = await Raw.open(http_port)
    big = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(700))
    await client.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + big + b"\r\n")

    status, _, _ = split(await client.answer())

    assert status == 431


@pytest.mark.parametrize(
    "head",
    [
        b"POST /api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * MAX_HEAD_BYTES,
        b"PUT /api/upload/" + b"n" * (2 * MAX_HEAD_BYTES) + b" HTTP/1.1\r\n",
        b"PATCH /api/tus/abc?x=1 HTTP/1.1\r\n" + b"X-H: v\r\n" * (MAX_HEAD_BYTES // 8),
    ],
    ids=["a-field", "the-request-line", "many-fields"],
)
@pytest.mark.gen_test(timeout=30)
async def test_a_431_to_the_json_api_is_json(http_server, http_port, head):
    client = await Raw.open(http_port)
    await client.send(head)

    status, headers, body = split(await client.answer())

    assert status == 431
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert json.loads(body) == {
        "status": False,
        "error": f"the request's header fields are over {MAX_HEAD_BYTES} bytes",
    }


@pytest.mark.gen_test(timeout=30)
async def test_a_body_over_what_a_json_api_url_takes_is_a_413_in_json(http_server, http_port):
    client = await Raw.open(http_port)
    await client.send(
        b"DELETE /api/files/tok HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Length: %d\r\n\r\n" % (BODY_LIMIT_BYTES + 1)
    )

    status, headers, body = split(await client.answer())

    assert status == 413
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert json.loads(body)["error"] == TOO_BIG.decode().removeprefix("ERROR ").rstrip("\n")


@pytest.mark.gen_test(timeout=30)
async def test_a_head_under_the_limit_is_served_and_the_connection_kept(http_server, http_port):
    client = await Raw.open(http_port)
    fields = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(500))
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + fields + b"\r\n"

    await client.send(request + request.replace(b"GET /", b"GET /login") + b"GET / HTTP/1.1\r\n")
    first = await client.reader.readuntil(b"</html>")
    second = await client.reader.readuntil(b"</html>")
    client.close()

    assert first.startswith(b"HTTP/1.1 200 ") and second.startswith(b"HTTP/1.1 200 ")


@pytest.mark.gen_test(timeout=30)
async def test_http_1_0_with_transfer_encoding_is_a_400_and_a_close(http_server, http_port):
    client = await Raw.open(http_port)
    await client.send(
        b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET / HTTP/1.0\r\n\r\n"
    )

    answer = await client.answer()
    status, headers, body = split(answer)

    assert status == 400
    assert headers["Connection"] == "close"
    assert b"HTTP/1.0 request cannot use Transfer-Encoding" in body
    assert answer.count(b"HTTP/1.1 ") == 1  # the request after it was not read


@pytest.mark.gen_test(timeout=30)
async def test_a_request_line_in_absolute_form_is_the_url_it_names(http_server, http_port):
    form = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\n'
        b"absolute\r\n--b--\r\n"
    )
    client = await Raw.open(http_port)
    await client.send(
        b"POST HTTP://files.example.org:8080/api/upload HTTP/1.1\r\nHost: ignored\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (len(form), form)
    )
    status, _, body = split(await client.answer())
    h = json.loads(body)["hash"]
    client = await Raw.open(http_port)
    await client.send(
        f"GET http://files.example.org:8080/{h}.txt HTTP/1.1\r\nConnection: close\r\n\r\n".encode()
    )
    fetched = split(await client.answer())
    client = await Raw.open(http_port)
    await client.send(b"GET http:///healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    no_host = split(await client.answer())

    assert status == 200
    assert json.loads(body)["urls"]["base"] == "http://files.example.org:8080/"  # the Host
    assert (fetched[0], fetched[2]) == (200, b"absolute")
    assert no_host[0] == 400 and b"an absolute URL without a host name" in no_host[2]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (b"Host: 127.0.0.1\r\nX-No-Colon\r\n", "the request's head is malformed: "),
        (b"Host: 127.0.0.1\r\nX-A: a\r\n  folded\r\n", "the request's head is malformed: "),
        (b"", "the request has no Host header, which HTTP/1.1 requires"),
        (b"Host: a\r\nHost: b\r\n", "the request has more than one Host header"),
        (b"Host: a b\r\n", "the Host header is not a host name and port: 'a b'"),
        (b"Host: \r\n", "the Host header is not a host name and port: ''"),
        (b"Host: [::1\r\n", "the Host header is not a host name and port: '[::1'"),
        (b"Host: x:abc\r\n", "the Host header is not a host name and port: 'x:abc'"),
        (b"Host: x:99999\r\n", "the Host header is not a host name and port: 'x:99999'"),
        (b"Host: a,b\r\n", "the Host header is not a host name and port: 'a,b'"),
    ],
    ids=[
        "no-colon",
        "folded",
        "no-host",
        "two-hosts",
        "space",
        "empty",
        "bracket",
        "port",
        "big-port",
        "comma",
    ],
)
@pytest.mark.parametrize(("path", "json_format"), [("/api/upload", True), ("/upload?api=1", False)])
@pytest.mark.gen_test(timeout=30)
async def test_a_head_that_cannot_be_read_is_a_400_that_says_why_in_the_urls_format(
    http_server, http_port, fields, message, path, json_format
):
    client = await Raw.open(http_port)
    await client.send(b"POST %s HTTP/1.1\r\n%sContent-Length: 0\r\n\r\n" % (path.encode(), fields))

    status, headers, body = split(await client.answer())

    assert status == 400
    if json_format:
        assert headers["Content-Type"] == "application/json; charset=utf-8"
        error = json.loads(body)["error"]
    else:
        assert body.startswith(b"ERROR ")
        error = body.decode().removeprefix("ERROR ").rstrip("\n")
    assert error.startswith(message)


@pytest.mark.parametrize(
    "host",
    [
        b"files.example.org",
        b"files.example.org:8443",
        b"[::1]:8000",
        b"10.0.0.1",
        b"xn--bcher-kva.example.",
        b"LOCALHOST:",
    ],
)
@pytest.mark.gen_test(timeout=30)
async def test_a_host_a_url_can_be_made_of_is_served(http_server, http_port, host):
    client = await Raw.open(http_port)
    await client.send(b"GET /api HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host)

    status, _, body = split(await client.answer())

    assert status == 200
    assert b"http://" + host.lower() + b"/api/upload" in body.lower()


@pytest.mark.gen_test(timeout=30)
async def test_http_1_0_without_a_host_gets_urls_with_the_servers_own_address(
    http_server, http_port
):
    body = FILE_PART + b"no host" + FORM_END
    client = await Raw.open(http_port)
    await client.send(
        b"POST /api/upload HTTP/1.0\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )

    status, _, answer = split(await client.answer())

    assert status == 200
    assert json.loads(answer)["urls"]["base"] == f"http://127.0.0.1:{http_port}/"


@pytest.mark.gen_test(timeout=30)
async def test_chunk_extensions_are_ignored_and_trailer_fields_read(http_server, http_port):
    """RFC 9112 7.1.1: a recipient ignores chunk extensions it does not know; 7.1.2: a
    trailer section may follow the last chunk."""
    body = FILE_PART + b"with extensions" + FORM_END
    half = len(body) // 2
    client = await Raw.open(http_port)
    await client.send(
        upload_head(None, extra="Connection: close\r\n")
        + b"%x;name=value\r\n%s\r\n" % (half, body[:half])
        + b"%x ; flag\r\n%s\r\n" % (len(body) - half, body[half:])
        + b"0;last=1\r\nX-Checksum: abc\r\nX-Other: d\r\n\r\n"
    )

    status, _, answer = split(await client.answer())

    assert status == 200
    assert json.loads(answer)["status"] is True


@pytest.mark.gen_test(timeout=30)
async def test_a_trailer_section_without_end_is_refused(http_server, http_port):
    client = await Raw.open(http_port)
    trailer = b"".join(b"X-T%d: v\r\n" % i for i in range(100))
    await client.send(upload_head(None) + chunked(FILE_PART, 4096)[:-2] + trailer + b"\r\n")

    status, _, answer = split(await client.answer())

    assert status == 400
    assert json.loads(answer)["error"] == "the request's body is malformed: too many trailer fields"


TOO_BIG = (
    f"ERROR the request's body is over the {BODY_LIMIT_BYTES:,} bytes this URL takes; "
    "upload files with POST /api/upload or PUT /api/upload/<name>\n"
).encode()


@pytest.mark.gen_test(timeout=30)
async def test_a_body_over_what_a_url_takes_is_a_413_before_it_is_read(http_server, http_port):
    limit = BODY_LIMIT_BYTES
    client = await Raw.open(http_port)
    await client.send(
        b"PUT /notes.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Length: %d\r\n\r\n" % (limit + 1) + b"x" * 65536
    )

    status, headers, body = split(await client.answer())

    assert status == 413
    assert headers["Connection"] == "close"
    assert body == TOO_BIG


@pytest.mark.gen_test(timeout=30)
async def test_a_chunked_body_that_grows_over_it_is_a_413_too(http_server, http_port):
    limit = BODY_LIMIT_BYTES
    form = b"_xsrf=x&name=alice&password=" + b"p" * limit
    client = await Raw.open(http_port)
    await client.send(
        b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n\r\n" + chunked(form, 65536)
    )

    status, _, body = split(await client.answer())

    assert status == 413
    assert body == TOO_BIG


# -- chunk sizes -------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_one_byte_chunks_are_refused_with_a_400_and_leave_no_temp_file(
    http_server, http_port, config, access_log
):
    body = FILE_PART + b"x" * 8000 + FORM_END
    client = await Raw.open(http_port)
    await client.send(upload_head(None) + chunked(body, 1))

    status, headers, answer = split(await client.answer())

    assert status == 400
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert json.loads(answer) == {
        "status": False,
        "error": "the body's chunks average under 256 bytes; "
        "send bigger chunks, or a Content-Length",
    }
    await until(lambda: temp_files(config) == [])
    assert "400 POST /api/upload (127.0.0.1)" in access_log.text


@pytest.mark.gen_test(timeout=30)
async def test_one_byte_chunks_to_a_form_are_refused_too(http_server, http_port):
    form = b"_xsrf=x&name=alice&password=" + b"p" * 2000
    client = await Raw.open(http_port)
    await client.send(
        b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n\r\n" + chunked(form, 1)
    )

    status, _, body = split(await client.answer())

    assert status == 400
    assert b"chunks average under 256 bytes" in body


@pytest.mark.gen_test(timeout=30)
async def test_chunks_of_ordinary_sizes_are_accepted(http_server, http_port):
    body = FILE_PART + b"y" * 600_000 + FORM_END
    client = await Raw.open(http_port)
    await client.send(
        upload_head(None, extra="Connection: close\r\n")
        + chunked(body, MIN_AVERAGE_CHUNK_BYTES)  # the last one shorter
    )

    status, _, answer = split(await client.answer())

    assert status == 200
    assert json.loads(answer)["status"] is True


@pytest.mark.gen_test(timeout=30)
async def test_a_broken_chunked_body_is_a_400_that_says_why_and_is_logged_as_400(
    http_server, http_port, config, access_log
):
    client = await Raw.open(http_port)
    await client.send(upload_head(None) + chunked(FILE_PART + b"z" * 300_000, 65536)[:-5])
    await until(lambda: temp_files(config) != [])
    await client.send(b"zz\r\n")

    status, headers, body = split(await client.answer())

    assert status == 400
    assert headers["Connection"] == "close"
    assert json.loads(body)["error"] == "the request's body is malformed: invalid chunk size"
    await until(lambda: temp_files(config) == [])
    assert "400 POST /api/upload (127.0.0.1)" in access_log.text
    assert "499 POST" not in access_log.text


# -- slow and stalled bodies -------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_an_upload_that_stops_arriving_gets_a_408_and_leaves_no_temp_file(
    http_server, http_port, config, access_log
):
    client = await Raw.open(http_port)
    await client.send(upload_head(5_000_000) + FILE_PART + b"x" * 300_000)
    await until(lambda: temp_files(config) != [])

    status, headers, body = split(await client.answer())

    assert status == 408
    assert headers["Connection"] == "close"
    assert json.loads(body) == {
        "status": False,
        "error": f"no data arrived for {IDLE_SECONDS:g} seconds; the upload was dropped",
    }
    assert temp_files(config) == []
    assert "408 POST /api/upload (127.0.0.1)" in access_log.text


@pytest.mark.gen_test(timeout=30)
async def test_a_chunked_upload_without_its_last_chunk_gets_a_408(http_server, http_port):
    client = await Raw.open(http_port)
    await client.send(upload_head(None, path="/upload?api=1") + chunked(FILE_PART, 4096)[:-5])

    status, _, body = split(await client.answer())

    assert status == 408
    assert (
        body
        == f"ERROR no data arrived for {IDLE_SECONDS:g} seconds; the upload was dropped\n".encode()
    )


@pytest.mark.gen_test(timeout=30)
async def test_an_upload_trickling_in_under_the_floor_gets_a_408(http_server, http_port, config):
    client = await Raw.open(http_port)
    await client.send(upload_head(10_000) + FILE_PART)
    answer = asyncio.ensure_future(client.answer())

    for _ in range(40):  # a byte every 0.1 s: never idle, but 10 bytes a second
        if answer.done():
            break
        await client.send(b"x")
        await asyncio.sleep(0.1)
    status, _, body = split(await answer)

    assert status == 408
    assert "slower than 512 bytes a second on average" in json.loads(body)["error"]


@pytest.mark.gen_test(timeout=30)
async def test_a_form_body_that_stops_arriving_gets_a_408(http_server, http_port):
    client = await Raw.open(http_port)
    await client.send(
        b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n\r\nname=alice"
    )

    status, headers, body = split(await client.answer())

    assert status == 408
    assert headers["Connection"] == "close"
    assert (
        body == f"ERROR the request body did not arrive within {IDLE_SECONDS:g} seconds\n".encode()
    )


# -- uploads per address ---------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_uploads_past_the_cap_for_one_address_get_a_429_before_the_body(
    http_server, http_port, config
):
    slow = [await Raw.open(http_port) for _ in range(PER_ADDRESS)]
    for client in slow:  # in flight, sending nothing more for now
        await client.send(upload_head(5_000_000) + FILE_PART + b"x" * 300_000)
    await until(lambda: len(temp_files(config)) == PER_ADDRESS)

    third = await Raw.open(http_port)
    await third.send(upload_head(5_000_000))  # no body at all: refused from the head
    refused = split(await third.answer())
    other = await Raw.open(http_port)
    await other.send(
        upload_head(len(FILE_PART) + 5 + len(FORM_END), extra="X-Real-IP: 203.0.113.9\r\n")
        + FILE_PART
        + b"hello"
        + FORM_END
    )
    accepted = await other.reader.readuntil(b"}\n")
    for client in slow:
        client.close()

    assert refused[0] == 429
    assert json.loads(refused[2]) == {
        "status": False,
        "error": f"{PER_ADDRESS} uploads from your address are already in progress; "
        "send this one when one of them has finished",
    }
    assert refused[1]["Retry-After"] == "5"
    assert accepted.startswith(b"HTTP/1.1 200 ")  # another address is not held up


async def small_uploads(http_port: int, extras: list[str]) -> list[int]:
    """The statuses of small uploads sent one after the other, each with its header lines
    from `extras`, on a connection of its own."""
    statuses = []
    for extra in extras:
        other = await Raw.open(http_port)
        body = FILE_PART + b"hello" + FORM_END
        await other.send(upload_head(len(body), extra=f"{extra}Connection: close\r\n") + body)
        statuses.append(split(await other.answer())[0])
        other.close()
    return statuses


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    ("header", "counted_apart"),
    [
        ("X-Real-IP: 2001:db8::7", True),
        ("X-Forwarded-For: 127.0.0.1, 198.51.100.7", True),  # the last one, as nginx adds it
        ("X-Real-IP: 999.1.2.3", False),  # not an address: the socket's counts
        ("X-Real-IP: client.example", False),
        ("X-Real-IP: " + "7" * 100, False),
    ],
)
async def test_behind_the_proxy_a_client_is_the_address_it_names_if_that_is_one(
    http_server, http_port, config, header, counted_apart
):
    slow = [await Raw.open(http_port) for _ in range(PER_ADDRESS)]
    for client in slow:  # 127.0.0.1's places, both taken
        await client.send(upload_head(5_000_000) + FILE_PART + b"x" * 300_000)
    await until(lambda: len(temp_files(config)) == PER_ADDRESS)

    # The second time, the address's check is remembered.
    statuses = await small_uploads(http_port, [f"{header}\r\n"] * 2)
    for client in slow:
        client.close()

    assert statuses == ([200, 200] if counted_apart else [429, 429])


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("host", ["evil.example?x=1", "a b", "user@evil.example", "évil.example"])
async def test_behind_the_proxy_a_forwarded_host_no_url_can_be_made_of_is_a_400(
    http_server, http_port, config, host
):
    # The answer's URLs are made of it, as of Host (which gets the same check).
    client = await Raw.open(http_port)
    body = FILE_PART + b"hello" + FORM_END
    extra = f"X-Forwarded-Host: {host}\r\n".encode()
    head = upload_head(len(body)).replace(b"\r\n\r\n", b"\r\n" + extra + b"\r\n")

    await client.send(head + body)
    status, _, answer = split(await client.answer())

    assert status == 400
    shown = host.encode().decode("latin-1")  # as the header's bytes arrived
    assert json.loads(answer) == {
        "status": False,
        "error": f"the X-Forwarded-Host header is not a host name and port: {shown!r}",
    }
    assert blob_files(config) == []


@pytest.mark.gen_test(timeout=30)
async def test_behind_the_proxy_the_forwarded_host_and_scheme_make_the_answers_urls(
    http_server, http_port
):
    client = await Raw.open(http_port)
    body = FILE_PART + b"hello" + FORM_END
    extra = "X-Forwarded-Host: files.example.org:8443\r\nX-Forwarded-Proto: HTTPS\r\n"

    await client.send(upload_head(len(body), extra=f"{extra}Connection: close\r\n") + body)
    status, _, answer = split(await client.answer())

    assert status == 200
    assert json.loads(answer)["urls"]["base"] == "https://files.example.org:8443/"


@pytest.mark.gen_test(timeout=30)
async def test_ipv6_addresses_of_one_64_network_share_its_places(http_server, http_port, config):
    """One IPv6 host has many addresses (privacy addresses, a whole /64 routed to it): the
    places, like the throttles, count its network."""
    slow = [await Raw.open(http_port) for _ in range(PER_ADDRESS)]
    for n, client in enumerate(slow, 1):
        head = upload_head(5_000_000, extra=f"X-Real-IP: 2001:db8::{n}\r\n")
        await client.send(head + FILE_PART + b"x" * 300_000)
    await until(lambda: len(temp_files(config)) == PER_ADDRESS)

    # The same /64, then the next one.
    headers = ["X-Real-IP: 2001:db8::99\r\n", "X-Real-IP: 2001:db8:0:1::1\r\n"]
    statuses = await small_uploads(http_port, headers)
    for client in slow:
        client.close()

    assert statuses == [429, 200]


def test_an_address_is_checked_as_tornado_checks_it():
    names = ["127.0.0.1", "::1", "fe80::1%lo", "2001:db8::7", "", "1.2.3.4\x00", "999.1.2.3"]
    names += ["client.example", "7" * 70, "::" + "f" * 70]

    for name in names * 2:  # the second time from memory
        assert valid_ip(name) == netutil.is_valid_ip(name), name


@pytest.mark.gen_test(timeout=30)
async def test_a_place_is_free_again_once_an_upload_is_answered(http_server, http_port, config):
    for _ in range(PER_ADDRESS + 2):
        client = await Raw.open(http_port)
        await client.send(
            upload_head(len(FILE_PART) + 5 + len(FORM_END)) + FILE_PART + b"hello" + FORM_END
        )
        assert (await client.reader.readuntil(b"}\n")).startswith(b"HTTP/1.1 200 ")
        client.close()


# -- SIGTERM -----------------------------------------------------------------------------


def serve(
    tmp_path: Path,
    port: int,
    grace: float = 20,
    server: str = "",
    preexec: Callable[[], None] | None = None,
):
    """`hostd serve` in its own process; `server` adds lines to its [server] section."""
    (tmp_path / "hostd.toml").write_text(
        f"[server]\nport = {port}\nshutdown_grace_seconds = {grace}\n{server}"
        '[storage]\ndata_dir = "d"\n'
    )
    proc = start(["serve"], tmp_path, preexec=preexec)
    wait_for_line(proc, "listening on")
    return proc


def slow_upload(port: int, data_dir: Path) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(upload_head(len(FILE_PART) + 300_000 + 5 + len(FORM_END)))
    sock.sendall(FILE_PART + b"x" * 300_000)
    deadline = time.monotonic() + 10
    while not temp_files(Config(data_dir=data_dir)):
        assert time.monotonic() < deadline, "the upload never started"
        time.sleep(0.02)
    return sock


def read_all(sock: socket.socket) -> bytes:
    sock.settimeout(30)
    received = bytearray()
    while data := sock.recv(65536):
        received += data
    return bytes(received)


def test_sigterm_lets_an_upload_in_flight_finish_and_accepts_no_new_connection(tmp_path, free_port):
    proc = serve(tmp_path, free_port, grace=20)
    try:
        sock = slow_upload(free_port, tmp_path / "d")
        proc.send_signal(signal.SIGTERM)
        wait_for_line(proc, "shutting down")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", free_port), timeout=5)
        sock.sendall(b"tail!" + FORM_END)
        status, headers, body = split(read_all(sock))
        sock.close()
        output, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()

    assert status == 200
    assert json.loads(body)["status"] is True
    assert proc.returncode == 0
    assert "200 POST /api/upload" in output


def test_sigterm_answers_an_upload_still_arriving_after_the_grace_with_a_503(tmp_path, free_port):
    proc = serve(tmp_path, free_port, grace=0.5)
    try:
        sock = slow_upload(free_port, tmp_path / "d")
        proc.send_signal(signal.SIGTERM)
        status, headers, body = split(read_all(sock))
        sock.close()
        output, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()

    assert status == 503
    assert headers["Connection"] == "close"
    assert json.loads(body) == {
        "status": False,
        "error": "the server is shutting down; the upload was not stored, send it again soon",
    }
    assert temp_files(Config(data_dir=tmp_path / "d")) == []
    assert proc.returncode == 0
    assert "503 POST /api/upload" in output and "499 POST" not in output


# -- which CPUs a server's threads run on (hostd/affinity.py) -----------------------------

CPUS = sorted(os.sched_getaffinity(0))


@contextlib.contextmanager
def serving(tmp_path: Path, port: int, server: str = "") -> Iterator[subprocess.Popen[str]]:
    proc = serve(tmp_path, port, server=server)
    try:
        yield proc
    finally:
        stop(proc)
        assert proc.stdout is not None
        proc.stdout.close()


def big_upload(port: int) -> None:
    """An upload big enough that its bytes are hashed and written in a roaming thread."""
    body, headers = multipart_body(files=[("file", "big.bin", os.urandom(2 * 1024 * 1024))])
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/upload", data=body, headers=headers, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


def test_serve_keeps_its_ioloop_and_the_threads_it_starts_on_one_cpu(tmp_path, free_port):
    with serving(tmp_path, free_port) as proc:
        big_upload(free_port)
        threads = cpus_of_threads(proc.pid)

    home = {CPUS[free_port % len(CPUS)]}
    assert threads[proc.pid] == home  # the IOLoop's, on the CPU that port and instance give
    pinned = [tid for tid, cpus in threads.items() if cpus == home]
    roaming = [tid for tid, cpus in threads.items() if cpus == set(CPUS)]
    assert len(pinned) + len(roaming) == len(threads)
    assert len(pinned) >= 3  # the IOLoop's, and SQLite's reader and writer at least
    if len(CPUS) > 1:  # the big upload's bytes were hashed and written by a roaming thread
        assert roaming


def test_serve_pins_to_the_cpu_server_cpu_names(tmp_path, free_port):
    chosen = CPUS[-1]
    with serving(tmp_path, free_port, server=f"cpu = {chosen}\n") as proc:
        threads = cpus_of_threads(proc.pid)

    assert threads[proc.pid] == {chosen}


def test_serve_with_server_cpu_any_leaves_every_thread_free(tmp_path, free_port):
    with serving(tmp_path, free_port, server='cpu = "any"\n') as proc:
        big_upload(free_port)
        threads = cpus_of_threads(proc.pid)

    assert all(cpus == set(CPUS) for cpus in threads.values())


def test_serve_on_a_cpu_it_may_not_use_stops_with_a_reason(tmp_path, free_port):
    (tmp_path / "hostd.toml").write_text(f"[server]\nport = {free_port}\ncpu = 4095\n")

    done = hostd("serve", "--data-dir", str(tmp_path / "d"), cwd=tmp_path, timeout=60)

    assert done.returncode == 2
    listed = ", ".join(str(cpu) for cpu in CPUS)
    assert f"server.cpu = 4095: this process may use CPUs {listed} only" in done.stderr


@pytest.fixture
def pinning_refused(monkeypatch):
    """sched_setaffinity failing with EPERM, as systemd's SystemCallFilter=~@resources does."""

    def refused(pid: int, cpus: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setaffinity", refused)


def test_a_system_that_refuses_pinning_leaves_the_threads_free_with_a_warning(
    pinning_refused, monkeypatch, caplog
):
    monkeypatch.setattr(affinity, "_everywhere", None)

    affinity.settle(CPUS[0])
    affinity.roam()  # nothing to undo, so nothing tried

    assert "could not keep the threads on CPU" in caplog.text
    assert affinity._everywhere is None


def test_a_worker_that_may_not_roam_stays_and_its_pool_still_works(
    pinning_refused, monkeypatch, caplog
):
    monkeypatch.setattr(affinity, "_everywhere", frozenset(CPUS))  # as after settle()

    with ThreadPoolExecutor(1, initializer=affinity.roam) as pool:
        answer = pool.submit(sum, [1, 2]).result(timeout=10)

    assert answer == 3
    assert "a worker thread stays on the IOLoop's CPU" in caplog.text


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_uploads_that_trickle_in_hold_little_memory_each(tmp_path, free_port):
    """A head that promises 50 MB and a kilobyte of body: its read buffer stays small
    (it grows only while a body arrives faster than it is handed on). With a 1 MiB buffer
    from the start, these 200 held 200 MiB."""
    proc = serve(tmp_path, free_port, server="trust_proxy = true\n")
    uploads = []
    try:
        before = rss_mib(proc.pid)
        for n in range(200):
            sock = socket.create_connection(("127.0.0.1", free_port))
            extra = f"X-Real-IP: 10.0.{n // 100}.{n % 100 + 1}\r\n"  # 2 from each address
            sock.sendall(upload_head(50_000_000, extra=extra) + FILE_PART + b"x" * 1000)
            uploads.append(sock)
        time.sleep(2)  # each one read (its buffer is made as its body begins)
        grown = rss_mib(proc.pid) - before
    finally:
        for sock in uploads:
            sock.close()
        stop(proc)
        proc.communicate()

    assert grown < 64


# -- file descriptors ---------------------------------------------------------------------


def open_files_limit(soft: int, hard: int) -> Callable[[], None]:
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (1/100 s)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_serve_raises_its_open_files_limit_to_the_hard_limit(tmp_path, free_port):
    proc = serve(tmp_path, free_port, preexec=open_files_limit(256, 4096))
    try:
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
    finally:
        stop(proc)
        proc.communicate()

    (line,) = [line for line in limits.splitlines() if line.startswith("Max open files")]
    assert line.split()[3:5] == ["4096", "4096"]


def test_out_of_descriptors_the_server_pauses_accepting_then_serves_again(tmp_path, free_port):
    """Tornado's own accept handler fails at once, again and again, while the listening
    socket stays readable: a core at 100% and a traceback a try."""
    proc = serve(tmp_path, free_port, preexec=open_files_limit(100, 100))
    output: list[str] = []
    assert proc.stdout is not None
    reading = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
    reading.start()
    flood = []
    try:
        for _ in range(150):  # past the descriptors left; the rest wait in the backlog
            flood.append(socket.create_connection(("127.0.0.1", free_port), timeout=5))
        deadline = time.monotonic() + 10
        while not any("cannot accept connections" in line for line in output):
            assert time.monotonic() < deadline, "the server never ran out of descriptors"
            time.sleep(0.05)
        before = cpu_ticks(proc.pid)
        time.sleep(1)
        spent = cpu_ticks(proc.pid) - before
        for sock in flood:
            sock.close()
        time.sleep(0.5)  # the server sees them close and lets their descriptors go
        with urllib.request.urlopen(f"http://127.0.0.1:{free_port}/healthz", timeout=10) as ok:
            status = ok.status
    finally:
        for sock in flood:
            sock.close()
        stop(proc)
        reading.join(10)
        proc.communicate()

    assert spent < 30  # of the 100 ticks of a core that spins
    logged = "".join(output)
    assert logged.count("cannot accept connections: Too many open files") == 1
    assert "Exception in callback" not in logged  # asyncio's line for each failed accept
    assert status == 200


# -- connections per address -------------------------------------------------------------


CONNECTIONS_CAP = 3


def capped(tmp_path: Path, *, trust_proxy: bool) -> Config:
    """Three connections an address."""
    return Config(
        data_dir=tmp_path / "data",
        cookie_secret="test-secret",
        connections_per_address=CONNECTIONS_CAP,
        trust_proxy=trust_proxy,
    )


class TestConnectionsPerAddress:
    @pytest.fixture
    def config(self, tmp_path: Path) -> Config:
        return capped(tmp_path, trust_proxy=False)  # clients straight on the socket

    @pytest.mark.gen_test(timeout=30)
    async def test_a_connection_past_the_cap_is_a_429_before_its_request_is_read(
        self, http_server, http_port
    ):
        held = [await Raw.open(http_port) for _ in range(CONNECTIONS_CAP)]  # idle: no request yet
        for client in held:
            await client.send(b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n")
            await client.reader.readuntil(b"ok\n")  # each served and kept open

        over = await Raw.open(http_port)
        await over.send(b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n")
        refused = split(await over.answer())
        other = await asyncio.open_connection(  # from another address
            "127.0.0.1", http_port, local_addr=("127.0.0.2", 0)
        )
        other[1].write(b"GET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        served = await other[0].read()
        other[1].close()
        held.pop().close()
        await until(lambda: http_server.connections.total == CONNECTIONS_CAP - 1)
        again = await Raw.open(http_port)
        await again.send(b"GET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        after = split(await again.answer())

        assert refused == (
            429,
            {
                "Content-Type": "text/plain; charset=utf-8",
                "Content-Length": str(len(refused[2])),
                "Retry-After": "5",
                "X-Content-Type-Options": "nosniff",
                "Connection": "close",
            },
            b"ERROR too many connections from your address (3 at once); close some and retry\n",
        )
        assert served.startswith(b"HTTP/1.1 200 ")
        assert after[0] == 200  # a place is free again once a connection closes


class TestConnectionsBehindAProxy:
    @pytest.fixture
    def config(self, tmp_path: Path) -> Config:
        return capped(tmp_path, trust_proxy=True)

    @pytest.mark.gen_test(timeout=30)
    async def test_every_connection_is_the_proxys_so_none_is_capped(self, http_server, http_port):
        count = CONNECTIONS_CAP + 2
        clients = [await Raw.open(http_port) for _ in range(count)]
        for client in clients:
            await client.send(b"GET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        answers = [split(await client.answer())[0] for client in clients]

        assert answers == [200] * count
