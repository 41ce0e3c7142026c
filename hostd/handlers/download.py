"""Serving blobs at /<hash>, /<hash>.<ext> and /<hash>/<filename>."""

from __future__ import annotations

import asyncio
import email.utils
import functools
import logging
import posixpath
import re
import time
import unicodedata
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from tornado.http1connection import HTTP1Connection
from tornado.iostream import StreamClosedError

from hostd import db, sniff
from hostd.db import Blob
from hostd.formdata import NOT_IN_FILENAMES
from hostd.handlers.base import BaseHandler, Refusal
from hostd.hashes import PUBLIC_HASH_PATTERN
from hostd.parsing import parse_count, parse_http_date
from hostd.storage import (
    SMALL_READ_BYTES,
    BlobDamaged,
    BlobMissing,
    BlobReader,
    StoreUnavailable,
)
from hostd.throttle import AddressCounts

log = logging.getLogger("hostd")

# Uploaded content must never run script in our origin: `sandbox` gives the document an
# opaque origin and no scripts; the rest stops it loading anything but itself.
FILE_CSP = (
    "default-src 'none'; img-src 'self' data:; media-src 'self'; style-src 'unsafe-inline'; sandbox"
)
CACHE_FOREVER = "public, max-age=31536000, immutable"
RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")
NO_FILE = "There is no file with this hash."
STORE_DOWN = "The file storage cannot be reached just now. Try again in a minute."
# With storage.s3.redirect, these are sent from the bucket (without our CSP): types a browser
# does not run script in. HTML, SVG, XML and anything unknown are still streamed by hostd.
REDIRECT_KINDS = ("image/", "audio/", "video/")
REDIRECT_TYPES = ("application/pdf", "text/plain")
# A client must take at least this much of a download in each limits.send_idle_seconds: a
# 2G phone takes it in seconds, while one that takes a few bytes a minute would hold its
# connection, and a piece of the file in memory, for as long as it liked.
MIN_SEND_PROGRESS_BYTES = 64 * 1024
# What a refusal by DownloadsInFlight asks the client to wait.
DOWNLOADS_RETRY_SECONDS = 5


def redirect_safe(content_type: str) -> bool:
    kind = content_type.partition(";")[0].strip().lower()
    if kind == "image/svg+xml":
        return False
    return kind.startswith(REDIRECT_KINDS) or kind in REDIRECT_TYPES


def cache_control(blob: Blob, now: int) -> str:
    """Forever, or until the file expires: no cache may serve it past its time."""
    if blob.expires_at is None:
        return CACHE_FOREVER
    return f"public, max-age={max(blob.expires_at - now, 0)}"


# With server.accel_redirect, nginx answers the Range header itself: only a single range it
# reads exactly as parse_range() does goes to it (ASCII digits, few enough not to overflow).
NGINX_RANGE = re.compile(r"bytes=[0-9]{0,18}-[0-9]{0,18}")
# Preconditions hostd evaluates against the blob's own validators; nginx would use the
# file's (its mtime, its own ETag), and answer some with a 412 that hostd would not.
NGINX_PRECONDITIONS = ("If-Match", "If-Unmodified-Since")


@functools.lru_cache(maxsize=4096)
def http_date(epoch: int) -> str:
    """Last-Modified, formatted once per blob (a blob's row never changes), not per answer."""
    return email.utils.formatdate(epoch, usegmt=True)


