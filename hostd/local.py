"""The local store: blobs as files in a directory tree, blobs/ab/cd/<sha256>.

Uploads stream into temp files beside the tree and are renamed into place once fsynced;
reads are ranged reads of plain file descriptors, small blobs served from memory. The
storage.BlobStore interface is what the rest of hostd sees of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import functools
import hashlib
import itertools
import os
import secrets
import shutil
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from hostd import affinity
from hostd.hashes import is_sha256
from hostd.storage import (
    HEAD_BYTES,
    READ_CHUNK_BYTES,
    SMALL_READ_BYTES,
    BlobDamaged,
    BlobMissing,
    BlobReader,
    BlobStore,
    KeyedLocks,
    StoredBlob,
    WrittenBlob,
)

F = TypeVar("F")

# The most one write() hands the kernel. Since Linux 6.16 ext4, like XFS, caches a file in
# folios sized by the writes that fill it. On the 2-CPU VM of the bench (kernel 6.18, whose
# free memory in blocks of 2 MiB goes back to the host) a GiB written to ext4 in 1 MiB
# writes cost 0.8-2.7 s of CPU, in 64 or 128 KiB writes 0.2-0.26 s: large folios seemingly
# come from memory the host must fault in again. On tmpfs every size cost the same.
WRITE_CALL_BYTES = 128 * 1024
TEMP_PREFIX = "upload-"
# An upload's bytes go to a worker thread once this much is queued (less: the whole file
# waits for place(), one trip).
WRITE_BATCH_BYTES = 256 * 1024
# What may wait, queued, for the thread before the body is held back: with what the thread
# holds, what one upload holds in memory.
QUEUE_LIMIT_BYTES = 2 * 1024 * 1024
# The roaming pool (affinity.py) a drain hands its writes to.
WRITING_THREADS = "hostd-writing"
# A big upload's bytes are sent on to the disk each time this much more is written, as
# PostgreSQL's *_flush_after settings do: the fsync before place()'s rename then waits
# for the last few MiB, not for all of a big file still in the page cache.
WRITEBACK_BYTES = 8 * 1024 * 1024
# What hashlib hashes without letting go of the GIL (CPython's HASHLIB_GIL_MINSIZE, less
# one), and the most of a small upload hashed in such pieces (hash_keeping_the_gil).
GIL_KEPT_HASH_BYTES = 2047
SMALL_HASH_BYTES = 16 * 1024
# Small blobs served from memory (HotBlobs): each up to HOT_BLOB_BYTES, all together up to
# HOT_TOTAL_BYTES (a 4 KiB screenshot thumbnail set, a site's favicon, a pasted snippet).
HOT_BLOB_BYTES = 64 * 1024
HOT_TOTAL_BYTES = 16 * 1024 * 1024
# Bigger blobs this process has seen hash to their SHA-256, remembered (`checked`).
CHECKED_BLOBS = 4096
# Blobs this process has opened and found at their size, remembered (`found`): about
# 200 bytes each with its SHA-256's string, 3 MiB in all.
FOUND_BLOBS = 16384
# Blobs are readable by the group too, so that nginx (its user in hostd's group) can send
# them itself when server.accel_redirect is set; mkstemp would make them 0600.
BLOB_MODE = 0o640


class LocalBlobWriter:
    """Streams into a temp file beside the blobs, hashing as the bytes are written.

    Disk writes (and the open of the temp file, which can wait for the filesystem's
    journal while other uploads fsync) run in a worker thread while the IOLoop reads the
    body: once a batch is queued, a drain in the thread takes what is queued and hashes it
    while a second thread writes it, again and again until the queue is empty (hashlib and
    the write both let go of the GIL, and both threads roam, affinity.py, so a big upload
    keeps every CPU busy beside the IOLoop's). The body is held back only when
    QUEUE_LIMIT_BYTES wait behind the drain, which bounds what an upload holds in memory; a
    round trip to the thread per batch would cost more, on a busy box, than the batch.

    commit() waits for the drain and hashes what is still queued on the IOLoop (all of a
    small file: less than a trip to a thread costs); the store's place() then writes it,
    renames the temp file to blobs/ab/cd/<sha256>, fsyncs and closes it in a single trip
    to the thread: every byte is written before the rename, so a half-written upload is
    never visible under a real name, and the row waits for the fsync. Plain file
    descriptors and string paths: on this path pathlib and buffered files cost more than
    the system calls they wrap.
    """

    def __init__(self, store: LocalBlobStore) -> None:
        self._store = store
        self._fd = -1
        self._path: str | None = None
        self._hash = hashlib.sha256()
        self._head = bytearray()
        self._lock = threading.Lock()  # the queue, between the IOLoop and the drain
        self._queued: list[bytes] = []
        self._queued_bytes = 0
        self._drain: asyncio.Future[None] | None = None  # writing the queue out, in a thread
        self._room: asyncio.Future[None] | None = None  # set when the drain takes the queue
        self._aborted = False
        self.size_bytes = 0
        self._written = 0  # bytes in the temp file (the thread's count)
        self._flushed = 0  # of which start_writeback() was asked for

    def write(self, chunk: bytes) -> None:
        if not chunk:
            return
        with self._lock:
            self._queued.append(chunk)
            self._queued_bytes += len(chunk)
        if len(self._head) < HEAD_BYTES:
            self._head += chunk[: HEAD_BYTES - len(self._head)]
        self.size_bytes += len(chunk)

    def backpressure(self) -> Awaitable[None] | None:
        if self._queued_bytes < WRITE_BATCH_BYTES:
            return None
        drain = self._drain
        if drain is None or drain.done():
            return self._start_drain()
        with self._lock:
            if self._queued_bytes < QUEUE_LIMIT_BYTES:
                return None
            room = self._room = asyncio.get_running_loop().create_future()
        return self._wait_for_room(room, drain)

    async def _start_drain(self) -> None:
        """Start a drain, once the last one's failure (if any) has been raised here."""
        if self._drain is not None:
            await self._drain
        if self._aborted:
            return
        loop = asyncio.get_running_loop()
        self._drain = affinity.in_roaming_thread(self._write_out, loop)

    async def _wait_for_room(self, room: asyncio.Future[None], drain: asyncio.Future[None]) -> None:
        await asyncio.wait([room, drain], return_when=asyncio.FIRST_COMPLETED)
        if drain.done():  # it had found the queue empty, or failed: raise, or start anew
            await self._start_drain()

    async def commit(self) -> WrittenBlob:
        """The last byte is in: the SHA-256 is known. What is still queued is written by
        place() (or dropped by discard()), with the fsync, in the same trip as the rename."""
        try:
            if self._drain is not None:
                await self._drain  # which writes out what was queued meanwhile, too
                self._drain = None
        except BaseException:
            self.abort()  # nothing is in the thread now: removes the file at once
            raise
        for chunk in self._queued:
            hash_keeping_the_gil(self._hash, chunk)
        return WrittenBlob(self._hash.hexdigest(), self.size_bytes, bytes(self._head), self)

    def abort(self) -> Awaitable[None] | None:
        """Drop the temp file: now, or as soon as the batch in the thread is done; then
        the awaitable returned, if any, is done."""
        self._aborted = True
        with self._lock:
            self._queued, self._queued_bytes = [], 0
        busy, self._drain = self._drain, None
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
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)
            self._path = None

    # -- in the worker thread; never two at once for one writer

    def _write_out(self, loop: asyncio.AbstractEventLoop) -> None:
        """The drain: hash and write what is queued until nothing is (or the upload is
        dropped), telling the IOLoop each time it takes the queue."""
        while True:
            with self._lock:
                batch, self._queued, self._queued_bytes = self._queued, [], 0
                room, self._room = self._room, None
            if room is not None:
                loop.call_soon_threadsafe(_resolve, room)
            if not batch or self._aborted:
                return
            # The write in another thread while this one hashes: both let go of the GIL,
            # and together they took twice as long as the slower of the two.
            writing = affinity.roaming_pool(WRITING_THREADS).submit(self._write, batch)
            try:
                for chunk in batch:
                    self._hash.update(chunk)
            finally:
                writing.result()

    def _write(self, batch: list[bytes]) -> None:
        if self._fd < 0:
            self._path, self._fd = self._store.open_temp()
        self._store.write_temp(self._fd, batch)
        self._written += sum(map(len, batch))
        if self._written - self._flushed >= WRITEBACK_BYTES:
            start_writeback(self._fd, self._flushed, self._written - self._flushed)
            self._flushed = self._written

    def _write_rest(self) -> str:
        """Write what is queued (hashed by commit()); the temp file's path, still open."""
        batch, self._queued, self._queued_bytes = self._queued, [], 0
        self._write(batch)
        assert self._path is not None
        return self._path

    def _sync(self) -> None:
        """fsync and close the file, wherever it now is."""
        fd, self._fd = self._fd, -1
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _find_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range (Linux), or None."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], function)


