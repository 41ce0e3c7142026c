"""An upload's life across the database and the blob store, in the one safe order.

Bytes before rows: an upload's bytes are placed (rename, directory fsync) before its row is
submitted, with no database lock held, so uploads' fsyncs run in parallel. Rows before
bytes on the way out: a deletion commits first and removes the bytes after, so the worst
crash leaves bytes that no row points at (which `hostd gc` removes), never a row without
its bytes. Within a process, the store's guard for a SHA-256 keeps a deletion of some
bytes and a new upload of the same bytes from interleaving. Across processes (instances on
one bucket, `hostd file rm` beside the server) the database's record of each blob row's
removal does: an upload that found its bytes in the store already outlasts any removal of
them that started meanwhile (see register).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from hostd import db
from hostd.db import Blob, Database, Expired, Removal, Upload
from hostd.hashes import SHA256_GROUPS
from hostd.storage import (
    BlobDamaged,
    BlobMissing,
    BlobStore,
    StoreUnavailable,
    WrittenBlob,
)
from hostd.thumbs import Thumbnails

log = logging.getLogger("hostd")


class Banned(Exception):
    """These bytes are banned (`hostd file rm --ban`): nothing was stored. args[0] is the
    ban's reason ("" when none was given)."""

    @property
    def reason(self) -> str:
        return str(self.args[0])


class DeletedMeanwhile(StoreUnavailable):
    """The upload's bytes were deleted by another process while it was being recorded (a
    deletion of the same bytes on another instance): the upload is withdrawn; send again."""


# How long an upload that raced a removal of its bytes waits for that removal to settle:
# longer than a store's deletion may take (S3's requests time out at 30 s).
REMOVAL_WAIT_SECONDS = 45.0
# How long a blob row's removal is remembered (0011_blob_removals.sql): far longer than an
# upload takes from placing its bytes to recording them.
REMOVALS_KEPT_SECONDS = 3600

# `hostd gc` leaves bytes younger than this alone: they may belong to an upload whose row
# is being written right now (placing refreshes the time of bytes that were there already).
GC_GRACE_SECONDS = 3600.0


async def register(
    database: Database,
    store: BlobStore,
    written: WrittenBlob,
    *,
    content_type: str,
    original_name: str,
    user_id: int | None,
    api_key_id: int | None,
    default_quota_bytes: int | None = None,
    at: int | None = None,
    expires_at: int | None = None,
    delete_token_hash: str | None = None,
) -> tuple[Blob, Upload]:
    """Place the bytes, then record the upload (made `at`, expiring at `expires_at`, None:
    never; with its deletion link, by its token's hash). If the row cannot be written (a
    full database, a client gone before its turn, an account over its quota), bytes that no
    row points at are removed.

    Raises Banned, with nothing stored, for banned bytes: checked before they are placed
    (against the process's list of bans, db.find_ban), and by the schema when the row is
    written (a ban from another process in the last few seconds); DeletedMeanwhile when
    another process deleted the bytes as they were recorded."""
    async with store.guard(written.sha256):
        await _refuse_if_banned(database, store, written)
        placing = asyncio.ensure_future(store.place(written))
        try:
            were_there = await asyncio.shield(placing)  # a cancelled caller waits for it
        except BaseException:
            await asyncio.wait([placing])
            if placing.cancelled() or placing.exception() is not None:
                await store.discard(written)
            else:
                await asyncio.shield(_remove_if_unreferenced(database, store, written.sha256))
            raise
        try:
            blob, upload = await db.register_upload(
                database,
                sha256=written.sha256,
                size_bytes=written.size_bytes,
                content_type=content_type,
                original_name=original_name,
                user_id=user_id,
                api_key_id=api_key_id,
                default_quota_bytes=default_quota_bytes,
                at=at,
                expires_at=expires_at,
                delete_token_hash=delete_token_hash,
            )
        except BaseException as exc:
            await asyncio.shield(_remove_if_unreferenced(database, store, written.sha256))
            if db.refused_as_banned(exc):
                ban = await db.get_ban(database, sha256=written.sha256)
                raise Banned(ban.reason if ban else "") from None
            raise
    if were_there:
        await _outlast_removal(database, store, upload)
    return blob, upload


