"""Wiring: make_app() builds the Tornado application from its parts; serve() runs it."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Callable

import jinja2
import tornado.web

from hostd import affinity, db, resumable, uploads
from hostd.accesslog import AccessLog
from hostd.auth import Auth, fingerprint_matches, secret_fingerprint
from hostd.config import Config, ConfigError, ensure_cookie_secret, make_data_dir
from hostd.db import Database
from hostd.handlers import all_routes
from hostd.handlers.base import refusal_formats
from hostd.handlers.download import DownloadsInFlight
from hostd.handlers.pages import NotFoundHandler, StaticHandler
from hostd.handlers.upload import UploadsInFlight
from hostd.limits import Limits
from hostd.metrics import Metrics
from hostd.server import (
    LINGER_IDLE_SECONDS,
    HostdServer,
    OpenConnections,
    listening_sockets,
    raise_open_files_limit,
)
from hostd.storage import BlobStore, StoreUnavailable, store_from
from hostd.throttle import AddressLimiter, SignInLimiter
from hostd.thumbs import Thumbnails

log = logging.getLogger("hostd")

# How often the server looks for bytes that a crash left without a row.
GC_EVERY_SECONDS = 6 * 3600.0
# How often it removes expired uploads (they stop being served at their time all the same).
PRUNE_EVERY_SECONDS = 600.0
# How often it removes what crashed uploads left behind.
STALE_TEMP_EVERY_SECONDS = 3600.0

M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
M_MMAP_THRESHOLD = -3
# Blocks this big or bigger are mmapped: Argon2's buffers, not the 256 KiB body chunks.
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024
# Free memory at the heap's top is given back past this much: twice the mmap threshold, the
# ratio glibc keeps itself while it moves the threshold.
TRIM_THRESHOLD_BYTES = 2 * MMAP_THRESHOLD_BYTES


def make_app(
    config: Config,
    db: Database,
    store: BlobStore,
    auth: Auth | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,  # for the throttles; tests bring their own
    access_log: AccessLog | None = None,
    wall_clock: Callable[[], float] = time.time,  # for expiry; tests move theirs on
) -> tornado.web.Application:
    templates = jinja2.Environment(
        loader=jinja2.FileSystemLoader(config.templates_dir),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a typo in a template is an error, not blank output
    )
    templates.filters["datetime"] = format_time
    templates.filters["filesize"] = format_size
    templates.filters["isotime"] = lambda epoch: time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)
    )
    access_log = access_log or AccessLog()
    app = tornado.web.Application(
        all_routes(),
        default_handler_class=NotFoundHandler,
        hostd_config=config,
        hostd_db=db,
        hostd_store=store,
        hostd_auth=auth or Auth(),
        hostd_thumbs=thumbnails_of(config),
        hostd_limiter=SignInLimiter(db, clock=wall_clock),  # shared with other processes
        hostd_registrations=AddressLimiter(config.registrations_per_hour, clock=clock),
        hostd_invalid_keys=AddressLimiter(config.invalid_keys_per_hour, clock=clock),
        hostd_in_flight=UploadsInFlight(),
        hostd_downloads=DownloadsInFlight(),
        # Behind a proxy every connection is the proxy's: counted, not capped.
        hostd_connections=OpenConnections(
            None if config.trust_proxy else config.connections_per_address
        ),
        hostd_partials=resumable.Partials(config.data_dir / "partials"),
        hostd_limits=Limits(config, clock=clock),
        log_function=access_log,
        hostd_wall_clock=wall_clock,
        jinja_env=templates,
        static_path=str(config.static_dir),
        static_handler_class=StaticHandler,
        cookie_secret=config.cookie_secret,
        xsrf_cookies=True,
        xsrf_cookie_kwargs={"httponly": True, "samesite": "Lax"},  # Secure: BaseHandler
        login_url="/login",
        debug=config.debug,
    )
    # Off unless metrics.enabled: then a request costs the access log's line alone.
    metrics = (
        Metrics(app.settings, config.metrics_allow, clock=clock) if config.metrics_enabled else None
    )
    app.settings["hostd_metrics"] = metrics
    access_log.observer = metrics.observe_request if metrics else None
    return app


def thumbnails_of(config: Config) -> Thumbnails:
    return Thumbnails(
        config.data_dir / "thumbs", max_decode_bytes=config.max_thumbnail_decode_bytes
    )


def format_size(size: int) -> str:
    """Sizes as the upload page's script shows them: "129 bytes", "1.5 MiB"."""
    if size < 1024:
        return f"{size} bytes"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def format_time(epoch: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch))


# The largest body a URL that takes no upload accepts (a form, a JSON request): above it,
# 413. Such a body is read whole into memory before its handler runs, by every URL (a 404
# too): 1,000 connections at a 1 MiB limit held 1.8 GB. hostd's forms take a few hundred
# bytes.
BODY_LIMIT_BYTES = 64 * 1024


