"""Settings: the Config dataclass and loading it from hostd.toml."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import secrets
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent


def _shipped(name: str) -> Path:
    """templates/ or static/: inside the package when installed, else beside it (a checkout)."""
    inside = PACKAGE_DIR / name
    return inside if inside.is_dir() else PACKAGE_DIR.parent / name


MiB = 1024 * 1024
# The longest lifetime there is to ask for or configure: about 114 years.
LONGEST_EXPIRY_HOURS = 1_000_000


class ConfigError(Exception):
    """The configuration cannot be used; the message names the offending key."""


@dataclass(frozen=True)
class Config:
    """Every setting, flat; field names match the keys of hostd.toml."""

    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = None
    trust_proxy: bool = False
    shutdown_grace_seconds: float = 20.0
    accel_redirect: str | None = None
    cpu: str | int = "auto"  # "auto", "any" or a CPU's number (hostd/affinity.py)
    max_upload_bytes: int = 512 * MiB
    allow_anonymous: bool = True
    body_idle_seconds: float = 60.0
    send_idle_seconds: float = 60.0
    uploads_in_flight_per_address: int = 8
    downloads_in_flight_per_address: int = 32
    downloads_in_flight: int = 256
    connections_per_address: int = 1024
    invalid_keys_per_hour: int = 1000
    max_thumbnail_decode_bytes: int = 96 * MiB
    registration: str = "open"
    max_keys: int | None = None
    registrations_per_hour: int = 5
    quota_bytes: int | None = None
    anonymous_max_upload_bytes: int | None = None
    uploads_per_minute: int | None = None
    upload_bytes_per_hour: int | None = None
    resumable_hours: int = 24
    resumable_in_flight: int = 20
    min_free_bytes: int | None = None  # None: 1 GiB or 5% of the filesystem, the smaller
    anonymous_hours: int | None = None
    account_hours: int | None = None
    max_hours: int | None = None
    hours_by_size: tuple[tuple[int, int], ...] = ()
    backend: str = "local"  # storage.backend
    s3_endpoint: str | None = None  # [storage.s3]: each s3_x is storage.s3.x
    s3_region: str = "us-east-1"
    s3_bucket: str | None = None
    s3_prefix: str = "blobs/"
    s3_path_style: bool = False
    s3_access_key_file: Path | None = None
    s3_secret_key_file: Path | None = None
    s3_redirect: bool = False
    metrics_enabled: bool = False
    metrics_allow: tuple[str, ...] = ("127.0.0.0/8", "::1")  # addresses or CIDRs
    cookie_secret: str | None = field(default=None, repr=False)
    # [database] url and password_file (see FIELD_PREFIXES): None is the data dir's SQLite.
    database_url: str | None = None
    database_password_file: Path | None = None
    templates_dir: Path = field(default_factory=lambda: _shipped("templates"))
    static_dir: Path = field(default_factory=lambda: _shipped("static"))
    debug: bool = False

    @property
    def db_path(self) -> Path:
        return self.data_dir / "hostd.sqlite3"

    @property
    def database(self) -> str | Path:
        """Where the database is: database.url, or the data dir's SQLite file."""
        return self.database_url or self.db_path

    def database_password(self) -> str | None:
        """database.password_file's first line (None: PGPASSWORD or ~/.pgpass apply)."""
        if self.database_password_file is None:
            return None
        return self.database_password_file.read_text(encoding="utf-8").splitlines()[0]

    @property
    def blobs_dir(self) -> Path:
        return self.data_dir / "blobs"


# hostd.toml's sections and the Config fields each may set.
SECTIONS: dict[str, tuple[str, ...]] = {
    "server": (
        "host",
        "port",
        "public_url",
        "trust_proxy",
        "cookie_secret",
        "accel_redirect",
        "shutdown_grace_seconds",
        "cpu",
    ),
    "storage": ("data_dir", "min_free_bytes", "backend"),
    # A table inside [storage].
    "storage.s3": (
        "endpoint",
        "region",
        "bucket",
        "prefix",
        "path_style",
        "access_key_file",
        "secret_key_file",
        "redirect",
    ),
    "limits": (
        "max_upload_bytes",
        "allow_anonymous",
        "body_idle_seconds",
        "send_idle_seconds",
        "uploads_in_flight_per_address",
        "downloads_in_flight_per_address",
        "downloads_in_flight",
        "connections_per_address",
        "invalid_keys_per_hour",
        "max_thumbnail_decode_bytes",
        "anonymous_max_upload_bytes",
        "uploads_per_minute",
        "upload_bytes_per_hour",
        "resumable_hours",
        "resumable_in_flight",
    ),
    "accounts": ("registration", "max_keys", "registrations_per_hour", "quota_bytes"),
    "retention": ("anonymous_hours", "account_hours", "max_hours", "hours_by_size"),
    "metrics": ("enabled", "allow"),
    "database": ("url", "password_file"),
}
# Sections whose keys are their fields' names less a prefix: [metrics] enabled is
# metrics_enabled (a bare `enabled` field would say nothing), [storage.s3] bucket is s3_bucket,
# [database] url is database_url.
FIELD_PREFIXES: dict[str, str] = {
    "metrics": "metrics_",
    "storage.s3": "s3_",
    "database": "database_",
}
CHOICES: dict[str, tuple[str, ...]] = {
    "registration": ("open", "closed"),
    "backend": ("local", "s3"),
}
# nginx's internal location for X-Accel-Redirect: a URI prefix that needs no escaping.
ACCEL_PREFIX = re.compile(r"/(?:(?!\.\.?/)[A-Za-z0-9._~-]+/)+")


