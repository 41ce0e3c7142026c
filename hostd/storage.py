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
    """A blob that is durable on disk under its SHA-256."""

    sha256: str
    size_bytes: int
    head: bytes
    created: bool  # False when identical bytes were stored already (dedup)


class BlobWriter(Protocol):
    """Receives an upload's bytes in order; either commit() or abort() ends it."""

    size_bytes: int

    def write(self, chunk: bytes) -> None: ...

    async def commit(self) -> WrittenBlob: ...

    def abort(self) -> None: ...


class BlobStore(Protocol):
    """What the handlers need of blob storage, so another backend can be added later."""

    def writer(self) -> BlobWriter: ...

    def open(self, sha256: str) -> BinaryIO: ...

    def exists(self, sha256: str) -> bool: ...

    def delete(self, sha256: str) -> bool: ...


class LocalBlobWriter:
    """Streams into a temp file beside the blobs, hashing as it goes.

    commit() fsyncs the file and renames it to blobs/ab/cd/<sha256> (or drops it when that
    blob exists), so a half-written upload is never visible under a real name.
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
        sha256 = self._hash.hexdigest()
        created = await asyncio.to_thread(self._store._settle, self._file, self._path, sha256)
        return WrittenBlob(sha256, self.size_bytes, bytes(self._head), created)

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

    def _settle(self, file: BinaryIO, temp: Path, sha256: str) -> bool:
        """Runs in a worker thread: make the temp file durable and move it into place."""
        try:
            file.flush()
            os.fsync(file.fileno())
        finally:
            file.close()
        target = self.path(sha256)
        if target.exists():
            temp.unlink(missing_ok=True)
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, target)
        _fsync_dir(target.parent)
        return True


def _fsync_dir(path: Path) -> None:
    """Make a rename durable: fsync the directory that holds the new name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
