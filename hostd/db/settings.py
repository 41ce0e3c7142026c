"""Settings every process on the database must agree on, recorded by the first to start."""

from __future__ import annotations

import sqlite3

from hostd.db.blobs import _one
from hostd.db.core import Database

COOKIE_SECRET = "cookie_secret"  # an Argon2 hash of the secret that signs cookies


async def record_setting(db: Database, *, name: str, value: str, replace: bool = False) -> str:
    """The value recorded under `name`: `value` when none was (or with `replace`), else the
    one recorded before, which stays. Processes starting together record one between them."""

    def work(conn: sqlite3.Connection) -> str:
        conflict = "DO UPDATE SET value = excluded.value" if replace else "DO NOTHING"
        conn.execute(
            f"INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) {conflict}",
            (name, value),
        )
        row = _one(conn, "SELECT value FROM settings WHERE name = ?", (name,))
        assert row is not None
        return str(row[0])

    return await db.write(work)


async def delete_setting(db: Database, *, name: str) -> None:
    await db.write(lambda conn: conn.execute("DELETE FROM settings WHERE name = ?", (name,)))
