"""Backups while the server runs: a consistent copy of the database, then the bytes it names.

Blobs never change once stored (their name is their SHA-256), so a backup copies only the
ones the destination lacks: the first backup copies everything, later ones only what is new.
The database is copied first; bytes deleted after that copy was taken may be gone by the time
they would be copied, and are reported (the backup then holds rows without bytes for them,
which `hostd gc` lists after a restore). Each file is hashed as it is copied: bytes that are
no longer the ones uploaded are reported and left out, not kept as if they were good.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from hostd import db
from hostd.db import Damaged, Database
from hostd.db.sqlite import check_pages, owner_only
from hostd.hashes import SHA256_GROUPS
from hostd.local import BLOB_MODE
from hostd.storage import BlobDamaged, BlobMissing, BlobStore

DATABASE_NAME = "hostd.sqlite3"


def check_database(path: Path) -> None:
    """Damaged unless SQLite's quick_check finds every page of the file whole (see
    sqlite.check_pages). The file is opened immutable: read only, with no -wal or -shm made
    beside it (a backup on read-only media)."""
    uri = path.resolve().as_uri() + "?immutable=1"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            check_pages(conn)
    except sqlite3.DatabaseError as exc:  # not a database at all, or past reading
        raise Damaged(str(exc)) from exc


class CannotWrite(Exception):
    """The backup, or the data dir restored into, cannot be made or written (not a folder,
    no permission, a full disk); the message names the path and the system's reason."""


@contextlib.contextmanager
def _writing(path: Path, doing: str = "write the backup") -> Iterator[None]:
    """An OSError in the block is the destination's: CannotWrite, naming `path` unless the
    error names its own."""
    try:
        yield
    except OSError as exc:
        raise CannotWrite(f"cannot {doing}: {exc.filename or path}: {exc.strerror or exc}") from exc


@dataclass
class BackedUp:
    blobs_copied: int
    blobs_present: int
    bytes_copied: int
    missing: list[str]
    damaged: list[str]  # not the size recorded, or no longer their SHA-256: not copied


def blob_path(root: Path, sha256: str) -> Path:
    return root / "blobs" / sha256[:2] / sha256[2:4] / sha256


async def backup(database: Database, store: BlobStore, destination: Path) -> BackedUp:
    """Copy the database to destination/hostd.sqlite3, then every blob it names that
    destination/blobs/ lacks. Each file appears under its name only once complete."""
    with _writing(destination):
        partial = await asyncio.to_thread(_prepare, destination)
    try:
        await database.backup(partial)
    except sqlite3.Error as exc:  # a full disk, say: SQLite writes the copy, not Python
        partial.unlink(missing_ok=True)
        raise CannotWrite(f"cannot write the backup: {partial}: {exc}") from exc
    try:
        await asyncio.to_thread(check_database, partial)
    except Damaged:
        # SQLite's backup copies pages as they are: the database itself is damaged. A good
        # copy in destination from an earlier run stays; this one is not renamed over it.
        partial.unlink(missing_ok=True)
        raise
    with _writing(destination / DATABASE_NAME):
        os.replace(partial, destination / DATABASE_NAME)

    snapshot = await Database.open(destination / DATABASE_NAME)
    try:
        # The cookie secret is not backed up, so a restore starts with a new one: the copy
        # must not hold the old one's fingerprint, or the restored server would not start.
        await db.delete_setting(snapshot, name=db.COOKIE_SECRET)
        result = BackedUp(0, 0, 0, [], [])
        for group in SHA256_GROUPS:  # a group's rows at a time, not a million at once
            wanted = await db.blob_sizes(snapshot, prefix=group)
            for sha256, size_bytes in sorted(wanted.items()):
                await _back_up_blob(store, sha256, size_bytes, destination, result)
    finally:
        await snapshot.close()
    return result


