"""Resumable (tus) uploads: their bytes so far on local disk, and their end in the normal
upload path.

A partial upload lives in <data_dir>/partials/<id>, whatever the blob store: the parts of
an upload arrive over hours, in as many requests as the network breaks it into, and a
local file is the one place where appending, cutting back to the last recorded offset and
surviving a restart are all plain file operations. Only when the last byte is in does the
file become a written blob, like the body of any upload, and go through uploads.register
(placed, deduplicated, checked against bans and quotas): the same bytes get the same hash.
The local store takes the file as it is (a hard link, hashed: no copy); another store (S3)
receives it through its writer, as one finished object.

The SHA-256 is computed then, from the whole file: hashlib cannot save a hash's state
across a restart, and a partial upload must survive one, so hashing as the parts arrive
would still need a re-read after any restart. Reading the file once at the end is the
same cost every time, and always right.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

from hostd import db, retention, sniff, uploads
from hostd.auth import delete_token_hash
from hostd.config import Config
from hostd.db import ApiKey, Blob, Database, Resumable, Upload
from hostd.formdata import UploadError
from hostd.limits import Limits, quota_message
from hostd.local import sync_path
from hostd.storage import AdoptsFiles, BlobStore, WrittenBlob
from hostd.throttle import address_key

log = logging.getLogger("hostd")

# Bytes per trip to the worker thread, writing a part or reading the whole at the end.
BATCH_BYTES = 1024 * 1024
# A long request's progress is made durable (fsync, then the offset's row) this often, so a
# crash or kill loses at most this much of it.
CHECKPOINT_BYTES = 64 * 1024 * 1024
# A partial file that no unfinished upload names is removed once it is this old (younger
# ones may belong to an upload being created or finished right now).
ORPHAN_GRACE_SECONDS = 3600.0
PRUNE_BATCH = 500


class Partials:
    """The partial files, and which uploads a request is writing right now (one at a
    time per upload, within this process)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.writing: dict[str, Any] = {}  # id -> the request that holds it

    def path(self, id: str) -> Path:
        return self.root / id

    async def create(self, id: str) -> None:
        await asyncio.to_thread(self._create, id)

    def _create(self, id: str) -> None:
        fd = os.open(self.path(id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        sync_path(self.root)

    async def remove(self, id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.unlink, self.path(id))

    def in_use(self, id: str) -> bool:
        """Whether a request is writing this upload now: in this process, or in another
        hostd on the same data dir (its lock on the file)."""
        if id in self.writing:
            return True
        try:
            _hold(self.path(id)).close()
        except PartialBusy:
            return True
        except FileNotFoundError:
            pass
        return False

    def not_in_use(self, ids: list[str]) -> list[str]:
        return [id for id in ids if not self.in_use(id)]

    def list(self) -> list[tuple[str, float]]:
        """(id, modification time) of every partial file."""
        found = []
        for entry in os.scandir(self.root):
            with contextlib.suppress(FileNotFoundError):
                found.append((entry.name, entry.stat().st_mtime))
        return found


class PartialBusy(Exception):
    """Another request holds this upload's file: in this process, or in another hostd on
    the same data dir (a lock on the file, released when that request closes it)."""


def _lock(file: IO[bytes]) -> None:
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise PartialBusy() from None


def _hold(path: Path) -> IO[bytes]:
    """The file, opened and locked (PartialBusy when it is held already)."""
    file = open(path, "rb")  # noqa: SIM115  # the caller closes it
    try:
        _lock(file)
    except BaseException:
        file.close()
        raise
    return file


class PartFile:
    """Appends one request's body to a partial file from `start`, a batch at a time in a
    worker thread; at most one batch is being written while the next one is queued.

    `offset` counts the bytes taken so far; sync() makes them durable, and `recorded` is
    the offset the database has (see save()). Bytes past the recorded offset (left by a
    crash, or by a part that failed) are cut off when the file is opened.

    Writes go to the file descriptor, unbuffered: after a write that failed (a full disk),
    no bytes wait in a buffer to be written later, past where the file was cut back to."""

    def __init__(self, path: Path, start: int) -> None:
        self.path = path
        self.start = start
        self.offset = start
        self.synced = start
        self.recorded = start
        self._file: IO[bytes] | None = None
        self._queued: list[bytes] = []
        self._queued_bytes = 0
        self._busy: asyncio.Future[None] | None = None

    async def open(self) -> None:
        """Raises FileNotFoundError when the partial file is gone, PartialBusy while
        another request holds it."""
        self._file = await asyncio.to_thread(self._open)

    def _open(self) -> IO[bytes]:
        file = open(self.path, "r+b", buffering=0)  # noqa: SIM115  # closed by close()
        try:
            _lock(file)
            file.truncate(self.start)
            file.seek(self.start)
        except BaseException:
            file.close()
            raise
        return file

    def write(self, chunk: bytes) -> None:
        self._queued.append(chunk)
        self._queued_bytes += len(chunk)
        self.offset += len(chunk)

    def backpressure(self) -> Awaitable[None] | None:
        if self._queued_bytes < BATCH_BYTES:
            return None
        return self._hand_over()

    async def _hand_over(self) -> None:
        if self._busy is not None:
            await self._busy
        batch, self._queued, self._queued_bytes = self._queued, [], 0
        self._busy = asyncio.ensure_future(asyncio.to_thread(self._write, batch))

    def _write(self, batch: list[bytes]) -> None:
        assert self._file is not None
        fd = self._file.fileno()
        for chunk in batch:
            view = memoryview(chunk)
            while view:  # a write may take only part of it (the disk filling up)
                view = view[os.write(fd, view) :]

    async def sync(self) -> int:
        """Write what is queued and fsync; the offset now durable."""
        if self._busy is not None:
            busy, self._busy = self._busy, None
            await busy
        batch, self._queued, self._queued_bytes = self._queued, [], 0
        await asyncio.to_thread(self._sync, batch)
        self.synced = self.offset
        return self.offset

    def _sync(self, batch: list[bytes]) -> None:
        self._write(batch)
        assert self._file is not None
        os.fsync(self._file.fileno())

    async def cut_back(self) -> None:
        """Drop what this request wrote past the recorded offset (a checksum that did not
        match, bytes that could not be made durable), giving the disk its room back."""
        if self._busy is not None:
            busy, self._busy = self._busy, None
            with contextlib.suppress(OSError):
                await busy
        self._queued, self._queued_bytes = [], 0
        await asyncio.to_thread(self._cut_back)
        self.offset = self.synced = self.recorded

    def _cut_back(self) -> None:
        assert self._file is not None
        self._file.truncate(self.recorded)
        os.fsync(self._file.fileno())

    async def close(self) -> None:
        if self._busy is not None:
            busy, self._busy = self._busy, None
            with contextlib.suppress(OSError):
                await busy
        if self._file is not None:
            file, self._file = self._file, None
            with contextlib.suppress(OSError):
                file.close()


async def save(database: Database, part: PartFile, id: str) -> bool:
    """Make what arrived of a part durable and record its offset; False when the upload
    is gone meanwhile.

    Bytes that cannot be made durable (a full disk) are cut off, back to the offset
    recorded last: the disk gets their room back, and the upload resumes from there. When
    the database fails instead, the file keeps them: its record may have moved after all
    (a commit whose answer was lost), and bytes past the record are harmless (the next
    part cuts them off), while a record past the file's end would not be."""
    try:
        offset = await part.sync()
    except BaseException:
        with contextlib.suppress(OSError):
            await part.cut_back()
        raise
    if not await db.update_resumable_offset(database, id=id, offset_bytes=offset):
        return False
    part.recorded = offset
    return True


async def begin(
    database: Database,
    partials: Partials,
    upload_limits: Limits,
    *,
    config: Config,
    id: str,
    user_id: int | None,
    api_key: ApiKey | None,
    address: str,
    length: int,
    metadata: str,
    filename: str,
    expires: str,
    now: int,
) -> Resumable:
    """Record a new resumable upload and its empty partial file, once the limits let it
    begin: the file's own limits, the quota (counting the account's unfinished uploads) and
    the upload count, as for any upload; the disk guard and the byte budgets then meet
    each part as it comes. UploadError (413, 429, 507) when they refuse it."""
    upload_limits.hold_resumable(length, user_id)
    admission = await upload_limits.admit(
        database,
        length=length,
        user_id=user_id,
        key_id=api_key.key_id if api_key else None,
        address=address,
        framing_bytes=0,  # Upload-Length is the file's own
    )
    admission.release()
    try:
        found = await db.insert_resumable(
            database,
            id=id,
            user_id=user_id,
            api_key_id=api_key.id if api_key else None,
            address=address_key(address),
            length_bytes=length,
            metadata=metadata,
            filename=filename,
            expires=expires,
            created_at=now,
            expires_at=now + config.resumable_hours * 3600,
            most=config.resumable_in_flight,
            default_quota_bytes=config.quota_bytes,
        )
    except db.TooManyResumable as exc:
        raise UploadError(
            429,
            f"{exc.args[0]} unfinished resumable uploads are waiting already; finish or"
            " terminate (DELETE) one of them first",
        ) from None
    except db.OverQuota as exc:
        message = quota_message(
            used=exc.used_bytes, quota=exc.quota_bytes, size=exc.size_bytes, what="upload"
        )
        raise UploadError(413, f"{message} (unfinished uploads count too)") from None
    try:
        await partials.create(id)
    except BaseException:
        await db.delete_resumable(database, id=id)
        raise
    return found


def delete_token(secret: str, id: str) -> str:
    """The deletion link's token of the upload a resumable upload becomes: derived from the
    cookie secret and the upload's id, so that a client that lost the last answer can be
    given it again, while the database still keeps only its SHA-256."""
    mac = hmac.new(secret.encode(), b"hostd resumable upload\0" + id.encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


async def complete(
    database: Database,
    store: BlobStore,
    partials: Partials,
    resumable: Resumable,
    *,
    config: Config,
    at: int,
) -> tuple[Blob, Upload]:
    """Register a resumable upload whose last byte is in, as any upload: its file goes
    through the store's writer, then uploads.register. Once the upload is recorded, the
    partial file goes.

    Raises uploads.Banned, db.OverQuota and retention.ExpiryError (the caller then drops the
    partial upload), and OSError or database errors (the partial upload stays, to be
    completed again on the next request)."""
    assert config.cookie_secret is not None
    token_hash = delete_token_hash(delete_token(config.cookie_secret, resumable.id))
    # Recorded already, by a process that stopped before it could say so here.
    recorded = await _recorded(database, partials, resumable, token_hash, at)
    if recorded is not None:
        return recorded
    try:
        held = await asyncio.to_thread(_hold, partials.path(resumable.id))
    except FileNotFoundError:
        # Stored meanwhile by another process on this data dir, which removed the file?
        recorded = await _recorded(database, partials, resumable, token_hash, at)
        if recorded is None:
            raise
        return recorded
    try:
        return await _store(database, store, partials, resumable, config, at, token_hash)
    finally:
        held.close()


async def _recorded(
    database: Database, partials: Partials, resumable: Resumable, token_hash: str, at: int
) -> tuple[Blob, Upload] | None:
    """The upload this resumable upload became, if it was registered already (its
    deletion link is there); the record then says so, and the partial file goes."""
    link = await db.get_delete_link(database, token_hash=token_hash)
    if link is None or link.file is None:
        return None
    await db.complete_resumable(database, id=resumable.id, upload_id=link.file.upload.id, at=at)
    await partials.remove(resumable.id)
    return await db.get_upload_with_blob(database, upload_id=link.file.upload.id)


async def _store(
    database: Database,
    store: BlobStore,
    partials: Partials,
    resumable: Resumable,
    config: Config,
    at: int,
    token_hash: str,
) -> tuple[Blob, Upload]:
    asked = retention.parse_expires(resumable.expires, now=at, source="the expires metadata")
    written = await _written(store, partials.path(resumable.id))
    if written.size_bytes != resumable.length_bytes:
        await store.discard(written)
        raise OSError(f"the partial file of {resumable.id} holds {written.size_bytes} bytes")
    blob, upload = await uploads.register(
        database,
        store,
        written,
        content_type=sniff.detect(written.head),
        original_name=resumable.filename,
        user_id=resumable.user_id,
        api_key_id=resumable.api_key_id,
        default_quota_bytes=config.quota_bytes,
        at=at,
        expires_at=retention.expires_at(
            config,
            now=at,
            size_bytes=written.size_bytes,
            anonymous=resumable.user_id is None,
            asked=asked,
        ),
        delete_token_hash=token_hash,
    )
    await db.complete_resumable(database, id=resumable.id, upload_id=upload.id, at=at)
    await partials.remove(resumable.id)
    return blob, upload


def room_to_finish(store: BlobStore, resumable: Resumable) -> int:
    """Disk space that storing a finished upload takes on top of its partial file."""
    return 0 if isinstance(store, AdoptsFiles) else resumable.length_bytes


async def _written(store: BlobStore, path: Path) -> WrittenBlob:
    """The whole partial file as a written blob: taken as it is by a store that can
    (the local one links it), else through the store's writer (which hashes it)."""
    if isinstance(store, AdoptsFiles):
        return await store.adopt(path)
    writer = store.writer()
    try:
        file = await asyncio.to_thread(open, path, "rb")
        try:
            while chunk := await asyncio.to_thread(file.read, BATCH_BYTES):
                writer.write(chunk)
                behind = writer.backpressure()
                if behind is not None:
                    await behind
        finally:
            file.close()
        return await writer.commit()
    except BaseException:
        gone = writer.abort()
        if gone is not None:
            await gone
        raise


async def drop(database: Database, partials: Partials, id: str) -> None:
    """Forget a resumable upload: its row first, then its file."""
    await db.delete_resumable(database, id=id)
    await partials.remove(id)


async def prune(
    database: Database,
    partials: Partials,
    *,
    now: int,
    clock: Callable[[], float] = time.time,
    grace_seconds: float = ORPHAN_GRACE_SECONDS,
) -> int:
    """Remove resumable uploads expired by `now` (unfinished ones and the records of
    finished ones), then partial files that no unfinished upload names (a crash between a
    row's end and its file's). Uploads a request is writing, in any process, are left for
    the next round. Returns how many uploads went."""
    removed = 0
    while True:
        expired = await db.list_expired_resumables(database, now=now, limit=PRUNE_BATCH)
        free = await asyncio.to_thread(partials.not_in_use, expired)
        gone = await db.delete_expired_resumables(database, ids=free, now=now) if free else []
        for id in gone:
            await partials.remove(id)
        removed += len(gone)
        if len(expired) < PRUNE_BATCH or not gone:
            break
    unfinished = await db.unfinished_resumable_ids(database)
    for id, modified_at in await asyncio.to_thread(partials.list):
        if id in unfinished or id in partials.writing:
            continue
        if clock() - modified_at >= grace_seconds:
            await partials.remove(id)
    return removed
