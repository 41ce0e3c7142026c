"""The `hostd` command: serve, and the admin commands."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path

from hostd import __version__, backup, db, uploads
from hostd.accounts import NAME_PATTERN, password_problem
from hostd.app import format_size, format_time, serve, thumbnails_of
from hostd.auth import Auth
from hostd.config import Config, ConfigError, load_config
from hostd.db import Database
from hostd.storage import store_from

DEFAULT_CONFIG = Path("hostd.toml")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hostd", description="A self-hosted file host.")
    parser.add_argument("--version", action="version", version=f"hostd {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", type=Path, help="settings file (default: ./hostd.toml when it exists)"
    )
    common.add_argument("--data-dir", type=Path, help="where the database and files live")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve_cmd = commands.add_parser("serve", parents=[common], help="run the web server")
    serve_cmd.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve_cmd.add_argument("--port", type=int, help="port to listen on (default 8000)")
    serve_cmd.set_defaults(handler=cmd_serve)

    user_cmd = commands.add_parser("user", help="manage accounts")
    user_sub = user_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = user_sub.add_parser("add", parents=[common], help="create an account")
    add.add_argument("name")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    add.set_defaults(handler=admin(user_add))
    user_sub.add_parser("list", parents=[common], help="list accounts").set_defaults(
        handler=admin(user_list)
    )
    passwd = user_sub.add_parser("passwd", parents=[common], help="set an account's password")
    passwd.add_argument("name")
    passwd.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    passwd.set_defaults(handler=admin(user_passwd))

    key_cmd = commands.add_parser("key", help="manage API keys")
    key_sub = key_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = key_sub.add_parser("create", parents=[common], help="make a key; prints it once")
    create.add_argument("name", help="the account")
    create.add_argument("--label", default="")
    create.set_defaults(handler=admin(key_create))
    key_list = key_sub.add_parser("list", parents=[common], help="list an account's keys")
    key_list.add_argument("name")
    key_list.set_defaults(handler=admin(key_list_cmd))
    invalidate = key_sub.add_parser("invalidate", parents=[common], help="make a key unusable")
    invalidate.add_argument("key_id", help="the 16 hex characters after hk_")
    invalidate.set_defaults(handler=admin(key_invalidate))

    file_cmd = commands.add_parser("file", help="look at or take down stored files")
    file_sub = file_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    info = file_sub.add_parser("info", parents=[common], help="a file and who uploaded it")
    info.add_argument("hash", help="the hash, or any of the file's URLs")
    info.set_defaults(handler=admin(file_info))
    remove = file_sub.add_parser(
        "rm", parents=[common], help="take a file down: every upload of it, and its bytes"
    )
    remove.add_argument("hashes", nargs="+", metavar="hash", help="hashes or URLs")
    remove.set_defaults(handler=admin(file_rm))

    gc_cmd = commands.add_parser(
        "gc",
        parents=[common],
        help="remove stored bytes that no upload points at; list uploads whose bytes are gone",
    )
    gc_cmd.add_argument(
        "--grace",
        type=float,
        default=uploads.GC_GRACE_SECONDS,
        metavar="SECONDS",
        help="leave bytes younger than this alone (default: an hour)",
    )
    gc_cmd.set_defaults(handler=admin(gc))

    backup_cmd = commands.add_parser(
        "backup",
        parents=[common],
        help="copy the database and the files to DEST while the server runs (incremental)",
    )
    backup_cmd.add_argument("destination", type=Path, metavar="DEST")
    backup_cmd.set_defaults(handler=admin(backup_to))
    restore_cmd = commands.add_parser(
        "restore", parents=[common], help="make an empty data dir from a backup (server stopped)"
    )
    restore_cmd.add_argument("source", type=Path, metavar="SRC")
    restore_cmd.set_defaults(handler=restore_from)
    return parser


class CommandError(Exception):
    """A failed admin command; the message is printed, the exit status is 1."""


AdminCommand = Callable[[argparse.Namespace, Config, Database, Auth], Awaitable[None]]


def admin(command: AdminCommand) -> Callable[[argparse.Namespace], int]:
    """Run an admin command against the configured database."""

    def run_it(args: argparse.Namespace) -> int:
        config = config_from(args)

        async def main() -> None:
            config.data_dir.mkdir(parents=True, exist_ok=True)
            database = await Database.open(config.db_path)
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
        password = getpass.getpass("Password: ")
        confirm = getpass.getpass("Password again: ")
    problem = password_problem(password, confirm)
    if problem:
        raise CommandError(problem)
    return password


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
    print(f"{'name':<24} {'created':<20} {'uploads':>8} {'keys':>5}")
    for user, count, keys in await db.list_users(database):
        print(f"{user.name:<24} {format_time(user.created_at):<20} {count:>8} {keys:>5}")


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
    key_id = args.key_id.removeprefix("hk_").split("_")[0]
    key = await db.invalidate_api_key(database, key_id=key_id)
    if key is None:
        raise CommandError(f"there is no key {key_id!r}")
    print(f"key {key.key_id} is invalidated", file=sys.stderr)


def hash_in(text: str) -> str:
    """The public hash in a hash or in any of a file's URLs (/<hash>, /<hash>.png, /<hash>/a)."""
    path = urllib.parse.urlsplit(text).path if "://" in text else text
    return path.lstrip("/").split("/")[0].split(".")[0]


