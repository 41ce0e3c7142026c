"""Storage quotas: an account's use (kept by the triggers of 0007_quotas.sql) against its quota.

An account's use is the sum of the sizes of its uploads (the same bytes twice count twice);
the quota that applies is its own when `hostd user quota` gave it one, else
accounts.quota_bytes from the config.
"""

from __future__ import annotations

from hostd.db.core import POSTGRESQL, Database, Tx


class OverQuota(Exception):
    """The file does not fit in the account's quota; nothing was recorded."""

    def __init__(self, *, used_bytes: int, quota_bytes: int, size_bytes: int) -> None:
        super().__init__(f"{used_bytes} + {size_bytes} > {quota_bytes}")
        self.used_bytes = used_bytes
        self.quota_bytes = quota_bytes
        self.size_bytes = size_bytes


class OwnerGone(Exception):
    """The account (or its API key) an upload was to be recorded to went away while the
    upload arrived: removed (`hostd user rm`), disabled, or the key invalidated. Nothing
    was written; `message` says which, for the client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


ACCOUNT_REMOVED = "the account this upload was for was removed; the file was not stored"
ACCOUNT_DISABLED = "the account this upload was for was disabled; the file was not stored"
KEY_INVALIDATED = (
    "the API key this upload was sent with was invalidated while it arrived; "
    "the file was not stored"
)


async def check_account(
    tx: Tx,
    *,
    user_id: int,
    api_key_id: int | None,
    size_bytes: int,
    default_quota_bytes: int | None,
) -> None:
    """Raise OverQuota unless the account's use plus this file fits in its quota, and
    OwnerGone unless the account (and the key the upload came with) may still upload: the
    request was let in when its headers came, and a big body can take minutes. One read,
    inside the unit of work that writes the upload's row, so that concurrent uploads of
    one account are counted one after the other (on PostgreSQL, where other instances
    write at the same time, the row stays locked until the commit)."""
    lock = " FOR UPDATE" if tx.dialect == POSTGRESQL else ""
    row = await tx.fetchone(
        f"""
        SELECT used_bytes, CASE WHEN has_own_quota = 1 THEN quota_bytes ELSE ? END,
               disabled_at,
               (SELECT invalidated_at FROM api_keys WHERE api_keys.id = ?)
        FROM users WHERE id = ?{lock}
        """,
        (default_quota_bytes, api_key_id, user_id),
    )
    if row is None:
        raise OwnerGone(ACCOUNT_REMOVED)
    if row[2] is not None:
        raise OwnerGone(ACCOUNT_DISABLED)
    if api_key_id is not None and row[3] is not None:
        raise OwnerGone(KEY_INVALIDATED)
    if row[1] is None:
        return
    used, quota = int(row[0]), int(row[1])
    if used + size_bytes > quota:
        raise OverQuota(used_bytes=used, quota_bytes=quota, size_bytes=size_bytes)


async def set_quota(db: Database, *, user_id: int, own: bool, quota_bytes: int | None) -> None:
    """Give the account its own quota (`quota_bytes`, None for none), or with own=False
    let accounts.quota_bytes apply again."""
    if not own:
        quota_bytes = None
    await db.write(
        lambda tx: tx.execute(
            "UPDATE users SET has_own_quota = ?, quota_bytes = ? WHERE id = ?",
            (int(own), quota_bytes, user_id),
        )
    )