def content_disposition(filename: str, kind: str = "inline") -> str:
    """`inline` (or `attachment`) with the filename, RFC 6266 / RFC 5987 encoded when it is
    not plain ASCII. The name comes from the URL, which anyone can write: what an uploaded
    name may not hold (controls, format characters such as U+202E, which shows
    "photo\u202egpj.exe" as "photoexe.jpg") becomes "_", so no link saves a file under a
    name that reads as another."""
    filename = "".join(
        "_" if unicodedata.category(ch) in NOT_IN_FILENAMES else ch for ch in filename
    )
    ascii_name = filename.encode("ascii", "replace").decode("ascii").replace("?", "_")
    ascii_name = re.sub(r'["\\\x00-\x1f\x7f]', "_", ascii_name)
    if ascii_name == filename:
        return f'{kind}; filename="{filename}"'
    encoded = urllib.parse.quote(filename, safe="")
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{encoded}"


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """A single `bytes=` range as (start, end inclusive); None when it is unsatisfiable.

    Raises ValueError for a header we do not serve ranges for (several ranges, other
    units); the caller then sends the whole file, as RFC 9110 allows.
    """
    match = RANGE.fullmatch(header.strip())
    if not match or match.group(1) == match.group(2) == "":
        raise ValueError(header)
    # Positions past the end all mean the same: read as size + 1 at most, never as a
    # 5,000-digit int.
    first, last = (parse_count(n, at_most=size) if n else None for n in match.groups())
    if first is None:
        assert last is not None
        if last == 0:
            return None
        return max(size - last, 0), size - 1
    if last is not None and last < first:
        raise ValueError(header)  # "bytes=5-3" is not a range (RFC 9110 14.1.1): ignored
    if first >= size:
        return None
    end = min(last, size - 1) if last is not None else size - 1
    return first, end


async def not_served(database: db.Database, hash: str, missing: str) -> Refusal:
    """Why there is nothing at this hash: 451 when its bytes are banned, else 404 with
    `missing`. Asked only on a miss, so known files are served without this read."""
    ban = await db.get_ban(database, hash=hash)
    if ban is None:
        return Refusal(404, missing)
    message = "This file was taken down by the admin of this server and cannot be served."
    return Refusal(451, f"{message} Reason: {ban.reason}" if ban.reason else message)


