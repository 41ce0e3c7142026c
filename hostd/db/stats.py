"""Figures for `hostd stats`: what is stored, what deduplication saves, who uploads."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from hostd.db.core import Database

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

    def work(conn: sqlite3.Connection) -> Stats:
        uploads, uploaded_bytes = conn.execute(
            """
            SELECT count(*), coalesce(sum(blobs.size_bytes), 0)
            FROM uploads JOIN blobs ON blobs.sha256 = uploads.sha256
            """
        ).fetchone()
        blobs, stored_bytes = conn.execute(
            "SELECT count(*), coalesce(sum(size_bytes), 0) FROM blobs"
        ).fetchone()
        users, disabled = conn.execute("SELECT count(*), count(disabled_at) FROM users").fetchone()
        (bans,) = conn.execute("SELECT count(*) FROM bans").fetchone()
        counted = dict(
            conn.execute(
                """
                SELECT created_at / ? * ? AS day, count(*) FROM uploads
                WHERE created_at >= ? AND created_at < ? GROUP BY day
                """,
                (DAY_SECONDS, DAY_SECONDS, first_day, first_day + days * DAY_SECONDS),
            ).fetchall()
        )
        per_day = [
            (day, counted.get(day, 0))
            for day in range(first_day, first_day + days * DAY_SECONDS, DAY_SECONDS)
        ]
        uploaders = conn.execute(
            """
            SELECT users.name, count(*) AS uploads, sum(blobs.size_bytes) AS bytes
            FROM uploads
            JOIN blobs ON blobs.sha256 = uploads.sha256
            LEFT JOIN users ON users.id = uploads.user_id
            GROUP BY uploads.user_id
            ORDER BY uploads DESC, bytes DESC, users.name
            LIMIT ?
            """,
            (top,),
        ).fetchall()
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

    def in_one_snapshot(conn: sqlite3.Connection) -> Stats:
        # One read transaction, so that the figures agree (savings never below zero).
        conn.execute("BEGIN")
        try:
            return work(conn)
        finally:
            conn.execute("ROLLBACK")

    return await db.read(in_one_snapshot)


@dataclass(frozen=True)
class Stored:
    """What the store holds, for /metrics: cheaper than get_stats (two scans, no joins)."""

    uploads: int
    files: int  # distinct blobs
    bytes: int  # each blob once


async def get_stored(db: Database) -> Stored:
    def work(conn: sqlite3.Connection) -> Stored:
        conn.execute("BEGIN")  # one snapshot for the two counts
        try:
            (uploads,) = conn.execute("SELECT count(*) FROM uploads").fetchone()
            files, size = conn.execute(
                "SELECT count(*), coalesce(sum(size_bytes), 0) FROM blobs"
            ).fetchone()
        finally:
            conn.execute("ROLLBACK")
        return Stored(uploads=uploads, files=files, bytes=size)

    return await db.read(work)
