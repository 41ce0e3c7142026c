"""The `hostd` command: serve, and the admin commands."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from hostd import __version__
from hostd.app import serve
from hostd.config import Config, ConfigError, load_config

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
    return parser


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
