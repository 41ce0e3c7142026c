"""Resumable uploads over tus 1.0.0 at /api/tus/: core, creation, creation-with-upload,
termination, expiration and checksum (sha256).

Who a request is: its Bearer key, as on /api/upload; else, from the upload page, the
browser's session, but only with the page's xsrf token in X-XSRFToken (checked before
the body is read); else anonymous, where limits.allow_anonymous permits. An upload made by
an account is that account's alone: any other request gets a 404 for it. An anonymous
upload's URL (about 190 random bits) is its own authority.

When the last byte is in, the upload is registered exactly as any other (see
hostd.resumable.complete) and the answer carries what /api/upload would have answered, as
JSON in an `Upload-Info` header (with `X-Delete-Url` and `X-Expires`); a HEAD or GET of the
upload's URL gives it again until the record expires.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import hashlib
import json
import logging
import re
import secrets
from typing import Any

import tornado.web

from hostd import db, limits, metrics, resumable, retention, uploads
from hostd.db import Blob, Resumable, Upload, User
from hostd.formdata import UploadError, clean_filename
from hostd.handlers.base import (
    UNAVAILABLE_RETRY_SECONDS,
    ApiHandler,
    BaseHandler,
    Refusal,
    has_body,
    refuse_early,
)
from hostd.handlers.upload import (
    DRAIN_ALLOWANCE_BYTES,
    NEEDS_ACCOUNT,
    banned_message,
    delete_url,
    storage_failure,
    storage_trouble,
    touch_key,
    upload_answer,
)
from hostd.parsing import parse_count
from hostd.server import BodyPace, HostdConnection, json_error
from hostd.storage import StoreUnavailable

log = logging.getLogger("hostd")

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,creation-with-upload,termination,expiration,checksum"
CHECKSUM_ALGORITHMS = "sha256"
OFFSET_OCTET_STREAM = "application/offset+octet-stream"
BUSY = "this upload is being written by another request; retry in a moment"
NOT_WRITTEN = (
    "the server could not write this part; the upload keeps what it had before: ask where it"
    " stands (HEAD) and resume in a moment"
)
# How long a termination waits for a part still arriving to let go of the upload.
RELEASE_SECONDS = 10.0
ID_BYTES = 24  # 32 URL-safe characters
ID_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what an id of hostd's could look like
METADATA_KEY = re.compile(r"[!-+\--~]+")  # printable ASCII without space and comma
MAX_METADATA_BYTES = 4096


def http_time(epoch: int) -> str:
    return email.utils.formatdate(epoch, usegmt=True)


def parse_metadata(header: str) -> dict[str, bytes]:
    """Upload-Metadata: comma-separated `key base64(value)` pairs (a key alone: empty)."""
    if len(header) > MAX_METADATA_BYTES:
        raise UploadError(400, f"Upload-Metadata is longer than {MAX_METADATA_BYTES} bytes")
    pairs: dict[str, bytes] = {}
    for item in header.split(","):
        item = item.strip()
        if not item:
            continue
        key, _, value = item.partition(" ")
        if not METADATA_KEY.fullmatch(key) or key in pairs:
            raise UploadError(400, f"Upload-Metadata has a bad or repeated key: {key[:40]!r}")
        try:
            pairs[key] = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise UploadError(400, f"Upload-Metadata's {key[:40]!r} is not base64") from None
    return pairs


def metadata_text(pairs: dict[str, bytes], key: str) -> str:
    try:
        return pairs.get(key, b"").decode("utf-8")
    except UnicodeDecodeError:
        raise UploadError(400, f"Upload-Metadata's {key!r} is not valid UTF-8") from None


def part_refusal(exc: Exception) -> UploadError | None:
    """The answer when taking a part failed: a refusal as it is; a full disk 507; the
    database's or the disk's trouble 503, for the upload stays, to be resumed from its
    recorded offset. None for anything else (a bug: a 500)."""
    if isinstance(exc, UploadError):
        return exc
    if not storage_trouble(exc):
        return None
    status, message = storage_failure(exc)
    # The disk's trouble (read-only, no permission, an I/O error): this part is lost, not
    # the upload, which storage_failure's "the file was not stored" would say.
    local_disk = isinstance(exc, OSError) and not isinstance(exc, StoreUnavailable)
    if status == 500 or (status == 503 and local_disk):
        status, message = 503, NOT_WRITTEN
    return UploadError(status, message)


def parse_checksum(header: str) -> tuple[str, bytes]:
    """Upload-Checksum: `<algorithm> <base64 digest>`; sha256 only."""
    algorithm, _, value = header.strip().partition(" ")
    if algorithm.lower() != "sha256":
        raise UploadError(400, f"the checksum algorithm must be sha256, not {algorithm[:20]!r}")
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != hashlib.sha256().digest_size:
        raise UploadError(400, "Upload-Checksum must be 'sha256 <base64 of the 32-byte digest>'")
    return algorithm, digest


class TusHandler(ApiHandler):
    """What the tus URLs share: the protocol's headers, who the request is, and receiving
    a part of an upload (the body of a PATCH, or of a POST with creation-with-upload)."""

    target: Resumable | None = None
    part: resumable.PartFile | None = None
    admission: limits.Admission | None = None
    pace: BodyPace | None = None
    checksum: bytes | None = None
    hasher: Any = None
    failed = False
    gone = False
    body_over = False  # the whole body arrived: the method runs, whatever the client does
    saving: asyncio.Future[None] | None = None
    in_flight_entered = False
    streaming = False  # the body is being taken: refusals from now on answer as it comes
    released: asyncio.Event | None = None  # set once the request has let go of its upload
    # A part whose connection broke is kept for the client to resume; not where the client
    # never learnt the upload's URL (a creation whose answer it did not get).
    keeps_broken_parts = True

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Tus-Resumable", TUS_VERSION)
        self.set_header("Cache-Control", "no-store")

    def check_xsrf_cookie(self) -> None:
        pass  # the session counts only with a right X-XSRFToken, checked in identify()

    def initialize(self) -> None:
        # A streamed body is not parsed, so its Content-Type stays, also on a PATCH with
        # no bytes (a client's first or a retried one), where tus requires it.
        pass

    @property
    def partials(self) -> resumable.Partials:
        return self.settings["hostd_partials"]

    def options(self, *args: Any, **kwargs: Any) -> None:
        self.set_header("Tus-Version", TUS_VERSION)
        self.set_header("Tus-Extension", TUS_EXTENSIONS)
        self.set_header("Tus-Max-Size", str(self.config.max_upload_bytes))
        self.set_header("Tus-Checksum-Algorithm", CHECKSUM_ALGORITHMS)
        super().options(*args, **kwargs)

    async def prepare(self) -> None:
        self.current_user = None
        if self.request.method == "OPTIONS":
            return
        try:
            if self.request.headers.get("Tus-Resumable") != TUS_VERSION:
                self.set_header("Tus-Version", TUS_VERSION)
                raise UploadError(412, f"this server speaks tus {TUS_VERSION} (Tus-Resumable)")
            await self.identify()
            await self.begin()
        except Exception as exc:
            # Whatever failed, the upload, its file, the place in flight and the disk
            # reservation are given back first (else the upload stays taken: 423 for good).
            await self.release()
            refusal = part_refusal(exc)
            if refusal is None:
                raise
            self.refuse(refusal)

    async def begin(self) -> None:
        """The method's checks before the body is read; UploadError to refuse."""

    def refuse(self, exc: UploadError) -> None:
        """Answer a refusal; before a body is read, without losing the answer to a reset."""
        self.set_refusal_headers(exc)
        _, body, content_type = json_error(exc.status, exc.message)
        if has_body(self.request) and not self.streaming and not self.body_over:
            refuse_early(self, exc.status, body, content_type)
            return
        self.set_status(exc.status, "Checksum Mismatch" if exc.status == 460 else None)
        self.set_header("Content-Type", content_type)
        self.finish(body)

    def set_refusal_headers(self, exc: UploadError) -> None:
        for name, value in exc.headers.items():
            self.set_header(name, value)
        if exc.status == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="hostd"')
        if exc.status == 503 and "Retry-After" not in exc.headers:
            self.set_header("Retry-After", str(UNAVAILABLE_RETRY_SECONDS))

    async def identify(self) -> None:
        try:
            header = self.authorization()
            if header is not None:
                self.api_key = await self.bearer_key(header)
        except Refusal as refused:  # in the upload's own answer format
            raise UploadError(refused.status_code, refused.message, refused.headers) from None
        if header is not None:
            return
        if "X-XSRFToken" not in self.request.headers:
            return  # cookies alone never count: another site could make a browser send them
        user: User | None = await BaseHandler.session_user(self)
        if user is None:
            return
        try:
            tornado.web.RequestHandler.check_xsrf_cookie(self)
        except tornado.web.HTTPError:
            raise UploadError(403, "the page's xsrf token is missing or wrong; reload it") from None
        self.current_user = user

    async def load(self, id: str) -> Resumable:
        """This request's upload: 404 when there is none, or it is another account's;
        410 once it has expired."""
        found = await db.get_resumable(self.db, id=id) if ID_SHAPE.fullmatch(id) else None
        if found is None or (found.user_id is not None and found.user_id != self.owner_id):
            raise UploadError(404, "no such upload (or not yours)")
        if found.expires_at <= self.now():
            raise UploadError(410, "this upload has expired")
        return found

    def set_progress_headers(self, found: Resumable) -> None:
        self.set_header("Upload-Offset", str(found.offset_bytes))
        self.set_header("Upload-Expires", http_time(found.expires_at))

    # -- receiving a part

    def check_part_type(self) -> None:
        content_type = self.request.headers.get("Content-Type", "")
        if content_type.split(";")[0].strip().lower() != OFFSET_OCTET_STREAM:
            raise UploadError(415, f"the body's Content-Type must be {OFFSET_OCTET_STREAM}")

    async def start_part(self, found: Resumable) -> None:
        """Checks and set-up for a body that carries bytes of `found` from its offset."""
        self.check_part_type()
        left = found.length_bytes - found.offset_bytes
        length = parse_count(self.request.headers.get("Content-Length", "0"), at_most=left)
        if length is None:
            raise UploadError(400, "the Content-Length header is not a number of bytes")
        if length > left:
            raise UploadError(413, f"this part is larger than what the upload lacks ({left} bytes)")
        if "Upload-Checksum" in self.request.headers:
            _, self.checksum = parse_checksum(self.request.headers["Upload-Checksum"])
            self.hasher = hashlib.sha256()
        holder = self.partials.writing.get(found.id)
        if holder is not None and not holder.body_over:
            # A client resuming while its old request still seems alive (the network broke
            # and the server has not noticed yet): end the old one, and let this retry.
            holder.request.connection.close()
            raise UploadError(423, BUSY, headers={"Retry-After": "1"})
        if holder is not None:
            raise UploadError(423, "this upload is being finished; ask for it again in a moment")
        if not has_body(self.request):
            return
        self.admission = self.upload_limits.resume(
            length=length if "Content-Length" in self.request.headers else None,
            upload_length=found.length_bytes,
            user_id=found.user_id,
            key_id=self.api_key.key_id if self.api_key else None,
            address=self.address,
        )
        self.in_flight.enter(self)
        self.in_flight_entered = True
        self.partials.writing[found.id] = self
        self.released = asyncio.Event()
        self.target = found
        part = resumable.PartFile(self.partials.path(found.id), found.offset_bytes)
        try:
            await part.open()
        except FileNotFoundError:
            raise UploadError(410, "this upload's bytes are gone; start it again") from None
        except resumable.PartialBusy:
            raise UploadError(423, BUSY, headers={"Retry-After": "1"}) from None
        self.part = part
        connection = self.request.connection
        assert isinstance(connection, HostdConnection)
        connection.set_max_body_size(left + DRAIN_ALLOWANCE_BYTES)
        connection.streaming(json_error)
        self.pace = BodyPace(self.config.body_idle_seconds, self.stalled)
        self.streaming = True

    def data_received(self, chunk: bytes) -> Any:
        if self.pace is not None and (too_slow := self.pace.arrived(len(chunk))):
            return self.drop_upload(408, too_slow)
        if self.failed or self.part is None or self.target is None:
            return None
        if self.part.offset + len(chunk) > self.target.length_bytes:
            return self.refuse_midway(
                UploadError(413, "the body is longer than what the upload lacks")
            )
        try:
            if self.admission is not None:
                self.admission.received(len(chunk))
        except UploadError as exc:
            return self.refuse_midway(exc)
        if self.hasher is not None:
            self.hasher.update(chunk)
        self.part.write(chunk)
        behind = self.part.backpressure()
        checkpoint = self.checksum is None and (
            self.part.offset - self.part.synced >= resumable.CHECKPOINT_BYTES
        )
        if behind is None and not checkpoint:
            return None
        waiting = self.wait_for_disk(behind)
        return waiting if self.pace is None else self.pace.paused(waiting)

    async def wait_for_disk(self, behind: Any) -> None:
        """Let the file catch up (Tornado reads no more meanwhile); every CHECKPOINT_BYTES,
        make the progress durable, unless a checksum makes this part all or nothing."""
        assert self.part is not None and self.target is not None
        try:
            if behind is not None:
                await behind
            if self.checksum is None and (
                self.part.offset - self.part.synced >= resumable.CHECKPOINT_BYTES
            ):
                await resumable.save(self.db, self.part, self.target.id)
        except Exception as exc:
            refusal = part_refusal(exc)
            if refusal is None:
                raise
            await self.refuse_midway(refusal)

    def stalled(self, message: str) -> None:
        asyncio.ensure_future(self.drop_upload(408, message))

    async def refuse_midway(self, exc: UploadError) -> None:
        """Stop taking this body: keep what arrived before (unless a checksum covers the
        whole part), answer now, and drain the rest so the answer is not lost to a reset."""
        if self.failed:
            return
        self.failed = True
        await self.save_progress()
        if self._finished or self.gone:
            return
        self.set_refusal_headers(exc)
        status, body, content_type = json_error(exc.status, exc.message)
        self.set_status(status)
        self.set_header("Content-Type", content_type)
        self.set_header("Content-Length", str(len(body.encode())))
        self.write(body)
        await self.flush()

    async def drop_upload(self, status: int, message: str) -> None:
        """End a part still arriving (a stall, the server shutting down): what arrived is
        kept, the client is answered, with `Connection: close`, and may resume."""
        if self._finished or self.gone or self.body_over:
            return
        if self._headers_written:  # refused already: stop draining
            self.finish()
            return
        self.failed = True
        if self.pace is not None:
            self.pace.stop()
        await self.save_progress()
        if self._finished or self.gone:
            return
        self.set_header("Connection", "close")
        self.refuse(UploadError(status, message))

    def save_progress(self) -> asyncio.Future[None]:
        """Make what arrived durable and record its offset (once, however often asked)."""
        if self.saving is None:
            self.saving = asyncio.ensure_future(self._save_progress())
        return self.saving

    async def _save_progress(self) -> None:
        part, found = self.part, self.target
        try:
            if part is not None and found is not None and not self.keeps_broken_parts:
                await self.release()
                await resumable.drop(self.db, self.partials, found.id)
            elif part is not None and found is not None:
                if self.checksum is not None:
                    await part.cut_back()
                else:
                    await resumable.save(self.db, part, found.id)
        except Exception as exc:
            if not storage_trouble(exc):
                raise
            log.error("could not record the progress of upload %s: %s", found and found.id, exc)
        finally:
            await self.release()

    async def release(self) -> None:
        """Give back the upload, the file, the place in flight and the disk reservation."""
        if self.pace is not None:
            self.pace.stop()
        if self.part is not None:
            part, self.part = self.part, None
            await part.close()
        if self.target is not None and self.partials.writing.get(self.target.id) is self:
            del self.partials.writing[self.target.id]
        if self.in_flight_entered:
            self.in_flight.leave(self)
            self.in_flight_entered = False
        if self.admission is not None:
            self.admission.release()
        if self.released is not None:
            self.released.set()

    async def end_part(self) -> Resumable | None:
        """The body has ended: check its checksum, make it durable, record the offset, and
        let go of the upload, whatever fails. Answers (and returns None) when it cannot."""
        self.body_over = True
        part, found = self.part, self.target
        assert part is not None and found is not None
        if self.pace is not None:
            self.pace.stop()
        try:
            try:
                if self.checksum is not None and self.hasher.digest() != self.checksum:
                    await part.cut_back()
                    raise UploadError(
                        460, "the part does not match its Upload-Checksum; send it again"
                    )
                if not await resumable.save(self.db, part, found.id):
                    raise UploadError(404, "this upload was terminated meanwhile")
            finally:
                await self.release()  # before the answer: a client may retry at once
        except Exception as exc:
            refusal = part_refusal(exc)
            if refusal is None:
                raise
            self.refuse(refusal)
            return None
        return await db.get_resumable(self.db, id=found.id)

    async def finish_if_complete(self, found: Resumable) -> None:
        """When every byte is in: store the upload (once), and put its answer in the
        headers. UploadError when that is refused."""
        if not found.all_arrived:
            return
        if found.completed_at is None:
            blob, upload = await self.store_upload(found)
        else:
            blob, upload = await self.stored_upload(found)
        assert self.config.cookie_secret is not None
        link = delete_url(
            self.public_url(), resumable.delete_token(self.config.cookie_secret, found.id)
        )
        self.stored = blob, upload
        self.answer = upload_answer(self.public_url(), blob, upload, found.filename, link)
        self.set_header("Upload-Info", json.dumps(self.answer))
        self.set_header("X-Delete-Url", link)
        self.set_header("X-Expires", retention.http_date(upload.expires_at))

    async def store_upload(self, found: Resumable) -> tuple[Blob, Upload]:
        """Register an upload whose bytes are all in. A refused file (banned, over the
        quota) drops the upload; a storage failure keeps it, for the client's retry."""
        if found.id in self.partials.writing:
            raise UploadError(423, "this upload is being finished by another request")
        try:
            # The limits may have changed since it began: it is stored within today's.
            self.upload_limits.hold_resumable(found.length_bytes, found.user_id)
        except UploadError:
            await resumable.drop(self.db, self.partials, found.id)
            raise
        # A store that copies the file needs room for it: the disk guard must agree.
        room = self.upload_limits.guard.admit(resumable.room_to_finish(self.store, found))
        if room is None:
            raise UploadError(507, limits.LOW_ON_SPACE)
        self.partials.writing[found.id] = self
        self.body_over = True  # (a HEAD's too): others see the upload is being finished
        try:
            stored = await resumable.complete(
                self.db, self.store, self.partials, found, config=self.config, at=self.now()
            )
        except (uploads.Banned, db.OverQuota, retention.ExpiryError) as exc:
            await resumable.drop(self.db, self.partials, found.id)
            raise refusal_of(exc) from None
        except resumable.PartialBusy:
            raise UploadError(423, BUSY, headers={"Retry-After": "1"}) from None
        except Exception as exc:
            if not storage_trouble(exc):
                raise
            raise UploadError(*storage_failure(exc)) from None
        finally:
            room.release()
            if self.partials.writing.get(found.id) is self:
                del self.partials.writing[found.id]
        metrics.upload_done(self, "tus", found.length_bytes)
        if self.api_key is not None:
            await touch_key(self, self.api_key)
        return stored

    async def stored_upload(self, found: Resumable) -> tuple[Blob, Upload]:
        got = None
        if found.upload_id is not None:
            got = await db.get_upload_with_blob(self.db, upload_id=found.upload_id)
        if got is None:
            raise UploadError(410, "the file this upload became has been deleted")
        return got

    answer: dict[str, Any] | None = None  # what /api/upload would have answered
    stored: tuple[Blob, Upload] | None = None

    def on_connection_close(self) -> None:
        self.gone = True
        if not self.body_over and self.part is not None:
            # The network broke mid-part: keep what arrived, for the client to resume from.
            self.save_progress()
        super().on_connection_close()

    def on_finish(self) -> None:
        if self.saving is None and not self.body_over and self.part is not None:
            self.save_progress()


