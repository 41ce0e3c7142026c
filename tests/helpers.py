"""Helpers the tests share: request bodies, raw sockets, looking at the data dir."""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hostd.config import Config


def multipart_body(
    fields: dict[str, str] | None = None,
    files: list[tuple[str, str | bytes, bytes]] | None = None,
    boundary: str = "hostd-test-boundary",
) -> tuple[bytes, dict[str, str]]:
    """A small multipart/form-data body and its headers; files are (field, filename, data).
    A filename given as bytes is sent as it is, to test invalid UTF-8."""
    out = bytearray()
    for name, value in (fields or {}).items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    for field, filename, data in files or []:
        raw_name = filename if isinstance(filename, bytes) else filename.encode()
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '.encode()
        out += b'filename="' + raw_name + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
        out += data + b"\r\n"
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
    """Uploads in progress (or left behind), in every process's temp folder."""
    return [
        path.name
        for path in (config.data_dir / "tmp").rglob("*")
        if path.name != ".lock" and path.is_file()
    ]


def blob_files(config: Config) -> list[Path]:
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


# -- `hostd serve` in a subprocess --


def start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hostd", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
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


# -- blocking clients, for the browser tests (Playwright's sync API runs no IOLoop) --


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