_sync_file_range = _find_sync_file_range()
SYNC_FILE_RANGE_WRITE = 2  # from <fcntl.h>: start writing dirty pages out, do not wait


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range of a file to its disk, without waiting for
    it. Only a head start for the fsync that follows: where the call is missing or fails,
    that fsync writes it all."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)


def _find_renameat2() -> Callable[[int, bytes, int, bytes, int], int] | None:
    """libc's renameat2 (Linux, glibc 2.28), or None."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = (
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    )
    function.restype = ctypes.c_int
    return cast(Callable[[int, bytes, int, bytes, int], int], function)


_renameat2 = _find_renameat2()
AT_FDCWD = -100  # from <fcntl.h>: paths relative to the working directory
RENAME_NOREPLACE = 1  # from <linux/fs.h>: fail with EEXIST rather than replace


def _rename_new(source: str, target: str) -> bool:
    """Rename source to target unless target exists (FileExistsError); False, with nothing
    renamed, where libc or the filesystem cannot do that."""
    if _renameat2 is None:
        return False
    if _renameat2(AT_FDCWD, os.fsencode(source), AT_FDCWD, os.fsencode(target), RENAME_NOREPLACE):
        error = ctypes.get_errno()
        if error in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            return False
        raise OSError(error, os.strerror(error), source, None, target)
    return True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def hash_keeping_the_gil(hash: Any, data: bytes) -> None:
    """hash.update(data), on the IOLoop. hashlib lets go of the GIL to hash 2,048 bytes or
    more: a turn for any other thread that wants it, and the IOLoop then waits to take it
    back (py-spy put the hash of a 4 KiB upload at ten times its cost). Up to
    SMALL_HASH_BYTES, it is hashed in pieces under that size, keeping the GIL."""
    if len(data) > SMALL_HASH_BYTES:
        hash.update(data)
        return
    view = memoryview(data)
    for at in range(0, len(view), GIL_KEPT_HASH_BYTES):
        hash.update(view[at : at + GIL_KEPT_HASH_BYTES])


def _write_all(fd: int, chunks: list[bytes]) -> None:
    """Every byte of `chunks`, in writes of at most WRITE_CALL_BYTES."""
    for chunk in chunks:
        view = memoryview(chunk)
        for at in range(0, len(view), WRITE_CALL_BYTES):
            piece = view[at : at + WRITE_CALL_BYTES]
            while piece:
                piece = piece[os.write(fd, piece) :]


class LocalFileReader:
    """A blob's open file. Reads of a small blob happen on the IOLoop (page cache: a few
    microseconds); bigger ones go to a thread a piece at a time.

    The whole blob read is checked against its SHA-256 on the way, the last piece held back
    until it is: bytes written over behind hostd's back (at the same size, which open() has
    checked) are BlobDamaged, never served as the upload. A small blob that passes is handed
    to `keep` (the store's HotBlobs); a bigger one to `checked` (the store's), unless it
    is None: this file has passed already."""

    def __init__(
        self,
        fd: int,
        sha256: str,
        size_bytes: int | None,
        keep: Callable[[bytes], None] | None = None,
        checked: Callable[[], None] | None = None,
    ) -> None:
        self._fd = fd
        self._sha256 = sha256
        self._size_bytes = size_bytes
        self._keep = keep
        self._checked = checked

    async def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        position, left = start, end - start + 1
        whole = start == 0 and self._size_bytes == left
        if left <= SMALL_READ_BYTES:
            # One byte more than asked: getting exactly `left` from 0 says it is all there is.
            piece = os.pread(self._fd, left + 1, position)
            if whole and len(piece) == left:
                digest = hashlib.sha256()
                hash_keeping_the_gil(digest, piece)
                if digest.hexdigest() != self._sha256:
                    raise BlobDamaged(f"{self._sha256}: the bytes are not the upload's")
                if self._keep is not None:
                    self._keep(piece)
            if piece:
                yield piece[:left]
            return
        hashing = hashlib.sha256() if whole and self._checked is not None else None
        while left > 0:
            piece = await asyncio.to_thread(
                _read_hashing, self._fd, min(READ_CHUNK_BYTES, left), position, hashing
            )
            if not piece:
                return
            position += len(piece)
            left -= len(piece)
            if left == 0 and hashing is not None:
                if hashing.hexdigest() != self._sha256:
                    raise BlobDamaged(f"{self._sha256}: the bytes are not the upload's")
                assert self._checked is not None
                self._checked()
            yield piece

    async def check(self) -> None:
        """open() has found the file, at its size. A small one is read and checked too, as
        its GET would be (a 404 when written over; it is then in memory for that GET); a
        big one's GET finds out only as it goes, after its 200, as this HEAD's 200 says."""
        if self._size_bytes is not None and self._size_bytes <= SMALL_READ_BYTES:
            async for _ in self.chunks(0, self._size_bytes - 1):
                pass

    def close(self) -> None:
        os.close(self._fd)


def _read_hashing(fd: int, size: int, position: int, digest: Any | None) -> bytes:
    """A piece of a file (in a worker thread), hashed there on its way when `digest`."""
    piece = os.pread(fd, size, position)
    if digest is not None:
        digest.update(piece)
    return piece


class DeferredReader:
    """A blob's LocalFileReader, opened at its first use (the store's `found`): BlobMissing and
    BlobDamaged come from the first read or check(), before any byte, as the protocol allows."""

    def __init__(self, open_file: Callable[[], LocalFileReader]) -> None:
        self._open_file = open_file
        self._reader: LocalFileReader | None = None

    def _opened(self) -> LocalFileReader:
        if self._reader is None:
            self._reader = self._open_file()
        return self._reader

    async def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        async for chunk in self._opened().chunks(start, end):
            yield chunk

    async def check(self) -> None:
        await self._opened().check()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


class MemoryReader:
    """A small blob's bytes, from memory."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        if start < len(self._data):
            yield self._data[start : end + 1]

    async def check(self) -> None:
        pass

    def close(self) -> None:
        pass