def refusal_of(exc: Exception) -> UploadError:
    if isinstance(exc, uploads.Banned):
        return UploadError(451, banned_message(exc.reason))
    if isinstance(exc, db.OverQuota):
        return UploadError(413, limits.over_quota_message(exc))
    return UploadError(400, str(exc))


@tornado.web.stream_request_body
class TusCollectionHandler(TusHandler):
    """POST /api/tus/: a new upload (creation), with its first part in the body if the
    client likes (creation-with-upload). 201 with its URL in Location."""

    keeps_broken_parts = False

    async def begin(self) -> None:
        if self.request.method != "POST":
            return
        if self.owner_id is None and not self.config.allow_anonymous:
            raise UploadError(401, NEEDS_ACCOUNT)
        if "Upload-Defer-Length" in self.request.headers:
            raise UploadError(400, "Upload-Defer-Length is not supported: send Upload-Length")
        length = parse_count(
            self.request.headers.get("Upload-Length", ""), at_most=limits.MAX_LENGTH
        )
        if length is None:
            raise UploadError(400, "Upload-Length must be the file's size in bytes")
        self.upload_limits.hold_resumable(length, self.owner_id)
        if length == 0:
            raise UploadError(400, "the file is empty")
        if has_body(self.request):
            self.check_part_type()
        metadata = self.request.headers.get("Upload-Metadata", "")
        pairs = parse_metadata(metadata)
        filename = clean_filename(metadata_text(pairs, "filename") or "file")
        expires = metadata_text(pairs, "expires")
        now = self.now()
        try:
            retention.parse_expires(expires, now=now, source="the expires metadata")
        except retention.ExpiryError as exc:
            raise UploadError(400, str(exc)) from None
        try:
            found = await resumable.begin(
                self.db,
                self.partials,
                self.upload_limits,
                config=self.config,
                id=secrets.token_urlsafe(ID_BYTES),
                user_id=self.owner_id,
                api_key=self.api_key,
                address=self.address,
                length=length,
                metadata=metadata,
                filename=filename,
                expires=expires,
                now=now,
            )
        except Exception as exc:  # its partial file cannot be made (a read-only disk, say)
            if not storage_trouble(exc):
                raise
            raise UploadError(*storage_failure(exc)) from None
        self.target = found
        if has_body(self.request):
            try:
                await self.start_part(found)
            except BaseException:
                await self.release()
                await resumable.drop(self.db, self.partials, found.id)
                raise

    async def post(self) -> None:
        found = self.target
        assert found is not None
        if self.part is not None:
            if self.failed:
                self.finish()
                return
            ended = await self.end_part()
            if ended is None:
                return
            found = ended
            try:
                await self.finish_if_complete(found)
            except UploadError as exc:
                self.refuse(exc)
                return
        self.set_header("Location", f"{self.public_url()}/api/tus/{found.id}")
        self.set_progress_headers(found)
        self.set_status(201)
        self.finish()


