"""Settings every process on the database must agree on, recorded by the first to start."""

from __future__ import annotations

from hostd.db.core import Database, Tx

COOKIE_SECRET = "cookie_secret"  # an Argon2 hash of the secret that signs cookies


async def record_setting(db: Database, *, name: str, value: str, replace: bool = False) -> str:
    """The value recorded under `name`: `value` when none was (or with `replace`), else the
    one recorded before, which stays. Processes starting together record one between them."""

    async def work(tx: Tx) -> str:
        conflict = "DO UPDATE SET value = excluded.value" if replace else "DO NOTHING"
        await tx.execute(
            f"INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) {conflict}",
            (name, value),
        )
        recorded = await tx.fetchval("SELECT value FROM settings WHERE name = ?", (name,))
        return str(recorded)

    return await db.write(work)


async def delete_setting(db: Database, *, name: str) -> None:
    await db.write(lambda tx: tx.execute("DELETE FROM settings WHERE name = ?", (name,)))
