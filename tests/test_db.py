"""The database: migrations, pragmas, and recording uploads."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
import stat
import threading
import time

import pytest
from helpers import damage_table, hold_writer, until_heard

from hostd import db as queries
from hostd.db import Database, latest_version
from hostd.db.core import POSTGRESQL, SQLITE, migrations
from hostd.db.postgres import dollar_placeholders
from hostd.hashes import public_hash_candidates


async def schema(tx):
    if tx.dialect == "sqlite":
        rows = await tx.fetchall("SELECT sql FROM sqlite_master ORDER BY name")
    else:
        rows = await tx.fetchall(
            """
            SELECT table_name, column_name, data_type FROM information_schema.columns
            WHERE table_schema = 'public' ORDER BY table_name, column_name
            """
        )
        rows += await tx.fetchall(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"
        )
    return [tuple(row) for row in rows]


@pytest.mark.gen_test
async def test_a_fresh_database_reaches_the_latest_version(db):
    assert await db.read(queries.schema_version) == latest_version()


@pytest.mark.gen_test
async def test_migrating_twice_is_a_no_op(db):
    before = await db.read(schema)

    version = await db.migrate()

    assert await db.read(schema) == before
    assert version == latest_version()


@pytest.mark.gen_test
async def test_reopening_keeps_the_data(db, config):
    await queries.register_upload(
        db, sha256="a" * 64, size_bytes=1, content_type="text/plain", original_name="a"
    )

    again = await Database.open_config(config)
    try:
        assert await queries.get_blob_by_sha256(again, "a" * 64) is not None
    finally:
        await again.close()


@pytest.mark.sqlite_only
@pytest.mark.gen_test
async def test_pragmas_are_set_on_both_connections(db):
    """synchronous FULL (2): in WAL mode, NORMAL leaves commits unsynced, so a power loss
    could drop uploads already answered."""

    async def pragmas(tx):
        return [
            await tx.fetchval(f"PRAGMA {name}")
            for name in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")
        ]

    assert await db.read(pragmas) == ["wal", 1, 5000, 2]
    assert await db.write(pragmas) == ["wal", 1, 5000, 2]


@pytest.mark.sqlite_only
@pytest.mark.gen_test
async def test_a_lookup_on_sqlite_needs_no_trip_to_the_readers_thread(db):
    await db.write(insert_blob("a" * 64, "lookupfirst1"))

    async def slow_read(tx):
        time.sleep(0.5)  # noqa: ASYNC251  # runs on the reader's thread: it is busy

    busy = asyncio.ensure_future(db.read(slow_read))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    found = await db.lookup(
        lambda tx: tx.fetchval("SELECT hash FROM blobs WHERE sha256 = ?", ("a" * 64,))
    )
    waited = time.monotonic() - started
    await busy

    assert found == "lookupfirst1"
    assert waited < 0.2


# -- the writer: units of work, batched --------------------------------------------------


def insert_blob(sha256: str, hash: str):
    """A unit of work that adds a bare blob row (a raw row, as no upload can make one
    with a chosen public hash)."""

    async def work(tx):
        await tx.execute(
            "INSERT INTO blobs (sha256, hash, size_bytes, content_type, created_at)"
            " VALUES (?, ?, 1, 'text/plain', 0)",
            (sha256, hash),
        )
        return hash

    return work


@pytest.mark.gen_test
async def test_concurrent_writes_share_commits(db):
    before = db.stats.commits

    results = await asyncio.gather(
        *(db.write(insert_blob(f"{i:064x}", f"hash{i:08d}")) for i in range(200))
    )

    assert results == [f"hash{i:08d}" for i in range(200)]
    commits = db.stats.commits - before
    assert 1 <= commits < 200 / 4, f"{commits} commits for 200 writes"
    for i in (0, 199):
        assert await queries.get_blob(db, f"hash{i:08d}") is not None


@pytest.mark.gen_test
async def test_a_lone_write_is_committed_at_once(db):
    before = db.stats.commits

    await db.write(insert_blob("e" * 64, "lonelonelone"))

    assert db.stats.commits == before + 1
    assert await queries.get_blob(db, "lonelonelone") is not None


@pytest.mark.gen_test
async def test_a_failing_unit_fails_only_its_own_caller(db):
    async def boom(tx):
        await tx.execute(
            "INSERT INTO blobs (sha256, hash, size_bytes, content_type, created_at)"
            " VALUES (?, 'doomeddoomed', 1, 'text/plain', 0)",
            ("d" * 64,),
        )
        raise RuntimeError("boom")

    results = await asyncio.gather(
        db.write(insert_blob("1" * 64, "firstfirst12")),
        db.write(boom),
        db.write(insert_blob("2" * 64, "secondsecond")),
        db.write(insert_blob("1" * 64, "duplicatesha")),  # violates the primary key
        return_exceptions=True,
    )

    assert results[0] == "firstfirst12" and results[2] == "secondsecond"
    assert isinstance(results[1], RuntimeError)
    assert queries.conflicts(results[3], "blobs", "sha256")
    assert await queries.get_blob(db, "doomeddoomed") is None  # its own changes rolled back
    assert await queries.get_blob(db, "firstfirst12") is not None
    assert await queries.get_blob(db, "secondsecond") is not None


@pytest.mark.gen_test
async def test_a_write_cancelled_before_its_turn_never_runs(db):
    release, first = await hold_writer(db)  # the writer is busy with it
    waiting = asyncio.ensure_future(db.write(insert_blob("c" * 64, "cancelledxxx")))
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.sleep(0)  # the cancellation lands while the writer is still busy
    release()
    await first

    with pytest.raises(asyncio.CancelledError):
        await waiting
    await db.write(insert_blob("f" * 64, "once_more123"))  # the writer has gone round again
    assert await queries.get_blob(db, "cancelledxxx") is None


@pytest.mark.sqlite_only
@pytest.mark.gen_test
async def test_on_sqlite_the_next_batch_starts_without_waiting_for_the_ioloop(db):
    """The writer's thread takes what was queued meanwhile as soon as a batch commits: a
    busy IOLoop (parsing other uploads' bodies) does not hold the next commit back."""
    ran = threading.Event()

    async def second(tx):
        ran.set()

    release, first = await hold_writer(db)
    queued = asyncio.ensure_future(db.write(second))
    await asyncio.sleep(0)

    release()
    started_while_the_ioloop_was_busy = ran.wait(5)  # blocks the IOLoop itself

    assert started_while_the_ioloop_was_busy
    await first
    await queued


@pytest.mark.gen_test
async def test_writes_arriving_as_the_writer_falls_idle_all_run(db):
    """Each write either joins the batch under way or starts the writer again: none is
    left queued with no writer to take it."""
    results = []
    for burst in range(60):
        writes = [
            db.write(insert_blob(f"{burst:032x}{i:032x}", f"b{burst:03d}i{i:07d}"))
            for i in range(burst % 4 + 1)
        ]
        results += await asyncio.wait_for(asyncio.gather(*writes), 10)
        await asyncio.sleep(0.0005 * (burst % 3))

    assert len(results) == sum(burst % 4 + 1 for burst in range(60))
    assert db.waiting == 0


@pytest.mark.gen_test
async def test_closing_finishes_what_is_queued(config, database_kind):
    config.data_dir.mkdir(parents=True)
    database = await Database.open_config(config)
    writes = [
        asyncio.ensure_future(database.write(insert_blob(f"{i:064x}", f"queued{i:06d}")))
        for i in range(20)
    ]
    await asyncio.sleep(0)

    await database.close()

    assert all(w.done() and not w.exception() for w in writes)
    again = await Database.open_config(config)
    try:
        assert await queries.get_blob(again, "queued000019") is not None
    finally:
        await again.close()


@pytest.mark.sqlite_only
@pytest.mark.gen_test
async def test_a_new_database_file_is_readable_by_its_owner_alone(config):
    """It holds password, session and key hashes."""
    config.data_dir.mkdir(parents=True)
    database = await Database.open_config(config)
    try:
        await queries.set_quota(database, user_id=1, own=True, quota_bytes=1)  # -wal, -shm
        files = sorted(config.data_dir.glob("hostd.sqlite3*"))
        modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in files}
    finally:
        await database.close()

    assert {"hostd.sqlite3", "hostd.sqlite3-wal", "hostd.sqlite3-shm"} <= set(modes)
    assert set(modes.values()) == {0o600}, modes


