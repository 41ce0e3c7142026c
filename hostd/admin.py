"""The `hostd` commands that work on the server's side: serve, and the admin commands.

hostd.cli imports this module only when one of them runs (see cli.server_side): it brings
Tornado, the database and the store, which `hostd upload` and `hostd --help` do without.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from hostd import affinity, backup, db, limits, resumable, retention, uploads
from hostd.accounts import NAME_PATTERN, password_problem
from hostd.app import format_size, format_time, machine_problem, serve, thumbnails_of
from hostd.auth import Auth
from hostd.config import Config, ConfigError, load_config, make_data_dir, start_warnings
from hostd.db import Database
from hostd.hashes import hash_in, is_sha256
from hostd.migrate import MigrationError, migrate
from hostd.server import CannotListen
from hostd.storage import StoreUnavailable, store_from
from hostd.supervisor import supervise

DEFAULT_CONFIG = Path("hostd.toml")
log = logging.getLogger("hostd")


class CommandError(Exception):
    """A failed admin command; the message is printed, the exit status is 1."""


def print_table(header: Sequence[str] | None, rows: Sequence[Sequence[object]]) -> None:
    """Aligned columns, under a header when there is one; numbers to the right."""
    lines = [list(header)] if header else []
    lines += [[str(cell) for cell in row] for row in rows]
    if not lines:
        return
    columns = range(len(lines[0]))
    numeric = [bool(rows) and all(isinstance(row[i], int) for row in rows) for i in columns]
    widths = [max(len(line[i]) for line in lines) for i in columns]
    for line in lines:
        cells = [
            cell.rjust(width) if numeric[i] else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())


def print_json(payload: Any) -> None:
    print(json.dumps(payload, indent=2))


def iso_time(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


AdminCommand = Callable[[argparse.Namespace, Config, Database, Auth], Awaitable[None]]


def admin(
    command: AdminCommand, *, may_create: bool = False
) -> Callable[[argparse.Namespace], int]:
    """Run an admin command against the configured database. Most commands would find
    nothing in a new SQLite database (no user to change, nothing to list): for them, a data
    dir without one is taken for a mistyped --data-dir and left alone. Those that
    `may_create` (the first account, a ban made before the first start) make it."""

    def run_it(args: argparse.Namespace) -> int:
        config = config_from(args)
        if not may_create and config.database_url is None and not config.db_path.exists():
            print(
                f"hostd: no hostd database at {config.db_path} (did you mean another --data-dir?)",
                file=sys.stderr,
            )
            return 1

        async def main() -> None:
            make_data_dir(config)
            database = await Database.open_config(config)
            auth = Auth()
            try:
                await command(args, config, database, auth)
            finally:
                auth.close()
                await database.close()

        try:
            asyncio.run(main())
        except CommandError as exc:
            print(f"hostd: {exc}", file=sys.stderr)
            return 1
        return 0

    return run_it


def read_password(args: argparse.Namespace) -> str:
    """The new password, exactly as typed: with --password-stdin, the first line of standard
    input without its final newline, and nothing else taken off (the web forms do the same)."""
    if args.password_stdin:
        line = sys.stdin.buffer.readline().removesuffix(b"\n")
        try:
            password = line.decode("utf-8")
        except UnicodeDecodeError:
            raise CommandError("the password on standard input is not UTF-8") from None
        confirm = password
    else:
        password, confirm = ask_password()
    problem = password_problem(password, confirm)
    if problem:
        raise CommandError(problem)
    return password


def ask_password() -> tuple[str, str]:
    """The password typed twice at the terminal; CommandError where there is none (cron, a
    pipe), where getpass would read standard input with a warning, or give up."""
    try:
        with open("/dev/tty", "rb"):
            pass
    except OSError:
        raise CommandError(
            "no terminal to ask for the password: give it on standard input with --password-stdin"
        ) from None
    try:
        return getpass.getpass("Password: "), getpass.getpass("Password again: ")
    except EOFError:
        raise CommandError("no password given") from None


async def user_add(
    args: argparse.Namespace, config: Config, database: Database, auth: Auth
) -> None:
    if not NAME_PATTERN.fullmatch(args.name):
        raise CommandError("a name is 1 to 64 letters, digits, '.', '_' or '-'")
    password = read_password(args)
    try:
        user = await db.insert_user(
            database, name=args.name, password_hash=await auth.hash_password(password)
        )
    except db.NameTaken:
        raise CommandError(f"the name {args.name!r} is taken") from None
    print(f"created user {user.name}", file=sys.stderr)


async def user_list(
    args: argparse.Namespace, config: Config, database: Database, auth: Auth
) -> None:
    print(f"{'name':<24} {'created':<20} {'uploads':>8} {'keys':>5}  state")
    for user, count, keys in await db.list_users(database):
        state = "disabled" if user.disabled_at is not None else "active"
        print(f"{user.name:<24} {format_time(user.created_at):<20} {count:>8} {keys:>5}  {state}")


async def user_passwd(
    args: argparse.Namespace, config: Config, database: Database, auth: Auth
) -> None:
    user = await existing_user(database, args.name)
    password = read_password(args)
    await db.update_password(
        database,
        user_id=user.id,
        password_hash=await auth.hash_password(password),
        end_sessions=True,
    )
    print(f"password changed for {user.name}; their sessions have ended", file=sys.stderr)


async def user_disable(
    args: argparse.Namespace, config: Config, database: Database, auth: Auth
) -> None:
    user = await existing_user(database, args.name)
    if args.disabled and user.disabled_at is not None:
        print(
            f"{user.name} was disabled already, on {format_time(user.disabled_at)}", file=sys.stderr
        )
        return
    if not args.disabled and user.disabled_at is None:
        print(f"{user.name} is not disabled", file=sys.stderr)
        return
    await db.set_user_disabled(database, user_id=user.id, disabled=args.disabled)
    if args.disabled:
        print(
            f"disabled {user.name}: no sign-in; their sessions and keys stop working now",
            file=sys.stderr,
        )
    else:
        print(f"enabled {user.name}: their sessions and keys work again", file=sys.stderr)


async def user_rm_cmd(
    args: argparse.Namespace, config: Config, database: Database, auth: Auth
) -> None:
    user = await existing_user(database, args.name)
    if args.files == "keep":
        _, count = await db.list_user_files(database, user_id=user.id, limit=0)
        await db.delete_user(database, user_id=user.id, delete_files=False)
        kept = f"{count} upload{'' if count == 1 else 's'}"
        print(f"removed user {user.name}; their {kept} stay, as anonymous uploads", file=sys.stderr)
        return
    store = store_from(config)
    try:
        count = await uploads.remove_user(
            database, store, thumbnails_of(config), user_id=user.id, delete_files=True
        )
    finally:
        store.close()
    print(
        f"removed user {user.name} and their {count} upload{'' if count == 1 else 's'}",
        file=sys.stderr,
    )


async def user_quota(
    args: argparse.Namespace, config: Config, database: Database, auth: Auth
) -> None:
    user = await existing_user(database, args.name)
    if args.quota is not None:
        own, quota_bytes = args.quota
        await db.set_quota(database, user_id=user.id, own=own, quota_bytes=quota_bytes)
        user = await existing_user(database, args.name)
    quota = limits.quota_of(user, config.quota_bytes)
    source = "its own" if user.has_own_quota else "accounts.quota_bytes"
    shown = "none" if quota is None else f"{quota} bytes ({format_size(quota)})"
    print(f"{user.name}: quota {shown}, {source}")
    print(f"{user.name}: using {user.used_bytes} bytes ({format_size(user.used_bytes)})")


async def existing_user(database: Database, name: str) -> db.User:
    user = await db.get_user(database, name=name)
    if user is None:
        raise CommandError(f"there is no user {name!r}")
    return user


async def key_create(
    args: argparse.Namespace, config: Config, database: Database, auth: Auth
) -> None:
    user = await existing_user(database, args.name)
    minted = await auth.mint_key()
    try:
        await db.insert_api_key(
            database,
            user_id=user.id,
            key_id=minted.key_id,
            secret_hash=minted.secret_hash,
            label=args.label,
            max_keys=config.max_keys,
        )
    except db.TooManyKeys as exc:
        raise CommandError(
            f"{user.name} holds {exc.args[0]} usable keys, the most accounts.max_keys allows;"
            " invalidate one first"
        ) from None
    print(minted.token)


async def key_list_cmd(
    args: argparse.Namespace, config: Config, database: Database, auth: Auth
) -> None:
    user = await existing_user(database, args.name)
    print(f"{'id':<16}  {'label':<24} {'created':<20} {'last used':<20} state")
    for key in await db.list_api_keys(database, user_id=user.id):
        used = format_time(key.last_used_at) if key.last_used_at else "never"
        state = "usable" if key.usable else "invalidated"
        created = format_time(key.created_at)
        print(f"{key.key_id:<16}  {key.label:<24} {created:<20} {used:<20} {state}")


async def key_invalidate(
    args: argparse.Namespace, config: Config, database: Database, auth: Auth
) -> None:
    key = await db.invalidate_api_key(database, key_id=args.key_id)
    if key is None:
        raise CommandError(f"there is no key {args.key_id!r}")
    print(f"key {key.key_id} is invalidated", file=sys.stderr)


async def stored_blob(database: Database, text: str) -> db.Blob:
    """The file named by its public hash, one of its URLs, or its SHA-256 (as gc reports it)."""
    digest = text.strip().lower()
    if is_sha256(digest):  # 64 characters: never a public hash (at most 16)
        blob = await db.get_blob_by_sha256(database, digest)
        if blob is None:
            raise CommandError(f"there is no file with SHA-256 {digest}")
        return blob
    blob = await db.get_blob(database, hash_in(text))
    if blob is None:
        raise CommandError(f"there is no file {hash_in(text)!r}")
    return blob


async def file_info(
    args: argparse.Namespace, config: Config, database: Database, auth: Auth
) -> None:
    blob = await stored_blob(database, args.hash)
    print(f"hash      {blob.hash}")
    print(f"sha256    {blob.sha256}")
    print(f"size      {blob.size_bytes} bytes ({format_size(blob.size_bytes)})")
    print(f"type      {blob.content_type}")
    print(f"stored    {format_time(blob.created_at)}")
    print("uploads:")
    for registration in await db.list_registrations(database, sha256=blob.sha256):
        upload = registration.upload
        owner = registration.user_name or "anonymous"
        expires = format_time(upload.expires_at) if upload.expires_at else "never"
        print(
            f"  {format_time(upload.created_at)}  expires {expires:<20}  {owner:<24}"
            f" {upload.original_name}"
        )


async def file_rm(args: argparse.Namespace, config: Config, database: Database, auth: Auth) -> None:
    if args.reason is not None and not args.ban:
        raise CommandError("--reason goes with --ban")
    blobs = [await stored_blob(database, text) for text in args.hashes]  # all known, or none
    store = store_from(config)
    thumbs = thumbnails_of(config)
    try:
        for blob in blobs:
            if args.ban:
                _, removal = await uploads.ban(
                    database, store, thumbs, sha256=blob.sha256, reason=args.reason or ""
                )
                count = removal.uploads
            else:
                count = await uploads.take_down(database, store, thumbs, sha256=blob.sha256)
            many = f"{count} upload{'' if count == 1 else 's'}"
            banned = f"; banned {blob.sha256}" if args.ban else ""
            print(
                f"removed {blob.hash}: {many}, {format_size(blob.size_bytes)}{banned}",
                file=sys.stderr,
            )
    finally:
        store.close()


async def ban_list_cmd(
    args: argparse.Namespace, config: Config, database: Database, auth: Auth
) -> None:
    bans = await db.list_bans(database)
    if args.json:
        print_json(
            [
                {
                    "sha256": ban.sha256,
                    "hash": ban.hash,
                    "banned_at": iso_time(ban.created_at),
                    "reason": ban.reason,
                }
                for ban in bans
            ]
        )
        return
    rows = [(ban.sha256, ban.hash, format_time(ban.created_at), ban.reason) for ban in bans]
    print_table(("sha256", "hash", "banned", "reason"), rows)


async def ban_add_cmd(
    args: argparse.Namespace, config: Config, database: Database, auth: Auth
) -> None:
    store = store_from(config)
    try:
        ban, removal = await uploads.ban(
            database, store, thumbnails_of(config), sha256=args.sha256, reason=args.reason
        )
    except db.AlreadyBanned as exc:
        (ban,) = exc.args
        raise CommandError(
            f"{ban.sha256} is banned already, since {format_time(ban.created_at)}"
        ) from None
    finally:
        store.close()
    if removal.uploads:
        many = f"{removal.uploads} upload{'' if removal.uploads == 1 else 's'}"
        print(f"banned {ban.sha256} ({ban.hash}); took down its {many}", file=sys.stderr)
    else:
        print(f"banned {ban.sha256} ({ban.hash}); no upload of it was stored", file=sys.stderr)


async def ban_rm_cmd(
    args: argparse.Namespace, config: Config, database: Database, auth: Auth
) -> None:
    ban = await db.delete_ban(database, sha256=args.sha256)
    if ban is None:
        raise CommandError(f"{args.sha256} is not banned")
    print(f"lifted the ban on {ban.sha256}: these bytes may be uploaded again", file=sys.stderr)


async def stats(args: argparse.Namespace, config: Config, database: Database, auth: Auth) -> None:
    figures = await db.get_stats(database, now=db.now())
    if args.json:
        print_json(
            {
                "uploads": figures.uploads,
                "blobs": figures.blobs,
                "stored_bytes": figures.stored_bytes,
                "uploaded_bytes": figures.uploaded_bytes,
                "dedup_saved_bytes": figures.dedup_saved_bytes,
                "users": figures.users,
                "disabled_users": figures.disabled_users,
                "bans": figures.bans,
                "uploads_per_day": [
                    {"day": iso_time(day)[:10], "uploads": count} for day, count in figures.per_day
                ],
                "top_uploaders": [
                    {"name": up.name, "uploads": up.uploads, "bytes": up.bytes}
                    for up in figures.top_uploaders
                ],
            }
        )
        return

    def size(count: int) -> str:
        return f"{count} bytes" if count < 1024 else f"{format_size(count)} ({count} bytes)"

    print_table(
        None,
        [
            ("uploads", figures.uploads),
            ("blobs", figures.blobs),
            ("stored", size(figures.stored_bytes)),
            ("uploaded", size(figures.uploaded_bytes)),
            ("dedup saved", size(figures.dedup_saved_bytes)),
            ("accounts", f"{figures.users} ({figures.disabled_users} disabled)"),
            ("bans", figures.bans),
        ],
    )
    print()
    print("uploads per day (UTC)")
    print_table(("day", "uploads"), [(iso_time(day)[:10], n) for day, n in figures.per_day])
    print()
    print("top uploaders")
    print_table(
        ("name", "uploads", "bytes"),
        [(up.name or "(anonymous)", up.uploads, up.bytes) for up in figures.top_uploaders],
    )


async def gc(args: argparse.Namespace, config: Config, database: Database, auth: Auth) -> None:
    grace = uploads.GC_GRACE_SECONDS if args.grace is None else args.grace
    store = store_from(config)
    try:
        found = await uploads.collect_garbage(
            database,
            store,
            thumbnails_of(config),
            grace_seconds=grace,
            dry_run=args.dry_run,
            verify=args.verify,
        )
    finally:
        store.close()
    # The public hashes of the files with rows, for `hostd file info|rm` and the URLs.
    hashes = {}
    for sha256 in [*found.missing, *found.damaged]:
        blob = await db.get_blob_by_sha256(database, sha256)
        if blob is not None:
            hashes[sha256] = blob.hash

    def label(sha256: str) -> str:
        return f"{sha256} ({hashes[sha256]})" if sha256 in hashes else sha256

    removed = "would remove" if args.dry_run else "removed"
    if args.json:
        print_json(
            {
                "dry_run": args.dry_run,
                "removed": found.removed,
                "young": found.young,
                "missing": found.missing,
                "damaged": found.damaged,
                "hashes": hashes,
            }
        )
    else:
        for sha256 in found.removed:
            print(f"{removed} {sha256}: no upload pointed at it")
        for sha256 in found.missing:
            print(f"missing {label(sha256)}: its uploads are listed but its bytes are gone")
        for sha256 in found.damaged:
            print(f"damaged {label(sha256)}: its bytes are not the ones its uploads stored")
    print(
        f"gc: {removed} {len(found.removed)}, left {found.young} younger than"
        f" {grace:g} s, {len(found.missing)} missing, {len(found.damaged)} damaged",
        file=sys.stderr,
    )
    problems = [
        f"{len(found.missing)} file(s) have rows but no bytes" if found.missing else "",
        f"{len(found.damaged)} file(s) have damaged bytes" if found.damaged else "",
    ]
    if any(problems):
        raise CommandError("; ".join(problem for problem in problems if problem))


async def backup_to(
    args: argparse.Namespace, config: Config, database: Database, auth: Auth
) -> None:
    store = store_from(config)
    try:
        copied = await backup.backup(database, store, args.destination)
    except (db.Unsupported, backup.CannotWrite) as exc:
        raise CommandError(str(exc)) from None
    except db.Damaged as exc:
        kept = args.destination / backup.DATABASE_NAME
        earlier = f"{kept}, from an earlier backup, is kept" if kept.exists() else "nothing kept"
        raise CommandError(
            f"the database is damaged ({exc}): this backup is not good, {earlier}; restore"
            " the data dir from a good backup (hostd restore)"
        ) from None
    finally:
        store.close()
    print(
        f"backed up the database and {copied.blobs_copied} new file(s)"
        f" ({format_size(copied.bytes_copied)}); {copied.blobs_present} were there already",
        file=sys.stderr,
    )
    for sha256 in copied.missing:
        print(f"missing {sha256}: deleted while the backup ran", file=sys.stderr)
    for sha256 in copied.damaged:
        print(f"damaged {sha256}: its bytes are not the ones uploaded; not copied", file=sys.stderr)
    if copied.damaged:
        raise CommandError(
            f"{len(copied.damaged)} file(s) have damaged bytes and are not in the backup"
            " (`hostd gc --verify` lists them)"
        )


def restore_from(args: argparse.Namespace) -> int:
    config = config_from(args)
    try:
        count = backup.restore(args.source, config.data_dir)
    except (FileNotFoundError, FileExistsError, backup.CannotWrite) as exc:
        print(f"hostd: {exc}", file=sys.stderr)
        return 1
    except db.Damaged as exc:
        print(
            f"hostd: {args.source / backup.DATABASE_NAME} is damaged ({exc}): not a good"
            " backup; nothing was restored",
            file=sys.stderr,
        )
        return 1
    print(f"restored the database and {count} file(s) into {config.data_dir}", file=sys.stderr)
    return 0


async def prune(args: argparse.Namespace, config: Config, database: Database, auth: Auth) -> None:
    now = db.now()
    if args.dry_run:
        expired = await db.list_expired(database, now=now)
        unfinished = await db.count_expired_resumables(database, now=now)
    else:
        store = store_from(config)
        try:
            expired = await uploads.prune(database, store, thumbnails_of(config), now=now)
        finally:
            store.close()
        partials = resumable.Partials(config.data_dir / "partials")
        unfinished = await resumable.prune(database, partials, now=now)
    gone = {item.upload.sha256: item.size_bytes for item in expired if item.blob_gone}
    verb = "would remove" if args.dry_run else "removed"
    if args.json:
        print(
            json.dumps(
                {
                    "dry_run": args.dry_run,
                    "uploads": [expired_json(e) for e in expired],
                    "resumable_uploads": unfinished,
                }
            )
        )
    else:
        width = len(verb)
        print(
            f"{'hash':<16} {'upload':>8}  {'expired':<20}  {'bytes':<{width}}  {'owner':<24} name"
        )
        for item in expired:
            upload = item.upload
            assert upload.expires_at is not None
            bytes_ = verb if item.blob_gone else "kept"
            owner = item.user_name or "anonymous"
            print(
                f"{item.hash:<16} {upload.id:>8}  {format_time(upload.expires_at):<20}"
                f"  {bytes_:<{width}}  {owner:<24} {upload.original_name}"
            )
    print(
        f"prune: {verb} {len(expired)} expired upload{'' if len(expired) == 1 else 's'}"
        f" and {len(gone)} file{'' if len(gone) == 1 else 's'}"
        f" ({format_size(sum(gone.values()))})",
        file=sys.stderr,
    )
    if unfinished:
        print(
            f"prune: {verb} {unfinished} expired resumable upload{'' if unfinished == 1 else 's'}"
            " and their partial files",
            file=sys.stderr,
        )


def expired_json(item: db.Expired) -> dict[str, object]:
    upload = item.upload
    return {
        "hash": item.hash,
        "sha256": upload.sha256,
        "upload_id": upload.id,
        "name": upload.original_name,
        "owner": item.user_name,
        "expired_at": retention.iso_time(upload.expires_at),
        "bytes_removed": item.blob_gone,
        "size_bytes": item.size_bytes,
    }


async def storage_migrate(
    args: argparse.Namespace, config: Config, database: Database, auth: Auth
) -> None:
    source_name = "local" if args.to == "s3" else "s3"
    source = store_from(dataclasses.replace(config, backend=source_name))
    target = store_from(dataclasses.replace(config, backend=args.to))
    try:
        await target.check()
        await source.check()
        done = await migrate(
            database, source, target, lambda line: print(line, file=sys.stderr, flush=True)
        )
    except (StoreUnavailable, MigrationError) as exc:
        raise CommandError(f"{exc}; run the command again to resume") from None
    finally:
        source.close()
        target.close()
    print(
        f"{done.copied} file(s) copied to {args.to} ({done.bytes_copied} bytes), each verified"
        f" by SHA-256; {done.already_there} already there; {done.missing} missing from"
        f" {source_name}",
        file=sys.stderr,
    )
    if done.settled:
        but = f", but the {done.missing} missing from {source_name}" if done.missing else ""
        print(
            f"every file recorded before the last of {done.passes} pass(es) is in {args.to}"
            f"{but}; a running hostd stores more meanwhile",
            file=sys.stderr,
        )
    else:
        print(
            f"uploads kept arriving through {done.passes} passes; they are for the run below",
            file=sys.stderr,
        )
    print(
        f"to switch: stop hostd; run this command again (it copies only what came meanwhile);"
        f' set storage.backend = "{args.to}" in hostd.toml; start hostd. {source_name} is left'
        " as it was",
        file=sys.stderr,
    )


def db_migrate(args: argparse.Namespace) -> int:
    """Only the migrations: what `hostd serve` would apply at start, without serving."""
    config = config_from(args)

    async def main() -> int:
        if config.database_url is None:
            make_data_dir(config)
        database = await Database.open_config(config, migrate=False)
        try:
            return await database.migrate()
        finally:
            await database.close()

    version = asyncio.run(main())
    print(f"the database is at version {version}", file=sys.stderr)
    return 0


def db_copy(args: argparse.Namespace) -> int:
    """Every row of --from into --to (migrated first, and empty); counts checked."""
    for url in (args.source, args.target):
        if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            print(f"hostd: {url!r} is not sqlite:///path or postgresql://...", file=sys.stderr)
            return 2
    if args.source.startswith("sqlite:///") and not db.sqlite_path(args.source).exists():
        print(f"hostd: {args.source}: no such database", file=sys.stderr)
        return 1

    def report(copied: db.TableCopied) -> None:
        print(f"{copied.table}: {copied.rows} row(s)", file=sys.stderr)

    async def main() -> None:
        source = await Database.open(args.source, migrate=False)
        try:
            target = await Database.open(args.target)
            try:
                await db.copy_database(source, target, report)
            finally:
                await target.close()
        finally:
            await source.close()

    try:
        asyncio.run(main())
    except db.CopyRefused as exc:
        print(f"hostd: {exc}", file=sys.stderr)
        return 1
    print("copied; the counts match", file=sys.stderr)
    return 0


def config_from(args: argparse.Namespace, **overrides: object) -> Config:
    path = args.config
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    elif path is not None and not path.exists():
        raise ConfigError(f"{path}: no such file")
    return load_config(path, {"data_dir": args.data_dir, **overrides})


def cmd_serve(args: argparse.Namespace) -> int:
    config = config_from(args, host=args.host, port=args.port)
    if args.instances < 1:
        raise ConfigError("--instances must be at least 1")
    for warning in start_warnings(config):  # once, whatever the number of instances
        log.warning("%s", warning)
    if args.instances > 1:
        if not (config.database_url or "").startswith(("postgresql://", "postgres://")):
            raise ConfigError(
                "--instances needs database.url = postgresql://...: on SQLite, one process"
                " already does what its single writer allows (see README, Scaling out)"
            )
        if args.new_cookie_secret:
            raise ConfigError("--new-cookie-secret works with one instance: run it so once first")
        affinity.choose(config)  # a CPU it may not use stops the start here, not in each child
        return supervise(config, args.instances, serve)
    affinity.settle(affinity.choose(config))
    try:
        asyncio.run(serve(config, new_cookie_secret=args.new_cookie_secret))
    except StoreUnavailable as exc:
        print(f"hostd: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def run(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """A command's exit status; a configuration, store, database or listening problem, a full
    disk or a damaged database is one line on stderr, not a traceback."""
    try:
        return int(handler(args))
    except ConfigError as exc:
        print(f"hostd: configuration error: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        print(f"hostd: {exc}", file=sys.stderr)
        return 1
    except db.Damaged as exc:
        print(f"hostd: {machine_problem(exc)}", file=sys.stderr)
        return 1
    except (db.CannotOpen, db.Unavailable, CannotListen) as exc:
        print(f"hostd: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        line = machine_problem(exc)
        if line is None:
            raise  # hostd's own mistake: the traceback is for its bug report
        print(f"hostd: {line}", file=sys.stderr)
        return 1
