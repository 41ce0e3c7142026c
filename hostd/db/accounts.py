"""Users, their browser sessions and their API keys."""

from __future__ import annotations

from dataclasses import dataclass

from hostd.db.blobs import row_as
from hostd.db.core import Database, Tx, conflicts, now


@dataclass(frozen=True)
class User:
    id: int
    name: str
    password_hash: str
    created_at: int
    disabled_at: int | None = None  # `hostd user disable`: no sign-in, sessions or keys
    # Storage (0007_quotas.sql): see hostd.limits.quota_of for the quota that applies.
    has_own_quota: int = 0
    quota_bytes: int | None = None
    used_bytes: int = 0


class NameTaken(Exception):
    """An account with this name (in any letter case) exists already."""


async def insert_user(db: Database, *, name: str, password_hash: str) -> User:
    async def work(tx: Tx) -> User:
        try:
            row = await tx.fetchone(
                "INSERT INTO users (name, password_hash, created_at) VALUES (?, ?, ?) RETURNING *",
                (name, password_hash, now()),
            )
        except Exception as exc:
            if conflicts(exc, "users", "name"):
                raise NameTaken(name) from exc
            raise
        assert row is not None
        return row_as(User, row)

    return await db.write(work)


async def get_user(db: Database, *, name: str | None = None, id: int | None = None) -> User | None:
    """By name (any letter case) or by id."""
    column, value = ("name", name) if name is not None else ("id", id)
    row = await db.lookup(
        lambda tx: tx.fetchone(f"SELECT * FROM users WHERE {column} = ?", (value,))
    )
    return row_as(User, row) if row else None


async def list_users(db: Database) -> list[tuple[User, int, int]]:
    """Every user with their count of uploads and of usable keys."""
    rows = await db.read(
        lambda tx: tx.fetchall(
            """
            SELECT users.*,
                   (SELECT count(*) FROM uploads WHERE uploads.user_id = users.id) AS uploads,
                   (SELECT count(*) FROM api_keys
                     WHERE api_keys.user_id = users.id AND invalidated_at IS NULL) AS keys
            FROM users ORDER BY users.name
            """
        )
    )
    users = []
    for row in rows:
        fields = dict(zip(row.keys(), row, strict=True))
        uploads, keys = fields.pop("uploads"), fields.pop("keys")
        users.append((User(**fields), uploads, keys))
    return users


async def update_password(
    db: Database, *, user_id: int, password_hash: str, end_sessions: bool
) -> None:
    async def work(tx: Tx) -> None:
        await tx.execute(
            "UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id)
        )
        if end_sessions:
            await tx.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,))

    await db.write(work)


async def insert_session(db: Database, *, token_hash: str, user_id: int) -> None:
    await db.write(
        lambda tx: tx.execute(
            "INSERT INTO sessions (token_hash, user_id, created_at) VALUES (?, ?, ?)",
            (token_hash, user_id, now()),
        )
    )


async def get_session_user(db: Database, *, token_hash: str) -> User | None:
    row = await db.read(
        lambda tx: tx.fetchone(
            """
            SELECT users.* FROM sessions JOIN users ON users.id = sessions.user_id
            WHERE sessions.token_hash = ? AND users.disabled_at IS NULL
            """,
            (token_hash,),
        )
    )
    return row_as(User, row) if row else None


async def delete_sessions(db: Database, *, user_id: int) -> None:
    """Sign the account out everywhere."""
    await db.write(lambda tx: tx.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,)))


async def delete_session(db: Database, *, token_hash: str) -> None:
    await db.write(
        lambda tx: tx.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))
    )


# -- API keys --------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiKey:
    id: int
    key_id: str
    user_id: int
    secret_hash: str
    label: str
    created_at: int
    last_used_at: int | None
    invalidated_at: int | None
    account_disabled: bool = False  # read by get_api_key only: the key then opens nothing

    @property
    def usable(self) -> bool:
        return self.invalidated_at is None


class TooManyKeys(Exception):
    """The account holds accounts.max_keys usable keys already."""


API_KEY_COLUMNS = (
    "id, key_id, user_id, secret_hash, label, created_at, last_used_at, invalidated_at"
)