def load_config(path: Path | None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read hostd.toml (if given), apply command-line overrides, and validate.

    Raises ConfigError for an unknown section or key, a wrong type or a bad value,
    naming the key as `section.key`.
    """
    values: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        values = _flatten(raw, str(path))
        _build(values, str(path))  # a mistake in the file stops the start, flags or not
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    return _build(values, str(path) if path else "settings")


def _flatten(raw: dict[str, Any], origin: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for section, table in raw.items():
        if section not in SECTIONS:
            known = ", ".join(f"[{name}]" for name in SECTIONS)
            raise ConfigError(f"{origin}: unknown section [{section}] (known: {known})")
        if not isinstance(table, dict):
            raise ConfigError(f"{origin}: {section} must be a table, like [{section}]")
        values |= _flatten_table(table, section, origin)
    return values


def _flatten_table(table: dict[str, Any], section: str, origin: str) -> dict[str, Any]:
    """One section's keys as Config fields; a table inside it ([storage.s3]) is a section
    of its own."""
    values: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict) and f"{section}.{key}" in SECTIONS:
            values |= _flatten_table(value, f"{section}.{key}", origin)
            continue
        if key not in SECTIONS[section]:
            known = ", ".join(SECTIONS[section])
            raise ConfigError(f"{origin}: unknown key {section}.{key} (known: {known})")
        values[FIELD_PREFIXES.get(section, "") + key] = value
    return values


def _qualified(name: str) -> str:
    for section, keys in SECTIONS.items():
        key = name.removeprefix(FIELD_PREFIXES.get(section, ""))
        if key in keys:
            return f"{section}.{key}"
    raise KeyError(name)


def _build(values: dict[str, Any], origin: str) -> Config:
    hints = typing.get_type_hints(Config)
    converted: dict[str, Any] = {}
    for name, value in values.items():
        if name == "hours_by_size":
            converted[name] = _size_steps(value, origin)
            continue
        if name == "metrics_allow":
            converted[name] = _networks(value, origin)
            continue
        converted[name] = _convert(name, value, hints[name], origin)
        if name in CHOICES and value not in CHOICES[name]:
            options = " or ".join(repr(c) for c in CHOICES[name])
            raise ConfigError(f"{origin}: {_qualified(name)} must be {options}, not {value!r}")
    config = Config(**converted)
    if not 0 < config.port < 65536:
        raise ConfigError(f"{origin}: server.port must be between 1 and 65535")
    if isinstance(config.cpu, str) and config.cpu not in ("auto", "any"):
        raise ConfigError(
            f'{origin}: server.cpu must be "auto", "any" or a CPU\'s number, not {config.cpu!r}'
        )
    if isinstance(config.cpu, int) and config.cpu < 0:
        raise ConfigError(
            f"{origin}: server.cpu must be a CPU's number (0 or more), not {config.cpu}"
        )
    if config.max_upload_bytes < 1:
        raise ConfigError(f"{origin}: limits.max_upload_bytes must be a positive number of bytes")
    if not 0 < config.body_idle_seconds <= 24 * 3600:
        raise ConfigError(f"{origin}: limits.body_idle_seconds must be between 0 and 86400")
    if not 0 < config.send_idle_seconds <= 24 * 3600:
        raise ConfigError(f"{origin}: limits.send_idle_seconds must be between 0 and 86400")
    if config.uploads_in_flight_per_address < 1:
        raise ConfigError(f"{origin}: limits.uploads_in_flight_per_address must be at least 1")
    for name in (
        "downloads_in_flight_per_address",
        "downloads_in_flight",
        "connections_per_address",
        "invalid_keys_per_hour",
    ):
        if getattr(config, name) < 1:
            raise ConfigError(f"{origin}: limits.{name} must be at least 1")
    if not 0 <= config.shutdown_grace_seconds <= 3600:
        raise ConfigError(f"{origin}: server.shutdown_grace_seconds must be between 0 and 3600")
    if config.max_thumbnail_decode_bytes < 1:
        raise ConfigError(f"{origin}: limits.max_thumbnail_decode_bytes must be a positive number")
    if config.max_keys is not None and config.max_keys < 1:
        raise ConfigError(f"{origin}: accounts.max_keys must be at least 1 when set")
    if not 1 <= config.resumable_hours <= LONGEST_EXPIRY_HOURS:
        raise ConfigError(
            f"{origin}: limits.resumable_hours must be from 1 to {LONGEST_EXPIRY_HOURS}"
        )
    if config.resumable_in_flight < 1:
        raise ConfigError(f"{origin}: limits.resumable_in_flight must be at least 1")
    if config.registrations_per_hour < 1:
        raise ConfigError(f"{origin}: accounts.registrations_per_hour must be at least 1")
    _check_limits(config, origin)
    _check_retention(config, origin)
    _check_s3(config, origin)
    if config.accel_redirect is not None and not ACCEL_PREFIX.fullmatch(config.accel_redirect):
        raise ConfigError(
            f"{origin}: server.accel_redirect must be a path that starts and ends with /, "
            f'like "/_hostd_blobs/", not {config.accel_redirect!r}'
        )
    url = config.database_url
    if url is not None and not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise ConfigError(
            f"{origin}: database.url must be sqlite:///path or postgresql://user@host:port/name,"
            f" not {url!r}"
        )
    if config.public_url is not None:
        if not config.public_url.startswith(("http://", "https://")):
            raise ConfigError(f"{origin}: server.public_url must start with http:// or https://")
        config = dataclasses.replace(config, public_url=config.public_url.rstrip("/"))
    return config


def _check_limits(config: Config, origin: str) -> None:
    """The limits of issue 10: each unset (None) or a sensible number."""
    at_least = {
        "quota_bytes": 0,
        "min_free_bytes": 0,
        "anonymous_max_upload_bytes": 1,
        "uploads_per_minute": 1,
        "upload_bytes_per_hour": 1,
    }
    for name, least in at_least.items():
        value = getattr(config, name)
        if value is not None and value < least:
            raise ConfigError(f"{origin}: {_qualified(name)} must be at least {least} when set")
    anonymous = config.anonymous_max_upload_bytes
    if anonymous is not None and anonymous > config.max_upload_bytes:
        raise ConfigError(
            f"{origin}: limits.anonymous_max_upload_bytes ({anonymous}) must not be more than"
            f" limits.max_upload_bytes ({config.max_upload_bytes})"
        )


def _check_s3(config: Config, origin: str) -> None:
    if config.backend == "s3" and not config.s3_bucket:
        raise ConfigError(f'{origin}: storage.backend = "s3" needs storage.s3.bucket')
    endpoint = config.s3_endpoint
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"{origin}: storage.s3.endpoint must start with http:// or https://")
    if config.s3_prefix and not config.s3_prefix.endswith("/"):
        raise ConfigError(f'{origin}: storage.s3.prefix must end with "/", like "blobs/"')


def start_warnings(config: Config) -> list[str]:
    """Settings, valid on their own, that do nothing or more than an admin may think beside
    the rest of `config`: one line each for the log at start, so that a silent no-op or an
    open door does not cost an admin hours."""
    warnings = []
    if config.accel_redirect is not None and config.backend == "s3":
        warnings.append(
            "accel_redirect is ignored with the S3 store: nginx can send only files it reads"
            " from a disk, so hostd streams the bytes from the bucket itself (or set"
            " storage.s3.redirect = true to send clients to the bucket)"
        )
    if config.trust_proxy and not is_loopback(config.host):
        warnings.append(
            f"trust_proxy is on and hostd listens on {config.host or 'every address'}, not"
            " loopback: any client that reaches it there can set X-Real-IP (its address, for"
            " rate limits and per-address limits) and X-Forwarded-Host (the host in the URLs it"
            " gets back); behind a proxy, listen on 127.0.0.1, or let only the proxy reach"
            " this address"
        )
    path = urllib.parse.urlsplit(config.public_url or "").path
    if path:
        warnings.append(
            f"public_url has a path ({path}): the API's URLs follow it, but the web pages"
            " link to the root of the host (/login, /static/...); serve hostd at the root of"
            " its host"
        )
    return warnings


def is_loopback(host: str) -> bool:
    """Whether server.host is reachable from this machine only ("" is every address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name, or "": every address or whatever the name stands for
        return False


def _size_steps(value: Any, origin: str) -> tuple[tuple[int, int], ...]:
    """retention.hours_by_size: a list of [bytes, hours] pairs."""
    shape = "a list of [bytes, hours] pairs, like [[104857600, 168]]"
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{origin}: retention.hours_by_size must be {shape}, not {value!r}")
    steps = []
    for step in value:
        if (
            not isinstance(step, list | tuple)
            or len(step) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in step)
        ):
            raise ConfigError(f"{origin}: retention.hours_by_size must be {shape}, not {step!r}")
        size, hours = step
        if size < 0 or not 1 <= hours <= LONGEST_EXPIRY_HOURS:
            raise ConfigError(
                f"{origin}: retention.hours_by_size: {step!r} needs bytes of 0 or more and"
                f" hours from 1 to {LONGEST_EXPIRY_HOURS}"
            )
        steps.append((size, hours))
    return tuple(sorted(steps))


def _networks(value: Any, origin: str) -> tuple[str, ...]:
    """metrics.allow: a list of addresses or CIDRs ("127.0.0.1", "10.0.0.0/8", "::1")."""
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f'{origin}: metrics.allow must be a list of addresses or CIDRs, like ["127.0.0.1"],'
            f" not {value!r}"
        )
    for network in value:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(
                f"{origin}: metrics.allow: {network!r} is not an address or a CIDR"
            ) from None
    return tuple(value)