async def _back_up_blob(
    store: BlobStore, sha256: str, size_bytes: int, destination: Path, result: BackedUp
) -> None:
    target = blob_path(destination, sha256)
    if await asyncio.to_thread(target.exists):
        result.blobs_present += 1
        return
    try:
        result.bytes_copied += await _copy_blob(store, sha256, size_bytes, target)
    except BlobMissing:
        result.missing.append(sha256)
    except BlobDamaged:
        result.damaged.append(sha256)
    else:
        result.blobs_copied += 1


def _prepare(destination: Path) -> Path:
    """Make the destination; return where the database copy is written before its rename."""
    if destination.exists() and not destination.is_dir():  # mkdir would say "File exists"
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(destination))
    destination.mkdir(parents=True, exist_ok=True)
    partial = destination / f".{DATABASE_NAME}.partial"
    partial.unlink(missing_ok=True)
    return partial


async def _copy_blob(store: BlobStore, sha256: str, size_bytes: int, target: Path) -> int:
    """Copy one blob through the store (any backend) into target, fsynced, then renamed;
    BlobDamaged, leaving nothing, when its bytes are not the ones uploaded."""
    reader = await store.open(sha256, size_bytes)
    partial = target.with_name(f".{sha256}.partial")
    digest = hashlib.sha256()
    copied = 0
    try:
        with _writing(partial):
            out = await asyncio.to_thread(_create, partial)
        try:
            async for chunk in reader.chunks(0, 2**62):  # the store's errors stay its own
                digest.update(chunk)
                with _writing(partial):
                    await asyncio.to_thread(out.write, chunk)
                copied += len(chunk)
            with _writing(partial):
                await asyncio.to_thread(_sync, out)
        finally:
            out.close()
        if copied != size_bytes or digest.hexdigest() != sha256:
            raise BlobDamaged(sha256)
    except BaseException:
        partial.unlink(missing_ok=True)  # a store's failure midway leaves nothing either
        raise
    finally:
        reader.close()
    with _writing(target):
        os.replace(partial, target)
    return copied


def _create(path: Path) -> BinaryIO:
    """A new file with the mode of the blobs it copies, whatever the umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = path.open("wb")
    os.fchmod(out.fileno(), BLOB_MODE)
    return out


def _sync(out: BinaryIO) -> None:
    out.flush()
    os.fsync(out.fileno())


def restore(source: Path, data_dir: Path) -> int:
    """Put a backup in place as a new data dir (which must be empty or missing); returns the
    number of blobs restored. Damaged, before anything is made, for a damaged database;
    CannotWrite, naming the first failure, when the data dir cannot be made or written (a
    full disk): what the restore wrote is removed then, so that it can be run again."""
    if not (source / DATABASE_NAME).is_file():
        raise FileNotFoundError(f"{source} holds no {DATABASE_NAME}: not a hostd backup")
    check_database(source / DATABASE_NAME)
    if data_dir.exists() and any(data_dir.iterdir()):
        raise FileExistsError(f"{data_dir} is not empty; restore into an empty data dir")
    made = not data_dir.exists()
    try:
        return _restore_into(source, data_dir)
    except CannotWrite:
        _remove_restored(data_dir, made)
        raise


def _restore_into(source: Path, data_dir: Path) -> int:
    with _writing(data_dir, "restore"):
        data_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / DATABASE_NAME, data_dir / DATABASE_NAME)
        owner_only(data_dir / DATABASE_NAME)  # a backup made before it was kept so
    blobs = sorted(
        path
        for path in (source / "blobs").rglob("*")
        if path.is_file() and not path.name.endswith(".partial")
    )
    for restored, path in enumerate(blobs):
        target = data_dir / path.relative_to(source)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            target.chmod(BLOB_MODE)
        except OSError as exc:
            raise CannotWrite(
                f"cannot restore into {data_dir}: {exc.strerror or exc} after the database and"
                f" {restored} of {len(blobs)} files; what it wrote is removed"
            ) from exc
    return len(blobs)


def _remove_restored(data_dir: Path, made: bool) -> None:
    """Remove what a failed restore wrote: the data dir it made, or what it put into the empty
    one it was given (which stays, as it may be a mount point)."""
    if made:
        shutil.rmtree(data_dir, ignore_errors=True)
        return
    for path in data_dir.iterdir():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