@tornado.web.stream_request_body
class TusUploadHandler(TusHandler):
    """/api/tus/<id>: HEAD (where it stands), PATCH (the next part), DELETE (termination),
    GET (JSON: where it stands, and once finished the answer of /api/upload)."""

    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        # Any last path segment comes here, so that an id hostd never made is the same 404
        # in JSON as an unknown one; latin-1, so that invalid UTF-8 is one too.
        if name is None:
            return value.decode("latin-1")
        return super().decode_argument(value, name)

    def _request_summary(self) -> str:
        # The access log's line without the upload's URL, which for an anonymous upload is
        # the key to it and to its deletion link; a few characters still tell uploads apart.
        id = self.request.path.rsplit("/", 1)[-1]  # (path_args are unset on a 405)
        return f"{self.request.method} /api/tus/{id[:6]}... ({self.request.remote_ip})"

    async def begin(self) -> None:
        method = self.request.method
        if method == "OPTIONS":
            return
        found = await self.load(self.path_args[0])
        self.target = found
        if method != "PATCH":
            if has_body(self.request):
                raise UploadError(400, f"a {method} has no body")
            return
        offset = parse_count(self.request.headers.get("Upload-Offset", ""), at_most=2**62)
        if offset is None:
            raise UploadError(400, "Upload-Offset must be a number of bytes")
        if offset != found.offset_bytes:
            self.set_progress_headers(found)
            raise UploadError(
                409, f"Upload-Offset is {offset}, but the upload has {found.offset_bytes} bytes"
            )
        await self.start_part(found)

    async def head(self, id: str) -> None:
        found = await self.current()
        if found is None:
            return
        self.set_header("Upload-Length", str(found.length_bytes))
        if found.metadata:
            self.set_header("Upload-Metadata", found.metadata)
        self.set_status(200)
        self.finish()

    async def get(self, id: str) -> None:
        found = await self.current()
        if found is None:
            return
        state = {"offset": found.offset_bytes, "length": found.length_bytes}
        if self.answer is not None and self.is_htmx and self.stored is not None:
            # The upload page's result, as /upload renders it for the page's own uploads.
            blob, upload = self.stored
            self.render_page(
                "upload/result.html",
                fragment="upload_result",
                blob=blob,
                upload=upload,
                filename=found.filename,
                urls=self.answer["urls"],
                delete_url=self.answer["delete_url"],
            )
        elif self.answer is None:
            self.write_json({"status": True, "complete": False, **state})
        else:
            self.write_json({**self.answer, "complete": True, **state})

    async def current(self) -> Resumable | None:
        """The upload with its progress headers; registered first if its bytes are all in
        but a crash kept it from being so. None when a refusal was answered."""
        found = self.target
        assert found is not None
        try:
            await self.finish_if_complete(found)
        except UploadError as exc:
            self.refuse(exc)
            return None
        self.set_progress_headers(found)
        return found

    async def patch(self, id: str) -> None:
        if self.failed:  # refused as the body arrived: answered already (and let go of)
            self.finish()
            return
        if self.part is None:  # an empty body: nothing to write
            found = self.target
        else:
            found = await self.end_part()
        if found is None:
            return
        try:
            await self.finish_if_complete(found)
        except UploadError as exc:
            self.refuse(exc)
            return
        self.set_progress_headers(found)
        self.set_status(204)
        self.finish()

    async def delete(self, id: str) -> None:
        found = self.target
        assert found is not None
        try:
            await self.let_go(found)
        except UploadError as exc:
            self.refuse(exc)
            return
        await resumable.drop(self.db, self.partials, found.id)
        self.set_status(204)
        self.finish()

    async def let_go(self, found: Resumable) -> None:
        """End a part of this upload still arriving, and wait until it has let go of the
        file; UploadError 423 when the upload is being finished (or will not let go)."""
        holder = self.partials.writing.get(found.id)
        if holder is None:
            return
        if holder.body_over:
            raise UploadError(423, "this upload is being finished; try again in a moment")
        holder.request.connection.close()
        if holder.released is not None:
            try:
                await asyncio.wait_for(holder.released.wait(), RELEASE_SECONDS)
            except TimeoutError:
                raise UploadError(423, "this upload is busy; try again in a moment") from None


routes = [
    (r"/api/tus/?", TusCollectionHandler),
    (r"/api/tus/([^/]+)", TusUploadHandler),
]