def make_server(config: Config, app: tornado.web.Application) -> HostdServer:
    return HostdServer(
        app,
        xheaders=config.trust_proxy,
        # Uploads raise their own limit in prepare(); everything else stays small.
        max_body_size=BODY_LIMIT_BYTES,
        max_buffer_size=1024 * 1024,
        chunk_size=256 * 1024,
        idle_connection_timeout=120,
        # A body that is not streamed (a form) must arrive whole in this time; uploads
        # watch their own pace (limits.body_idle_seconds between bytes).
        body_seconds=config.body_idle_seconds,
        format_for=refusal_formats(app),
        connections=app.settings["hostd_connections"],
    )


async def open_parts(
    config: Config, *, new_cookie_secret: bool = False
) -> tuple[Config, Database, BlobStore]:
    """Create the data dir, the cookie secret, the database and the blob store. Raises
    ConfigError when the cookie secret is not the database's (see check_cookie_secret)."""
    make_data_dir(config)
    config = ensure_cookie_secret(config)
    database = await Database.open_config(config, check_pages=True)
    try:
        await check_cookie_secret(config, database, replace=new_cookie_secret)
    except BaseException:
        await database.close()
        raise
    store = store_from(config)
    try:
        await store.check()  # an S3 endpoint down, a missing bucket, a wrong key: stop now
        removed = await store.remove_stale_temp_files()
    except BaseException:
        store.close()
        await database.close()  # else its thread keeps the process from exiting
        raise
    if removed:
        log.info("removed %d half-written upload(s) left by an earlier run", removed)
    return config, database, store


async def check_cookie_secret(config: Config, database: Database, *, replace: bool) -> None:
    """Every process serving one database must sign cookies with the same secret, or a
    session begun on one is refused by the next. The first start records a fingerprint of
    its secret; a later one with another secret does not start (with `replace`, it records
    its own instead, which signs everyone out)."""
    assert config.cookie_secret is not None
    secret = config.cookie_secret
    mine = await asyncio.to_thread(secret_fingerprint, secret)
    recorded = await db.record_setting(database, name=db.COOKIE_SECRET, value=mine, replace=replace)
    if recorded != mine and not await asyncio.to_thread(fingerprint_matches, recorded, secret):
        where = "database.url" if config.database_url else config.db_path
        raise ConfigError(
            f"the cookie secret differs from the one {where} was first served with: "
            "every hostd on one database must use the same (server.cookie_secret, "
            "HOSTD_COOKIE_SECRET or the data dir's cookie_secret file); to replace it, "
            "signing everyone out, start once with --new-cookie-secret"
        )


def machine_problem(exc: Exception) -> str | None:
    """The line for a failure of the machine rather than of the command: a full disk, a
    damaged database. None for anything else."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"out of storage space ({exc.strerror}): free some, then run it again"
    if db.is_full(exc):
        return f"out of storage space ({exc}): free some, then run it again"
    if db.is_damaged(exc):
        where = "the data dir from a backup (hostd restore)"
        said_by = exc.__cause__ if isinstance(exc, db.Damaged) and exc.__cause__ else exc
        if not isinstance(said_by, sqlite3.Error):
            where = "the database from a backup"
        return f"the database is damaged ({exc}): restore {where}"
    return None


def log_failure_now_and_then(what: str, exc: Exception) -> None:
    """A periodic task failed: one line when the machine or a service is at fault (a full
    disk, a damaged database, the database or the storage out of reach, for as long as it
    lasts), a traceback only for hostd's own mistakes."""
    line = machine_problem(exc)
    if line is None and isinstance(exc, (db.Unavailable, StoreUnavailable)):
        line = str(exc)
    if line is None:
        log.error("%s failed; trying again later", what, exc_info=exc)
    else:
        log.warning("%s failed; trying again later: %s", what, line)


async def collect_garbage_now_and_then(
    db: Database, store: BlobStore, thumbs: Thumbnails, every_seconds: float = GC_EVERY_SECONDS
) -> None:
    """Remove bytes that a crash left without a row (see uploads.collect_garbage)."""
    while True:
        try:
            found = await uploads.collect_garbage(db, store, thumbs)
        except Exception as exc:
            log_failure_now_and_then("garbage collection", exc)
        else:
            if found.removed:
                log.info("gc: removed %d file(s) no upload pointed at", len(found.removed))
            if found.missing:
                log.warning(
                    "gc: %d file(s) are missing their bytes (run `hostd gc` for the list)",
                    len(found.missing),
                )
            if found.damaged:
                log.warning(
                    "gc: %d file(s) have bytes that are not the size recorded for them (run"
                    " `hostd gc` for the list)",
                    len(found.damaged),
                )
        await asyncio.sleep(every_seconds)


