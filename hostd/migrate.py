"""`hostd storage migrate --to s3|local`: copy every blob from one store to the other.

Nothing is switched and nothing is removed: the configured store keeps serving while the
copy runs, and storage.backend is changed by hand once every blob is across. Uploads the
server stores meanwhile are taken by further passes, until one finds nothing new; those
stored after the last pass are not, so the switch is: stop the server, run the command
again (it copies only what came meanwhile: a blob the target has already, from an earlier
or interrupted run, is skipped), set storage.backend, start the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from hostd import db
from hostd.db import Database
from hostd.hashes import SHA256_GROUPS
from hostd.storage import BlobMissing, BlobStore


class MigrationError(Exception):
    """A blob did not arrive whole; the message names it."""


# Passes after which uploads that keep arriving are left to the run with the server stopped.
MAX_PASSES = 10
# How far the clocks of hostd instances on one database may be apart: a later pass asks for
# the blobs recorded since the pass before began, less this.
CLOCK_SKEW_SECONDS = 300
# Copies in flight at once: to S3 each is a few round trips, which one at a time would leave
# most of a migration waiting on the network. Bigger blobs than SMALL_COPY_BYTES are copied
# one at a time (beside small ones), as each holds parts of 8 MiB in memory to S3.
COPIES_AT_ONCE = 8
SMALL_COPY_BYTES = 1024 * 1024

# A pass's blobs, a group at a time: by SHA-256, when each was recorded; and what the target
# lists of them, by SHA-256, its size (None: not listed, the target is asked about each).
Groups = AsyncIterator[tuple[dict[str, int], dict[str, int] | None]]
# One blob of a pass: its SHA-256, when it was recorded, what the target lists of its group.
Item = tuple[str, int, dict[str, int] | None]


@dataclass
class Migrated:
    copied: int = 0
    already_there: int = 0
    missing: int = 0  # recorded, but the source has no bytes for them (`hostd gc` lists them)
    bytes_copied: int = 0
    passes: int = 0
    settled: bool = False  # the last pass found no blob recorded since the one before


async def migrate(
    database: Database,
    source: BlobStore,
    target: BlobStore,
    progress: Callable[[str], None] = lambda line: None,
) -> Migrated:
    """Copy each blob the database records that target lacks, through target's writer
    (which hashes it), then read it back from target and check its SHA-256 once more. Then
    again for the blobs recorded meanwhile, until a pass finds none (or MAX_PASSES: uploads
    keep arriving faster). Bytes no upload records are left to `hostd gc`.

    The first pass walks the blobs one group of SHA-256s at a time, and later passes ask for
    those recorded since the pass before began (less CLOCK_SKEW_SECONDS), so that what is
    held at once is a group's names and the recent ones': all at once, it was some 500 bytes
    a file, 500 MB for a million."""
    done = Migrated()
    # The blobs dealt with that the next pass's question still finds, by SHA-256: those
    # recorded at or after `since`.
    dealt_with: dict[str, int] = {}
    since: int | None = None
    while done.passes < MAX_PASSES:
        done.passes += 1
        began = int(time.time()) - CLOCK_SKEW_SECONDS
        if since is None:
            total = (await db.get_stored(database)).files
            groups = _every_group(database, target)
        else:
            recorded = await db.blob_times(database, since=since)
            new = {sha256: at for sha256, at in recorded.items() if sha256 not in dealt_with}
            if new:
                progress(f"pass {done.passes}: {len(new)} file(s) recorded since the last pass")
            groups, total = _as_one_group(new), len(new)
        this = _Pass(database, source, target, total, began, done, progress)
        await this.run(groups)
        if not this.dealt_with:
            done.settled = True
            break
        since = began
        kept = {**dealt_with, **this.recent}
        dealt_with = {sha256: at for sha256, at in kept.items() if at >= since}
    return done


async def _every_group(database: Database, target: BlobStore) -> Groups:
    """The blobs, one group of SHA-256s at a time (SHA256_GROUPS): by SHA-256, when each
    was recorded; and what target holds of the group, by SHA-256, its size. One listing a
    group where asking for each file would be a request each to S3: a million of them, for
    the run made with the server stopped."""
    for group in SHA256_GROUPS:
        names = await db.blob_times(database, prefix=group)
        listed = {b.sha256: b.size_bytes async for b in target.list_blobs(group)} if names else {}
        yield names, listed


async def _as_one_group(names: dict[str, int]) -> Groups:
    yield names, None  # a few: target is asked about each


class _Pass:
    """One pass over the blobs named in its groups: copies what target lacks, up to
    COPIES_AT_ONCE at once (one at a time above SMALL_COPY_BYTES), and counts into `done`.
    `dealt_with` counts the blobs dealt with, and `recent` holds those of them recorded at or
    after `recent_since`, with when (a blob removed meanwhile is not dealt with: uploaded
    again, a later pass takes it)."""

    def __init__(
        self,
        database: Database,
        source: BlobStore,
        target: BlobStore,
        total: int,
        recent_since: int,
        done: Migrated,
        progress: Callable[[str], None],
    ) -> None:
        self.database, self.source, self.target = database, source, target
        self.total, self.recent_since = total, recent_since
        self.done, self.progress = done, progress
        self.number = 0
        self.dealt_with = 0
        self.recent: dict[str, int] = {}
        self._big = asyncio.Lock()

    async def run(self, groups: Groups) -> None:
        """The blobs in order, fed to COPIES_AT_ONCE copiers, each taking the next as it
        ends one (across groups: a small store has a file or two in each)."""
        queue: asyncio.Queue[Item | None] = asyncio.Queue(COPIES_AT_ONCE)
        tasks = [
            asyncio.ensure_future(self._feed(groups, queue)),
            *(asyncio.ensure_future(self._copier(queue)) for _ in range(COPIES_AT_ONCE)),
        ]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _feed(self, groups: Groups, queue: asyncio.Queue[Item | None]) -> None:
        async for names, listed in groups:
            for sha256, recorded_at in sorted(names.items()):
                await queue.put((sha256, recorded_at, listed))
        for _ in range(COPIES_AT_ONCE):
            await queue.put(None)  # the end, for each copier

    async def _copier(self, queue: asyncio.Queue[Item | None]) -> None:
        while (item := await queue.get()) is not None:
            await self._deal_with(*item)

    async def _deal_with(
        self, sha256: str, recorded_at: int, listed: dict[str, int] | None
    ) -> None:
        """With what target lists of the group (SHA-256 -> size), a blob counts as there when
        listed at its recorded size (at another, a copy cut short: copied again)."""
        self.number += 1
        self.total = max(self.total, self.number)  # more recorded meanwhile
        at = f"[{self.number}/{self.total}] {sha256}"
        blob = await db.get_blob_by_sha256(self.database, sha256)
        if blob is None:
            return  # removed meanwhile
        self.dealt_with += 1
        if recorded_at >= self.recent_since:
            self.recent[sha256] = recorded_at
        if listed is None:
            there = await self.target.exists(sha256)
        else:
            there = listed.get(sha256) == blob.size_bytes
        if there:
            self.done.already_there += 1
            self.progress(f"{at}: already there")
            return
        try:
            big = blob.size_bytes > SMALL_COPY_BYTES
            async with self._big if big else contextlib.nullcontext():
                size = await _copy(self.source, self.target, sha256, blob.size_bytes)
        except BlobMissing:
            self.done.missing += 1
            self.progress(f"{at}: MISSING from the source, not copied")
            return
        if await _sha256_in(self.target, sha256, size) != sha256:
            raise MigrationError(f"{sha256}: the copy reads back with another SHA-256")
        self.done.copied += 1
        self.done.bytes_copied += size
        self.progress(f"{at}: copied, {size} bytes, verified")


async def _copy(source: BlobStore, target: BlobStore, sha256: str, size: int) -> int:
    writer = target.writer()
    reader = await source.open(sha256)
    try:
        async for chunk in reader.chunks(0, size - 1):
            writer.write(chunk)
            behind = writer.backpressure()
            if behind is not None:
                await behind
        written = await writer.commit()
    except BaseException:
        gone = writer.abort()
        if gone is not None:
            await gone
        raise
    finally:
        reader.close()
    if written.sha256 != sha256:
        await target.discard(written)
        raise MigrationError(
            f"{sha256}: the source's bytes have another SHA-256 ({written.sha256})"
        )
    async with target.guard(sha256):
        await target.place(written)
    return written.size_bytes


async def _sha256_in(store: BlobStore, sha256: str, size: int) -> str:
    digest = hashlib.sha256()
    reader = await store.open(sha256)
    try:
        async for chunk in reader.chunks(0, max(size - 1, 0)):
            digest.update(chunk)
    finally:
        reader.close()
    return digest.hexdigest()