@pytest.mark.gen_test
async def test_a_failed_unit_rolls_back_its_own_changes(db):
    async def half_then_fail(tx):
        await tx.execute(
            "INSERT INTO blobs (sha256, hash, size_bytes, content_type, created_at)"
            " VALUES (?, 'abcdefghijkl', 1, 'text/plain', 0)",
            ("b" * 64,),
        )
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await db.write(half_then_fail)

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
    assert first.hash == public_hash_candidates(sha)[0]
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
    candidates = public_hash_candidates(sha)
    for i, taken in enumerate(candidates[:3]):
        await db.write(insert_blob(f"{i}" * 64, taken))

    blob, _ = await queries.register_upload(
        db, sha256=sha, size_bytes=1, content_type="text/plain", original_name="n"
    )

    assert blob.hash == candidates[3]
    assert len(blob.hash) == 15


@pytest.mark.gen_test
async def test_all_lengths_taken_is_an_error_not_a_wrong_file(db):
    sha = hashlib.sha256(b"unlucky").hexdigest()
    for i, taken in enumerate(public_hash_candidates(sha)):
        await db.write(insert_blob(f"{i}" * 64, taken))

    with pytest.raises(queries.HashSpaceExhausted):
        await queries.register_upload(
            db, sha256=sha, size_bytes=1, content_type="text/plain", original_name="n"
        )