async def stored_blob(database: Database, text: str) -> db.Blob:
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
        print(f"  {format_time(upload.created_at)}  {owner:<24} {upload.original_name}")


async def file_rm(args: argparse.Namespace, config: Config, database: Database, auth: Auth) -> None:
    blobs = [await stored_blob(database, text) for text in args.hashes]  # all known, or none
    store = store_from(config)
    try:
        for blob in blobs:
            count = await uploads.take_down(
                database, store, thumbnails_of(config), sha256=blob.sha256
            )
            many = f"{count} upload{'' if count == 1 else 's'}"
            print(f"removed {blob.hash}: {many}, {format_size(blob.size_bytes)}", file=sys.stderr)
    finally:
        store.close()


async def gc(args: argparse.Namespace, config: Config, database: Database, auth: Auth) -> None:
    store = store_from(config)
    try:
        found = await uploads.collect_garbage(
            database, store, thumbnails_of(config), grace_seconds=args.grace
        )
    finally:
        store.close()
    for sha256 in found.removed:
        print(f"removed {sha256}: no upload pointed at it")
    for sha256 in found.missing:
        print(f"missing {sha256}: its uploads are listed but its bytes are gone")
    print(
        f"gc: removed {len(found.removed)}, left {found.young} younger than"
        f" {args.grace:g} s, {len(found.missing)} missing",
        file=sys.stderr,
    )
    if found.missing:
        raise CommandError(f"{len(found.missing)} file(s) have rows but no bytes")


async def backup_to(
    args: argparse.Namespace, config: Config, database: Database, auth: Auth
) -> None:
    store = store_from(config)
    try:
        copied = await backup.backup(database, store, args.destination)
    finally:
        store.close()
    print(
        f"backed up the database and {copied.blobs_copied} new file(s)"
        f" ({format_size(copied.bytes_copied)}); {copied.blobs_present} were there already",
        file=sys.stderr,
    )
    for sha256 in copied.missing:
        print(f"missing {sha256}: deleted while the backup ran", file=sys.stderr)


def restore_from(args: argparse.Namespace) -> int:
    config = config_from(args)
    try:
        count = backup.restore(args.source, config.data_dir)
    except (FileNotFoundError, FileExistsError) as exc:
        print(f"hostd: {exc}", file=sys.stderr)
        return 1
    print(f"restored the database and {count} file(s) into {config.data_dir}", file=sys.stderr)
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
    asyncio.run(serve(config))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"hostd: configuration error: {exc}", file=sys.stderr)
        return 2


def run() -> None:
    sys.exit(main())
