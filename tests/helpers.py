"""Helpers the tests share: request bodies, raw sockets, looking at the data dir."""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import html
import http
import io
import json
import os
import re
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hostd import uploads
from hostd.config import Config


def multipart_body(
    fields: dict[str, str] | None = None,
    files: list[tuple[str, str | bytes, bytes]] | None = None,
    boundary: str = "hostd-test-boundary",
    fields_after: dict[str, str] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A small multipart/form-data body and its headers; files are (field, filename, data),
    between `fields` and `fields_after`. A filename given as bytes is sent as it is, to test
    invalid UTF-8."""
    out = bytearray()
    for name, value in (fields or {}).items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    for field, filename, data in files or []:
        raw_name = filename if isinstance(filename, bytes) else filename.encode()
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '.encode()
        out += b'filename="' + raw_name + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
        out += data + b"\r\n"
    for name, value in (fields_after or {}).items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    return bytes(out), headers


def streamed_upload(
    size: int, *, seed: bytes = b"", filename: str = "big.bin", boundary: str = "hostd-stream"
) -> tuple[Callable[[Callable[[bytes], Any]], Any], dict[str, str], bytes]:
    """A body producer that sends a `size`-byte file in 64 KiB chunks, never as one object.

    Returns (producer, headers, expected sha256 digest of the file)."""
    block = hashlib.sha256(seed or uuid.uuid4().bytes).digest() * 2048  # 64 KiB
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    digest = hashlib.sha256()
    remaining = size
    while remaining > 0:
        piece = block[: min(len(block), remaining)]
        digest.update(piece)
        remaining -= len(piece)

    async def producer(write: Callable[[bytes], Any]) -> None:
        await write(head)
        left = size
        while left > 0:
            piece = block[: min(len(block), left)]
            left -= len(piece)
            await write(piece)
        await write(tail)

    headers = {
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Content-Length": str(len(head) + size + len(tail)),
    }
    return producer, headers, digest.digest()


def temp_files(config: Config) -> list[str]:
    """Uploads in progress (or left behind), in every process's temp folder; with S3, temp
    objects and incomplete multipart uploads."""
    if config.backend == "s3":
        from seaweed import s3_incomplete_uploads, s3_objects

        temps = f"{config.s3_prefix}tmp/"
        return [key for key in s3_objects(config) if key.startswith(temps)] + [
            f"multipart upload {key}" for key in s3_incomplete_uploads(config)
        ]
    return [
        path.name
        for path in (config.data_dir / "tmp").rglob("*")
        if path.name != ".lock" and path.is_file()
    ]


def partial_files(config: Config) -> list[str]:
    """The unfinished tus uploads' files (data_dir/partials), whatever the blob store."""
    partials = config.data_dir / "partials"
    return sorted(p.name for p in partials.iterdir()) if partials.is_dir() else []


def blob_files(config: Config) -> list[Path] | list[str]:
    """The blobs in the store: files, or with S3 the keys under the prefix (but tmp/)."""
    if config.backend == "s3":
        from seaweed import s3_objects

        temps = f"{config.s3_prefix}tmp/"
        return [key for key in s3_objects(config) if not key.startswith(temps)]
    return [p for p in config.blobs_dir.rglob("*") if p.is_file()]


async def raw_exchange(
    port: int, head: bytes, body_bytes: int, chunk: bytes = b"x" * 65536
) -> bytes:
    """Send a request head, then keep sending `body_bytes` of body whatever the server says,
    reading the answer meanwhile, as a client that does not wait for 100-continue would.
    Returns everything the server sent before it closed."""
    import asyncio

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = bytearray()

    async def send() -> None:
        writer.write(head)
        left = body_bytes
        try:
            while left > 0:
                piece = chunk[: min(len(chunk), left)]
                writer.write(piece)
                await writer.drain()
                left -= len(piece)
        except (ConnectionError, OSError):
            pass  # the server may close once it has answered; what it sent is what counts

    async def receive() -> None:
        try:
            while data := await reader.read(65536):
                received.extend(data)
        except (ConnectionError, OSError):
            received.extend(b"<reset>")

    await asyncio.wait_for(asyncio.gather(send(), receive()), timeout=30)
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()
    return bytes(received)


# -- blocking clients, for the browser tests (Playwright's sync API runs no IOLoop) --


def text_of(page: bytes) -> str:
    """The page's text as a reader sees it: tags dropped, entities decoded, spaces folded."""
    without_tags = re.sub(r"<[^>]+>", " ", page.decode())
    return re.sub(r"\s+", " ", html.unescape(without_tags))


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def bearer_upload(base_url: str, key: str, data: bytes) -> tuple[int, dict]:
    """POST /api/upload with the key, as a script would; (status, JSON answer)."""
    body, headers = multipart_body(files=[("file", "from-the-key.txt", data)])
    request = urllib.request.Request(
        f"{base_url}/api/upload", data=body, headers={**headers, "Authorization": f"Bearer {key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


# -- images that are small on disk and big in memory, made without holding their pixels --


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.cache
def _zlib_of_repeats(piece: bytes, count: int) -> bytes:
    """zlib data for `piece` repeated `count` times, deflating only one 64-piece block.

    Each block is deflated without history and ends with a full flush, so its bytes are the
    same wherever it stands in the stream: the block is repeated as bytes, not re-deflated,
    and only the checksum sees all the data."""
    whole, rest = divmod(count, 64)

    def deflated(data: bytes) -> bytes:
        raw = zlib.compressobj(9, zlib.DEFLATED, -15)
        return raw.compress(data) + raw.flush(zlib.Z_FULL_FLUSH)

    block = piece * 64
    adler = 1
    for _ in range(whole):
        adler = zlib.adler32(block, adler)
    adler = zlib.adler32(piece * rest, adler)
    # zlib header, the blocks, an empty final block, the checksum.
    return (
        b"\x78\x01"
        + deflated(block) * whole
        + deflated(piece * rest)
        + b"\x03\x00"
        + struct.pack(">I", adler)
    )


def png_of_one_colour(width: int, height: int, *, alpha: bool = True, tag: str = "") -> bytes:
    """An 8-bit RGBA (or RGB) PNG of one colour: an 8000x8000 RGBA one is ~250 KiB on disk and
    256 MB decoded. `tag` (a tEXt chunk) makes otherwise equal images different files."""
    pixel = b"\x10\x80\xf0\xff" if alpha else b"\x10\x80\xf0"
    header = struct.pack(">IIBBBBB", width, height, 8, 6 if alpha else 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"tEXt", b"Comment\0" + tag.encode())
        + _chunk(b"IDAT", _zlib_of_repeats(b"\x00" + pixel * width, height))
        + _chunk(b"IEND", b"")
    )


def grey_jpeg(width: int, height: int, *, scans: str = "one") -> bytes:
    """A mid-grey JPEG; width and height multiples of 8. Its Huffman tables hold one 1-bit code
    each (DC difference 0, end of block), so every 8x8 block is a bit or two: a 12000x12000
    one is 550 KiB on disk and 144 MB decoded.

    scans: "one", a baseline greyscale JPEG in one scan; "progressive", the same as a DC scan
    and an AC scan; "per colour", a baseline colour JPEG with each of its three components in
    a scan of its own. libjpeg keeps the coefficients of the whole image for the last two."""
    assert width % 8 == 0 and height % 8 == 0
    blocks = (width // 8) * (height // 8)
    components = 3 if scans == "per colour" else 1
    one_code = bytes([1] + [0] * 15) + b"\x00"  # 16 code-length counts, then the symbol

    def scan(component: int, start: int, end: int, bits_per_block: int) -> bytes:
        head = struct.pack(">HBBBBBB", 8, 1, component, 0x00, start, end, 0)
        return b"\xff\xda" + head + b"\x00" * -(-blocks * bits_per_block // 8)

    if scans == "progressive":
        data = scan(1, 0, 0, 1) + scan(1, 1, 63, 1)
    else:
        data = b"".join(scan(c, 0, 63, 2) for c in range(1, components + 1))
    frame = struct.pack(">HBHHB", 8 + 3 * components, 8, height, width, components)
    frame += b"".join(bytes([c, 0x11, 0]) for c in range(1, components + 1))
    return (
        b"\xff\xd8"
        + b"\xff\xdb"
        + struct.pack(">HB", 67, 0)
        + b"\x01" * 64
        + (b"\xff\xc2" if scans == "progressive" else b"\xff\xc0")
        + frame
        + b"\xff\xc4"
        + struct.pack(">H", 2 + 2 * 18)
        + b"\x00"
        + one_code
        + b"\x10"
        + one_code
        + data
        + b"\xff\xd9"
    )


def webp_of_one_colour(width: int, height: int) -> bytes:
    """A lossless WebP of one colour: 38 bytes at any size, width*height*4 bytes decoded.

    libwebp codes a one-colour image with 0 bits a pixel, so the size is only in the header:
    an 8x8 one is made with Pillow and its VP8L header given the size wanted."""
    from PIL import Image  # only the image tests need Pillow

    out = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(out, "WEBP", lossless=True)
    data = bytearray(out.getvalue())
    assert data[12:16] == b"VP8L" and data[20] == 0x2F  # a simple-format lossless file
    bits = int.from_bytes(data[21:25], "little") & ~((1 << 28) - 1)
    data[21:25] = (bits | (width - 1) | (height - 1) << 14).to_bytes(4, "little")
    return bytes(data)


class Fifos:
    """FIFOs in place of files: whoever reads one waits, until release() gives it `data` and
    an end. Deterministic slow files, without sleeps."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.held: list[int] = []
        for path in paths:
            os.mkfifo(path)
            # Held open for writing, so that readers wait in read(), not in open().
            self.held.append(os.open(path, os.O_RDWR | os.O_NONBLOCK))

    def release(self, data: bytes = b"") -> None:
        """Each reader gets `data` (at most 64 KiB, a pipe's buffer), then the end of the file;
        whoever opens the path later finds nothing there."""
        for path in self.paths:
            path.unlink()
        for fd in self.held:
            os.write(fd, data)
            os.close(fd)
        self.held = []

    def __enter__(self) -> Fifos:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.held:
            self.release()


# -- a real `hostd serve` (or other command) in its own process --


def start(
    args: list[str], cwd: Path, *, preexec: Callable[[], None] | None = None
) -> subprocess.Popen[str]:
    """`python -m hostd ARGS` in its own process, its output (stdout and stderr) readable;
    `preexec` runs in the child before hostd does (to close a descriptor, set a limit)."""
    return subprocess.Popen(
        [sys.executable, "-m", "hostd", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=preexec,
    )


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if needle in line:
            return line
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"never saw {needle!r}")


def hostd(
    *args: str, cwd: Path, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`python -m hostd ARGS` to its end: its exit status, stdout and stderr. Without a
    terminal, as from cron: nothing can stop to ask at one."""
    return subprocess.run(
        [sys.executable, "-m", "hostd", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        start_new_session=True,
    )


def damage_table(database: Path, table: str) -> None:
    """Write garbage over the first page of `table` in a closed SQLite database, as a failing
    disk would: the file still opens, and reading that table says it is malformed."""
    with contextlib.closing(sqlite3.connect(database)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,))
    with database.open("r+b") as file:
        file.seek((root[0] - 1) * page_size)
        file.write(b"\xde\xad\xbe\xef" * (page_size // 4))


# -- the database's writer ---------------------------------------------------------------


def bytes_under(prefix: str, start: int = 0) -> tuple[bytes, str]:
    """The first bytes (a number, from `start`) whose SHA-256 starts with `prefix`, and it."""
    for n in range(start, start + 1_000_000):
        data = b"%d" % n
        sha = hashlib.sha256(data).hexdigest()
        if sha.startswith(prefix):
            return data, sha
    raise AssertionError(prefix)


async def store_upload(db: Any, store: Any, data: bytes, user_id: int | None = None) -> Any:
    """What the upload handler does: write, commit, then place and register; (Blob, Upload)."""
    writer = store.writer()
    writer.write(data)
    written = await writer.commit()
    return await uploads.register(
        db,
        store,
        written,
        content_type="application/octet-stream",
        original_name="contested.bin",
        user_id=user_id,
        api_key_id=None,
    )


async def hold_writer(db: Any) -> tuple[Callable[[], None], Any]:
    """Keep the database's writer busy with one unit until the returned release() is
    called; also returns that unit's future. Returns once the writer is running it. On
    SQLite the unit blocks the writer's own thread; on PostgreSQL it awaits (its Tx is
    asynchronous there)."""
    import asyncio
    import threading

    started = threading.Event()
    if db.dialect == "sqlite":
        gate = threading.Event()

        async def held(tx: Any) -> None:
            started.set()
            gate.wait(10)

        release = gate.set
        busy = asyncio.ensure_future(db.write(held))
    else:
        event = asyncio.Event()

        async def waits(tx: Any) -> None:
            started.set()
            await asyncio.wait_for(event.wait(), 10)

        release = event.set
        busy = asyncio.ensure_future(db.write(waits))
    await asyncio.to_thread(started.wait, 10)
    return release, busy


async def nothing(tx: Any) -> None:
    """A unit of work that does nothing: `await db.write(nothing)` waits for the writer to
    go round once more."""


def raw_sql(sql: str, params: tuple[Any, ...] = ()) -> Callable[[Any], Any]:
    """A unit of work that runs one statement (for a state no request can make)."""

    async def work(tx: Any) -> None:
        await tx.execute(sql, params)

    return work


async def until_heard(db: Any, notices_before: int, within: float = 10) -> None:
    """Wait until `db` has heard of another process's change (a PostgreSQL notice after
    `notices_before`). On SQLite nothing to wait for: the counter is read before each use."""
    if db.dialect == "sqlite":
        return
    import asyncio

    deadline = time.monotonic() + within
    while db.changes.notices == notices_before:
        assert time.monotonic() < deadline, f"no change notice within {within} s"
        await asyncio.sleep(0.001)


# -- processes that serve a port --------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_until(ready: Any, proc: subprocess.Popen[bytes], logs: list[Path], what: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if ready():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    output = "".join(log.read_text(errors="replace") for log in logs if log.exists())
    raise AssertionError(f"{what} did not start (exit code {proc.poll()}):\n{output}")


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, and a kill if it has not ended within 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- processes' threads ---------------------------------------------------------------


def cpus_of_threads(pid: int) -> dict[int, set[int]]:
    """Each thread of a process (by its id) and the CPUs it may run on."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                found[int(task.name)] = cpus_in(line.split(":", 1)[1].strip())
    return found


def cpus_in(listed: str) -> set[int]:
    """The CPUs of a list such as "0-2,5"."""
    cpus: set[int] = set()
    for part in listed.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def assert_refused(response: Any, endpoint: str, status: int, message: str) -> None:
    """A refused upload, answered as its endpoint answers: JSON from /api/upload (and a PUT
    there), `ERROR <message>` with api=1, else a page."""
    assert response.code == status
    body = response.body.decode()
    if "/api/upload" in endpoint:
        assert json.loads(body) == {"status": False, "error": message}
    elif endpoint.endswith("api=1"):
        assert body == f"ERROR {message}\n"
    else:
        assert response.headers["Content-Type"].startswith("text/html")
        assert f"{status} {http.HTTPStatus(status).phrase}" in body
        assert message in html.unescape(body)


def run_cli(capsys: Any, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    """`hostd ARGS` in this process (a subprocess costs a second): (exit status, stdout,
    stderr). On a thread of its own, so that its asyncio.run() leaves this thread's event
    loop alone."""
    from hostd.cli import main

    def run() -> int:
        try:
            return main(list(args))
        except SystemExit as exc:  # argparse's own refusals
            return int(exc.code or 0)

    sys.stdin, real_stdin = io.TextIOWrapper(io.BytesIO(stdin)), sys.stdin
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as thread:
            status = thread.submit(run).result(timeout=60)
    finally:
        sys.stdin = real_stdin
    out = capsys.readouterr()
    return status, out.out, out.err