def _check_retention(config: Config, origin: str) -> None:
    """Each number of hours in range. A default longer than max_hours is no mistake: max_hours
    caps it, as it caps what an upload asks for (retention.expires_at)."""
    for name in ("anonymous_hours", "account_hours", "max_hours"):
        hours = getattr(config, name)
        if hours is not None and not 1 <= hours <= LONGEST_EXPIRY_HOURS:
            raise ConfigError(
                f"{origin}: retention.{name} must be from 1 to {LONGEST_EXPIRY_HOURS} hours"
            )


# The largest number a setting may be: 8 PiB of bytes, or 285 million years of seconds; a
# database integer and a page script's number (exact up to 2**53) both hold it.
MAX_NUMBER = 2**53


def _convert(name: str, value: Any, hint: Any, origin: str) -> Any:
    """Check one value against the field's type; Path fields take strings."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for kind in allowed:
        if kind is type(None) and value is None:
            return None
        if kind is Path and isinstance(value, str | Path):
            return Path(value)
        # bool is a subclass of int; a port of `true` is a mistake, not 1.
        if kind in (int, float) and isinstance(value, bool):
            continue
        # TOML integers have no bound in Python; SQLite's and PostgreSQL's stop at 2**63.
        if kind in (int, float) and isinstance(value, int | float) and abs(value) > MAX_NUMBER:
            limit = f"a number of at most {MAX_NUMBER:,}"
            raise ConfigError(f"{origin}: {_qualified(name)} must be {limit}, not {value}")
        if kind is float and isinstance(value, int | float):
            return float(value)
        if kind in (str, int, bool) and isinstance(value, kind):
            return value
    expected = " or ".join(
        "a path" if k is Path else "a number" if k is float else k.__name__
        for k in allowed
        if k is not None
    )
    raise ConfigError(
        f"{origin}: {_qualified(name)} must be {expected}, not {type(value).__name__} {value!r}"
    )


def make_data_dir(config: Config) -> None:
    """The data dir, made if missing; ConfigError when it cannot be."""
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"storage.data_dir: cannot create {config.data_dir}: {exc.strerror or exc}"
        ) from exc


def ensure_cookie_secret(config: Config) -> Config:
    """Return the config with a cookie secret: from hostd.toml, HOSTD_COOKIE_SECRET, or a
    0600 file in the data dir that the first start creates and later starts reuse."""
    secret = config.cookie_secret or os.environ.get("HOSTD_COOKIE_SECRET")
    if not secret:
        path = config.data_dir / "cookie_secret"
        try:
            secret = _read_or_make_secret(path)
        except OSError as exc:  # a data dir hostd may not write, a secret it may not read
            raise ConfigError(f"cannot read or create {path}: {exc.strerror or exc}") from exc
    return dataclasses.replace(config, cookie_secret=secret)


def _read_or_make_secret(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        # Written whole under another name, then linked into place: a process starting
        # at the same time reads either no file or the whole secret, and one of the two
        # links wins; both then use the winner's.
        draft = path.with_name(f".cookie_secret.{os.getpid()}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(secrets.token_urlsafe(48) + "\n")
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
        return path.read_text(encoding="ascii").strip()