async def _outlast_removal(database: Database, store: BlobStore, upload: Upload) -> None:
    """After recording an upload whose bytes were in the store already (or may have been):
    if their blob row was deleted meanwhile, the process that deleted it may be removing
    those very bytes, having seen no row when it looked. Wait until that removal has
    settled (outside the guard: this process's own removal needs it), then check the bytes;
    gone, the upload is withdrawn (DeletedMeanwhile), so that no row is left without them."""
    removal = await db.get_blob_removal(database, upload.sha256)
    if removal is None:
        return  # no row of these bytes was deleted in the last hour
    deadline = time.monotonic() + REMOVAL_WAIT_SECONDS
    while removal is not None and removal.settled_at is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        removal = await db.get_blob_removal(database, upload.sha256)
    if await store.exists(upload.sha256):
        return
    log.warning(
        "the bytes of %s were deleted by another process as an upload of them was recorded;"
        " the upload is withdrawn",
        upload.sha256,
    )
    withdrawn = await asyncio.shield(db.withdraw_upload(database, upload_id=upload.id))
    if withdrawn.blob_gone:
        await _settle(database, upload.sha256)  # nothing left to remove
    raise DeletedMeanwhile("the same file was being deleted as it arrived; send it again")


async def _refuse_if_banned(database: Database, store: BlobStore, written: WrittenBlob) -> None:
    """Raise Banned for banned bytes, and then (or if the caller goes away meanwhile) leave
    nothing of them: the temp file goes."""
    try:
        ban = await db.find_ban(database, written.sha256)
    except BaseException:
        await asyncio.shield(store.discard(written))
        raise
    if ban is not None:
        await store.discard(written)
        raise Banned(ban.reason)


async def _delete_unreferenced(database: Database, store: BlobStore, sha256: str) -> bool:
    """Under the guard: remove the bytes when no row points at them; whether it did."""
    if await db.is_referenced(database, sha256):
        return False
    await store.delete(sha256)
    return True


async def _remove_if_unreferenced(database: Database, store: BlobStore, sha256: str) -> None:
    """Under the guard: remove the bytes when no row points at them."""
    try:
        await _delete_unreferenced(database, store, sha256)
    except (db.Unavailable, OSError) as exc:
        # The caller is failing already, most likely for the same reason (the database or
        # the store out of reach), and says so. One line, as the caller's: a traceback per
        # refused upload would bury the log while it lasts. Tried again a few times, not
        # left to gc's next round (hours away) on a disk that may be filling up.
        log.error("could not remove the unreferenced bytes of %s (trying again): %s", sha256, exc)
        task = asyncio.get_running_loop().create_task(_remove_later(database, store, sha256))
        _removing.add(task)
        task.add_done_callback(_removing.discard)
    except Exception:
        log.exception("could not remove the unreferenced bytes of %s", sha256)


# When bytes an upload was refused for could not be removed (the database or the store out
# of reach), they are tried again after these pauses, then left to gc.
REMOVAL_RETRY_SECONDS = (5.0, 30.0, 120.0, 600.0)
_removing: set[asyncio.Task[None]] = set()  # held until done (the loop keeps weak references)


async def _remove_later(database: Database, store: BlobStore, sha256: str) -> None:
    for pause in REMOVAL_RETRY_SECONDS:
        await asyncio.sleep(pause)
        try:
            async with store.guard(sha256):
                removed = await _delete_unreferenced(database, store, sha256)
        except (db.Unavailable, OSError):
            continue
        except Exception:
            log.exception("could not remove the unreferenced bytes of %s", sha256)
            return
        if removed:
            log.info("removed the unreferenced bytes of %s", sha256)
        return
    log.error("could not remove the unreferenced bytes of %s (gc will)", sha256)