async def prune_now_and_then(
    db: Database,
    store: BlobStore,
    thumbs: Thumbnails,
    every_seconds: float = PRUNE_EVERY_SECONDS,
    clock: Callable[[], float] = time.time,
    partials: resumable.Partials | None = None,
) -> None:
    """Remove expired uploads, and the bytes no unexpired upload is left for (`hostd prune`);
    and expired resumable uploads with their partial files."""
    while True:
        if partials is not None:
            try:
                gone = await resumable.prune(db, partials, now=int(clock()))
            except Exception as exc:
                log_failure_now_and_then("removing expired resumable uploads", exc)
            else:
                if gone:
                    log.info("prune: removed %d expired resumable upload(s)", gone)
        try:
            removed = await uploads.prune(db, store, thumbs, now=int(clock()))
        except Exception as exc:
            log_failure_now_and_then("removing expired uploads", exc)
        else:
            if removed:
                files = len({item.upload.sha256 for item in removed if item.blob_gone})
                log.info("prune: removed %d expired upload(s), %d file(s)", len(removed), files)
        await asyncio.sleep(every_seconds)


async def remove_stale_temp_files_now_and_then(
    store: BlobStore, every_seconds: float = STALE_TEMP_EVERY_SECONDS
) -> None:
    """What crashed uploads left (temp files; with S3, temp objects and multipart uploads
    older than an hour): removed at start (open_parts) and then every hour."""
    while True:
        await asyncio.sleep(every_seconds)
        try:
            removed = await store.remove_stale_temp_files()
        except Exception as exc:
            log.warning("could not remove stale temp files; trying again later: %s", exc)
        else:
            if removed:
                log.info("removed %d half-written upload(s)", removed)


def return_big_buffers_to_the_os() -> None:
    """Keep Argon2's buffers (19 MiB a key check, 64 MiB a password) out of the heap.

    glibc's malloc raises its mmap threshold whenever a big mmapped block is freed, so after
    the first key check the next 19 MiB buffers come from a heap that keeps them resident:
    ~20 MiB more RSS for good. A fixed threshold keeps big blocks mmapped, so that each is
    returned to the system at free(). Elsewhere (not glibc) this does nothing.

    A fixed threshold also stops glibc from moving the trim threshold with it, which then
    stays at 128 KiB: each request's 64 KiB read buffer, freed at the heap's top, gave memory
    back and took it again, some 70,000 page faults a second at 1,100 uploads a second
    (depending on how the heap happened to lie). So the trim threshold is set too.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)


async def serve(
    config: Config,
    sockets: list[socket.socket] | None = None,
    *,
    new_cookie_secret: bool = False,
) -> None:
    """Run until SIGINT or SIGTERM, on `sockets` when given (bound by `serve --instances`)."""
    return_big_buffers_to_the_os()
    raise_open_files_limit()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):  # before "listening": a signal may follow it
        loop.add_signal_handler(signum, stop.set)
    if sockets is None:  # first: an address in use stops the start before anything opens
        sockets = listening_sockets(config.host, config.port)
    config, db, store = await open_parts(config, new_cookie_secret=new_cookie_secret)
    app = make_app(config, db, store)
    server = make_server(config, app)
    gc_task = loop.create_task(
        collect_garbage_now_and_then(db, store, app.settings["hostd_thumbs"])
    )
    prune_task = loop.create_task(
        prune_now_and_then(
            db, store, app.settings["hostd_thumbs"], partials=app.settings["hostd_partials"]
        )
    )
    stale_task = loop.create_task(remove_stale_temp_files_now_and_then(store))
    server.add_sockets(sockets)
    shown_host = f"[{config.host}]" if ":" in config.host else config.host
    log.info(
        "hostd listening on http://%s:%d/ (data in %s)", shown_host, config.port, config.data_dir
    )
    if config.public_url:
        log.info("public URL: %s/", config.public_url)
    if affinity.home is not None:
        log.info("the IOLoop and the threads it hands small jobs to run on CPU %d", affinity.home)
    await stop.wait()
    app.settings["log_function"].flush()
    await shutdown(server, app.settings["hostd_in_flight"], config.shutdown_grace_seconds)
    gc_task.cancel()
    prune_task.cancel()
    stale_task.cancel()
    app.settings["hostd_thumbs"].close()
    await db.close()
    store.close()
    app.settings["log_function"].flush()
    stats = db.stats
    log.info(
        "database: %d writes in %d commits (%.1f a commit)",
        stats.units,
        stats.commits,
        stats.mean_batch,
    )
    log.info("stopped")
    for handler in logging.getLogger().handlers:
        handler.flush()


# After the grace, how long uploads whose body has all arrived get to be recorded.
AFTER_GRACE_SECONDS = 5.0
SHUTTING_DOWN = "the server is shutting down; the upload was not stored, send it again soon"


async def shutdown(server: HostdServer, in_flight: UploadsInFlight, grace: float) -> None:
    """Stop accepting connections; give uploads in flight `grace` seconds to finish; answer
    those still arriving 503 (their temp files removed); then close every connection."""
    server.stop()
    in_flight.closing = True
    if len(in_flight):
        log.info("shutting down: waiting up to %gs for %d upload(s)", grace, len(in_flight))
    else:
        log.info("shutting down")
    if not await in_flight.finished(grace):
        await asyncio.gather(*(upload.drop_upload(503, SHUTTING_DOWN) for upload in in_flight))
        await in_flight.finished(AFTER_GRACE_SECONDS)
    await server.let_answers_through(LINGER_IDLE_SECONDS)
    await server.close_all_connections()
