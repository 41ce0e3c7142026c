"""hostd behind a real nginx, run from contrib/nginx.conf: uploads, downloads, limits, headers.

The module starts `hostd serve` (with trust_proxy = true) and nginx as processes, once for
all its tests, with every file of theirs under a temp dir; and a second pair, whose hostd
has server.accel_redirect on (over the same data dir), so that nginx sends the files' bytes.
nginx's site is contrib/nginx.conf as shipped, except for the upstream address, the `listen`
lines, the ssl_* lines (the test speaks plain HTTP) and the blob location's `alias` (the
test's data dir); a second copy of its HTTPS server sends X-Forwarded-Proto "https", as
$scheme does behind TLS. See adapted_site() and tests/nginxsite.py.

nginx must be installed: CI's .ci/run does `apt-get install nginx-light`.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tornado.httpclient
from helpers import accepts, free_ports, multipart_body, stop, streamed_upload, wait_until
from nginxsite import (
    CONTRIB,
    INSTALL_HINT,
    contrib_site,
    find_nginx,
    listening_on,
    nginx_argv,
    nginx_conf,
    only,
    parse_nginx,
    render_nginx,
    upstream_to,
    walk,
)

from hostd.config import Config
from hostd.formdata import FORM_OVERHEAD_BYTES
from hostd.hashes import public_hash_candidates

MiB = 1024 * 1024
LIMIT = 24 * MiB  # hostd's max_upload_bytes here: room for the 20 MB upload, quick to exceed
ACCEL_PREFIX = "/_hostd_blobs/"  # server.accel_redirect, as contrib/nginx.conf expects it


# -- contrib/nginx.conf, adapted --------------------------------------------------------------


def adapted_site(
    hostd_port: int, http_port: int, https_port: int, redirect_port: int, blobs_dir: Path
) -> str:
    """contrib/nginx.conf for the test: the upstream on hostd's port, its servers on loopback
    ports, and the blobs' internal location over `blobs_dir`. The HTTPS server runs twice in
    plain HTTP: as it is (so $scheme is "http"), and with X-Forwarded-Proto "https", which
    is what $scheme says behind TLS."""
    site = contrib_site()
    blobs = site.internal_location()
    assert blobs is not None and blobs.args == [ACCEL_PREFIX], f"location {ACCEL_PREFIX}"
    as_https = listening_on(site.tls, https_port, blobs_dir)
    proto = only(
        [
            d
            for d in walk(as_https.block or [])
            if d.name == "proxy_set_header" and d.args[0] == "X-Forwarded-Proto"
        ],
        "proxy_set_header X-Forwarded-Proto",
    )
    assert proto.args[1:] == ["$scheme"]
    proto.args[1:] = ["https"]
    return render_nginx(
        [
            upstream_to(site.upstream, [hostd_port]),
            listening_on(site.tls, http_port, blobs_dir),
            as_https,
            listening_on(site.redirect, redirect_port),
        ]
    )


# -- the processes ------------------------------------------------------------------------


def require_nginx() -> str:
    found = find_nginx()
    if found is None:
        pytest.fail(
            "nginx is not installed, and tests/test_nginx.py runs a real nginx in front of "
            f"hostd. Install it: `{INSTALL_HINT}` (as root; .ci/run does this in CI).",
            pytrace=False,
        )
    return found


@dataclass
class Stack:
    """hostd on hostd_port; nginx in front on three ports (see adapted_site())."""

    hostd_port: int
    http_port: int
    https_port: int
    redirect_port: int
    data_dir: Path
    prefix: Path
    hostd_log: Path
    hostd_toml: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def tls_url(self) -> str:
        """nginx as it is behind TLS (it sends X-Forwarded-Proto https), in plain HTTP."""
        return f"http://127.0.0.1:{self.https_port}"

    def temp_files(self) -> list[str]:
        tmp = self.data_dir / "tmp"
        return [p.name for p in tmp.rglob("upload-*")]


@contextlib.contextmanager
def running(root: Path, data_dir: Path, settings: str = "") -> Iterator[Stack]:
    """hostd (hostd.toml's [server] section plus `settings`) and nginx in front of it."""
    nginx = require_nginx()
    root.mkdir()
    hostd_port, http_port, https_port, redirect_port = free_ports(4)
    stack = Stack(
        hostd_port,
        http_port,
        https_port,
        redirect_port,
        data_dir=data_dir,
        prefix=root / "nginx",
        hostd_log=root / "hostd.log",
        hostd_toml=root / "hostd.toml",
    )
    stack.hostd_toml.write_text(
        f'[server]\nhost = "127.0.0.1"\ntrust_proxy = true\ncookie_secret = "nginx-test"\n'
        f"{settings}"
        f'[storage]\ndata_dir = "{stack.data_dir}"\n'
        f"[limits]\nmax_upload_bytes = {LIMIT}\n"
    )
    with stack.hostd_log.open("wb") as out:
        hostd = subprocess.Popen(
            [sys.executable, "-m", "hostd", "serve", "--config", str(stack.hostd_toml)]
            + ["--port", str(hostd_port)],
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: b"listening on" in stack.hostd_log.read_bytes(),
            hostd,
            [stack.hostd_log],
            "hostd",
        )
        stack.prefix.mkdir()
        conf = stack.prefix / "nginx.conf"
        site = adapted_site(
            hostd_port, http_port, https_port, redirect_port, stack.data_dir / "blobs"
        )
        conf.write_text(nginx_conf(nginx, stack.prefix, site))
        nginx_log = stack.prefix / "stderr.log"
        with nginx_log.open("wb") as out:
            proxy = subprocess.Popen(
                nginx_argv(nginx, stack.prefix),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            ports = (http_port, https_port, redirect_port)
            logs = [nginx_log, stack.prefix / "error.log"]
            wait_until(lambda: all(map(accepts, ports)), proxy, logs, "nginx")
            yield stack
        finally:
            stop(proxy)
    finally:
        stop(hostd)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("nginx-stack")
    with running(root / "proxied", root / "data") as stack:
        yield stack


@pytest.fixture(scope="module")
def accel_stack(stack: Stack) -> Iterator[Stack]:
    """A second hostd and nginx over the same data dir, with server.accel_redirect on: the
    same files, so that its answers can be compared with `stack`'s byte for byte."""
    settings = f'accel_redirect = "{ACCEL_PREFIX}"\n'
    with running(stack.data_dir.parent / "accel", stack.data_dir, settings) as accel:
        yield accel


@pytest.fixture(params=["proxied", "accel_redirect"])
def front(request: pytest.FixtureRequest, stack: Stack) -> Stack:
    """Each download test runs twice: hostd sends the bytes, then nginx does."""
    return stack if request.param == "proxied" else request.getfixturevalue("accel_stack")


@pytest.fixture
def client(io_loop: Any) -> Iterator[tornado.httpclient.AsyncHTTPClient]:
    client = tornado.httpclient.AsyncHTTPClient(force_instance=True)
    yield client
    client.close()


# -- helpers --------------------------------------------------------------------------------


def public_hash(data: bytes) -> str:
    return public_hash_candidates(hashlib.sha256(data).hexdigest())[0]


async def upload(
    client: tornado.httpclient.AsyncHTTPClient,
    url: str,
    data: bytes,
    filename: str = "file.bin",
    headers: dict[str, str] | None = None,
) -> tornado.httpclient.HTTPResponse:
    body, base_headers = multipart_body(files=[("file", filename, data)])
    return await client.fetch(
        url, method="POST", body=body, headers={**base_headers, **(headers or {})}
    )


async def exchange(port: int, head: bytes, body_bytes: int, chunk: bytes = b"x" * 65536) -> bytes:
    """Send a request head, then keep sending `body_bytes` of body whatever the server says,
    as a client that does not wait for 100-continue would; return all the server sent
    before it closed. (helpers.raw_exchange() does the same, but closes its socket without
    waiting for it to close, which can surface later as a ResourceWarning, an error here.)"""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        writer.write(head)
        left = body_bytes
        while left > 0:
            writer.write(chunk[: min(len(chunk), left)])
            left -= min(len(chunk), left)
            await writer.drain()

    sender = asyncio.ensure_future(send())
    received = bytearray()
    try:
        while data := await asyncio.wait_for(reader.read(65536), timeout=10):
            received += data
    except ConnectionError:
        received += b"<reset>"
    finally:
        writer.transport.abort()  # drop what is still queued: the answer is all there is
        await asyncio.gather(sender, return_exceptions=True)
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return bytes(received)


async def hostd_log_line(stack: Stack, needle: str) -> str:
    """hostd's access-log line containing `needle` (it is written just after the answer)."""
    for _ in range(250):
        for line in stack.hostd_log.read_text(errors="replace").splitlines():
            if needle in line:
                return line
        await asyncio.sleep(0.02)
    raise AssertionError(f"hostd logged no line with {needle!r}")


async def no_temp_files_left(stack: Stack) -> list[str]:
    """hostd's temp dir once it has settled (it drops a refused upload on its own time)."""
    for _ in range(100):
        if not stack.temp_files():
            break
        await asyncio.sleep(0.02)
    return stack.temp_files()


# -- uploads: the answers -----------------------------------------------------------------


@pytest.mark.gen_test
async def test_upload_answers_urls_on_the_address_the_client_used(stack, client):
    data = b"through nginx"

    response = await upload(client, f"{stack.url}/api/upload", data, "note.txt")

    assert response.code == 200
    h = public_hash(data)
    answer = json.loads(response.body)
    assert answer.pop("delete_url").startswith(f"{stack.url}/delete/")
    assert answer == {
        "hash": h,
        "status": True,
        "urls": {
            "base": f"{stack.url}/",
            "full": f"{stack.url}/{h}/note.txt",
            "ext": f"{stack.url}/{h}.txt",
            "hash": f"{stack.url}/{h}",
        },
        "expires_at": None,
    }


@pytest.mark.gen_test
async def test_behind_tls_nginx_the_urls_are_https(stack, client):
    response = await upload(client, f"{stack.tls_url}/api/upload", b"tls", "a.png")

    urls = json.loads(response.body)["urls"]
    host = f"127.0.0.1:{stack.https_port}"
    assert urls["base"] == f"https://{host}/"
    assert urls["ext"] == f"https://{host}/{public_hash(b'tls')}.png"


@pytest.mark.gen_test
async def test_forwarding_headers_a_client_sends_are_replaced_by_nginx(stack, client):
    forged = {
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https",
        "X-Scheme": "https",  # Tornado would prefer this one to X-Forwarded-Proto
        "X-Real-IP": "203.0.113.9",
        "X-Forwarded-For": "203.0.113.9",
    }

    response = await upload(client, f"{stack.url}/api/upload?forged=1", b"forged", headers=forged)

    assert json.loads(response.body)["urls"]["base"] == f"{stack.url}/"
    line = await hostd_log_line(stack, "/api/upload?forged=1")
    assert "(127.0.0.1)" in line
    assert "203.0.113.9" not in line


@pytest.mark.gen_test
async def test_plain_http_is_redirected_to_https(stack, client):
    response = await client.fetch(
        f"http://127.0.0.1:{stack.redirect_port}/abc?x=1", follow_redirects=False, raise_error=False
    )

    assert response.code == 301
    assert response.headers["Location"] == "https://127.0.0.1/abc?x=1"


# -- downloads ------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_download_is_byte_identical_with_the_file_headers(front, client):
    # Larger than nginx's proxy buffers (16 x 64 KiB), so it also passes through them.
    data = hashlib.sha256(b"download").digest() * (3 * MiB // 32) + b"tail"
    h = json.loads((await upload(client, f"{front.url}/api/upload", data)).body)["hash"]
    etag = f'"{hashlib.sha256(data).hexdigest()}"'

    full = await client.fetch(f"{front.url}/{h}")
    part = await client.fetch(f"{front.url}/{h}", headers={"Range": "bytes=1000-1999"})
    cached = await client.fetch(
        f"{front.url}/{h}", headers={"If-None-Match": etag}, raise_error=False
    )
    head = await client.fetch(f"{front.url}/{h}", method="HEAD")

    assert full.code == 200
    assert full.body == data
    assert full.headers["Content-Length"] == str(len(data))
    assert full.headers["ETag"] == etag
    assert full.headers["Content-Security-Policy"].endswith("sandbox")
    assert full.headers["X-Content-Type-Options"] == "nosniff"
    assert full.headers["Accept-Ranges"] == "bytes"
    assert "immutable" in full.headers["Cache-Control"]
    assert part.code == 206
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    assert part.body == data[1000:2000]
    assert cached.code == 304
    assert head.headers["Content-Length"] == str(len(data))
    assert head.body == b""


@pytest.mark.gen_test
async def test_uploaded_html_is_served_as_stored_not_gzipped(front, client):
    page = b"<!doctype html><title>t</title>" + b"<p>compressible</p>" * 500
    h = json.loads((await upload(client, f"{front.url}/api/upload", page, "p.html")).body)["hash"]

    response = await client.fetch(
        f"{front.url}/{h}/p.html", headers={"Accept-Encoding": "gzip"}, decompress_response=False
    )

    assert response.headers["Content-Type"].startswith("text/html")
    assert "Content-Encoding" not in response.headers
    assert response.headers["ETag"] == f'"{hashlib.sha256(page).hexdigest()}"'
    assert response.body == page


# -- server.accel_redirect: nginx sends the bytes ---------------------------------------------

# Requests whose answers must not change when nginx sends the bytes: (method, URL suffix,
# headers), with ETAG and LAST_MODIFIED standing for the file's own validators.
ANSWERS_TO_COMPARE = [
    ("GET", "", {}),
    ("GET", ".png", {}),
    ("GET", "/réunion notes.txt", {}),
    ("HEAD", "", {}),
    ("GET", "", {"Range": "bytes=1000-1999"}),
    ("GET", "", {"Range": "bytes=0-"}),
    ("GET", "", {"Range": "bytes=-100"}),
    ("GET", "", {"Range": "bytes=3000000-9999999"}),
    ("HEAD", "", {"Range": "bytes=0-9"}),
    ("GET", "", {"Range": "bytes=99999999-"}),
    ("GET", "", {"If-None-Match": "ETAG"}),
    ("GET", "", {"If-None-Match": "*"}),
    ("GET", "", {"If-None-Match": '"another"'}),
    ("GET", "", {"If-Modified-Since": "LAST_MODIFIED"}),
    ("GET", "", {"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}),
    ("GET", "", {"Range": "bytes=0-9", "If-Range": "ETAG"}),
    ("GET", "", {"Range": "bytes=0-9", "If-Range": '"another"'}),
    ("GET", "", {"Range": "bytes=0-9", "If-Range": "LAST_MODIFIED"}),
    ("GET", "", {"Range": "bytes=0-1,5-9"}),
    ("GET", "", {"Range": "bytes=5-3"}),
    ("GET", "", {"If-Match": '"another"'}),
    ("GET", "", {"If-Unmodified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}),
    ("GET", "", {"Accept-Encoding": "gzip"}),
]


def answer_of(response: tornado.httpclient.HTTPResponse) -> tuple[int, list[Any], bytes]:
    """Status, every header line but Date (the clock moves on), and body."""
    headers = sorted((name.lower(), value) for name, value in response.headers.get_all())
    return response.code, [h for h in headers if h[0] != "date"], response.body


@pytest.fixture(scope="module")
def big_file(stack: Stack) -> tuple[str, bytes]:
    """A file larger than nginx's proxy buffers, uploaded once for the comparisons."""
    data = hashlib.sha256(b"compare").digest() * (3 * MiB // 32) + b"tail"
    body, headers = multipart_body(files=[("file", "big.bin", data)])
    request = urllib.request.Request(
        f"{stack.url}/api/upload", data=body, headers=headers, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())["hash"], data


def described(method: str, suffix: str, headers: dict[str, str]) -> str:
    return " ".join([method, f"/<hash>{suffix}", *(f"{k}: {v}" for k, v in headers.items())])


@pytest.mark.parametrize(
    ("method", "suffix", "headers"),
    ANSWERS_TO_COMPARE,
    ids=[described(*case) for case in ANSWERS_TO_COMPARE],
)
@pytest.mark.gen_test
async def test_with_accel_redirect_every_answer_is_the_same(
    stack, accel_stack, big_file, client, method, suffix, headers
):
    h, data = big_file
    plain = await client.fetch(f"{stack.url}/{h}", method="HEAD")
    validators = {"ETAG": plain.headers["ETag"], "LAST_MODIFIED": plain.headers["Last-Modified"]}
    headers = {name: validators.get(value, value) for name, value in headers.items()}

    proxied, accelerated = [
        await client.fetch(
            f"{s.url}/{h}{urllib.parse.quote(suffix)}",
            method=method,
            headers=headers,
            raise_error=False,
            decompress_response=False,
        )
        for s in (stack, accel_stack)
    ]

    assert answer_of(accelerated) == answer_of(proxied)
    assert "X-Accel-Redirect" not in accelerated.headers
    if proxied.code == 200 and method == "GET":
        assert proxied.body == data


@pytest.mark.gen_test
async def test_with_accel_redirect_the_blob_files_own_date_answers_nothing(
    stack, accel_stack, client
):
    # A blob file older than its row (restored from a backup, or written the second before
    # the commit): nginx must not take the file's mtime for the Last-Modified hostd sent.
    data = b"restored from a backup"
    h = json.loads((await upload(client, f"{stack.url}/api/upload", data)).body)["hash"]
    sha = hashlib.sha256(data).hexdigest()
    older = time.time() - 3600
    os.utime(stack.data_dir / "blobs" / sha[:2] / sha[2:4] / sha, (older, older))
    since = {"If-Modified-Since": email.utils.formatdate(older, usegmt=True)}

    proxied = await client.fetch(f"{stack.url}/{h}", headers=since, raise_error=False)
    accelerated = await client.fetch(f"{accel_stack.url}/{h}", headers=since, raise_error=False)

    assert proxied.code == 200
    assert answer_of(accelerated) == answer_of(proxied)


@pytest.mark.gen_test
async def test_with_accel_redirect_hostd_sends_the_headers_and_nginx_the_bytes(
    accel_stack, big_file, client
):
    h, data = big_file
    sha = hashlib.sha256(data).hexdigest()

    from_hostd = await client.fetch(f"http://127.0.0.1:{accel_stack.hostd_port}/{h}")
    through_nginx = await client.fetch(f"{accel_stack.url}/{h}")

    assert from_hostd.headers["X-Accel-Redirect"] == f"{ACCEL_PREFIX}{sha[:2]}/{sha[2:4]}/{sha}"
    assert from_hostd.body == b""
    assert through_nginx.body == data
    assert "X-Accel-Redirect" not in through_nginx.headers


@pytest.mark.parametrize("port", ["http_port", "https_port"])
@pytest.mark.gen_test
async def test_the_blob_location_cannot_be_reached_from_outside(
    accel_stack, big_file, client, port
):
    sha = hashlib.sha256(big_file[1]).hexdigest()
    base = f"http://127.0.0.1:{getattr(accel_stack, port)}"

    for path in (f"{ACCEL_PREFIX}{sha[:2]}/{sha[2:4]}/{sha}", ACCEL_PREFIX):
        response = await client.fetch(f"{base}{path}", raise_error=False)

        assert response.code == 404, path
        assert sha.encode() not in response.body
        assert big_file[1][:64] not in response.body


@pytest.mark.gen_test
async def test_with_accel_redirect_a_file_taken_down_elsewhere_is_hostds_404(accel_stack, client):
    data = b"soon taken down"
    h = json.loads((await upload(client, f"{accel_stack.url}/api/upload", data)).body)["hash"]
    before = await client.fetch(f"{accel_stack.url}/{h}")

    removed = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "hostd", "file", "rm", h, "--config", str(accel_stack.hostd_toml)],
        stderr=subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(removed.communicate(), timeout=60)
    after = await client.fetch(f"{accel_stack.url}/{h}", raise_error=False)

    assert before.body == data
    assert removed.returncode == 0, stderr
    assert after.code == 404
    assert b"There is no file with this hash." in after.body


# -- limits ---------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_upload_over_the_limit_is_a_413_with_hostds_message(stack):
    size = LIMIT + FORM_OVERHEAD_BYTES + MiB
    head = (
        f"POST /api/upload HTTP/1.1\r\nHost: 127.0.0.1:{stack.http_port}\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {size}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()

    answer = await exchange(stack.http_port, head, size)

    assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]
    status, _, body = answer.partition(b"\r\n\r\n")
    assert b"application/json" in status
    assert json.loads(body) == {
        "status": False,
        "error": f"the file is larger than the limit of {LIMIT} bytes",
    }
    assert await no_temp_files_left(stack) == []


@pytest.mark.gen_test
async def test_chunked_upload_growing_past_the_limit_is_a_413_and_leaves_no_temp_file(stack):
    # No Content-Length: hostd finds out while it writes the file, past LIMIT bytes.
    piece = b"x" * 65536
    chunk = b"%x\r\n%s\r\n" % (len(piece), piece)
    head = (
        f"POST /api/upload?chunked=1 HTTP/1.1\r\nHost: 127.0.0.1:{stack.http_port}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    form_head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big"\r\n\r\n'
    head += b"%x\r\n%s\r\n" % (len(form_head), form_head)
    chunks = LIMIT // len(piece) + 8

    answer = await exchange(stack.http_port, head, chunks * len(chunk), chunk)

    assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert f"the file is larger than the limit of {LIMIT} bytes".encode() in answer
    assert await no_temp_files_left(stack) == []


@pytest.mark.gen_test
async def test_client_vanishing_mid_upload_leaves_no_temp_file(stack):
    _reader, writer = await asyncio.open_connection("127.0.0.1", stack.http_port)
    writer.write(
        f"POST /api/upload HTTP/1.1\r\nHost: 127.0.0.1:{stack.http_port}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 10000000\r\n\r\n"
        '--b\r\nContent-Disposition: form-data; name="file"; filename="gone"\r\n\r\n'.encode()
        + b"x" * (2 * MiB)
    )
    await writer.drain()
    for _ in range(250):  # until hostd is writing the file
        if stack.temp_files():
            break
        await asyncio.sleep(0.02)
    started = stack.temp_files()
    writer.close()
    await writer.wait_closed()

    assert started, "the upload never reached hostd"
    assert await no_temp_files_left(stack) == []


def test_nginx_lets_through_hostds_default_limit_and_form_overhead():
    sizes = [
        d.args[0]
        for d in walk(parse_nginx(CONTRIB.read_text(encoding="utf-8")))
        if d.name == "client_max_body_size"
    ]
    assert len(sizes) == 1
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", sizes[0])
    assert match is not None
    number, unit = match.groups()
    nginx_limit = int(number) * {"": 1, "k": 1024, "m": MiB, "g": 1024 * MiB}[unit.lower()]

    assert nginx_limit >= Config().max_upload_bytes + FORM_OVERHEAD_BYTES


# -- streaming --------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_20_mb_upload_streams_through_to_hostd_and_arrives_intact(stack, client):
    size = 20 * 1000 * 1000 + 7
    producer, headers, digest = streamed_upload(size, seed=b"nginx stream")
    sent = 0
    seen_by_hostd_midway = 0

    async def watched(write: Any) -> None:
        # Halfway through, wait for hostd to be writing the file already: it would get
        # nothing until the last byte if nginx buffered the request body.
        async def write_and_check(piece: bytes) -> None:
            nonlocal sent, seen_by_hostd_midway
            await write(piece)
            sent += len(piece)
            if sent >= size // 2 and not seen_by_hostd_midway:
                for _ in range(250):
                    files = list((stack.data_dir / "tmp").rglob("upload-*"))
                    seen_by_hostd_midway = sum(f.stat().st_size for f in files)
                    if seen_by_hostd_midway >= MiB:
                        break
                    await asyncio.sleep(0.02)
                assert seen_by_hostd_midway >= MiB, "hostd got nothing while the body was sent"

        await producer(write_and_check)

    response = await client.fetch(
        f"{stack.url}/api/upload",
        method="POST",
        body_producer=watched,
        headers=headers,
        request_timeout=25,
    )
    answer = json.loads(response.body)
    downloaded = hashlib.sha256()
    await client.fetch(answer["urls"]["hash"], streaming_callback=downloaded.update)

    assert response.code == 200
    assert seen_by_hostd_midway >= MiB
    assert answer["hash"] == public_hash_candidates(digest.hex())[0]
    assert downloaded.digest() == digest


@pytest.mark.gen_test(timeout=60)
async def test_curl_T_and_hostd_upload_go_through_nginx(stack, client, tmp_path):
    big = tmp_path / "through nginx.bin"
    big.write_bytes(hashlib.sha256(b"nginx put").digest() * (3 * MiB // 32))
    expected = public_hash_candidates(hashlib.sha256(big.read_bytes()).hexdigest())[0]

    curl = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-T", str(big), f"{stack.url}/api/upload/through%20nginx.bin",
        stdout=subprocess.PIPE,
    )  # fmt: skip
    put, _ = await asyncio.wait_for(curl.communicate(), timeout=30)
    uploader = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hostd", "upload", str(big), "--url", stack.url,
        "--resumable-above", str(MiB),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    printed, problems = await asyncio.wait_for(uploader.communicate(), timeout=30)

    assert json.loads(put)["urls"]["full"] == f"{stack.url}/{expected}/through%20nginx.bin"
    assert uploader.returncode == 0, problems
    assert printed.decode() == f"{stack.url}/{expected}.bin\n"
    assert "PATCH /api/tus/" in await hostd_log_line(stack, "PATCH /api/tus/")  # over 1 MiB: tus
    fetched = await client.fetch(f"{stack.url}/{expected}")
    assert fetched.body == big.read_bytes()
