"""`hostd storage migrate --to s3|local`: copy every blob from one store to the other.

Nothing is switched and nothing is removed: the configured store keeps serving while the
copy runs, and storage.backend is changed by hand once every blob is across. Uploads the
server stores meanwhile are taken by further passes, until one finds nothing new; those
stored after the last pass are not, so the switch is: stop the server, run the command
again (it copies only what came meanwhile: a blob the target has already, from an earlier
or interrupted run, is skipped), set storage.backend, start the server.
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


# Passes after which uploads that keep arriving are left to the run with the server stopped.
MAX_PASSES = 10


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
    keep arriving faster). Bytes no upload records are left to `hostd gc`."""
    done = Migrated()
    seen: set[str] = set()
    while done.passes < MAX_PASSES:
        names = [name for name in await db.all_blob_sha256s(database) if name not in seen]
        done.passes += 1
        if not names:
            done.settled = True
            break
        if done.passes > 1:
            progress(f"pass {done.passes}: {len(names)} file(s) recorded since the last pass")
        seen.update(await _pass(database, source, target, names, done, progress))
    return done


async def _pass(
    database: Database,
    source: BlobStore,
    target: BlobStore,
    names: list[str],
    done: Migrated,
    progress: Callable[[str], None],
) -> set[str]:
    """Copy what target lacks of `names`; the names dealt with (a blob removed meanwhile is
    not: uploaded again, a later pass takes it)."""
    dealt_with = set()
    for number, sha256 in enumerate(names, 1):
        blob = await db.get_blob_by_sha256(database, sha256)
        if blob is None:
            continue  # removed meanwhile
        dealt_with.add(sha256)
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
    return dealt_with


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