class DownloadsInFlight(AddressCounts):
    """Downloads of more than SMALL_READ_BYTES whose bytes have not all gone to the socket
    yet, by client address (an IPv6 address by its /64). Each holds up to two 256 KiB
    pieces while its client takes them: clients that opened thousands and read none held
    gigabytes. (A smaller answer is one write, which the socket's own buffers take.) At most
    limits.downloads_in_flight_per_address from one address (past it, 429) and
    limits.downloads_in_flight in all (past it, 503), both with Retry-After."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = 0  # 429s, for /metrics (the 503s are counted with every other)

    def enter(self, ip: str, *, per_address: int, in_all: int) -> str:
        """Count a download in, or raise Refusal; the address to leave() with."""
        address, count = self.count_of(ip)
        if count >= per_address:
            self.refused += 1
            raise Refusal(
                429,
                f"{per_address} downloads from your address are already in progress; "
                "try again when one of them has finished",
            )
        if self.total >= in_all:
            raise Refusal(503, "The server is sending as many files as it can. Try again soon.")
        self.count_in(address)
        return address


class DownloadHandler(BaseHandler):
    """GET/HEAD a stored file in chunks, with caching validators and byte ranges; or, behind
    nginx with server.accel_redirect, the headers and X-Accel-Redirect, and nginx the bytes."""

    async def prepare(self) -> None:
        # A file answer has no use for the session user (a trip to SQLite's thread for each
        # file a signed-in browser loads): only the 404 page loads it, in not_found().
        if self.request.method not in ("GET", "HEAD"):
            await super().prepare()

    def set_default_headers(self) -> None:
        # Every answer here starts as a file answer, which needs no page nonce: write_error()
        # puts the page headers back for an error page.
        self.clear_header("Server")
        self.set_header("Content-Security-Policy", FILE_CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")

    def set_error_headers(self, status_code: int, kwargs: dict[str, Any]) -> None:
        super().set_error_headers(status_code, kwargs)
        if status_code == 429:  # too many downloads from this address (DownloadsInFlight)
            self.set_header("Retry-After", str(DOWNLOADS_RETRY_SECONDS))

    async def get(self, hash: str, suffix: str | None = None, filename: str | None = None) -> None:
        await self.serve(hash, suffix, filename, include_body=True)

    async def head(self, hash: str, suffix: str | None = None, filename: str | None = None) -> None:
        await self.serve(hash, suffix, filename, include_body=False)

    async def serve(
        self, hash: str, suffix: str | None, filename: str | None, *, include_body: bool
    ) -> None:
        now = self.now()
        blob = await db.get_blob(self.db, hash, now=now)
        if blob is None:
            raise await self.not_found(hash)
        if not blob.alive_at(now):
            raise await self.not_found(hash)
        try:
            reader = await self.store.open(blob.sha256, blob.size_bytes)
            try:
                await self.answer(reader, blob, suffix, filename, include_body=include_body)
            finally:
                reader.close()
        # Either may come from the store's first read (S3 asks only then): before any byte.
        except BlobMissing:  # taken down meanwhile, perhaps by `hostd file rm` elsewhere
            if self._headers_written:
                raise
            db.forget_blob(self.db, blob.hash)
            if await db.get_blob(self.db, hash, now=now) is not None:  # not taken down: lost
                log.warning(
                    "the bytes of %s (%s) are missing from the store; `hostd gc` lists the "
                    "uploads that have lost theirs",
                    hash,
                    blob.sha256,
                )
            raise await self.not_found(hash) from None
        except BlobDamaged:
            # Not the bytes that were uploaded: serving them would hand out another file.
            log.warning(
                "the bytes of %s (%s) are not the %d uploaded (cut short or written over);"
                " `hostd gc --verify` lists the uploads whose bytes are damaged",
                hash,
                blob.sha256,
                blob.size_bytes,
            )
            if self._headers_written:
                self.cut_off()  # the client sees a download cut short, not a whole file
                return
            raise await self.not_found(hash) from None
        except StoreUnavailable as exc:
            log.error("could not read %s from the store: %s", blob.sha256, exc)
            if self._headers_written:
                self.cut_off()
                return
            raise Refusal(503, STORE_DOWN) from None

    async def answer(
        self,
        reader: BlobReader,
        blob: Blob,
        suffix: str | None,
        filename: str | None,
        *,
        include_body: bool,
    ) -> None:
        self.set_file_headers(blob, suffix, filename)
        if self.precondition_failed(blob):
            self.set_status(412)
            self.finish()
            return
        if self.not_modified(blob):
            self.set_status(304)
            self.finish()
            return
        if self.config.s3_redirect and redirect_safe(self._headers["Content-Type"]):
            url = await self.store.redirect_url(
                blob.sha256,
                content_type=self._headers["Content-Type"],
                disposition=self._headers.get("Content-Disposition"),
            )
            if url is not None:
                self.redirect_to_store(url)
                return
        start, end = 0, blob.size_bytes - 1
        if "Range" in self.request.headers and self.range_applies(blob):
            wanted: tuple[int, int] | tuple[()] | None
            try:
                wanted = parse_range(self.request.headers["Range"], blob.size_bytes)
            except ValueError:
                wanted = ()  # not a range we serve: the whole file, as RFC 9110 allows
            if wanted is None:
                self.set_status(416)
                self.set_header("Content-Range", f"bytes */{blob.size_bytes}")
                self.clear_header("Content-Type")
                self.finish()
                return
            if wanted:
                # 206 even for all of it ("bytes=0-"): media players seek only after a 206.
                start, end = wanted
                self.set_status(206)
                self.set_header("Content-Range", f"bytes {start}-{end}/{blob.size_bytes}")
        accel = self.accel_redirect(blob)
        if accel is not None:
            self.set_header("X-Accel-Redirect", accel)  # nginx sends the bytes, this range too
            if self.get_status() == 200:
                self.clear_header("Accept-Ranges")  # nginx adds its own to a whole file
            self.finish()
            return
        self.set_header("Content-Length", str(end - start + 1))
        if not include_body:
            await reader.check()  # a HEAD answers as its GET would: 404, 503 or this
            self.finish()
            return
        if end - start + 1 <= SMALL_READ_BYTES:  # one write, which the socket's buffers take
            await self.send(reader, start, end)
            self.finish()
        else:
            await self.send_counted(reader, start, end)

    async def send_counted(self, reader: BlobReader, start: int, end: int) -> None:
        """send() and finish() a big download as one of DownloadsInFlight, counted until
        its last bytes have gone to the socket (or the client has gone)."""
        downloads: DownloadsInFlight = self.settings["hostd_downloads"]
        address = downloads.enter(
            self.address,
            per_address=self.config.downloads_in_flight_per_address,
            in_all=self.config.downloads_in_flight,
        )
        try:
            await self.send(reader, start, end)
            sent = self.finish()
        except BaseException:
            downloads.leave(address)
            raise
        sent.add_done_callback(lambda _: downloads.leave(address))

    def redirect_to_store(self, url: str) -> None:
        """302 to the store's short-lived URL (storage.s3.redirect): the client asks the
        store, Range and all; nobody may cache the 302 past the URL's life."""
        for name in ("ETag", "Last-Modified", "Accept-Ranges", "Content-Disposition"):
            self.clear_header(name)
        self.set_header("Cache-Control", "no-cache")
        self.redirect(url)

    async def send(self, reader: BlobReader, start: int, end: int) -> None:
        """The bytes from start to end, a piece on its way to the client while the next is
        read. The last piece is left for finish(): a small file goes out with the headers.
        A client that goes away (a seek in a video, a cancelled download: no error of
        ours), or takes no byte for limits.send_idle_seconds (see StallWatch), ends it."""
        left = end - start + 1
        sent: Awaitable[None] | None = None
        watch: StallWatch | None = None  # from the first wait: a small file never waits
        try:
            async for chunk in reader.chunks(start, end):
                if sent is not None:
                    watch = watch or self.watch_stalls()
                    try:
                        await sent
                    except StreamClosedError:
                        return
                self.write(chunk)
                left -= len(chunk)
                sent = self.flush() if left > 0 else None
        finally:
            if watch is not None:
                watch.stop()
        if left > 0:  # the store had fewer bytes than recorded (S3 says so only now)
            raise BlobDamaged(f"{left} bytes short")

    def cut_off(self) -> None:
        """End the connection mid-answer: all a server can say once the headers are out."""
        connection = self.request.connection
        assert isinstance(connection, HTTP1Connection)
        connection.close()

    def watch_stalls(self) -> StallWatch:
        connection = self.request.connection
        assert isinstance(connection, HTTP1Connection)
        stream = connection.stream
        # The bytes the socket has taken so far (IOStream's own count: Tornado 6.6, read at
        # 6.6.1, as server.py's overrides): a slow client takes a piece in many writes.
        return StallWatch(
            self.config.send_idle_seconds, lambda: stream._total_write_done_index, self.cut_off
        )

    def accel_redirect(self, blob: Blob) -> str | None:
        """X-Accel-Redirect's URI when nginx is to send the bytes (server.accel_redirect).

        None when hostd sends them: not configured, a store without local files, or a
        request nginx would answer otherwise than hostd does (a Range hostd answers with the
        whole file, which nginx might split or refuse; a precondition only nginx checks).
        """
        prefix = self.config.accel_redirect
        if prefix is None:
            return None
        headers = self.request.headers
        if any(name in headers for name in NGINX_PRECONDITIONS):
            return None
        if "Range" in headers and not (
            self.get_status() == 206 and NGINX_RANGE.fullmatch(headers["Range"].strip())
        ):
            return None
        path = self.store.accel_path(blob.sha256)
        return None if path is None else prefix + path

    async def not_found(self, hash: str) -> Refusal:
        """The 404 (or 451) for a hash without a file; the page shows who is signed in."""
        self.current_user = await self.session_user()
        return await not_served(self.db, hash, NO_FILE)

    def set_file_headers(self, blob: Blob, suffix: str | None, filename: str | None) -> None:
        # /<hash>/<dirs>/<name>: the last part names it; one that ends in "/" names nothing.
        filename = posixpath.basename(filename) if filename else None
        named = filename or suffix
        self.set_header("Content-Type", sniff.served_type(named, blob.content_type))
        # (the CSP and nosniff are defaults here)
        self.set_header("Cache-Control", cache_control(blob, self.now()))
        self.set_header("ETag", f'"{blob.sha256}"')
        self.set_header("Last-Modified", http_date(blob.created_at))
        self.set_header("Accept-Ranges", "bytes")
        if "download" in self.request.query_arguments:  # a link that saves, not opens, it
            # Saved under the hash, with the extension asked for or else the type's own.
            ext = suffix or sniff.extension_for("", blob.content_type)
            name = filename or f"{blob.hash}{ext}"
            self.set_header("Content-Disposition", content_disposition(name, "attachment"))
        elif filename:
            self.set_header("Content-Disposition", content_disposition(filename))

    def precondition_failed(self, blob: Blob) -> bool:
        """If-Match (strong: a weak tag never matches) or, without it, If-Unmodified-Since
        says the client's copy is not this file (RFC 9110, 13.2.2): an editor that saves
        only over the version it read, a resumed download of another file."""
        if_match = self.request.headers.get("If-Match")
        if if_match is not None:
            tags = [tag.strip() for tag in if_match.split(",")]
            return "*" not in tags and f'"{blob.sha256}"' not in tags
        since = parse_http_date(self.request.headers.get("If-Unmodified-Since", ""))
        return since is not None and blob.created_at > since

    def not_modified(self, blob: Blob) -> bool:
        if_none_match = self.request.headers.get("If-None-Match")
        if if_none_match is not None:
            tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
            return "*" in tags or f'"{blob.sha256}"' in tags
        # Ignored unless it is a valid HTTP-date, and not later than our clock: a date from
        # the future is not one we sent as Last-Modified (RFC 2616 14.25; Apache does so).
        now = time.time()
        since = parse_http_date(self.request.headers.get("If-Modified-Since", ""), now=now)
        return since is not None and blob.created_at <= since <= now

    def range_applies(self, blob: Blob) -> bool:
        """If-Range: serve the range only while the validator still matches."""
        if_range = self.request.headers.get("If-Range")
        return if_range is None or if_range.strip() == f'"{blob.sha256}"'

    def write_error(self, status_code: int, **kwargs: object) -> None:
        # An error here is our own page, not the file (send_error() has cleared the file's
        # headers): the page headers, with a nonce.
        super().set_default_headers()
        self.set_header("Cache-Control", "no-cache")
        super().write_error(status_code, **kwargs)


