"""An upload's life across the database and the store: bytes before rows, rows before
bytes on the way out, and `hostd gc` for what a crash leaves."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import time
import tracemalloc

import pytest
from helpers import bytes_under, hold_writer, store_upload

from hostd import db as queries
from hostd import uploads
from hostd.storage import store_from


@pytest.mark.gen_test(timeout=60)
async def test_deleting_a_blob_while_its_bytes_arrive_again_never_loses_them(db, store, thumbs):
    user = await queries.insert_user(db, name="alice", password_hash="unused")
    data = b"the same bytes, deleted and uploaded at once"
    sha = hashlib.sha256(data).hexdigest()

    for delay in [0, 0, 0.0005, 0.001, 0.002, 0.003, 0.005] * 3:
        _, mine = await store_upload(db, store, data, user.id)

        async def upload_again(delay=delay):
            await asyncio.sleep(delay)
            return await store_upload(db, store, data)

        deleted, (_, again) = await asyncio.gather(
            uploads.delete(db, store, thumbs, upload_id=mine.id, user_id=user.id),
            upload_again(),
        )

        assert deleted is True
        assert await queries.get_blob_by_sha256(db, sha) is not None
        assert await store.exists(sha), "a registered blob lost its bytes"
        await uploads.take_down(db, store, thumbs, sha256=sha)  # the next round from nothing
        assert not await store.exists(sha)


@pytest.mark.gen_test
async def test_a_deleted_blob_is_not_found_again_though_it_was_looked_up(db, store, thumbs):
    user = await queries.insert_user(db, name="alice", password_hash="unused")
    blob, upload = await store_upload(db, store, b"looked up, then deleted", user.id)
    assert await queries.get_blob(db, blob.hash) == blob  # now remembered

    await uploads.delete(db, store, thumbs, upload_id=upload.id, user_id=user.id)

    assert await queries.get_blob(db, blob.hash) is None
    assert not await store.exists(blob.sha256)


@pytest.mark.gen_test(timeout=30)
async def test_bytes_are_not_removed_under_an_upload_of_the_same_bytes_waiting_for_its_row(
    db, store, thumbs
):
    user = await queries.insert_user(db, name="alice", password_hash="unused")
    data = b"deleted, and uploaded again before the deletion removed the bytes"
    _, mine = await store_upload(db, store, data, user.id)
    removal = await queries.delete_upload(db, upload_id=mine.id, user_id=user.id)
    assert removal.blob_gone  # committed: the bytes are next to go

    release, busy = await hold_writer(db)
    again = asyncio.ensure_future(store_upload(db, store, data))  # placed; its row waits
    for _ in range(250):
        if db.waiting:
            break
        await asyncio.sleep(0.02)
    removing = asyncio.ensure_future(uploads.remove_bytes(db, store, thumbs, removal))
    await asyncio.sleep(0.1)  # the removal has had every chance to act
    release()
    await asyncio.gather(busy, again, removing)

    assert await queries.get_blob_by_sha256(db, removal.sha256) is not None
    assert await store.exists(removal.sha256), "a registered blob lost its bytes"


# -- the same race across processes: instances on one store, or `hostd file rm` -----------


@pytest.fixture
def other_store(config, io_loop):
    """A second store on the test's data dir, as another hostd process holds it: its own
    guards, so only the database stands between its deletions and this process's uploads."""
    other = store_from(config)
    yield other
    other.close()


@pytest.mark.gen_test
async def test_bytes_another_process_deletes_as_they_are_recorded_withdraw_the_upload(
    db, store, thumbs, other_process, other_store, monkeypatch
):
    user = await queries.insert_user(db, name="alice", password_hash="unused")
    data = b"deleted on one instance, uploaded again on another"
    sha = hashlib.sha256(data).hexdigest()
    _, first = await store_upload(db, store, data, user.id)
    place = store.place

    async def place_then_deleted_elsewhere(written):
        were_there = await place(written)  # found there: nothing written
        # Meanwhile the other process deletes the first upload: its row, then (no row
        # pointing at them now) the very bytes this upload just found.
        await uploads.delete(
            other_process, other_store, thumbs, upload_id=first.id, user_id=user.id
        )
        return were_there

    monkeypatch.setattr(store, "place", place_then_deleted_elsewhere)

    with pytest.raises(uploads.DeletedMeanwhile):
        await store_upload(db, store, data)

    assert await queries.all_uploads(db) == []
    assert await queries.get_blob_by_sha256(db, sha) is None
    assert not await store.exists(sha)
    assert (await uploads.collect_garbage(db, store, thumbs)).missing == []


@pytest.mark.gen_test
async def test_an_upload_waits_out_another_process_removing_its_bytes_and_keeps_them(
    db, store, thumbs, other_process, other_store
):
    user = await queries.insert_user(db, name="alice", password_hash="unused")
    data = b"the other process is deleting these as they come again"
    sha = hashlib.sha256(data).hexdigest()
    _, first = await store_upload(db, store, data, user.id)
    # The other process has committed the deletion of the rows, not yet dealt with the bytes.
    removal = await queries.delete_upload(other_process, upload_id=first.id, user_id=user.id)

    again = asyncio.ensure_future(store_upload(db, store, data))
    await asyncio.sleep(0.3)
    waiting = not again.done()
    await uploads.remove_bytes(other_process, other_store, thumbs, removal)
    _, upload = await asyncio.wait_for(again, 10)

    assert waiting, "the upload did not wait for the removal to settle"
    assert [u.id for u in await queries.all_uploads(db)] == [upload.id]
    assert await store.exists(sha)


