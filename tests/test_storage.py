"""The blob store: temp file, hash, fsync, rename; dedup; cleaning up."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import re
import sys
import time
import tracemalloc
from itertools import pairwise

import pytest
from conftest import CrampedBlobStore
from helpers import bytes_under

import hostd.local
from hostd.hashes import public_hash_candidates
from hostd.local import (
    QUEUE_LIMIT_BYTES,
    WRITE_BATCH_BYTES,
    WRITEBACK_BYTES,
    FolderSet,
    LocalBlobStore,
    hash_keeping_the_gil,
)
from hostd.storage import BlobDamaged, BlobMissing


@pytest.mark.parametrize("size", [1, 2047, 2048, 4095, 4096, 16 * 1024, 16 * 1024 + 1, 100_000])
def test_a_small_upload_hashed_in_pieces_has_its_sha256(size):
    data = os.urandom(size)
    digest = hashlib.sha256(b"before ")

    hash_keeping_the_gil(digest, data)

    assert digest.hexdigest() == hashlib.sha256(b"before " + data).hexdigest()


@pytest.fixture
def local(tmp_path):
    store = LocalBlobStore(tmp_path / "blobs")
    yield store
    store.close()


def temp_files(store):
    return [p for p in store.tmp_dir.iterdir() if p.name != ".lock"]


async def read_all(store, sha256, start=0, end=None):
    reader = await store.open(sha256)
    try:
        size = store.path(sha256).stat().st_size
        return b"".join([c async for c in reader.chunks(start, size - 1 if end is None else end)])
    finally:
        reader.close()


@pytest.mark.gen_test
async def test_commit_keeps_the_bytes_out_of_sight_until_placed(local):
    writer = local.writer()
    writer.write(b"hello ")
    writer.write(b"world")

    written = await writer.commit()
    visible_before = await local.exists(written.sha256)
    await local.place(written)

    sha = hashlib.sha256(b"hello world").hexdigest()
    assert written.sha256 == sha
    assert written.size_bytes == 11
    assert visible_before is False
    assert local.path(sha) == local.root / sha[:2] / sha[2:4] / sha
    assert await read_all(local, sha) == b"hello world"
    assert temp_files(local) == []


@pytest.mark.gen_test
async def test_identical_bytes_are_stored_once_and_marked_as_just_used(local):
    for age in (0, 7200):
        writer = local.writer()
        writer.write(b"same")
        written = await writer.commit()
        if age:
            os.utime(local.path(written.sha256), (time.time() - age,) * 2)
        await local.place(written)

    assert len([p for p in local.root.rglob("*") if p.is_file()]) == 1
    assert temp_files(local) == []
    # placed again: gc's grace period starts again for the copy that was there
    assert time.time() - local.path(written.sha256).stat().st_mtime < 60


async def placed(store, data):
    writer = store.writer()
    writer.write(data)
    written = await writer.commit()
    await store.place(written)
    return written.sha256


@pytest.mark.gen_test
async def test_placing_makes_the_file_and_each_new_folder_durable(local, monkeypatch):
    """A row is recorded only after place(): by then the file, and the entries of a new
    ab/ and ab/cd/, must survive a crash (an fsync of each folder that changed); a folder
    known durable is not synced again. Made folders are synced after the rename, in one go
    with it, so that a new folder costs no wait of its own."""
    synced = []
    real = hostd.local.sync_path
    monkeypatch.setattr(hostd.local, "sync_path", lambda path: (synced.append(path), real(path)))
    first, first_sha = bytes_under("")
    beside, _ = bytes_under(first_sha[:4], start=1)  # in the same ab/cd/
    root = os.fspath(local.root)
    ab, abcd = f"{root}/{first_sha[:2]}", f"{root}/{first_sha[:2]}/{first_sha[2:4]}"

    await placed(local, first)
    first_syncs, synced[:] = list(synced), []
    await placed(local, beside)
    beside_syncs, synced[:] = list(synced), []
    restarted = LocalBlobStore(local.root)  # folders made by an earlier process (or thread)
    try:
        await placed(restarted, bytes_under(first_sha[:4], start=int(beside) + 1)[0])
    finally:
        restarted.close()

    assert first_syncs == [abcd, root, ab]
    assert beside_syncs == [abcd]
    assert synced == [abcd, root, ab]  # there, but not known to have been made durable
    assert local.path(first_sha).exists()


def test_the_folders_known_durable_cost_a_byte_each_however_many_uploads_reach():
    """A long-running server reaches every one of the 65,792 folders in time; kept as a
    set of names, they held 5 MiB of its memory."""
    folders = FolderSet()
    tracemalloc.start()
    try:
        for number in range(256):
            folders.add(f"{number:02x}")
        for number in range(256 * 256):
            folders.add(f"{number:04x}")
        grown, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    members = all(f"{number:04x}" in folders for number in range(256 * 256))
    folders.clear()
    one = FolderSet()
    one.add("00ab")

    assert grown < 64 * 1024
    assert members
    assert "00ab" not in folders and "ab" not in folders
    assert "00ab" in one and "ab" not in one and "00" not in one


@pytest.mark.gen_test
async def test_a_listing_leaves_out_a_file_removed_under_it_and_goes_on(local, monkeypatch):
    """gc lists the store while uploads come and go: a file removed between the read of
    its folder and its stat is left out, and the rest of that folder is still listed."""
    first, gone = bytes_under("")
    second, kept = bytes_under(gone[:4], start=int(first) + 1)  # in the same ab/cd/
    await placed(local, first)
    await placed(local, second)
    real = os.scandir

    def scandir_then_remove(path):
        entries = sorted(real(path), key=lambda entry: entry.name != gone)  # gone first
        if any(entry.name == gone for entry in entries):
            os.unlink(local.path(gone))
        return contextlib.nullcontext(iter(entries))

    monkeypatch.setattr(os, "scandir", scandir_then_remove)
    listed = [blob.sha256 async for blob in local.list_blobs(gone[:2])]

    assert listed == [kept]


def record_syncs(monkeypatch):
    """(call, the path its descriptor names then) for each fsync and fdatasync."""
    calls = []
    for name in ("fsync", "fdatasync"):
        real = getattr(os, name)

        def sync(fd, name=name, real=real):
            calls.append((name, os.readlink(f"/proc/self/fd/{fd}")))
            return real(fd)

        monkeypatch.setattr(os, name, sync)
    return calls


@pytest.mark.gen_test
async def test_a_file_is_synced_under_its_name_and_a_copy_found_whole_by_its_finder(
    local, monkeypatch
):
    """The rename comes before the file's fsync, so that one commit of the filesystem's
    journal makes both durable. Its name is then seen before its bytes are on the disk: an
    upload of the same bytes that finds it whole must sync it before its row is written."""
    syncs = record_syncs(monkeypatch)
    data = os.urandom(5000)

    sha = await placed(local, data)
    placing, syncs[:] = list(syncs), []
    await placed(local, data)

    target = os.fspath(local.path(sha))
    assert placing[:2] == [("fsync", target), ("fsync", os.path.dirname(target))]
    assert syncs == [("fdatasync", target)]


@pytest.mark.gen_test
async def test_a_whole_copy_removed_as_it_is_found_is_placed_again(local, monkeypatch):
    """`hostd file rm` in another process may remove the copy just found whole."""
    data = os.urandom(5000)
    sha = await placed(local, data)
    utime = os.utime

    def touched_then_removed(path, *args, **kwargs):
        utime(path, *args, **kwargs)
        os.unlink(path)

    monkeypatch.setattr(os, "utime", touched_then_removed)

    await placed(local, data)

    assert local.path(sha).read_bytes() == data


@pytest.mark.parametrize("copy", ["found damaged", "placed meanwhile by another placer"])
@pytest.mark.gen_test
async def test_a_copy_there_is_replaced_only_by_bytes_already_on_the_disk(local, monkeypatch, copy):
    """A row may point at a copy that is there: the new bytes are synced before they
    replace it. Another placer's copy can appear between the look for one and the rename,
    which then fails rather than replace it (RENAME_NOREPLACE)."""
    data = os.urandom(5000)
    target = local.path(hashlib.sha256(data).hexdigest())
    other = bytes(5000)  # the same size, other bytes: not whole
    if copy == "found damaged":
        target.parent.mkdir(parents=True)
        target.write_bytes(other)
    else:
        rename_new = hostd.local._rename_new

        def placed_meanwhile(source, destination):
            with open(destination, "xb") as file:
                file.write(other)
            return rename_new(source, destination)

        monkeypatch.setattr(hostd.local, "_rename_new", placed_meanwhile)
    syncs = record_syncs(monkeypatch)
    writer = local.writer()
    writer.write(data)

    were_there = await local.place(await writer.commit())

    assert were_there is True
    assert target.read_bytes() == data
    (first, synced_as), folder = syncs[:2]
    assert first == "fsync" and synced_as.startswith(os.fspath(local.tmp_dir) + "/")
    assert folder == ("fsync", os.fspath(target.parent))
    assert temp_files(local) == []


@pytest.mark.gen_test
async def test_bytes_the_disk_fails_to_sync_leave_no_copy_under_their_name(local, monkeypatch):
    def failing_fsync(fd):
        if not os.path.isdir(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    writer = local.writer()
    writer.write(b"never durable")
    written = await writer.commit()

    with pytest.raises(OSError):
        await local.place(written)

    assert not local.path(written.sha256).exists()
    assert temp_files(local) == []


@pytest.mark.parametrize(
    "size, damage",
    [
        (5000, "cut"),
        (5000, "written over"),
        (200_000, "cut"),
        (200_000, "written over"),
    ],
)
@pytest.mark.gen_test
async def test_uploading_bytes_again_mends_a_copy_damaged_behind_the_stores_back(
    tmp_path, size, damage
):
    data = os.urandom(size)
    first = LocalBlobStore(tmp_path / "blobs")
    sha = await placed(first, data)
    first.close()
    stored = first.path(sha)
    if damage == "cut":
        stored.write_bytes(data[: size // 2])
    else:
        stored.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    store = LocalBlobStore(tmp_path / "blobs")  # a restart: nothing known of the copy
    try:
        writer = store.writer()
        writer.write(data)
        were_there = await store.place(await writer.commit())
        mended = await read_all(store, sha)
    finally:
        store.close()

    assert were_there is True  # (another process may be removing them: uploads.register)
    assert mended == data


@pytest.mark.gen_test
async def test_a_whole_copy_is_kept_and_its_new_bytes_dropped(local):
    data = os.urandom(5000)
    sha = await placed(local, data)
    inode = local.path(sha).stat().st_ino

    await placed(local, data)

    assert local.path(sha).stat().st_ino == inode
    assert temp_files(local) == []


@pytest.mark.gen_test
async def test_a_folder_removed_behind_the_stores_back_is_made_again(local):
    data, sha = bytes_under("")
    await placed(local, data)
    local.path(sha).unlink()
    local.path(sha).parent.rmdir()

    await placed(local, data)

    assert local.path(sha).read_bytes() == data


@pytest.mark.gen_test
async def test_head_keeps_only_the_first_bytes(local):
    writer = local.writer()
    writer.write(b"a" * 5000)
    writer.write(b"b" * 5000)

    written = await writer.commit()

    assert written.head == b"a" * 5000 + b"b" * 3192


def test_abort_removes_the_temp_file(local):
    writer = local.writer()
    writer.write(b"partial")

    writer.abort()

    assert temp_files(local) == []


@pytest.mark.gen_test
async def test_a_large_file_goes_to_disk_in_batches_while_it_arrives(local):
    pieces = [os.urandom(64 * 1024) for _ in range(192)]  # 12 MiB
    writer = local.writer()
    waits = 0

    for piece in pieces:
        writer.write(piece)
        behind = writer.backpressure()
        if behind is not None:
            waits += 1
            await behind
    on_disk_before_commit = sum(p.stat().st_size for p in temp_files(local))
    written = await writer.commit()

    # Streamed: the body was held back at times, and what was not yet on disk never grew
    # past the backlog behind one batch in the thread, and that batch.
    assert waits >= 1
    backlog = 12 * 1024 * 1024 - on_disk_before_commit
    assert 0 <= backlog <= 2 * (QUEUE_LIMIT_BYTES + 64 * 1024)
    assert written.sha256 == hashlib.sha256(b"".join(pieces)).hexdigest()
    await local.place(written)
    assert await read_all(local, written.sha256) == b"".join(pieces)
    assert await read_all(local, written.sha256, 5, 300_000) == b"".join(pieces)[5:300_001]


@pytest.mark.gen_test
async def test_a_large_file_is_sent_on_to_the_disk_while_it_arrives(local, monkeypatch):
    asked = []

    def start_writeback(fd, offset, length):
        asked.append((offset, length))
        real_start_writeback(fd, offset, length)

    real_start_writeback = hostd.local.start_writeback
    monkeypatch.setattr(hostd.local, "start_writeback", start_writeback)
    size = 5 * WRITEBACK_BYTES + 12345
    data = os.urandom(size)
    writer = local.writer()
    for at in range(0, size, 1024 * 1024):
        writer.write(data[at : at + 1024 * 1024])
        behind = writer.backpressure()
        if behind is not None:
            await behind
    written = await writer.commit()
    await local.place(written)

    # From the start, in order, each range at least WRITEBACK_BYTES; the fsync in place()
    # is left at most what came after the last one.
    assert asked and asked[0][0] == 0
    assert all(offset + length == after for (offset, length), (after, _) in pairwise(asked))
    assert all(length >= WRITEBACK_BYTES for _, length in asked)
    assert size - sum(length for _, length in asked) < WRITEBACK_BYTES + 2 * QUEUE_LIMIT_BYTES
    assert await read_all(local, written.sha256) == data


@pytest.mark.skipif(sys.platform != "linux", reason="sync_file_range is Linux's")
def test_start_writeback_is_the_kernels_and_leaves_the_bytes_as_they_are(tmp_path):
    path = tmp_path / "file"
    data = os.urandom(3 * 1024 * 1024)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, data)
        hostd.local.start_writeback(fd, 0, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)

    assert hostd.local._sync_file_range is not None
    assert path.read_bytes() == data


@pytest.mark.gen_test
async def test_abort_while_a_batch_is_being_written_removes_the_temp_file(local):
    writer = local.writer()
    writer.write(os.urandom(2 * WRITE_BATCH_BYTES))
    await writer.backpressure()  # one batch is now being written in the worker thread

    gone = writer.abort()
    if gone is not None:
        await gone

    assert temp_files(local) == []


@pytest.mark.gen_test
async def test_a_start_removes_temp_files_of_gone_processes_only(local, tmp_path):
    writer = local.writer()  # an upload in flight in a live process (this one)
    writer.write(os.urandom(2 * WRITE_BATCH_BYTES))
    await writer.backpressure()
    crashed = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASHING_UPLOAD, str(local.root)
    )
    assert await crashed.wait() == 0
    left = [d for d in local.tmp_root.iterdir() if d != local.tmp_dir]
    assert len(left) == 1 and any(p.name.startswith("upload-") for p in left[0].iterdir())

    other = LocalBlobStore(local.root)  # a second start beside the running one
    removed = await other.remove_stale_temp_files()
    other.close()

    assert removed == 1
    assert not left[0].exists()
    assert len(temp_files(local)) == 1, "the live process's upload must survive"
    gone = writer.abort()
    if gone is not None:
        await gone


# A process that starts an upload and dies without cleaning up (os._exit skips it all).
CRASHING_UPLOAD = """
import os, sys
from pathlib import Path
from hostd.local import LocalBlobStore
store = LocalBlobStore(Path(sys.argv[1]))
writer = store.writer()
writer._write([b"half an upload"])
os._exit(0)
"""


@pytest.mark.gen_test
async def test_delete_and_exists(local):
    writer = local.writer()
    writer.write(b"gone soon")
    written = await writer.commit()
    await local.place(written)
    sha = written.sha256

    assert await local.exists(sha)
    assert await local.delete(sha) is True
    assert not await local.exists(sha)
    assert await local.delete(sha) is False
    with pytest.raises(BlobMissing):
        await local.open(sha)


@pytest.mark.gen_test
async def test_a_blob_found_once_is_opened_at_its_first_read_which_still_finds_it_gone(local):
    # A download behind nginx (server.accel_redirect) reads nothing: it opens no file either.
    sha = await placed(local, b"found once")
    (await local.open(sha, 10)).close()
    os.unlink(local.path(sha))  # gone behind the store's back

    reader = await local.open(sha, 10)
    try:
        with pytest.raises(BlobMissing):
            await reader.check()
        with pytest.raises(BlobMissing):
            [chunk async for chunk in reader.chunks(0, 9)]
    finally:
        reader.close()


@pytest.mark.gen_test
async def test_a_blob_deleted_through_the_store_is_missed_at_its_open(local):
    sha = await placed(local, b"found, then deleted")
    (await local.open(sha, 19)).close()

    await local.delete(sha)

    with pytest.raises(BlobMissing):
        await local.open(sha, 19)


@pytest.mark.gen_test
async def test_a_blob_found_at_one_size_is_opened_at_once_for_another(local):
    sha = await placed(local, b"ten bytes!")
    (await local.open(sha, 10)).close()

    with pytest.raises(BlobDamaged):
        await local.open(sha, 11)


@pytest.mark.parametrize("bad", ["../etc/passwd", "a" * 63, "A" * 64, "g" * 64])
def test_paths_come_only_from_hex_digests(local, bad):
    with pytest.raises(ValueError):
        local.path(bad)


def test_public_hash_candidates_are_url_safe_prefixes_of_12_to_16():
    sha = hashlib.sha256(b"x").hexdigest()

    candidates = public_hash_candidates(sha)

    assert [len(c) for c in candidates] == [12, 13, 14, 15, 16]
    assert all(candidates[-1].startswith(c) for c in candidates)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", c) for c in candidates)
    assert public_hash_candidates(sha) == candidates


# -- a full disk (see CrampedBlobStore): the temp file goes, whatever closing it raises ----


@pytest.mark.gen_test
async def test_placing_bytes_the_disk_refuses_leaves_no_temp_file(tmp_path):
    cramped = CrampedBlobStore(tmp_path / "blobs", room=0)
    writer = cramped.writer()
    writer.write(b"small enough to wait in the file's buffer")
    written = await writer.commit()  # the hash is known; nothing has touched the disk yet

    with pytest.raises(OSError) as refused:
        await cramped.place(written)
    await cramped.discard(written)

    assert refused.value.errno == errno.ENOSPC
    assert temp_files(cramped) == []
    assert not await cramped.exists(written.sha256)
    cramped.close()


@pytest.mark.gen_test
async def test_aborting_after_the_disk_filled_midway_removes_the_temp_file(tmp_path):
    # The disk has room for all but the last 1,000 bytes of two batches: a later write
    # fails midway, and the writer says so when the body is next held back.
    cramped = CrampedBlobStore(tmp_path / "blobs", room=2 * WRITE_BATCH_BYTES - 1000)
    writer = cramped.writer()
    refused = None

    for _ in range(16):
        writer.write(os.urandom(WRITE_BATCH_BYTES))
        try:
            await (writer.backpressure() or asyncio.sleep(0))
        except OSError as exc:
            refused = exc
            break
    gone = writer.abort()  # raises nothing: the upload is being dropped anyway
    if gone is not None:
        await gone

    assert refused is not None and refused.errno == errno.ENOSPC
    assert temp_files(cramped) == []


@pytest.mark.gen_test
async def test_an_adopted_file_is_placed_without_a_copy_and_left_where_it_was(local, tmp_path):
    finished = tmp_path / "partial"
    finished.write_bytes(b"resumed " * 5000)

    written = await local.adopt(finished)
    await local.place(written)

    assert written.sha256 == hashlib.sha256(b"resumed " * 5000).hexdigest()
    assert written.size_bytes == 40_000 and written.head == (b"resumed " * 5000)[:8192]
    assert await read_all(local, written.sha256) == b"resumed " * 5000
    assert local.path(written.sha256).stat().st_ino == finished.stat().st_ino  # a link
    assert oct(local.path(written.sha256).stat().st_mode & 0o777) == "0o640"
    assert temp_files(local) == []


@pytest.mark.gen_test
async def test_a_discarded_adopted_file_leaves_the_file_and_no_temp_file(local, tmp_path):
    finished = tmp_path / "partial"
    finished.write_bytes(b"kept")

    await local.discard(await local.adopt(finished))

    assert finished.read_bytes() == b"kept"
    assert temp_files(local) == []