async def delete(
    database: Database, store: BlobStore, thumbs: Thumbnails, *, upload_id: int, user_id: int
) -> bool:
    """Remove one of a user's uploads; False when they have no such upload."""
    removal = await db.delete_upload(database, upload_id=upload_id, user_id=user_id)
    await remove_bytes(database, store, thumbs, removal)
    return removal.uploads > 0


async def delete_by_link(
    database: Database, store: BlobStore, thumbs: Thumbnails, *, token_hash: str
) -> Removal | None:
    """Remove the upload a deletion link names. None: no such link; Removal(0, ...): its
    upload was gone already."""
    removal = await db.delete_by_link(database, token_hash=token_hash)
    if removal is not None:
        await remove_bytes(database, store, thumbs, removal)
    return removal


async def delete_uploads_of_blob(
    database: Database, store: BlobStore, thumbs: Thumbnails, *, user_id: int, hash: str
) -> int:
    """Remove a user's uploads of the blob with this public hash; how many there were."""
    removal = await db.delete_uploads_of_blob(database, user_id=user_id, hash=hash)
    await remove_bytes(database, store, thumbs, removal)
    return removal.uploads


async def take_down(
    database: Database, store: BlobStore, thumbs: Thumbnails, *, sha256: str
) -> int:
    """Remove a blob for everyone: every upload of it, its row, its bytes, its thumbnail.
    Returns how many uploads there were."""
    removal = await db.take_down(database, sha256=sha256)
    await remove_bytes(database, store, thumbs, removal)
    return removal.uploads


async def ban(
    database: Database, store: BlobStore, thumbs: Thumbnails, *, sha256: str, reason: str
) -> tuple[db.Ban, Removal]:
    """Ban these bytes for good and take them down: every upload, the row, the bytes, the
    thumbnail. Raises db.AlreadyBanned (and changes nothing) when they are banned already."""
    banned, removal = await db.insert_ban(database, sha256=sha256, reason=reason)
    await remove_bytes(database, store, thumbs, removal)
    return banned, removal


async def remove_user(
    database: Database, store: BlobStore, thumbs: Thumbnails, *, user_id: int, delete_files: bool
) -> int:
    """Remove an account; its uploads become anonymous, or with delete_files go too (their
    bytes after the commit, unless another upload still points at them). Returns how many
    uploads were deleted."""
    removals = await db.delete_user(database, user_id=user_id, delete_files=delete_files)
    for removal in removals:
        await remove_bytes(database, store, thumbs, removal)
    return sum(removal.uploads for removal in removals)


async def remove_bytes(
    database: Database, store: BlobStore, thumbs: Thumbnails, removal: Removal
) -> None:
    """After a deletion's commit: the bytes go when their blob row went, unless the same
    bytes were uploaded again meanwhile."""
    if removal.sha256 is None or not removal.blob_gone:
        return
    sha256 = removal.sha256
    async with store.guard(sha256):
        try:
            if await db.is_referenced(database, sha256):
                return  # uploaded again since the commit: the bytes are needed
            try:
                await store.delete(sha256)
            except StoreUnavailable as exc:  # the deletion stands; gc removes the bytes later
                log.warning("could not remove the bytes of %s now (gc will): %s", sha256, exc)
            thumbs.delete(sha256)
        finally:
            # An upload of these bytes recorded meanwhile (by another process) waits for this.
            await asyncio.shield(_settle(database, sha256))


async def _settle(database: Database, sha256: str) -> None:
    """Mark a blob row's removal settled. The deletion stands whatever happens here: if the
    database cannot take this now, an upload racing the removal waits its longest
    (REMOVAL_WAIT_SECONDS) and then checks the bytes itself; prune forgets the record."""
    try:
        await db.settle_blob_removal(database, sha256)
    except Exception as exc:
        log.warning("could not mark the removal of %s settled: %s", sha256, exc)