class HotBlobs:
    """Small blobs' bytes, by SHA-256, the most recently served kept up to `limit` bytes in
    all: serving one from here costs no open, read or close. Bytes under a SHA-256 never
    change, and a download reads the blob's row (which goes with a deletion, in any process)
    before it opens the bytes, so nothing deleted is served from here; the store's own
    delete() drops the entry too."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._blobs: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0

    def get(self, sha256: str) -> bytes | None:
        data = self._blobs.get(sha256)
        if data is not None:
            self._blobs.move_to_end(sha256)
        return data

    def keeper(self, sha256: str) -> Callable[[bytes], None]:
        return lambda data: self.put(sha256, data)

    def put(self, sha256: str, data: bytes) -> None:
        if len(data) > HOT_BLOB_BYTES or sha256 in self._blobs:
            return
        self._blobs[sha256] = data
        self._bytes += len(data)
        while self._bytes > self.limit:
            _, dropped = self._blobs.popitem(last=False)
            self._bytes -= len(dropped)

    def drop(self, sha256: str) -> None:
        data = self._blobs.pop(sha256, None)
        if data is not None:
            self._bytes -= len(data)


class RecentBlobs(Generic[F]):
    """A fact about each of the last `limit` blobs noted, by SHA-256: what a later look at
    the same blob may skip while the fact still holds. The store's delete() drops a blob's
    entry. holds() only reads, so a worker thread may ask it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._facts: OrderedDict[str, F] = OrderedDict()

    def holds(self, sha256: str, fact: F) -> bool:
        return self._facts.get(sha256) == fact

    def add(self, sha256: str, fact: F) -> None:
        self._facts[sha256] = fact
        self._facts.move_to_end(sha256)
        if len(self._facts) > self.limit:
            self._facts.popitem(last=False)

    def drop(self, sha256: str) -> None:
        self._facts.pop(sha256, None)


