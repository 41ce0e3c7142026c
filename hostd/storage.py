"""Blob storage: content-addressed bytes behind one interface, BlobStore.

Everything above this module reaches bytes only through a BlobStore: writing an upload
(a BlobWriter, then place()), reading a range, deleting, listing for `hostd gc`. The
interface is shaped for a store whose reads and writes are network calls (S3): every
operation that may touch the disk or the network is async, and a written blob is an
opaque handle, not a path. store_from() gives the one the configuration names: local.py's
(a directory tree, the default) or s3.py's (a bucket).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from hostd.config import Config

# How many leading bytes of each blob are kept for content-type detection.
HEAD_BYTES = 8192
# Reads for serving: pieces of this size; a blob up to SMALL_READ_BYTES is read in one go
# on the IOLoop (from the page cache that is a few microseconds; a thread costs more).
READ_CHUNK_BYTES = 256 * 1024
SMALL_READ_BYTES = 64 * 1024


class BlobMissing(Exception):
    """The store has no bytes for this SHA-256 (never stored, or removed)."""


class BlobDamaged(Exception):
    """The store's bytes for this SHA-256 are not the size recorded for them, or, read whole,
    do not hash to it: cut short or written over behind hostd's back (a full disk's repair,
    a restore gone wrong, a flipped bit). Served, they would be a file that is not the one
    uploaded."""


class StoreUnavailable(OSError):
    """The store cannot be reached or refuses (an S3 server down, a wrong key): any operation
    may raise it. An OSError, so that callers that handle a failing disk handle it too."""


@dataclass(frozen=True)
class WrittenBlob:
    """An upload's bytes, durable but not yet in the store; place() or discard() follows.
    `handle` belongs to the store that wrote it (a temp file, an S3 upload id...)."""

    sha256: str
    size_bytes: int
    head: bytes
    handle: Any


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


class BlobReader(Protocol):
    """An opened blob: its bytes from `start` to `end` (inclusive), in pieces."""

    def chunks(self, start: int, end: int) -> AsyncIterator[bytes]: ...

    async def check(self) -> None:
        """Raise what the first read would (BlobMissing, BlobDamaged, StoreUnavailable),
        reading no bytes: a HEAD answers as its GET would."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class StoredBlob:
    """A blob as the store lists it, for `hostd gc` and `hostd storage migrate`."""

    sha256: str
    modified_at: float
    size_bytes: int


class BlobStore(Protocol):
    """The only way to bytes: handlers, thumbnails and the CLI are typed against this."""

    def writer(self) -> BlobWriter: ...

    async def place(self, written: WrittenBlob) -> bool:
        """Make committed bytes visible under their SHA-256; when they are there already,
        drop the new copy and mark the old one as just used (so gc's grace covers it).
        True when they were there already, or may have been (a store that cannot tell):
        then another process may be deleting them (uploads.register)."""

    async def discard(self, written: WrittenBlob) -> None: ...

    async def open(self, sha256: str, size_bytes: int | None = None) -> BlobReader:
        """Raises BlobMissing when there are no such bytes, and, given the size recorded for
        them, BlobDamaged when they are another size: here or at the reader's first read
        (before any byte), whichever is when the store finds out."""

    async def exists(self, sha256: str) -> bool: ...

    async def delete(self, sha256: str) -> bool: ...

    def list_blobs(self, prefix: str = "") -> AsyncIterator[StoredBlob]:
        """The stored blobs whose SHA-256 starts with `prefix`, in no order; a blob removed
        while they are listed may or may not be among them."""
        ...

    def local_copy(self, sha256: str) -> contextlib.AbstractAsyncContextManager[Path]:
        """A path to the bytes for a library that needs a file (Pillow), while the
        context lasts. Raises BlobMissing."""
        ...

    def guard(self, sha256: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Held while placing or deleting these bytes, so that within this process a
        deletion and a new upload of the same bytes never interleave."""
        ...

    def accel_path(self, sha256: str) -> str | None:
        """The blob's path below the store's root, for nginx's X-Accel-Redirect; None when
        the bytes are not in a directory nginx can read."""
        ...

    async def redirect_url(
        self, sha256: str, *, content_type: str, disposition: str | None
    ) -> str | None:
        """A short-lived URL where a client may fetch the bytes itself, served with this
        Content-Type (and Content-Disposition); None when the store offers none."""

    async def check(self) -> None:
        """Return when the store can be reached, cheaply (no listing, no bytes); else raise
        an OSError saying why (StoreUnavailable, with one clear line, for a remote store).
        At start (a store that cannot be used stops `hostd serve`) and for /healthz."""

    async def remove_stale_temp_files(self) -> int:
        """Remove what uploads that a crash interrupted left behind; how many."""

    def close(self) -> None: ...


@runtime_checkable
class AdoptsFiles(Protocol):
    """An optional capability of a store: take a finished file from the data dir's own
    filesystem as an upload's bytes without copying them (a resumable upload's partial
    file). The file itself is left where it is; place() or discard() follows as for any
    written blob."""

    async def adopt(self, path: Path) -> WrittenBlob: ...


class KeyedLocks:
    """An asyncio.Lock per key, kept only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


def store_from(config: Config) -> BlobStore:
    """The blob store the configuration names: storage.backend, "local" or "s3"."""
    if config.backend == "s3":
        from hostd.s3 import s3_store  # obstore, from the s3 extra, only when it is used

        return s3_store(config)
    from hostd.local import LocalBlobStore  # which imports this module's interface

    return LocalBlobStore(config.blobs_dir)