# -- the two dialects ------------------------------------------------------------------


def test_both_dialects_have_the_same_migrations():
    sqlite = [number for number, _ in migrations(SQLITE)]
    postgresql = [number for number, _ in migrations(POSTGRESQL)]

    assert sqlite == postgresql, "each SQLite migration needs its PostgreSQL twin"


def test_question_marks_become_numbered_parameters_outside_quotes():
    sql = "SELECT '?', \"a?\" FROM t WHERE a = ? AND b IN (?, ?)"

    assert dollar_placeholders(sql) == "SELECT '?', \"a?\" FROM t WHERE a = $1 AND b IN ($2, $3)"


@pytest.mark.gen_test
async def test_a_unit_that_suspends_on_sqlite_is_an_error_not_a_hang(db):
    async def suspends(tx):
        await asyncio.sleep(0)

    if db.dialect == "sqlite":
        with pytest.raises(RuntimeError, match="suspended"):
            await db.write(suspends)
    else:
        assert await db.write(suspends) is None
    assert await db.write(insert_blob("a" * 64, "afterwards12")) == "afterwards12"


@pytest.mark.gen_test(timeout=60)
async def test_instances_starting_together_migrate_once(postgres):
    url = postgres.new_empty_database()

    opened = await asyncio.gather(*(Database.open(url) for _ in range(3)))
    try:
        versions = [await database.read(queries.schema_version) for database in opened]
        rows = await opened[0].read(lambda tx: tx.fetchval("SELECT count(*) FROM hostd_schema"))
    finally:
        for database in opened:
            await database.close()

    assert versions == [latest_version()] * 3
    assert rows == len(migrations(POSTGRESQL))


def test_postgresqls_full_disk_is_a_full_disk_like_sqlites():
    import asyncpg

    assert queries.is_full(asyncpg.exceptions.DiskFullError("could not extend file"))
    assert not queries.is_full(asyncpg.exceptions.UniqueViolationError("duplicate key"))


# -- what another process changes (db.changes) --------------------------------------------


