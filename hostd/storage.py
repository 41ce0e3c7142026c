"""Content-addressed blob storage on the local filesystem."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

# How many leading bytes of each blob are kept for content-type detection.
HEAD_BYTES = 8192
SHORT_HASH_MIN = 12
SHORT_HASH_MAX = 16
TEMP_PREFIX = "upload-"


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

    commit() makes the bytes durable but not yet visible; place() or discard() follows.
    """

    size_bytes: int

    def write(self, chunk: bytes) -> None: ...

    async def commit(self) -> WrittenBlob: ...

    def abort(self) -> None: ...


class BlobStore(Protocol):
    """What the handlers need of blob storage, so another backend can be added later."""

    def writer(self) -> BlobWriter: ...

    async def place(self, written: WrittenBlob) -> bool: ...

    def discard(self, written: WrittenBlob) -> None: ...

    def open(self, sha256: str) -> BinaryIO: ...

    def exists(self, sha256: str) -> bool: ...

    def delete(self, sha256: str) -> bool: ...


class LocalBlobWriter:
    """Streams into a temp file beside the blobs, hashing as it goes.

    commit() fsyncs the temp file; the store's place() later renames it to
    blobs/ab/cd/<sha256>, so a half-written upload is never visible under a real name.
    """

    def __init__(self, store: LocalBlobStore) -> None:
        self._store = store
        fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=store.tmp_dir)
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self._path = Path(name)
        self._hash = hashlib.sha256()
        self._head = bytearray()
        self.size_bytes = 0

    def write(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self._file.write(chunk)
        if len(self._head) < HEAD_BYTES:
            self._head += chunk[: HEAD_BYTES - len(self._head)]
        self.size_bytes += len(chunk)

    async def commit(self) -> WrittenBlob:
        await asyncio.to_thread(_sync_and_close, self._file)
        return WrittenBlob(self._hash.hexdigest(), self.size_bytes, bytes(self._head), self._path)

    def abort(self) -> None:
        self._file.close()
        self._path.unlink(missing_ok=True)


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


def _sync_and_close(file: BinaryIO) -> None:
    try:
        file.flush()
        os.fsync(file.fileno())
    finally:
        file.close()


def _fsync_dir(path: Path) -> None:
    """Make a rename durable: fsync the directory that holds the new name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