async def insert_api_key(
    db: Database,
    *,
    user_id: int,
    key_id: str,
    secret_hash: str,
    label: str,
    max_keys: int | None = None,
) -> ApiKey:
    """Each usable key holds a numbered slot, unique per account (a partial unique index),
    so the limit holds by constraint however many requests race for the last slot."""

    async def work(tx: Tx) -> ApiKey:
        taken = {
            row[0]
            for row in await tx.fetchall(
                "SELECT slot FROM api_keys WHERE user_id = ? AND invalidated_at IS NULL",
                (user_id,),
            )
        }
        slot = 1
        while True:
            while slot in taken:
                slot += 1
            if max_keys is not None and slot > max_keys:
                raise TooManyKeys(max_keys)
            # DO NOTHING, not a caught violation: PostgreSQL aborts the transaction on one.
            row = await tx.fetchone(
                f"""
                INSERT INTO api_keys (key_id, user_id, secret_hash, label, created_at, slot)
                VALUES (?, ?, ?, ?, ?, ?)
                ON CONFLICT (user_id, slot) WHERE slot IS NOT NULL DO NOTHING
                RETURNING {API_KEY_COLUMNS}
                """,
                (key_id, user_id, secret_hash, label, now(), slot),
            )
            if row is None:
                taken.add(slot)  # taken meanwhile (by another process): the next one
                continue
            return row_as(ApiKey, row)

    return await db.write(work)


async def get_api_key(db: Database, *, key_id: str) -> ApiKey | None:
    """The key, with whether its account is disabled, in the one read a request makes."""
    row = await db.read(
        lambda tx: tx.fetchone(
            f"""
            SELECT {API_KEY_COLUMNS},
                   (SELECT disabled_at IS NOT NULL FROM users WHERE users.id = api_keys.user_id)
                   AS account_disabled
            FROM api_keys WHERE key_id = ?
            """,
            (key_id,),
        )
    )
    return row_as(ApiKey, row) if row else None


async def list_api_keys(db: Database, *, user_id: int) -> list[ApiKey]:
    """Newest first."""
    rows = await db.read(
        lambda tx: tx.fetchall(
            f"""
            SELECT {API_KEY_COLUMNS} FROM api_keys WHERE user_id = ?
            ORDER BY created_at DESC, id DESC
            """,
            (user_id,),
        )
    )
    return [row_as(ApiKey, row) for row in rows]


async def invalidate_api_key(
    db: Database, *, key_id: str, user_id: int | None = None
) -> ApiKey | None:
    """Make a key unusable for good (and free its slot). With user_id, only that user's
    key. Returns the key as it is now, or None when there is no such key (for that user)."""
    row = await db.write(
        lambda tx: tx.fetchone(
            f"""
            UPDATE api_keys SET invalidated_at = coalesce(invalidated_at, ?), slot = NULL
            WHERE key_id = ? AND (CAST(? AS BIGINT) IS NULL OR user_id = ?)
            RETURNING {API_KEY_COLUMNS}
            """,
            (now(), key_id, user_id, user_id),
        )
    )
    return row_as(ApiKey, row) if row else None


async def touch_api_key(db: Database, *, id: int, at: int) -> None:
    await db.write(
        lambda tx: tx.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (at, id))
    )


# -- a new key's one showing -----------------------------------------------------------


async def insert_key_reveal(
    db: Database, *, token_hash: str, user_id: int, sealed_key: str, expires_at: int
) -> None:
    """Keep a new key, sealed, for its one showing; expired ones go now."""

    async def work(tx: Tx) -> None:
        await tx.execute("DELETE FROM key_reveals WHERE expires_at < ?", (now(),))
        await tx.execute(
            """
            INSERT INTO key_reveals (token_hash, user_id, sealed_key, expires_at)
            VALUES (?, ?, ?, ?)
            """,
            (token_hash, user_id, sealed_key, expires_at),
        )

    await db.write(work)


async def take_key_reveal(db: Database, *, token_hash: str, user_id: int, at: int) -> str | None:
    """The sealed key waiting under this token for this user, taken out (so it is shown
    once, whichever process asks first); None when there is none, or it expired by `at`."""
    row = await db.write(
        lambda tx: tx.fetchone(
            """
            DELETE FROM key_reveals WHERE token_hash = ? AND user_id = ?
            RETURNING sealed_key, expires_at
            """,
            (token_hash, user_id),
        )
    )
    if row is None or row["expires_at"] < at:
        return None
    return str(row["sealed_key"])