async def remembered_blob(db, data: bytes, expires_at: int | None = None):
    sha256 = hashlib.sha256(data).hexdigest()
    blob, _ = await queries.register_upload(
        db,
        sha256=sha256,
        size_bytes=len(data),
        content_type="text/plain",
        original_name="a",
        expires_at=expires_at,
    )
    assert await queries.get_blob(db, blob.hash) == blob  # now in memory
    return blob


@pytest.mark.gen_test
async def test_a_blob_another_process_deleted_is_not_served_from_memory(db, other_process):
    blob = await remembered_blob(db, b"deleted elsewhere")

    before = db.changes.notices
    await queries.take_down(other_process, sha256=blob.sha256)
    await until_heard(db, before)

    assert await queries.get_blob(db, blob.hash) is None


@pytest.mark.gen_test
async def test_a_blob_another_process_made_expire_sooner_is_read_again(db, other_process):
    data = b"kept forever, then expiring"
    sha256 = hashlib.sha256(data).hexdigest()
    await queries.register_upload(
        db,
        sha256=sha256,
        size_bytes=len(data),
        content_type="text/plain",
        original_name="forever",
        delete_token_hash="forever-link",
    )
    blob = await remembered_blob(db, data, expires_at=queries.now() + 60)

    before = db.changes.notices
    await queries.delete_by_link(other_process, token_hash="forever-link")
    await until_heard(db, before)
    now = await queries.get_blob(db, blob.hash)

    assert blob.expires_at is None
    assert now is not None and now.expires_at == (await queries.all_uploads(db))[0].expires_at


@pytest.mark.gen_test
async def test_a_blob_another_process_made_live_longer_is_read_again_when_it_looks_expired(
    db, other_process
):
    data = b"expiring, then kept"
    blob = await remembered_blob(db, data, expires_at=queries.now() + 60)
    await queries.register_upload(
        other_process,
        sha256=blob.sha256,
        size_bytes=blob.size_bytes,
        content_type="text/plain",
        original_name="kept",
    )

    later = await queries.get_blob(db, blob.hash, now=queries.now() + 61)

    assert blob.expires_at is not None
    assert later is not None and later.expires_at is None


@pytest.mark.sqlite_only
@pytest.mark.gen_test
async def test_the_change_counter_is_read_once_a_turn_of_the_event_loop(db, config):
    drops = []
    db.changes.subscribe(lambda: drops.append("dropped"))
    db.changes.check()  # read in this turn
    drops.clear()

    # Another process's change (its trigger's bump), committed within this same turn.
    with contextlib.closing(sqlite3.connect(config.db_path, isolation_level=None)) as other:
        other.execute("UPDATE changes SET version = version + 1")
    db.changes.check()  # this turn's read stands
    in_the_same_turn = list(drops)
    await asyncio.sleep(0)  # the next turn: what the next request would see
    db.changes.check()

    assert in_the_same_turn == []
    assert drops == ["dropped"]


@pytest.mark.gen_test
async def test_new_uploads_leave_other_processes_memory_alone(db, other_process):
    blob = await remembered_blob(db, b"remembered")
    seen = []
    db.changes.subscribe(lambda: seen.append("dropped"))
    db.changes.check()
    seen.clear()
    version = await db.read(lambda tx: tx.fetchval("SELECT version FROM changes"))

    for i in range(3):  # new bytes, more of the same, some expiring
        data = b"remembered" if i == 1 else b"other %d" % i
        await queries.register_upload(
            other_process,
            sha256=hashlib.sha256(data).hexdigest(),
            size_bytes=len(data),
            content_type="text/plain",
            original_name="x",
            expires_at=queries.now() + 60 * i,
        )
    db.changes.check()

    assert await db.read(lambda tx: tx.fetchval("SELECT version FROM changes")) == version
    assert seen == []  # (on PostgreSQL: no notice, as the counter did not move)
    assert db.blobs.get(blob.hash) == blob


