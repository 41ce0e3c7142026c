"""The database: migrations, pragmas, and recording uploads."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from hostd import db as queries
from hostd.db import Database, latest_version
from hostd.storage import short_hash_candidates


@pytest.mark.gen_test
async def test_a_fresh_database_reaches_the_latest_version(db):
    async with db.conn.execute("PRAGMA user_version") as cur:
        assert (await cur.fetchone())[0] == latest_version()


@pytest.mark.gen_test
async def test_migrating_twice_is_a_no_op(db):
    async with db.conn.execute("SELECT sql FROM sqlite_master ORDER BY name") as cur:
        before = await cur.fetchall()

    version = await db.migrate()

    async with db.conn.execute("SELECT sql FROM sqlite_master ORDER BY name") as cur:
        assert await cur.fetchall() == before
    assert version == latest_version()


@pytest.mark.gen_test
async def test_reopening_keeps_the_data(db, config):
    await queries.register_upload(
        db, sha256="a" * 64, size_bytes=1, content_type="text/plain", original_name="a"
    )

    again = await Database.open(config.db_path)
    try:
        assert await queries.get_blob_by_sha256(again, "a" * 64) is not None
    finally:
        await again.close()


@pytest.mark.gen_test
async def test_pragmas_are_set(db):
    async def pragma(name):
        async with db.conn.execute(f"PRAGMA {name}") as cur:
            return (await cur.fetchone())[0]

    assert await pragma("journal_mode") == "wal"
    assert await pragma("foreign_keys") == 1
    assert await pragma("busy_timeout") == 5000


@pytest.mark.gen_test
async def test_a_failed_transaction_rolls_back(db):
    with pytest.raises(RuntimeError):
        async with db.transaction() as conn:
            await conn.execute(
                "INSERT INTO blobs VALUES (?, 'abcdefghijkl', 1, 'text/plain', 0)", ("b" * 64,)
            )
            raise RuntimeError("boom")

    assert await queries.get_blob(db, "abcdefghijkl") is None


@pytest.mark.gen_test
async def test_same_bytes_one_blob_two_registrations(db):
    sha = hashlib.sha256(b"x").hexdigest()

    first, _ = await queries.register_upload(
        db, sha256=sha, size_bytes=1, content_type="text/plain", original_name="a.txt"
    )
    second, _ = await queries.register_upload(
        db, sha256=sha, size_bytes=1, content_type="text/plain", original_name="b.txt"
    )

    assert first == second
    assert first.hash == short_hash_candidates(sha)[0]
    assert await queries.count_uploads(db, sha256=sha) == 2


@pytest.mark.gen_test
async def test_concurrent_registrations_are_serialised(db):
    shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(30)]

    results = await asyncio.gather(
        *(
            queries.register_upload(
                db, sha256=sha, size_bytes=1, content_type="text/plain", original_name="n"
            )
            for sha in shas * 2
        )
    )

    assert len({blob.hash for blob, _ in results}) == 30


@pytest.mark.gen_test
async def test_a_taken_prefix_moves_the_new_blob_to_a_longer_hash(db):
    sha = hashlib.sha256(b"newcomer").hexdigest()
    candidates = short_hash_candidates(sha)
    for i, taken in enumerate(candidates[:3]):
        async with db.transaction() as conn:
            await conn.execute(
                "INSERT INTO blobs VALUES (?, ?, 1, 'text/plain', 0)", (f"{i}" * 64, taken)
            )

    blob, _ = await queries.register_upload(
        db, sha256=sha, size_bytes=1, content_type="text/plain", original_name="n"
    )

    assert blob.hash == candidates[3]
    assert len(blob.hash) == 15


@pytest.mark.gen_test
async def test_all_lengths_taken_is_an_error_not_a_wrong_file(db):
    sha = hashlib.sha256(b"unlucky").hexdigest()
    for i, taken in enumerate(short_hash_candidates(sha)):
        async with db.transaction() as conn:
            await conn.execute(
                "INSERT INTO blobs VALUES (?, ?, 1, 'text/plain', 0)", (f"{i}" * 64, taken)
            )

    with pytest.raises(queries.HashSpaceExhausted):
        await queries.register_upload(
            db, sha256=sha, size_bytes=1, content_type="text/plain", original_name="n"
        )


async def store_upload(db, store, data: bytes, user_id: int | None = None):
    """What the upload handler does: write, commit, then place and register together."""
    writer = store.writer()
    writer.write(data)
    written = await writer.commit()
    try:
        return await queries.register_upload(
            db,
            sha256=written.sha256,
            size_bytes=written.size_bytes,
            content_type="application/octet-stream",
            original_name="contested.bin",
            user_id=user_id,
            place=lambda: store.place(written),
        )
    finally:
        store.discard(written)


@pytest.mark.gen_test(timeout=60)
async def test_deleting_a_blob_while_its_bytes_arrive_again_never_loses_them(db, store):
    user = await queries.insert_user(db, name="alice", password_hash="unused")
    data = b"the same bytes, deleted and uploaded at once"
    sha = hashlib.sha256(data).hexdigest()

    for delay in [0, 0, 0.0005, 0.001, 0.002, 0.003, 0.005] * 3:
        _, mine = await store_upload(db, store, data, user.id)

        async def upload_again(delay=delay):
            await asyncio.sleep(delay)
            return await store_upload(db, store, data)

        async def remove_blob(sha256: str) -> None:
            store.delete(sha256)

        deleted, (_, again) = await asyncio.gather(
            queries.delete_upload(db, upload_id=mine.id, user_id=user.id, remove_blob=remove_blob),
            upload_again(),
        )

        assert deleted is True
        assert await queries.get_blob_by_sha256(db, sha) is not None
        assert store.exists(sha), "a registered blob lost its bytes"
        async with db.transaction() as conn:  # start the next round from nothing
            await conn.execute("DELETE FROM uploads WHERE id = ?", (again.id,))
            await conn.execute("DELETE FROM blobs WHERE sha256 = ?", (sha,))
        store.delete(sha)


@pytest.mark.gen_test
async def test_a_deleted_blob_is_not_found_again_though_it_was_looked_up(db, store):
    user = await queries.insert_user(db, name="alice", password_hash="unused")
    blob, upload = await store_upload(db, store, b"looked up, then deleted", user.id)
    assert await queries.get_blob(db, blob.hash) == blob  # now remembered

    async def remove_blob(sha256: str) -> None:
        store.delete(sha256)

    await queries.delete_upload(db, upload_id=upload.id, user_id=user.id, remove_blob=remove_blob)

    assert await queries.get_blob(db, blob.hash) is None
