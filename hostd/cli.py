"""The `hostd` command: its arguments, and `hostd upload`; the commands that work on the
server's side are in hostd.admin, imported only when one of them runs."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from hostd import __version__, client
from hostd.hashes import PUBLIC_HASH_PATTERN, is_sha256, names_a_file
from hostd.parsing import parse_count

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE (13): what a shell reports for a process SIGPIPE ended


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
    serve_cmd.add_argument(
        "--instances",
        type=int,
        default=1,
        metavar="N",
        help="run N processes on one listening socket (needs PostgreSQL; default 1)",
    )
    serve_cmd.add_argument(
        "--new-cookie-secret",
        action="store_true",
        help="record this cookie secret as the database's, replacing another (signs everyone out)",
    )
    serve_cmd.set_defaults(handler=server_side("cmd_serve"))

    user_cmd = commands.add_parser("user", help="manage accounts")
    user_sub = user_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = user_sub.add_parser("add", parents=[common], help="create an account")
    add.add_argument("name")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    add.set_defaults(handler=admin("user_add", may_create=True))
    user_sub.add_parser("list", parents=[common], help="list accounts").set_defaults(
        handler=admin("user_list")
    )
    passwd = user_sub.add_parser("passwd", parents=[common], help="set an account's password")
    passwd.add_argument("name")
    passwd.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    passwd.set_defaults(handler=admin("user_passwd"))
    disable = user_sub.add_parser(
        "disable", parents=[common], help="stop an account: no sign-in, its sessions and keys fail"
    )
    disable.add_argument("name")
    disable.set_defaults(handler=admin("user_disable"), disabled=True)
    enable = user_sub.add_parser("enable", parents=[common], help="undo `user disable`")
    enable.add_argument("name")
    enable.set_defaults(handler=admin("user_disable"), disabled=False)
    user_rm = user_sub.add_parser(
        "rm", parents=[common], help="remove an account, its sessions and keys"
    )
    user_rm.add_argument("name")
    user_rm.add_argument(
        "--files",
        choices=("keep", "delete"),
        default="keep",
        help="keep: its uploads stay, anonymous (the default); delete: they go too",
    )
    user_rm.set_defaults(handler=admin("user_rm_cmd"))
    quota = user_sub.add_parser(
        "quota", parents=[common], help="show or set an account's storage quota"
    )
    quota.add_argument("name")
    quota.add_argument(
        "quota",
        nargs="?",
        type=quota_argument,
        metavar="BYTES|none|default",
        help="a number of bytes; none: no quota; default: accounts.quota_bytes (omit: show it)",
    )
    quota.set_defaults(handler=admin("user_quota"))

    key_cmd = commands.add_parser("key", help="manage API keys")
    key_sub = key_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = key_sub.add_parser("create", parents=[common], help="make a key; prints it once")
    create.add_argument("name", help="the account")
    create.add_argument("--label", default="")
    create.set_defaults(handler=admin("key_create"))
    key_list = key_sub.add_parser("list", parents=[common], help="list an account's keys")
    key_list.add_argument("name")
    key_list.set_defaults(handler=admin("key_list_cmd"))
    invalidate = key_sub.add_parser("invalidate", parents=[common], help="make a key unusable")
    invalidate.add_argument(
        "key_id", type=key_id_argument, help="the 16 hex characters after hk_ (or the whole key)"
    )
    invalidate.set_defaults(handler=admin("key_invalidate"))

    file_cmd = commands.add_parser("file", help="look at or take down stored files")
    file_sub = file_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    info = file_sub.add_parser("info", parents=[common], help="a file and who uploaded it")
    info.add_argument(
        "hash", type=file_argument, help="the hash, any of the file's URLs, or its SHA-256"
    )
    info.set_defaults(handler=admin("file_info"))
    remove = file_sub.add_parser(
        "rm", parents=[common], help="take a file down: every upload of it, and its bytes"
    )
    remove.add_argument(
        "hashes", nargs="+", type=file_argument, metavar="hash", help="hashes, URLs or SHA-256s"
    )
    remove.add_argument("--ban", action="store_true", help="and refuse these bytes for good (451)")
    remove.add_argument(
        "--reason", type=reason_argument, help="with --ban: why, shown to whoever asks for them"
    )
    remove.set_defaults(handler=admin("file_rm"))

    ban_cmd = commands.add_parser("ban", help="bytes that may never be stored again")
    ban_sub = ban_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    ban_list = ban_sub.add_parser("list", parents=[common], help="list the bans")
    ban_list.add_argument("--json", action="store_true", help="as JSON")
    ban_list.set_defaults(handler=admin("ban_list_cmd"))
    ban_add = ban_sub.add_parser(
        "add", parents=[common], help="ban bytes by SHA-256 (and take them down if stored)"
    )
    ban_add.add_argument("sha256", type=sha256_argument)
    ban_add.add_argument(
        "--reason", type=reason_argument, default="", help="why, shown to whoever asks for them"
    )
    ban_add.set_defaults(handler=admin("ban_add_cmd", may_create=True))
    ban_rm = ban_sub.add_parser("rm", parents=[common], help="lift a ban")
    ban_rm.add_argument("sha256", type=sha256_argument)
    ban_rm.set_defaults(handler=admin("ban_rm_cmd"))

    stats_cmd = commands.add_parser(
        "stats", parents=[common], help="uploads, storage, dedup savings, top uploaders"
    )
    stats_cmd.add_argument("--json", action="store_true", help="as JSON")
    stats_cmd.set_defaults(handler=admin("stats"))

    gc_cmd = commands.add_parser(
        "gc",
        parents=[common],
        help="remove stored bytes that no upload points at; list uploads whose bytes are gone",
    )
    gc_cmd.add_argument(
        "--grace",
        type=grace_argument,
        metavar="SECONDS",
        help="leave bytes younger than this alone (default: an hour)",
    )
    gc_cmd.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    gc_cmd.add_argument(
        "--verify",
        action="store_true",
        help="also read every file whole and list those whose bytes no longer have their"
        " SHA-256 (slow: it reads all the data)",
    )
    gc_cmd.add_argument("--json", action="store_true", help="as JSON")
    gc_cmd.set_defaults(handler=admin("gc"))

    backup_cmd = commands.add_parser(
        "backup",
        parents=[common],
        help="copy the database and the files to DEST while the server runs (incremental)",
    )
    backup_cmd.add_argument("destination", type=Path, metavar="DEST")
    backup_cmd.set_defaults(handler=admin("backup_to"))
    restore_cmd = commands.add_parser(
        "restore", parents=[common], help="make an empty data dir from a backup (server stopped)"
    )
    restore_cmd.add_argument("source", type=Path, metavar="SRC")
    restore_cmd.set_defaults(handler=server_side("restore_from"))
    storage_cmd = commands.add_parser("storage", help="the blob store")
    storage_sub = storage_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    migrate_cmd = storage_sub.add_parser(
        "migrate",
        parents=[common],
        help="copy every file to the other store (local or s3), verified; switches nothing",
    )
    migrate_cmd.add_argument("--to", choices=("s3", "local"), required=True)
    migrate_cmd.set_defaults(handler=admin("storage_migrate"))

    prune_cmd = commands.add_parser(
        "prune",
        parents=[common],
        help="remove expired uploads, and the files no unexpired upload is left for;"
        " expired resumable uploads and their partial files",
    )
    prune_cmd.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    prune_cmd.add_argument("--json", action="store_true", help="print JSON for scripts")
    prune_cmd.set_defaults(handler=admin("prune"))

    upload_cmd = commands.add_parser(
        "upload", help="send files to a hostd server; prints each one's URL"
    )
    upload_cmd.add_argument(
        "files", nargs="+", type=Path, metavar="FILE", help="a file to send; - for standard input"
    )
    upload_cmd.add_argument(
        "--url", help=f"the server's base URL (default: $HOSTD_URL, else {client.DEFAULT_URL})"
    )
    upload_cmd.add_argument("--key", help="an API key (default: $HOSTD_KEY; none: anonymous)")
    upload_cmd.add_argument(
        "--json", action="store_true", help="print each JSON answer, one a line"
    )
    upload_cmd.add_argument(
        "--expires",
        metavar="HOURS|TIME",
        help="when the files expire: hours, or a time (ISO 8601, an HTTP date, Unix ms)",
    )
    upload_cmd.add_argument(
        "--name", help="the name of what - (standard input) sends (default: none, the server's)"
    )
    upload_cmd.add_argument(
        "--resumable-above",
        type=size_argument,
        default=client.RESUMABLE_ABOVE_BYTES,
        metavar="BYTES",
        help="send bigger files with tus, resuming after a dropped connection or, by the next "
        "run, after this one is killed (default 16 MiB)",
    )
    upload_cmd.set_defaults(handler=cmd_upload)
    db_cmd = commands.add_parser("db", help="the database itself: migrate it, copy it")
    db_sub = db_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    migrate_cmd = db_sub.add_parser(
        "migrate", parents=[common], help="apply the migrations the database lacks, and only that"
    )
    migrate_cmd.set_defaults(handler=server_side("db_migrate"))
    copy_cmd = db_sub.add_parser(
        "copy",
        help="copy every row into an empty database (sqlite:///path or postgresql://...)",
    )
    copy_cmd.add_argument("--from", dest="source", required=True, metavar="URL")
    copy_cmd.add_argument("--to", dest="target", required=True, metavar="URL")
    copy_cmd.set_defaults(handler=server_side("db_copy"))
    return parser


Handler = Callable[[argparse.Namespace], int]


def admin(name: str, *, may_create: bool = False) -> Handler:
    """hostd.admin's async command `name`, run against the configured database (admin.admin)."""
    return server_side(name, database=True, may_create=may_create)