@pytest.mark.gen_test(timeout=30)
@pytest.mark.postgresql_only
async def test_postgresql_drops_another_process_caches_well_under_a_second(db, other_process):
    """How long "at once" is on PostgreSQL: from one process's commit to the moment the
    other's listener has dropped its caches (the figure the README gives)."""
    delays = []
    dropped_at: list[float] = []
    db.changes.subscribe(lambda: dropped_at.append(time.perf_counter()))
    for i in range(5):
        blob = await remembered_blob(db, b"measured %d" % i)
        dropped_at.clear()
        started = time.perf_counter()  # an upper bound: the commit itself is counted in
        await queries.take_down(other_process, sha256=blob.sha256)
        deadline = time.monotonic() + 10
        while not dropped_at:
            assert time.monotonic() < deadline, "no notice"
            await asyncio.sleep(0.001)
        delays.append(dropped_at[0] - started)
        assert db.blobs.get(blob.hash) is None
    median = sorted(delays)[2]
    print(f"commit to drop: median {median * 1000:.1f} ms, max {max(delays) * 1000:.1f} ms")
    assert median < 0.5  # generously: a few milliseconds on a quiet machine


@pytest.mark.gen_test(timeout=30)
@pytest.mark.postgresql_only
async def test_a_lost_listener_drops_everything_until_it_is_back(db):
    blob = await remembered_blob(db, b"listener lost")
    await db.read(
        lambda tx: tx.fetchval(
            """
            SELECT pg_terminate_backend(pid) FROM pg_stat_activity
            WHERE datname = current_database() AND query LIKE 'LISTEN%'
            """
        )
    )
    deadline = time.monotonic() + 10
    while db.changes.losses == 0:
        assert time.monotonic() < deadline, "the lost connection went unnoticed"
        await asyncio.sleep(0.001)
    assert db.blobs.get(blob.hash) is None
    while db.changes.blind:  # it reconnects
        assert time.monotonic() < deadline, "the listener did not come back"
        await asyncio.sleep(0.01)
    again = await remembered_blob(db, b"listener back")
    before = db.changes.notices
    await queries.take_down(db, sha256=again.sha256)
    await until_heard(db, before)

    assert db.blobs.get(again.hash) is None


@pytest.mark.gen_test(timeout=30)
@pytest.mark.postgresql_only
async def test_this_process_drops_its_caches_before_its_own_change_returns(db):
    """The writer's connection LISTENs too, and PostgreSQL hands a session its own notices
    before the COMMIT's answer: what this process changes is never served from its own
    memory afterwards, without waiting for its listener."""
    drops = []
    db.changes.subscribe(lambda: drops.append("dropped"))
    for i in range(10):
        blob = await remembered_blob(db, b"own change %d" % i)
        drops.clear()

        await db.write(
            lambda tx, sha256=blob.sha256: tx.execute(
                "UPDATE blobs SET expires_at = 1 WHERE sha256 = ?", (sha256,)
            )
        )

        assert drops


@pytest.mark.gen_test
async def test_once_a_statement_finds_the_database_damaged_it_is_unhealthy_and_unwritten(
    tmp_path,
):
    path = tmp_path / "hostd.sqlite3"
    database = await Database.open(path)
    await queries.insert_ban(database, sha256="a" * 64, reason="spam")
    await database.close()
    damage_table(path, "bans")
    database = await Database.open(path)  # as the CLI opens it: no pages checked
    try:
        healthy_before = await database.healthy()
        with pytest.raises(queries.Damaged) as read:  # a 503 to a request, one log line
            await queries.list_bans(database)
        with pytest.raises(queries.Damaged) as unhealthy:
            await database.healthy()
        with pytest.raises(queries.Damaged):  # no more writes into the damage
            await queries.insert_ban(database, sha256="b" * 64, reason="spam")
    finally:
        await database.close()

    assert healthy_before is None
    assert isinstance(read.value, queries.Unavailable)
    assert isinstance(read.value.__cause__, sqlite3.DatabaseError)
    assert str(unhealthy.value) == "database disk image is malformed"