def age(store, sha256: str, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(store.path(sha256), (then, then))


async def stray_bytes(store, data: bytes) -> str:
    """Bytes in the store that no row points at, as a crash between placing and recording
    leaves them."""
    writer = store.writer()
    writer.write(data)
    written = await writer.commit()
    await store.place(written)
    return written.sha256


@pytest.mark.gen_test
async def test_gc_removes_old_bytes_no_row_points_at_and_keeps_the_rest(db, store, thumbs):
    kept, _ = await store_upload(db, store, b"recorded")
    old = await stray_bytes(store, b"a crash left these an hour ago")
    young = await stray_bytes(store, b"an upload may be recording these right now")
    age(store, old, 2 * uploads.GC_GRACE_SECONDS)
    age(store, kept.sha256, 2 * uploads.GC_GRACE_SECONDS)

    found = await uploads.collect_garbage(db, store, thumbs)

    assert found.removed == [old]
    assert found.young == 1
    assert found.missing == []
    assert not await store.exists(old)
    assert await store.exists(young) and await store.exists(kept.sha256)


@pytest.mark.gen_test
async def test_gc_reports_rows_whose_bytes_are_gone(db, store, thumbs):
    blob, _ = await store_upload(db, store, b"its bytes vanish behind hostd's back")
    os.unlink(store.path(blob.sha256))

    found = await uploads.collect_garbage(db, store, thumbs)

    assert found.missing == [blob.sha256]
    assert found.removed == []


@pytest.mark.gen_test
async def test_gc_reports_rows_whose_bytes_are_not_the_size_recorded(db, store, thumbs):
    cut, _ = await store_upload(db, store, b"a repair cuts these short")
    grown, _ = await store_upload(db, store, b"a restore writes more than these")
    whole, _ = await store_upload(db, store, b"these stay as they were")
    os.truncate(store.path(cut.sha256), 5)
    store.path(grown.sha256).write_bytes(b"a restore writes more than these, and more")

    found = await uploads.collect_garbage(db, store, thumbs)

    assert found.damaged == sorted([cut.sha256, grown.sha256])
    assert whole.sha256 not in found.damaged
    assert found.missing == [] and found.removed == []
    assert await store.exists(cut.sha256), "reported, not removed"


@pytest.mark.gen_test(timeout=120)
async def test_gc_holds_one_group_of_the_store_at_a_time(db, store, thumbs):
    """The listing of the whole store, held at once, took 330 bytes a file: with a million
    files and every row's size beside it, some 500 MB of a small server, every six hours."""
    for _ in range(16_384):  # stray bytes, young: counted, kept
        path = store.path(secrets.token_hex(32))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    tracemalloc.start()
    try:
        found = await uploads.collect_garbage(db, store, thumbs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert found.young == 16_384
    assert peak < 1024 * 1024  # the whole listing at once: 5.4 MB


@pytest.mark.gen_test
async def test_the_sizes_of_a_group_are_those_of_the_blobs_whose_sha256_starts_with_it(db, store):
    blobs = {
        prefix: (await store_upload(db, store, bytes_under(prefix)[0]))[0]
        for prefix in ("0f", "10", "ff")
    }

    groups = {
        prefix: await queries.blob_sizes(db, prefix=prefix) for prefix in ("0f", "10", "fe", "ff")
    }

    assert groups["0f"] == {blobs["0f"].sha256: blobs["0f"].size_bytes}
    assert groups["10"] == {blobs["10"].sha256: blobs["10"].size_bytes}
    assert groups["fe"] == {}
    assert groups["ff"] == {blobs["ff"].sha256: blobs["ff"].size_bytes}
    assert await queries.blob_sizes(db) == {b.sha256: b.size_bytes for b in blobs.values()}


@pytest.mark.gen_test
async def test_the_times_of_blobs_are_those_of_a_group_or_those_recorded_since(db):
    times = {"0f": 1_000, "10": 2_000, "ff": 3_000}
    shas = {}
    for prefix, at in times.items():
        _, shas[prefix] = bytes_under(prefix)
        await queries.register_upload(
            db,
            sha256=shas[prefix],
            size_bytes=1,
            content_type="application/octet-stream",
            original_name="f.bin",
            at=at,
        )

    assert await queries.blob_times(db, prefix="10") == {shas["10"]: 2_000}
    assert await queries.blob_times(db, since=2_000) == {shas["10"]: 2_000, shas["ff"]: 3_000}
    assert await queries.blob_times(db, prefix="0f", since=2_000) == {}
    assert await queries.blob_times(db) == {shas[p]: at for p, at in times.items()}


@pytest.mark.gen_test
async def test_gc_verify_finds_bytes_changed_at_the_same_size(db, store, thumbs):
    flipped, _ = await store_upload(db, store, b"a bit flips on the disk " * 50_000)
    whole, _ = await store_upload(db, store, b"these stay as they were " * 50_000)
    tiny = (await store_upload(db, store, b"x"))[0]
    path = store.path(flipped.sha256)
    data = bytearray(path.read_bytes())
    data[700_000] ^= 0x01
    path.write_bytes(bytes(data))
    store.hot.drop(flipped.sha256)

    quick = await uploads.collect_garbage(db, store, thumbs)
    verified = await uploads.collect_garbage(db, store, thumbs, verify=True)

    assert quick.damaged == [], "the size is the same: only reading tells"
    assert verified.damaged == [flipped.sha256]
    assert whole.sha256 not in verified.damaged and tiny.sha256 not in verified.damaged