def server_side(name: str, *, database: bool = False, may_create: bool = False) -> Handler:
    """hostd.admin's command `name`, imported only when it runs: with it come the server's
    modules (Tornado, the database, the store), about a second of start-up that `hostd upload`
    and `hostd --help` do without."""

    def run_it(args: argparse.Namespace) -> int:
        from hostd import admin as commands  # the server's modules: see the docstring

        command = getattr(commands, name)
        handler = commands.admin(command, may_create=may_create) if database else command
        return commands.run(handler, args)

    return run_it


def sha256_argument(text: str) -> str:
    """A SHA-256 as 64 hex digits (either case); anything else stops before any work."""
    if not is_sha256(text.lower()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a SHA-256 (64 hex digits)")
    return text.lower()


def file_argument(text: str) -> str:
    """A file's public hash, one of its URLs, or its SHA-256, as given."""
    if not names_a_file(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a file's hash, URL or SHA-256")
    return text


KEY_ID = re.compile(r"[0-9a-f]{16}")


def key_id_argument(text: str) -> str:
    """A key's id: its 16 hex characters, or the whole key (hk_<id>_<secret>) they are in."""
    key_id = text.removeprefix("hk_").split("_")[0]
    if KEY_ID.fullmatch(key_id) is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a key id (the 16 hex characters after hk_)"
        )
    return key_id


MAX_QUOTA_BYTES = 2**63 - 1  # SQLite's largest integer


def quota_argument(text: str) -> tuple[bool, int | None]:
    """(own, quota_bytes) from BYTES, `none` (own, no quota) or `default` (not its own)."""
    if text == "none":
        return True, None
    if text == "default":
        return False, None
    number = parse_count(text, at_most=MAX_QUOTA_BYTES)
    if number is None or number > MAX_QUOTA_BYTES:
        raise argparse.ArgumentTypeError(
            f"a quota is a whole number of bytes (0 to {MAX_QUOTA_BYTES}), 'none' or"
            f" 'default', not {text!r}"
        )
    return True, number


MAX_REASON_CHARS = 500


def reason_argument(text: str) -> str:
    """A ban's reason: one line of at most 500 characters, as it is shown on a page."""
    if not text.isprintable() or len(text) > MAX_REASON_CHARS:
        raise argparse.ArgumentTypeError(
            f"a reason is one line of at most {MAX_REASON_CHARS} printable characters"
        )
    return text.strip()


def grace_argument(text: str) -> float:
    """Seconds, 0 or more: with less, gc would remove bytes placed a moment ago whose upload's
    row is not written yet (bytes are placed before their row)."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not seconds >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be 0 seconds or more, not {text}")
    return seconds


def as_arguments(argv: list[str]) -> list[str]:
    """A public hash may begin with "-" (URL-safe base64), which argparse would take for an
    option: given as a path ("/<hash>", which hashes.hash_in() reads too) it is a plain argument.
    Not one that begins with "--", like the long options (--password-stdin is hash-shaped):
    such a hash (one in 4,096) is given as any of its URLs."""
    return [f"/{arg}" if is_dashed_hash(arg) else arg for arg in argv]


def is_dashed_hash(arg: str) -> bool:
    return (
        arg.startswith("-")
        and not arg.startswith("--")
        and re.fullmatch(PUBLIC_HASH_PATTERN, arg) is not None
    )


def size_argument(text: str) -> int:
    count = parse_count(text, at_most=2**63 - 1)
    if count is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of bytes")
    return count


def cmd_upload(args: argparse.Namespace) -> int:
    return client.run(
        args.files,
        url=args.url,
        key=args.key,
        as_json=args.json,
        resumable_above=args.resumable_above,
        expires=args.expires,
        stdin_name=args.name,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(as_arguments(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return int(args.handler(args))


def run() -> None:
    try:
        status = main()
        sys.stdout.flush()  # a reader gone shows here, not as an error at the interpreter's exit
    except BrokenPipeError:
        # `hostd stats | head -1`: the reader has what it wanted. Stop quietly, as a tool that
        # SIGPIPE ends would; stdout goes to devnull first, or Python's own flush at exit
        # fails again (the signal module's "Note on SIGPIPE").
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = EXIT_BROKEN_PIPE
    sys.exit(status)
