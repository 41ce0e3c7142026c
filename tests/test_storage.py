"""The blob store: temp file, hash, fsync, rename; dedup; cleaning up."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import re

import pytest
from conftest import CrampedBlobStore

from hostd.storage import WRITE_BATCH_BYTES, LocalBlobStore, short_hash_candidates


@pytest.fixture
def local(tmp_path):
    return LocalBlobStore(tmp_path / "blobs")


@pytest.mark.gen_test
async def test_commit_keeps_the_bytes_out_of_sight_until_placed(local):
    writer = local.writer()
    writer.write(b"hello ")
    writer.write(b"world")

    written = await writer.commit()
    visible_before = local.exists(written.sha256)
    placed = await local.place(written)

    sha = hashlib.sha256(b"hello world").hexdigest()
    assert written.sha256 == sha
    assert written.size_bytes == 11
    assert visible_before is False
    assert placed is True
    assert local.path(sha) == local.root / sha[:2] / sha[2:4] / sha
    assert local.path(sha).read_bytes() == b"hello world"
    assert list(local.tmp_dir.iterdir()) == []


@pytest.mark.gen_test
async def test_identical_bytes_are_stored_once(local):
    placed = []
    for _ in range(2):
        writer = local.writer()
        writer.write(b"same")
        placed.append(await local.place(await writer.commit()))

    assert placed == [True, False]
    assert len([p for p in local.root.rglob("*") if p.is_file()]) == 1
    assert list(local.tmp_dir.iterdir()) == []


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

    assert list(local.tmp_dir.iterdir()) == []


@pytest.mark.gen_test
async def test_a_large_file_goes_to_disk_in_batches_while_it_arrives(local):
    pieces = [os.urandom(64 * 1024) for _ in range(48)]  # 3 MiB
    writer = local.writer()
    waits = 0

    for piece in pieces:
        writer.write(piece)
        behind = writer.backpressure()
        if behind is not None:
            waits += 1
            await behind
    on_disk_before_commit = sum(p.stat().st_size for p in local.tmp_dir.iterdir())
    written = await writer.commit()

    assert waits >= 3 * 1024 * 1024 // WRITE_BATCH_BYTES - 1
    assert 0 < on_disk_before_commit < 3 * 1024 * 1024  # streamed, with a bounded backlog
    assert written.sha256 == hashlib.sha256(b"".join(pieces)).hexdigest()
    assert written.temp.read_bytes() == b"".join(pieces)


@pytest.mark.gen_test
async def test_abort_while_a_batch_is_being_written_removes_the_temp_file(local):
    writer = local.writer()
    writer.write(os.urandom(2 * WRITE_BATCH_BYTES))
    await writer.backpressure()  # one batch is now being written in the worker thread

    gone = writer.abort()
    if gone is not None:
        await gone

    assert list(local.tmp_dir.iterdir()) == []


def test_stale_temp_files_are_removed_at_start(local):
    (local.tmp_dir / "upload-left-by-a-crash").write_bytes(b"crash")
    (local.tmp_dir / "unrelated.txt").write_text("kept")

    removed = LocalBlobStore(local.root).remove_stale_temp_files()

    assert removed == 1
    assert [p.name for p in local.tmp_dir.iterdir()] == ["unrelated.txt"]


@pytest.mark.gen_test
async def test_delete_and_exists(local):
    writer = local.writer()
    writer.write(b"gone soon")
    written = await writer.commit()
    await local.place(written)
    sha = written.sha256

    assert local.exists(sha)
    assert local.delete(sha) is True
    assert not local.exists(sha)
    assert local.delete(sha) is False


@pytest.mark.parametrize("bad", ["../etc/passwd", "a" * 63, "A" * 64, "g" * 64])
def test_paths_come_only_from_hex_digests(local, bad):
    with pytest.raises(ValueError):
        local.path(bad)


def test_short_hash_candidates_are_url_safe_prefixes_of_12_to_16():
    sha = hashlib.sha256(b"x").hexdigest()

    candidates = short_hash_candidates(sha)

    assert [len(c) for c in candidates] == [12, 13, 14, 15, 16]
    assert all(candidates[-1].startswith(c) for c in candidates)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", c) for c in candidates)
    assert short_hash_candidates(sha) == candidates


# -- a full disk (see CrampedBlobStore): the temp file goes, whatever closing it raises ----


@pytest.mark.gen_test
async def test_a_commit_the_disk_refuses_leaves_no_temp_file(tmp_path):
    cramped = CrampedBlobStore(tmp_path / "blobs", room=0)
    writer = cramped.writer()
    writer.write(b"small enough to wait in the file's buffer")

    with pytest.raises(OSError) as refused:
        await writer.commit()

    assert refused.value.errno == errno.ENOSPC
    assert list(cramped.tmp_dir.iterdir()) == []


@pytest.mark.gen_test
async def test_aborting_after_the_disk_filled_midway_removes_the_temp_file(tmp_path):
    # The second batch's write fits but for its last 1,000 bytes, which the file buffers;
    # the next write fails, and so does closing the file.
    cramped = CrampedBlobStore(tmp_path / "blobs", room=2 * WRITE_BATCH_BYTES - 1000)
    writer = cramped.writer()
    refused = None

    for _ in range(4):
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
    assert list(cramped.tmp_dir.iterdir()) == []
