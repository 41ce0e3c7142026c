"""Figures for `hostd stats`: what is stored, what deduplication saves, who uploads."""

from __future__ import annotations

from dataclasses import dataclass

from hostd.db.core import Database, Row, Tx

DAY_SECONDS = 86400


@dataclass(frozen=True)
class Uploader:
    name: str | None  # None: the anonymous uploads, together
    uploads: int
    bytes: int  # the size of each upload, counted once per upload


@dataclass(frozen=True)
class Stats:
    uploads: int
    blobs: int
    stored_bytes: int  # each distinct blob once: what the store holds
    uploaded_bytes: int  # each upload's size: what the store would hold without dedup
    users: int
    disabled_users: int
    bans: int
    per_day: list[tuple[int, int]]  # (UTC day's first second, uploads), oldest first
    top_uploaders: list[Uploader]

    @property
    def dedup_saved_bytes(self) -> int:
        return self.uploaded_bytes - self.stored_bytes


async def get_stats(db: Database, *, now: int, days: int = 7, top: int = 10) -> Stats:
    """The figures as of `now` (epoch seconds): uploads per UTC day for the last `days` days
    (today included), and the `top` uploaders by uploads, anonymous uploads as one."""
    first_day = (now // DAY_SECONDS - days + 1) * DAY_SECONDS

    async def work(tx: Tx) -> Stats:
        # sum() is numeric on PostgreSQL: cast back to the integer both dialects give.
        uploads, uploaded_bytes = await _row(
            tx,
            """
            SELECT count(*), CAST(coalesce(sum(blobs.size_bytes), 0) AS BIGINT)
            FROM uploads JOIN blobs ON blobs.sha256 = uploads.sha256
            """,
        )
        blobs, stored_bytes = await _row(
            tx, "SELECT count(*), CAST(coalesce(sum(size_bytes), 0) AS BIGINT) FROM blobs"
        )
        users, disabled = await _row(tx, "SELECT count(*), count(disabled_at) FROM users")
        bans = await tx.fetchval("SELECT count(*) FROM bans")
        days_counted = await tx.fetchall(
            """
            SELECT created_at / ? * ? AS day, count(*) FROM uploads
            WHERE created_at >= ? AND created_at < ? GROUP BY day
            """,
            (DAY_SECONDS, DAY_SECONDS, first_day, first_day + days * DAY_SECONDS),
        )
        counted: dict[int, int] = {day: count for day, count in days_counted}
        per_day = [
            (day, counted.get(day, 0))
            for day in range(first_day, first_day + days * DAY_SECONDS, DAY_SECONDS)
        ]
        uploaders = await tx.fetchall(
            """
            SELECT users.name, count(*) AS uploads,
                   CAST(sum(blobs.size_bytes) AS BIGINT) AS bytes
            FROM uploads
            JOIN blobs ON blobs.sha256 = uploads.sha256
            LEFT JOIN users ON users.id = uploads.user_id
            GROUP BY uploads.user_id, users.name
            ORDER BY uploads DESC, bytes DESC, users.name
            LIMIT ?
            """,
            (top,),
        )
        return Stats(
            uploads=uploads,
            blobs=blobs,
            stored_bytes=stored_bytes,
            uploaded_bytes=uploaded_bytes,
            users=users,
            disabled_users=disabled,
            bans=bans,
            per_day=per_day,
            top_uploaders=[Uploader(name, count, size) for name, count, size in uploaders],
        )

    # One read transaction, so that the figures agree (savings never below zero).
    return await db.read(work, snapshot=True)


async def _row(tx: Tx, sql: str) -> Row:
    row = await tx.fetchone(sql)
    assert row is not None  # an aggregate without GROUP BY gives one row
    return row


@dataclass(frozen=True)
class Stored:
    """What the store holds, for /metrics: cheaper than get_stats (two scans, no joins)."""

    uploads: int
    files: int  # distinct blobs
    bytes: int  # each blob once


async def get_stored(db: Database) -> Stored:
    async def work(tx: Tx) -> Stored:
        uploads = await tx.fetchval("SELECT count(*) FROM uploads")
        files, size = await _row(tx, "SELECT count(*), coalesce(sum(size_bytes), 0) FROM blobs")
        return Stored(uploads=int(uploads), files=int(files), bytes=int(size))

    return await db.read(work, snapshot=True)  # one snapshot for the two counts
