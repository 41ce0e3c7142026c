"""`hostd db copy`: every row of one database into another, SQLite or PostgreSQL either way.

The target is migrated first and must be empty. Tables go parents first (COPY_ORDER, then
any other table by name: newer tables point at older ones), in chunks, each chunk one unit
of work; identity sequences are moved past the copied ids on PostgreSQL; the counts are
compared at the end. The blob store is not touched: both databases name the same bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from hostd.db.core import POSTGRESQL, SQLITE, Database, Row, Tx, latest_version, schema_version

# Parents before children, so that every foreign key holds as each row goes in.
COPY_ORDER = ("users", "api_keys", "sessions", "blobs", "uploads", "delete_tokens", "bans")
CHUNK_ROWS = 2000
_NAME = re.compile(r"[a-z_][a-z0-9_]*")


class CopyRefused(Exception):
    """The copy cannot start (a non-empty target, an old source); nothing was written."""


@dataclass(frozen=True)
class TableCopied:
    table: str
    rows: int


async def tables(tx: Tx) -> list[str]:
    """The database's own tables, in copying order: not the migration bookkeeping, nor
    `changes` (each database's own counter of what its processes must forget; a migrated
    target has its row already)."""
    if tx.dialect == SQLITE:
        rows = await tx.fetchall(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    else:
        rows = await tx.fetchall(
            """
            SELECT table_name FROM information_schema.tables
            WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'
            """
        )
    names = {row[0] for row in rows} - {"hostd_schema", "changes"}
    for name in names:
        if not _NAME.fullmatch(name):
            raise CopyRefused(f"unexpected table name {name!r}")
    known = [name for name in COPY_ORDER if name in names]
    return known + sorted(names - set(known))


async def columns(tx: Tx, *, table: str) -> list[str]:
    if tx.dialect == SQLITE:
        return [row[1] for row in await tx.fetchall(f"PRAGMA table_info({table})")]
    rows = await tx.fetchall(
        """
        SELECT column_name FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = ?
        ORDER BY ordinal_position
        """,
        (table,),
    )
    return [row[0] for row in rows]


async def _count(tx: Tx, *, table: str) -> int:
    return int(await tx.fetchval(f"SELECT count(*) FROM {table}"))


async def copy_database(
    source: Database, target: Database, progress: Callable[[TableCopied], None] | None = None
) -> list[TableCopied]:
    """Copy every row of source into target (both open and migrated); counts per table."""
    if await source.read(schema_version) != latest_version():
        raise CopyRefused("the source is not at the latest migration: run hostd db migrate on it")
    names = await source.read(tables)
    target_names = await target.read(tables)
    for name in target_names:
        if await target.read(partial(_count, table=name)):
            raise CopyRefused(f"the target is not empty: its {name} table holds rows")
    copied = []
    for table in names:
        if table not in target_names:
            raise CopyRefused(f"the target has no {table} table")
        wanted = await source.read(partial(columns, table=table))
        present = set(await target.read(partial(columns, table=table)))
        shared = [name for name in wanted if name in present]
        rows = await _copy_table(source, target, table, shared)
        result = TableCopied(table, rows)
        copied.append(result)
        if progress is not None:
            progress(result)
    await target.write(lambda tx: _after_copy(tx, names))
    await _fix_used_bytes(source, target)
    for result in copied:
        there = await target.read(partial(_count, table=result.table))
        if there != result.rows:
            raise RuntimeError(f"{result.table}: copied {result.rows} rows, the target has {there}")
    return copied


async def _copy_table(source: Database, target: Database, table: str, names: list[str]) -> int:
    """Chunk by chunk, in the order of the first column (every hostd table's key)."""
    listed = ", ".join(names)
    marks = ", ".join("?" * len(names))
    insert = f"INSERT INTO {table} ({listed}) VALUES ({marks})"
    key = names[0]
    first = f"SELECT {listed} FROM {table} ORDER BY {key} LIMIT ?"
    after = f"SELECT {listed} FROM {table} WHERE {key} > ? ORDER BY {key} LIMIT ?"
    copied = 0
    last: Any = None
    while True:
        if last is None:
            chunk = await source.read(partial(_fetchall, sql=first, params=(CHUNK_ROWS,)))
        else:
            chunk = await source.read(partial(_fetchall, sql=after, params=(last, CHUNK_ROWS)))
        if not chunk:
            return copied
        values = [tuple(row) for row in chunk]
        await target.write(partial(_executemany, sql=insert, rows=values))
        copied += len(chunk)
        last = chunk[-1][0]


async def _fetchall(tx: Tx, *, sql: str, params: tuple[Any, ...]) -> list[Row]:
    return await tx.fetchall(sql, params)


async def _executemany(tx: Tx, *, sql: str, rows: list[tuple[Any, ...]]) -> None:
    await tx.executemany(sql, rows)


async def _after_copy(tx: Tx, names: list[str]) -> None:
    """PostgreSQL's identity columns: the next id after the largest copied."""
    if tx.dialect != POSTGRESQL:
        return
    rows = await tx.fetchall(
        """
        SELECT table_name FROM information_schema.columns
        WHERE table_schema = current_schema() AND column_name = 'id' AND is_identity = 'YES'
        """
    )
    identities = {row[0] for row in rows}
    for table in names:
        if table in identities:
            await tx.fetchval(
                f"""
                SELECT setval(pg_get_serial_sequence('{table}', 'id'),
                              coalesce(max(id), 0) + 1, false)
                FROM {table}
                """
            )


async def _fix_used_bytes(source: Database, target: Database) -> None:
    """The quota triggers counted each copied upload on top of the copied used_bytes: put
    back the source's figures."""
    used: list[Any] = await source.read(lambda tx: tx.fetchall("SELECT id, used_bytes FROM users"))
    values = [(row[1], row[0]) for row in used]
    await target.write(
        lambda tx: tx.executemany("UPDATE users SET used_bytes = ? WHERE id = ?", values)
    )