class StallWatch:
    """Calls `stalled` once `sent()` (bytes the client has taken) has not moved on by
    MIN_SEND_PROGRESS_BYTES for `idle_seconds`, as nginx's send_timeout does (but for any
    byte): a reader that stops taking bytes, or takes a few now and then, would hold its
    connection and a piece of the file for ever, while a slow one (a phone on 2G takes a
    256 KiB piece in a minute) goes on. One timer for a whole download, looking
    four times per `idle_seconds` (a timeout around each piece's wait cost 17 us a piece,
    6% of a 1 GiB download)."""

    def __init__(
        self, idle_seconds: float, sent: Callable[[], int], stalled: Callable[[], None]
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._idle = idle_seconds
        self._sent = sent
        self._stalled = stalled
        self._seen = sent()
        self._moved_at = self._loop.time()
        self._timer = self._loop.call_later(idle_seconds / 4, self._check)

    def stop(self) -> None:
        self._timer.cancel()

    def _check(self) -> None:
        now, sent = self._loop.time(), self._sent()
        if sent - self._seen >= MIN_SEND_PROGRESS_BYTES:
            self._seen, self._moved_at = sent, now
        elif now - self._moved_at >= self._idle:
            self._stalled()
            return
        self._timer = self._loop.call_later(self._idle / 4, self._check)


routes = [
    (rf"/(?P<hash>{PUBLIC_HASH_PATTERN})(?P<suffix>\.[^/]+)?", DownloadHandler),
    (rf"/(?P<hash>{PUBLIC_HASH_PATTERN})/(?P<filename>.+)", DownloadHandler),
]