# Expired uploads removed per unit of work, so that a long backlog never holds the writer.
PRUNE_BATCH = 500


async def prune(
    database: Database, store: BlobStore, thumbs: Thumbnails, *, now: int, batch: int = PRUNE_BATCH
) -> list[Expired]:
    """Remove the uploads expired by `now`: their rows a batch at a time, each batch
    committed before the bytes (and thumbnails) of the blobs it left without an upload
    are removed. Returns what went; `blob_gone` says whose bytes went with it."""
    removed: list[Expired] = []
    while True:
        expired = await db.delete_expired(database, now=now, limit=batch)
        removed += expired
        for sha256 in sorted({item.upload.sha256 for item in expired if item.blob_gone}):
            count = sum(1 for item in expired if item.upload.sha256 == sha256)
            await remove_bytes(database, store, thumbs, Removal(count, sha256, True))
        if len(expired) < batch:
            await db.forget_blob_removals(database, before=now - REMOVALS_KEPT_SECONDS)
            return removed


@dataclass
class Collected:
    """What a garbage collection found."""

    removed: list[str]  # bytes no row pointed at, now gone (with dry_run: to go)
    young: int  # such bytes left alone, being inside the grace period
    missing: list[str]  # rows whose bytes are gone (reported, not changed)
    damaged: list[str]  # rows whose bytes are not the size recorded (reported, not changed)


async def collect_garbage(
    database: Database,
    store: BlobStore,
    thumbs: Thumbnails,
    *,
    grace_seconds: float = GC_GRACE_SECONDS,
    clock: Callable[[], float] = time.time,
    dry_run: bool = False,
    verify: bool = False,
) -> Collected:
    """Remove bytes that no blob row points at (older than the grace period), and report
    rows whose bytes are missing or not the size recorded; with verify, also those whose
    bytes (read whole) no longer have their SHA-256. With dry_run, only say what would be
    removed.

    One group of SHA-256s (SHA256_GROUPS) at a time, the store's listing and the rows alike:
    with a million files, the whole of both held some 500 MB at once."""
    result = Collected([], 0, [], [])
    for group in SHA256_GROUPS:
        stored = {blob.sha256: blob async for blob in store.list_blobs(group)}
        referenced = await db.referenced_among(database, stored)
        for sha256, blob in sorted(stored.items()):
            if sha256 in referenced:
                continue
            if clock() - blob.modified_at < grace_seconds:
                result.young += 1
                continue
            if dry_run:
                result.removed.append(sha256)
                continue
            async with store.guard(sha256):
                if not await db.is_referenced(database, sha256) and await store.delete(sha256):
                    thumbs.delete(sha256)
                    result.removed.append(sha256)
        for sha256, size_bytes in sorted((await db.blob_sizes(database, prefix=group)).items()):
            found = stored.get(sha256)
            if found is None:
                if not await store.exists(sha256):  # not stored after the listing either
                    result.missing.append(sha256)
            elif found.size_bytes != size_bytes or (
                verify and not await has_its_sha256(store, sha256, size_bytes)
            ):
                result.damaged.append(sha256)
    return result


async def has_its_sha256(store: BlobStore, sha256: str, size_bytes: int) -> bool:
    """Whether the stored bytes, read whole, still hash to their name (a flipped bit on a
    disk, a file written over at the same size). False when they have gone meanwhile."""
    digest = hashlib.sha256()
    try:
        reader = await store.open(sha256, size_bytes)
    except (BlobMissing, BlobDamaged):
        return False
    try:
        if size_bytes:
            async for chunk in reader.chunks(0, size_bytes - 1):
                digest.update(chunk)
    except (BlobMissing, BlobDamaged):
        return False
    finally:
        reader.close()
    return digest.hexdigest() == sha256
