"""Content-addressed blob storage on the local filesystem."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import tempfile
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

# How many leading bytes of each blob are kept for content-type detection.
HEAD_BYTES = 8192
SHORT_HASH_MIN = 12
SHORT_HASH_MAX = 16
TEMP_PREFIX = "upload-"
# An upload's bytes go to the worker thread in batches of about this size.
WRITE_BATCH_BYTES = 256 * 1024


def short_hash_candidates(sha256_hex: str) -> list[str]:
    """The public hashes a blob may take, shortest first.

    The public hash is the URL-safe base64 of the SHA-256 digest, cut to 12 characters
    (72 bits). Only when another blob already holds that prefix does the next blob take
    the 13-character form, and so on up to 16; see register_upload in db.py.
    """
    encoded = base64.urlsafe_b64encode(bytes.fromhex(sha256_hex)).decode("ascii")
    return [encoded[:n] for n in range(SHORT_HASH_MIN, SHORT_HASH_MAX + 1)]


@dataclass(frozen=True)
class WrittenBlob:
    """An upload's bytes, durable in a temp file; BlobStore.place() puts them in the store."""

    sha256: str
    size_bytes: int
    head: bytes
    temp: Path


class BlobWriter(Protocol):
    """Receives an upload's bytes in order; either commit() or abort() ends it.

    write() only queues; whenever backpressure() returns an awaitable, the caller waits for
    it before writing more, which bounds what a writer holds in memory. commit() makes the
    bytes durable but not yet visible; place() or discard() follows.
    """

    size_bytes: int

    def write(self, chunk: bytes) -> None: ...

    def backpressure(self) -> Awaitable[None] | None: ...

    async def commit(self) -> WrittenBlob: ...

    def abort(self) -> Awaitable[None] | None: ...


class BlobStore(Protocol):
    """What the handlers need of blob storage, so another backend can be added later."""

    def writer(self) -> BlobWriter: ...

    async def place(self, written: WrittenBlob) -> bool: ...

    def discard(self, written: WrittenBlob) -> None: ...

    def open(self, sha256: str) -> BinaryIO: ...

    def exists(self, sha256: str) -> bool: ...

    def delete(self, sha256: str) -> bool: ...


class LocalBlobWriter:
    """Streams into a temp file beside the blobs, hashing as the bytes arrive.

    Disk writes (and the open of the temp file, which can wait for the filesystem's
    journal while other uploads fsync) run in a worker thread, one batch at a time, while
    the IOLoop reads and hashes the next piece of the body: a slow disk then slows this
    upload, not the server, and hashing and writing use both cores. A small file is
    written, fsynced and closed in a single trip to the thread by commit(). The store's
    place() later renames the temp file to blobs/ab/cd/<sha256>, so a half-written upload
    is never visible under a real name.
    """

    def __init__(self, store: LocalBlobStore) -> None:
        self._store = store
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self._hash = hashlib.sha256()
        self._head = bytearray()
        self._queued: list[bytes] = []
        self._queued_bytes = 0
        self._busy: asyncio.Future[None] | None = None  # the batch in the worker thread
        self._aborted = False
        self.size_bytes = 0

    def write(self, chunk: bytes) -> None:
        if not chunk:
            return
        self._hash.update(chunk)
        self._queued.append(chunk)
        self._queued_bytes += len(chunk)
        if len(self._head) < HEAD_BYTES:
            self._head += chunk[: HEAD_BYTES - len(self._head)]
        self.size_bytes += len(chunk)

    def backpressure(self) -> Awaitable[None] | None:
        if self._queued_bytes < WRITE_BATCH_BYTES:
            return None
        return self._hand_over()

    async def _hand_over(self) -> None:
        """Wait for the batch in the thread, then start the queued one and return, so
        that at most one batch is being written and one is being queued."""
        if self._busy is not None:
            await self._busy
        if self._aborted:
            return
        batch, self._queued, self._queued_bytes = self._queued, [], 0
        self._busy = asyncio.ensure_future(asyncio.to_thread(self._write_batch, batch))

    async def commit(self) -> WrittenBlob:
        try:
            if self._busy is not None:
                await self._busy
                self._busy = None
            batch, self._queued, self._queued_bytes = self._queued, [], 0
            await asyncio.to_thread(self._write_last_batch, batch)
        except BaseException:
            self.abort()  # nothing is in the thread now: removes the file at once
            raise
        assert self._path is not None
        return WrittenBlob(self._hash.hexdigest(), self.size_bytes, bytes(self._head), self._path)

    def abort(self) -> Awaitable[None] | None:
        """Drop the temp file: now, or as soon as the batch in the thread is done; then
        the awaitable returned, if any, is done."""
        self._aborted = True
        self._queued, self._queued_bytes = [], 0
        busy, self._busy = self._busy, None
        if busy is None:
            self._remove()
            return None
        if busy.done():
            self._remove_after(busy)
            return None
        gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def remove(busy: asyncio.Future[None]) -> None:
            self._remove_after(busy)
            gone.set_result(None)

        busy.add_done_callback(remove)
        return gone

    def _remove_after(self, busy: asyncio.Future[None]) -> None:
        if not busy.cancelled():
            busy.exception()  # retrieved: the upload is being dropped anyway
        self._remove()

    def _remove(self) -> None:
        if self._file is not None:
            # Closing writes out what the file still buffers, which fails on a full disk;
            # the file is closed all the same, and must not outlive the upload.
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        if self._path is not None:
            self._path.unlink(missing_ok=True)

    # -- in the worker thread; never two at once for one writer

    def _write_batch(self, batch: list[bytes]) -> None:
        if self._file is None:
            self._path, self._file = self._store.open_temp()
        for chunk in batch:
            self._file.write(chunk)

    def _write_last_batch(self, batch: list[bytes]) -> None:
        self._write_batch(batch)
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


class LocalBlobStore:
    """Blobs under `root/ab/cd/<sha256>`; temp files under `root/../tmp`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root.parent / "tmp"
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def writer(self) -> LocalBlobWriter:
        return LocalBlobWriter(self)

    def open_temp(self) -> tuple[Path, BinaryIO]:
        """A new temp file for an upload, open for writing (in a worker thread)."""
        fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=self.tmp_dir)
        return Path(name), os.fdopen(fd, "wb")

    def open(self, sha256: str) -> BinaryIO:
        return self.path(sha256).open("rb")

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def delete(self, sha256: str) -> bool:
        try:
            self.path(sha256).unlink()
        except FileNotFoundError:
            return False
        return True

    def remove_stale_temp_files(self) -> int:
        """Remove uploads a crash left half-written; call before serving starts."""
        removed = 0
        for entry in self.tmp_dir.glob(TEMP_PREFIX + "*"):
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed += 1
        return removed

    async def place(self, written: WrittenBlob) -> bool:
        """Move a committed upload into the store; False when the blob was there already
        (then the temp file is dropped). Callers serialise place() with delete() for the
        same blob (db.register_upload and db.delete_upload do, under the write lock)."""
        return await asyncio.to_thread(self._place, written)

    def _place(self, written: WrittenBlob) -> bool:
        target = self.path(written.sha256)
        if target.exists():
            written.temp.unlink(missing_ok=True)
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(written.temp, target)
        _fsync_dir(target.parent)
        return True

    def discard(self, written: WrittenBlob) -> None:
        written.temp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    """Make a rename durable: fsync the directory that holds the new name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _conforms(store: LocalBlobStore) -> BlobStore:
    return store  # mypy checks here that LocalBlobStore keeps to the BlobStore interface