def identity(status: os.stat_result) -> tuple[int, int]:
    """A file's inode and ctime, which any write to it, or a touch, moves on."""
    return status.st_ino, status.st_ctime_ns


class FolderSet:
    """A set of blob folders, "ab" for ab/ and "abcd" for ab/cd/: one byte for each of the
    65,792 there can be, where a set of their names grows to 5 MiB as uploads reach them."""

    def __init__(self) -> None:
        self._members = bytearray(256 + 256 * 256)

    @staticmethod
    def _index(key: str) -> int:
        return int(key, 16) + (0 if len(key) == 2 else 256)

    def __contains__(self, key: str) -> bool:
        return self._members[self._index(key)] == 1

    def add(self, key: str) -> None:
        self._members[self._index(key)] = 1

    def clear(self) -> None:
        self._members[:] = bytes(len(self._members))


class LocalBlobStore:
    """Blobs under `root/ab/cd/<sha256>`; uploads in progress under `root/../tmp/<process>/`.

    Each process writes its temp files into a folder of its own, locked with flock while
    the process lives, so that one start never clears another's uploads in flight: only
    folders whose lock is free (their process is gone) are removed.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root = os.fspath(root)
        self.tmp_root = root.parent / "tmp"
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp_root.mkdir(parents=True, exist_ok=True)
        self.tmp_dir = self.tmp_root / f"{os.getpid()}-{secrets.token_hex(4)}"
        self.tmp_dir.mkdir()
        self._tmp = os.fspath(self.tmp_dir)
        self._temp_names = itertools.count(1)
        self._lock_fd = os.open(self.tmp_dir / ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._guards = KeyedLocks()
        self.hot = HotBlobs(HOT_TOTAL_BYTES)
        # Big blobs whose file this process has seen hash to their SHA-256 (written by it,
        # or read whole), with the file's identity then. A whole read of the same file needs
        # no second hash: hashing took a third off a 1 GiB download's speed. (A bit the disk
        # flips moves nothing: that is for `hostd gc --verify`.)
        self.checked = RecentBlobs[tuple[int, int]](CHECKED_BLOBS)
        # Blobs this process has opened and found at their recorded size. open() of one
        # leaves the file's open to the first read, which a download behind nginx with
        # server.accel_redirect never makes: its open, fstat and close were 8% of such a
        # download's IOLoop time. A blob deleted by another process loses its row first, and
        # a download reads the row before it opens the bytes. (Bytes removed behind hostd's
        # back are then nginx's 404, not hostd's.)
        self.found = RecentBlobs[int](FOUND_BLOBS)
        self._durable_folders = FolderSet()

    def close(self) -> None:
        """Remove this process's temp folder (call once nothing is being uploaded)."""
        if self._lock_fd >= 0:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            os.close(self._lock_fd)
            self._lock_fd = -1

    def path(self, sha256: str) -> Path:
        if not is_sha256(sha256):
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def accel_path(self, sha256: str) -> str:
        return _below_root(sha256)

    async def redirect_url(
        self, sha256: str, *, content_type: str, disposition: str | None
    ) -> str | None:
        return None

    async def check(self) -> None:
        # In a thread: a stat on a hung network filesystem must not stop the IOLoop.
        await asyncio.to_thread(self._check)

    def writer(self) -> LocalBlobWriter:
        return LocalBlobWriter(self)

    def guard(self, sha256: str) -> contextlib.AbstractAsyncContextManager[None]:
        return self._guards.hold(sha256)

    def open_temp(self) -> tuple[str, int]:
        """A new temp file for an upload, open for writing (in a worker thread). The folder
        is this process's own, so a counter names the files."""
        path = f"{self._tmp}/{TEMP_PREFIX}{next(self._temp_names)}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, BLOB_MODE)
        os.fchmod(fd, BLOB_MODE)  # whatever the umask: nginx's group reads blobs
        return path, fd

    def write_temp(self, fd: int, chunks: list[bytes]) -> None:
        """Every byte of `chunks` into an open temp file (in a worker thread)."""
        _write_all(fd, chunks)

    async def open(self, sha256: str, size_bytes: int | None = None) -> BlobReader:
        hot = self.hot.get(sha256)  # kept only once read whole and checked
        if hot is not None:
            return MemoryReader(hot)
        if size_bytes is not None and self.found.holds(sha256, size_bytes):
            return DeferredReader(functools.partial(self._open_file, sha256, size_bytes))
        return self._open_file(sha256, size_bytes)

    def _open_file(self, sha256: str, size_bytes: int | None) -> LocalFileReader:
        # No stat first: the open itself fails cleanly for bytes that are gone. The path is
        # a plain string: pathlib's joins cost several times the open itself.
        try:
            fd = os.open(f"{self._root}/{_below_root(sha256)}", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BlobMissing(sha256) from None
        if size_bytes is None:
            return LocalFileReader(fd, sha256, None)
        # The open file's size: no path to walk again, a fraction of a microsecond.
        status = os.fstat(fd)
        if status.st_size != size_bytes:
            os.close(fd)
            raise BlobDamaged(sha256)
        self.found.add(sha256, size_bytes)
        checked = None
        if size_bytes > SMALL_READ_BYTES and not self.checked.holds(sha256, identity(status)):
            checked = functools.partial(self.checked.add, sha256, identity(status))
        return LocalFileReader(fd, sha256, size_bytes, self.hot.keeper(sha256), checked)

    async def exists(self, sha256: str) -> bool:
        return _is_file(f"{self._root}/{_below_root(sha256)}")

    async def delete(self, sha256: str) -> bool:
        self.hot.drop(sha256)
        self.checked.drop(sha256)
        self.found.drop(sha256)
        try:
            os.unlink(f"{self._root}/{_below_root(sha256)}")
        except FileNotFoundError:
            return False
        return True

    async def list_blobs(self, prefix: str = "") -> AsyncIterator[StoredBlob]:
        """One ab/ folder at a time, each in one trip to a thread, so that the listing of
        the whole store is never in memory at once."""
        if len(prefix) >= 2:
            folders = [prefix[:2]]
        else:
            folders = [name for name in await asyncio.to_thread(self._folders) if name >= prefix]
        for folder in folders:
            if not folder.startswith(prefix[:2]):
                break  # sorted: no later folder has the prefix either
            for blob in await asyncio.to_thread(self._scan, folder):
                if blob.sha256.startswith(prefix):
                    yield blob

    def _folders(self) -> list[str]:
        return sorted(entry.name for entry in os.scandir(self.root) if entry.is_dir())

    def _scan(self, folder: str) -> list[StoredBlob]:
        """The blobs under ab/ (a name of another shape is no blob, and one removed since
        the folder was read is left out)."""
        found: list[StoredBlob] = []
        try:
            with os.scandir(f"{self._root}/{folder}") as entries:
                subfolders = [entry.path for entry in entries if entry.is_dir()]
        except (FileNotFoundError, NotADirectoryError):
            return found
        for subfolder in subfolders:
            try:
                with os.scandir(subfolder) as entries:
                    files = [entry for entry in entries if is_sha256(entry.name)]
            except FileNotFoundError:  # removed meanwhile
                continue
            for entry in files:
                try:
                    if entry.is_file():
                        status = entry.stat()
                        found.append(StoredBlob(entry.name, status.st_mtime, status.st_size))
                except FileNotFoundError:  # removed meanwhile
                    continue
        return found

    @contextlib.asynccontextmanager
    async def local_copy(self, sha256: str) -> AsyncIterator[Path]:
        path = self.path(sha256)
        if not _is_file(str(path)):
            raise BlobMissing(sha256)
        yield path  # already a file: no copy

    async def remove_stale_temp_files(self) -> int:
        return await asyncio.to_thread(self._remove_stale_temp_files)

    def _check(self) -> None:
        """The blob root and this process's temp folder are directories on a writable
        filesystem (as root, permissions say nothing: only a read-only mount refuses)."""
        for folder in (self.root, self.tmp_dir):
            if not stat.S_ISDIR(os.stat(folder).st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(folder))
        if os.statvfs(self.root).f_flag & os.ST_RDONLY:
            raise OSError(errno.EROFS, "read-only filesystem", str(self.root))

    def _remove_stale_temp_files(self) -> int:
        """Remove the temp folders (and older loose temp files) of processes that are
        gone: uploads a crash left half-written. Returns how many files went."""
        removed = 0
        for entry in self.tmp_root.iterdir():
            if entry == self.tmp_dir:
                continue
            if entry.is_file() and entry.name.startswith(TEMP_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                    removed += 1
            elif entry.is_dir() and _owner_is_gone(entry):
                removed += sum(1 for p in entry.iterdir() if p.name.startswith(TEMP_PREFIX))
                shutil.rmtree(entry, ignore_errors=True)
        return removed

    async def place(self, written: WrittenBlob) -> bool:
        """One trip to a thread: finish the temp file (write, fsync, close), rename it into
        place and fsync the directory. Bytes stored already need no writing at all."""
        there, placed = await asyncio.to_thread(self._place, written)
        if placed is not None:  # hashed as it was written: a download need not again
            self.checked.add(written.sha256, identity(placed))
        return there

    def _place(self, written: WrittenBlob) -> tuple[bool, os.stat_result | None]:
        writer: LocalBlobWriter = written.handle
        folder = f"{self._root}/{written.sha256[:2]}/{written.sha256[2:4]}"
        target = f"{folder}/{written.sha256}"
        try:
            whole = self._whole(written, target)
            there = True
            if whole:
                os.utime(target)  # just used: gc's grace starts again
                # Its placer may not have synced it yet (renamed first, below): its row
                # is only committed once it has, and this upload's must wait for that too.
                sync_path(target, data_only=True)
        except FileNotFoundError:  # not there, or removed meanwhile
            there = whole = False
        if whole:
            writer._aborted = True
            writer._remove()
            return True, None
        # Not there, or cut short or written over behind hostd's back: the new bytes, just
        # hashed, take its place, so that uploading a file again mends it (and `there`
        # still says that another process may be removing the blob: uploads.register).
        # Folders first, so that the file's fsync commits them too.
        unsynced = self._make_folders(written.sha256)
        temp = writer._write_rest()
        renamed = False
        if not there:
            # A new name: renamed before the file's fsync, so that the fsync commits the
            # rename too and the folders' fsyncs then find their changes committed: one
            # wait for the filesystem's journal, where fsync, rename, fsync of the folder
            # was two. The name is seen before its bytes are durable; nothing reads it as
            # a blob before its row is committed, which waits for both fsyncs (a copy found
            # whole, above, is synced by its finder), and no other placer replaces it.
            try:
                try:
                    renamed = _rename_new(temp, target)
                except FileNotFoundError:  # ab/cd/ removed behind this process's back
                    unsynced = self._make_folders_again(written.sha256)
                    renamed = _rename_new(temp, target)
            except FileExistsError:  # another placer's, just now: replaced as below
                there = True
        if renamed:
            writer._path = None  # placed: nothing of it to remove any more
            inode = os.fstat(writer._fd).st_ino
            try:
                writer._sync()
            except OSError:  # its bytes may not be on the disk: no copy to trust
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(target).st_ino == inode:  # not another placer's since
                        os.unlink(target)
                raise
        else:
            # A copy there (damaged, or another placer's) that a row may point at is
            # replaced only by bytes already on the disk.
            writer._sync()
            try:
                os.replace(temp, target)
            except FileNotFoundError:  # ab/cd/ removed behind this process's back
                unsynced = self._make_folders_again(written.sha256)
                os.replace(temp, target)
            writer._path = None
        sync_path(folder)
        for parent in unsynced:
            sync_path(parent)
        self._durable_folders.add(written.sha256[:2])
        self._durable_folders.add(written.sha256[:4])
        big = written.size_bytes > SMALL_READ_BYTES
        return there, os.stat(target) if big else None

    def _whole(self, written: WrittenBlob, target: str) -> bool:
        """Whether there is a copy at `target` and it is the upload's: its size, and its
        bytes where that is cheap to tell (a small file read and hashed; a big one this
        process has seen whole since it last changed). A big copy not known whole is not
        trusted: placing the new bytes over it costs a rename, where hashing it would cost
        a read of it. FileNotFoundError when there is none."""
        status = os.stat(target)
        if status.st_size != written.size_bytes:
            return False
        if self.checked.holds(written.sha256, identity(status)):
            return True
        if status.st_size > SMALL_READ_BYTES:
            return False
        with open(target, "rb") as file:
            return hashlib.sha256(file.read()).hexdigest() == written.sha256

    def _make_folders_again(self, sha256: str) -> list[str]:
        """_make_folders() once a folder was found removed behind this process's back."""
        self._durable_folders.clear()
        return self._make_folders(sha256)

    def _make_folders(self, sha256: str) -> list[str]:
        """ab/ and ab/cd/ for a blob, made if missing; returns the parents whose fsync
        makes them durable, for each this process has not yet seen durable: a folder
        another thread is making may exist before its parent's fsync has ended."""
        unsynced = []
        parent = self._root
        for key in (sha256[:2], sha256[:4]):
            folder = f"{parent}/{key[-2:]}"
            if key not in self._durable_folders:  # known made durable in its parent: skipped
                with contextlib.suppress(FileExistsError):
                    os.mkdir(folder)
                unsynced.append(parent)
            parent = folder
        return unsynced

    async def adopt(self, path: Path) -> WrittenBlob:
        """A hard link to the file in this process's temp folder, hashed: placing it costs
        a rename, not a copy. Falls back to a copy where a link cannot be made (another
        filesystem)."""
        return await affinity.in_roaming_thread(self._adopt, path)

    def _adopt(self, path: Path) -> WrittenBlob:
        writer = LocalBlobWriter(self)
        temp = f"{self._tmp}/{TEMP_PREFIX}{next(self._temp_names)}"
        try:
            os.link(path, temp)
        except OSError:
            shutil.copyfile(path, temp)
        writer._path = temp
        try:
            os.chmod(temp, BLOB_MODE)
            digest, head, size = hashlib.sha256(), b"", 0
            with open(temp, "rb") as file:
                while chunk := file.read(WRITE_BATCH_BYTES * 4):
                    digest.update(chunk)
                    head = head or chunk[:HEAD_BYTES]
                    size += len(chunk)
            writer._fd = os.open(temp, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)  # place() closes
        except BaseException:
            writer._remove()
            raise
        writer._hash, writer._head, writer.size_bytes = digest, bytearray(head), size
        return WrittenBlob(digest.hexdigest(), size, head, writer)

    async def discard(self, written: WrittenBlob) -> None:
        writer: LocalBlobWriter = written.handle
        gone = writer.abort()
        if gone is not None:
            await gone


def _below_root(sha256: str) -> str:
    """A blob's path below the store's root: ab/cd/<sha256>."""
    if not is_sha256(sha256):
        raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
    return f"{sha256[:2]}/{sha256[2:4]}/{sha256}"


def _is_file(path: str) -> bool:
    """A stat on the IOLoop: microseconds on a local disk, like the open of a download. (A
    string, not a Path: pathlib interns each part of a path, so a Path per blob grows
    Python's table of interned strings with names seen once.)"""
    return os.path.isfile(path)


def _owner_is_gone(folder: Path) -> bool:
    """A process's temp folder whose flock nobody holds any more."""
    try:
        fd = os.open(folder / ".lock", os.O_WRONLY)
    except FileNotFoundError:
        # Made a moment ago and not yet locked, or left by a crash before the lock: only
        # an old one is taken for gone.
        return time.time() - folder.stat().st_mtime > 3600
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def sync_path(path: str | Path, *, data_only: bool = False) -> None:
    """fsync a file or a folder by its path (a folder's makes a rename in it durable); with
    `data_only`, fdatasync: a file's bytes, not its times."""
    fd = os.open(path, os.O_RDONLY)
    try:
        (os.fdatasync if data_only else os.fsync)(fd)
    finally:
        os.close(fd)


def _conforms(store: LocalBlobStore) -> BlobStore:
    return store  # mypy checks here that LocalBlobStore keeps to the BlobStore interface
