"""`hostd storage migrate --to s3|local`: copy every blob from one store to the other.

Nothing is switched and nothing is removed: the configured store keeps serving while the
copy runs, and storage.backend is changed by hand once every blob is across. A blob the
target has already (an earlier, interrupted run) is skipped, so a second run resumes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from hostd import db
from hostd.db import Database
from hostd.storage import BlobMissing, BlobStore


class MigrationError(Exception):
    """A blob did not arrive whole; the message names it."""


@dataclass
class Migrated:
    copied: int = 0
    already_there: int = 0
    missing: int = 0  # recorded, but the source has no bytes for them (`hostd gc` lists them)
    bytes_copied: int = 0


async def migrate(
    database: Database,
    source: BlobStore,
    target: BlobStore,
    progress: Callable[[str], None] = lambda line: None,
) -> Migrated:
    """Copy each blob the database records that target lacks, through target's writer
    (which hashes it), then read it back from target and check its SHA-256 once more.
    Bytes no upload records are left to `hostd gc`."""
    names = await db.all_blob_sha256s(database)
    done = Migrated()
    for number, sha256 in enumerate(names, 1):
        blob = await db.get_blob_by_sha256(database, sha256)
        if blob is None:
            continue  # removed meanwhile
        if await target.exists(sha256):
            done.already_there += 1
            progress(f"[{number}/{len(names)}] {sha256}: already there")
            continue
        try:
            size = await _copy(source, target, sha256, blob.size_bytes)
        except BlobMissing:
            done.missing += 1
            progress(f"[{number}/{len(names)}] {sha256}: MISSING from the source, not copied")
            continue
        if await _sha256_in(target, sha256, size) != sha256:
            raise MigrationError(f"{sha256}: the copy reads back with another SHA-256")
        done.copied += 1
        done.bytes_copied += size
        progress(f"[{number}/{len(names)}] {sha256}: copied, {size} bytes, verified")
    return done


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
