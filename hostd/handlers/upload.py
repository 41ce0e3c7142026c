"""Streaming upload endpoints: POST /upload (browser, or `api=1` text), POST /api/upload and
PUT /api/upload/<filename> (the raw body, `curl -T`)."""

from __future__ import annotations

import asyncio
import errno
import http
import logging
import urllib.parse
from collections.abc import Awaitable, Iterator
from typing import Any, Protocol

import tornado.web
from tornado import httputil
from tornado.routing import PathMatches

from hostd import db, limits, metrics, retention, sniff, uploads
from hostd.auth import delete_token_hash, new_delete_token
from hostd.config import Config
from hostd.db import ApiKey, Blob, Upload
from hostd.formdata import (
    FORM_OVERHEAD_BYTES,
    RawBody,
    UploadBody,
    UploadError,
    UploadForm,
    boundary_of,
    clean_filename,
)
from hostd.handlers.base import (
    UNAVAILABLE_RETRY_SECONDS,
    ApiHandler,
    BaseHandler,
    Refusal,
    error_message,
    out_of_space,
    refuse_early,
)
from hostd.parsing import parse_count
from hostd.server import BodyPace, HostdConnection, json_error, plain_error
from hostd.storage import StoreUnavailable, WrittenBlob
from hostd.throttle import address_key

log = logging.getLogger("hostd")

# Past the limit, Tornado itself stops reading a chunked body at this much more; by then
# the client has had our 413 for a while.
DRAIN_ALLOWANCE_BYTES = 16 * 1024 * 1024


NEEDS_ACCOUNT = (
    "uploads need an account here: sign in, or generate an API key on the /api page and send "
    "it as 'Authorization: Bearer <key>' to /api/upload"
)
# last_used_at is written at most this often per key, to keep keyed uploads cheap.
TOUCH_EVERY_SECONDS = 60


async def touch_key(handler: BaseHandler, key: ApiKey) -> None:
    at = db.now()
    if handler.auth.note_use(key, at, TOUCH_EVERY_SECONDS):
        try:
            await db.touch_api_key(handler.db, id=key.id, at=at)
        except Exception as exc:
            if not (out_of_space(exc) or isinstance(exc, db.Unavailable)):
                raise
            # The upload is stored already; a stale last use is no reason to say otherwise.
            log.warning("could not note the use of API key %s: %s", key.key_id, exc)


def storage_trouble(exc: Exception) -> bool:
    """Whether `exc` is the storage's or the database's failure, which storage_failure
    answers; anything else is a bug (a 500, with its traceback in the log)."""
    return isinstance(exc, (OSError, db.Unavailable)) or out_of_space(exc)


def storage_failure(exc: Exception) -> tuple[int, str]:
    """(status, message) for a file the server could not write or record; the details go to
    the log."""
    log.error("could not store an upload: %s", exc)
    if isinstance(exc, uploads.DeletedMeanwhile):
        return 503, f"{exc}; the file was not stored"
    if isinstance(exc, StoreUnavailable):
        return 503, "the file storage cannot be reached; the file was not stored, retry soon"
    if isinstance(exc, db.Unavailable):
        return 503, "the database is busy or cannot be reached; the file was not stored, retry soon"
    if out_of_space(exc):
        return 507, "the server is out of storage space; the file was not stored"
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        # Storage that cannot be written (remounted read-only, wrong permissions), as
        # /healthz says: the server's state, for the admin to fix, not a bug in the request.
        return (
            503,
            "the file storage cannot be written just now; the file was not stored, retry later",
        )
    return 500, "the server could not store the file; it was not stored"


def banned_message(reason: str) -> str:
    """Why banned bytes were refused: the admin's reason, when they gave one."""
    message = "this file is banned from this server and cannot be uploaded"
    return f"{message}: {reason}" if reason else message


def file_urls(base: str, blob: Blob, filename: str) -> dict[str, str]:
    """The four URLs of an upload, as the API page documents them."""
    ext = sniff.extension_for(filename, blob.content_type)
    return {
        "base": f"{base}/",
        "full": f"{base}/{blob.hash}/{urllib.parse.quote(filename)}",
        "ext": f"{base}/{blob.hash}{ext}",
        "hash": f"{base}/{blob.hash}",
    }


def upload_answer(base: str, blob: Blob, upload: Upload, filename: str, delete: str) -> dict:
    """The JSON answer of a stored upload, as the API page documents it."""
    return {
        "hash": blob.hash,
        "status": True,
        "urls": file_urls(base, blob, filename),
        "expires_at": retention.iso_time(upload.expires_at),
        "delete_url": delete,
    }


class InFlightUpload(Protocol):
    """What UploadsInFlight needs of an upload: a request body still arriving."""

    request: httputil.HTTPServerRequest

    @property
    def config(self) -> Config: ...

    def drop_upload(self, status: int, message: str) -> Awaitable[None]: ...


# What a refusal by UploadsInFlight asks the client to wait: how long the others will take
# is unknown, and asking again costs a head (the refusal comes before the body).
IN_FLIGHT_RETRY_SECONDS = 5
IN_FLIGHT_RETRY = {"Retry-After": str(IN_FLIGHT_RETRY_SECONDS)}  # (made once: not on every upload)


class UploadsInFlight:
    """Uploads not yet answered, by client address (X-Real-IP behind a trusted proxy; an
    IPv6 address by its /64, as the throttles count it: one host has many): at most
    limits.uploads_in_flight_per_address from one address, none once the server is
    closing."""

    def __init__(self) -> None:
        self.closing = False
        self.refused = 0  # 429s for too many uploads from one address, for /metrics
        self._by_address: dict[str, set[InFlightUpload]] = {}
        self._none_left = asyncio.Event()
        self._none_left.set()

    def enter(self, upload: InFlightUpload) -> None:
        """Count this upload in, or raise UploadError (503 when closing, else 429)."""
        if self.closing:
            raise UploadError(
                503,
                "the server is shutting down; send the upload again soon",
                headers=IN_FLIGHT_RETRY,
            )
        address = address_key(upload.request.remote_ip or "")
        same = self._by_address.setdefault(address, set())
        most = upload.config.uploads_in_flight_per_address
        if len(same) >= most:
            self.refused += 1
            raise UploadError(
                429,
                f"{most} uploads from your address are already in progress; "
                "send this one when one of them has finished",
                headers=IN_FLIGHT_RETRY,
            )
        same.add(upload)
        self._none_left.clear()

    def leave(self, upload: InFlightUpload) -> None:
        """Count it out (again is harmless)."""
        address = address_key(upload.request.remote_ip or "")
        same = self._by_address.get(address)
        if same is None or upload not in same:
            return
        same.discard(upload)
        if not same:
            del self._by_address[address]
        if not self._by_address:
            self._none_left.set()

    def __len__(self) -> int:
        return sum(len(same) for same in self._by_address.values())

    def __iter__(self) -> Iterator[InFlightUpload]:
        return iter([upload for same in self._by_address.values() for upload in same])

    async def finished(self, seconds: float) -> bool:
        """Wait up to `seconds` for every upload to be answered; True if they were."""
        try:
            await asyncio.wait_for(self._none_left.wait(), seconds)
        except TimeoutError:
            return False
        return True


def delete_url(base: str, token: str) -> str:
    """An upload's deletion link: a GET shows what it deletes, a POST deletes it."""
    return f"{base}/delete/{token}"


class UploadFlow(BaseHandler):
    """Receives one upload as it streams in; subclasses say how to answer.

    prepare() refuses what it can before the body is read (size, type); data_received()
    feeds the body (a multipart form by default: see open_body()), which writes the file to
    a temp file as it is hashed; post() runs once the body has ended and records the upload.
    """

    # Room in the body for what is not the file: the multipart framing by default.
    framing_bytes = FORM_OVERHEAD_BYTES
    kind = "multipart"  # how the upload arrives, for /metrics (metrics.UPLOAD_KINDS)
    form: UploadBody | None = None
    boundary = ""
    recording: asyncio.Future[tuple[Blob, Upload]] | None = None
    failed = False
    pace: BodyPace | None = None
    dropping: asyncio.Task[None] | None = None
    gone = False  # the connection closed before the answer was finished
    admission: limits.Admission | None = None
    uploaded_at: int | None = None  # set_expiry() fixes both once the body has ended
    expires: int | None = None
    delete_url = ""  # the recorded upload's deletion link
    how_to_upload = ""  # what a 405 adds: how this URL takes a file

    def check_xsrf_cookie(self) -> None:
        # Checked in prepare(), where a refusal can be answered without a reset.
        pass

    async def prepare(self) -> None:
        if self.request.method not in ("POST", "PUT"):
            return
        limit = self.config.max_upload_bytes
        connection = self.request.connection
        assert isinstance(connection, HostdConnection)
        connection.set_max_body_size(limit + self.framing_bytes + DRAIN_ALLOWANCE_BYTES)
        connection.streaming(self.error_answer)
        try:
            await super().prepare()
            await self.authorize()
            length = parse_count(
                self.request.headers.get("Content-Length", "0"), at_most=limits.MAX_LENGTH
            )
            if length is None:
                raise UploadError(400, "the Content-Length header is not a number of bytes")
            if length > limit + self.framing_bytes:
                message = self.upload_limits.too_large_message(
                    length, self.owner_id, self.framing_bytes
                )
                raise UploadError(413, message)
            self.check_framing()
            self.asked_expiry(self.now())  # a bad Expires header is refused before the body
            self.admission = await self.upload_limits.admit(
                self.db,
                length=length if "Content-Length" in self.request.headers else None,
                user_id=self.owner_id,
                key_id=self.api_key.key_id if self.api_key else None,
                address=self.address,
                framing_bytes=self.framing_bytes,
                held_back=self.request.headers.get("Expect", "").lower() == "100-continue",
            )
            self.in_flight.enter(self)  # last: only an accepted upload takes a place
        except UploadError as exc:
            self.form = None
            if self.admission is not None:  # admitted, then refused a place in flight
                self.admission.release()
                self.admission = None
            status, body, content_type = self.error_answer(exc.status, exc.message)
            if status == 401:
                self.set_header("WWW-Authenticate", 'Bearer realm="hostd"')
            for name, value in exc.headers.items():
                self.set_header(name, value)
            refuse_early(self, status, body, content_type)
            return
        self.form = self.open_body(self.admission)
        self.pace = BodyPace(self.config.body_idle_seconds, self.stalled)

    def check_framing(self) -> None:
        """Raise UploadError when the headers say the body cannot be read (before it is)."""
        self.boundary = boundary_of(self.request.headers.get("Content-Type"))

    def open_body(self, admission: limits.Admission) -> UploadBody:
        return UploadForm(
            self.boundary,
            max_file_bytes=admission.max_file_bytes,
            too_large=admission.too_large,
            open_writer=self.store.writer,
        )

    async def authorize(self) -> None:
        """Raise UploadError when this request may not upload."""
        if self.current_user is None and not self.config.allow_anonymous:
            raise UploadError(401, NEEDS_ACCOUNT)

    def data_received(self, chunk: bytes) -> Any:
        if self.pace is not None and (too_slow := self.pace.arrived(len(chunk))):
            return self.drop_upload(408, too_slow)
        if self.failed or self.form is None:
            return None
        try:
            if self.admission is not None:
                self.admission.received(len(chunk))  # the disk guard and the byte budgets
            self.form.feed(chunk)
        except UploadError as exc:
            self.form.abort()
            for name, value in exc.headers.items():
                self.set_header(name, value)
            return self.refuse_midway(exc.status, exc.message)
        behind = self.form.backpressure()
        if behind is None:
            return None
        waiting = self.wait_for_disk(behind)
        return waiting if self.pace is None else self.pace.paused(waiting)

    def stalled(self, message: str) -> None:
        """BodyPace's call: no data for limits.body_idle_seconds."""
        self.dropping = asyncio.ensure_future(self.drop_upload(408, message))

    async def drop_upload(self, status: int, message: str) -> None:
        """End an upload whose body is still arriving: remove its temp file, answer (in the
        endpoint's format, `Connection: close`) unless the client has gone, and close."""
        if self._finished or self.gone or self.body_received:
            return
        self.failed = True
        if self.pace is not None:
            self.pace.stop()
        if self.form is not None:
            self.form.abort()
            await self.form.dropped()
        if self._finished or self.gone:
            return
        if self._headers_written:  # already refused (refuse_midway): stop draining
            self.finish()
            return
        self.set_header("Connection", "close")
        self.answer_error(status, message)

    @property
    def body_received(self) -> bool:
        # Tornado resolves this future as the body ends, before post() runs.
        return self.request._body_future.done()

    async def wait_for_disk(self, behind: Awaitable[None]) -> None:
        """Tornado reads no more of the body until the file's writer has caught up."""
        try:
            await behind
        except OSError as exc:
            assert self.form is not None
            self.form.abort()
            await self.refuse_midway(*storage_failure(exc))

    async def refuse_midway(self, status: int, message: str) -> None:
        """Answer now, so the client can stop sending; keep reading to the end of the
        body (bounded by the body limit) so the answer is not lost to a reset."""
        self.failed = True
        if self.admission is not None:
            self.admission.release()
        assert self.form is not None
        await self.form.dropped()
        status, body, content_type = self.error_answer(status, message)
        self.set_status(status)
        self.set_header("Content-Type", content_type)
        self.set_header("Content-Length", str(len(body.encode())))
        self.write(body)
        await self.flush()

    async def post(self) -> None:
        if self.failed:
            self.finish()
            return
        assert self.form is not None
        try:
            written = await self.form.finish()
        except UploadError as exc:
            await self.form.dropped()
            self.answer_error(exc.status, exc.message)
            return
        except OSError as exc:
            self.answer_error(*storage_failure(exc))
            return
        try:
            self.authorize_with_form()
            self.set_expiry(written)
        except UploadError as exc:
            await self.store.discard(written)
            self.answer_error(exc.status, exc.message)
            return
        self.recording = asyncio.ensure_future(self.record(written, self.form.filename))
        try:
            blob, upload = await self.recording
        except asyncio.CancelledError:
            return  # the client went away while its upload waited to be recorded
        except uploads.Banned as exc:
            self.answer_error(451, banned_message(exc.reason))
            return
        except db.OverQuota as exc:
            self.answer_error(413, limits.over_quota_message(exc))
            return
        except Exception as exc:
            if not storage_trouble(exc):
                raise
            self.answer_error(*storage_failure(exc))
            return
        self.set_header("X-Expires", retention.http_date(upload.expires_at))
        self.set_header("X-Delete-Url", self.delete_url)
        # The deletion link is a secret (whoever has it can delete the upload): no cache,
        # shared or the browser's, keeps an answer that carries it.
        self.set_header("Cache-Control", "no-store")
        metrics.upload_done(self, self.kind, written.size_bytes)
        self.answer_ok(blob, upload, self.form.filename)

    def asked_expiry(self, now: int) -> int | None:
        """When the upload asks to expire (an `expires` field, an Expires header or the
        URL's ?expires=, where a client such as ShareX's "Parameters" puts it), or None;
        UploadError 400 when it asks badly. The form's fields are known only once the body
        has ended; before that, this checks the header and the URL alone."""
        in_url = self.request.query_arguments.get(retention.EXPIRES_FIELD, [])
        if len(in_url) > 1:
            raise UploadError(400, "send the expiry once: the URL has ?expires= twice")
        field = self.form.fields.get(retention.EXPIRES_FIELD, "") if self.form else ""
        asked = [
            (value, source)
            for value, source in (
                (field, "the expires field"),
                (self.request.headers.get(retention.EXPIRES_HEADER, ""), "the Expires header"),
                (in_url[0].decode("utf-8", "replace") if in_url else "", "the URL's ?expires="),
            )
            if value
        ]
        if len(asked) > 1:
            raise UploadError(
                400,
                "send the expiry once: an 'expires' field, an Expires header or ?expires= in "
                "the URL, not two of them",
            )
        if not asked:
            return None
        value, source = asked[0]
        try:
            return retention.parse_expires(value, now=now, source=source)
        except retention.ExpiryError as exc:
            raise UploadError(400, str(exc)) from None

    def set_expiry(self, written: WrittenBlob) -> None:
        """Fix the upload's time and when it expires, by what it asks and the [retention]
        policy (once the body has ended: the size and the form's fields count)."""
        self.uploaded_at = self.now()
        self.expires = retention.expires_at(
            self.config,
            now=self.uploaded_at,
            size_bytes=written.size_bytes,
            anonymous=self.api_key is None and self.current_user is None,
            asked=self.asked_expiry(self.uploaded_at),
        )

    async def record(self, written: WrittenBlob, filename: str) -> tuple[Blob, Upload]:
        """Put the bytes in the store and register the upload to its owner, if any."""
        token = new_delete_token()
        blob, upload = await uploads.register(
            self.db,
            self.store,
            written,
            content_type=sniff.detect(written.head),
            original_name=filename,
            user_id=self.owner_id,
            api_key_id=self.api_key.id if self.api_key else None,
            default_quota_bytes=self.config.quota_bytes,
            at=self.uploaded_at,
            expires_at=self.expires,
            delete_token_hash=delete_token_hash(token),
        )
        self.delete_url = delete_url(self.public_url(), token)
        if self.api_key is not None:
            await touch_key(self, self.api_key)
        return blob, upload

    def authorize_with_form(self) -> None:
        """Raise UploadError when the form's own fields refuse it (read once the body ended)."""

    def on_finish(self) -> None:
        self.stop_watching()
        if self.admission is not None:
            self.admission.release()

    def on_connection_close(self) -> None:
        self.gone = True
        self.stop_watching()
        # May run without prepare() having made a form (a refused request).
        if self.admission is not None:
            self.admission.release()
        if self.form is not None:
            self.form.abort()
        if self.recording is not None:
            # Not yet recorded: drop it (uploads.register then removes its bytes); if the
            # writer has it already, it is kept, as the whole file did arrive.
            self.recording.cancel()
        if not self._finished:
            self.log_unfinished()
        # Tornado's own ends the wait for the rest of the body; without it the handler
        # would wait forever for a client that is gone.
        super().on_connection_close()

    def stop_watching(self) -> None:
        self.in_flight.leave(self)
        if self.pace is not None:
            self.pace.stop()

    def log_unfinished(self) -> None:
        """The access log's line, which finish() would have written: what the server
        answered when it ended the request itself (a broken body: 400), or what the
        handler had answered already; else 499, as nginx says of a client that closed the
        connection before the answer."""
        connection = self.request.connection
        ended_by = connection.ended_by if isinstance(connection, HostdConnection) else None
        if ended_by is not None:
            self.set_status(ended_by.status)
        elif not self._headers_written:
            self.set_status(499, "Client Closed Request")
        self.application.log_request(self)

    def answer_error(self, status: int, message: str) -> None:
        status, body, content_type = self.error_answer(status, message)
        if status == 503:  # the storage, the database, or the server itself: for a moment
            self.set_header("Retry-After", str(UNAVAILABLE_RETRY_SECONDS))
        self.set_status(status)
        self.set_header("Content-Type", content_type)
        self.finish(body)

    def error_answer(self, status: int, message: str) -> tuple[int, str, str]:
        """(status, body, content type) of a refusal; the plain-text protocol by default."""
        return plain_error(status, message)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # What went wrong past the refusals above (a bug; the database busy before the
        # body was read) is answered in the endpoint's format too.
        self.set_error_headers(status_code, kwargs)
        message = error_message(status_code, self._reason, kwargs)
        if status_code == 405 and self.how_to_upload:
            message = f"{message}: {self.how_to_upload}"
        status, body, content_type = self.error_answer(status_code, message)
        self.set_header("Content-Type", content_type)
        self.finish(body)

    def answer_ok(self, blob: Blob, upload: Upload, filename: str) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"OK {blob.hash}\n")


@tornado.web.stream_request_body
class UploadHandler(UploadFlow):
    """The browser's upload URL; with `api=1` it answers `OK <hash>` / `ERROR <message>`.

    A signed-in browser's upload is registered to its account, and must carry the xsrf
    token; without a session (curl) it is anonymous and needs none.
    """

    xsrf_in_form = False
    how_to_upload = (
        "POST a multipart form with the file in a field named 'file' (curl -F file=@FILE);"
        " api=1 in the query string (or a form field before the file) answers in plain text"
    )

    async def authorize(self) -> None:
        # The page's script sends the token as a header, checked before the body is read;
        # a plain form (no JavaScript) sends it as a field, checked once the body is parsed.
        if self.current_user is not None:
            if "X-XSRFToken" in self.request.headers:
                self.check_upload_xsrf()
            else:
                self.xsrf_in_form = True
        await super().authorize()

    def authorize_with_form(self) -> None:
        if self.xsrf_in_form:
            assert self.form is not None
            self.request.arguments["_xsrf"] = [self.form.fields.get("_xsrf", "").encode()]
            self.check_upload_xsrf()

    def check_upload_xsrf(self) -> None:
        try:
            tornado.web.RequestHandler.check_xsrf_cookie(self)
        except tornado.web.HTTPError:
            raise UploadError(
                403, "the form's xsrf token is missing or wrong; reload the page"
            ) from None

    @property
    def plain_text(self) -> bool:
        if self.get_query_argument("api", "") == "1":
            return True
        return self.form is not None and self.form.fields.get("api") == "1"

    def error_answer(self, status: int, message: str) -> tuple[int, str, str]:
        if self.plain_text:
            return super().error_answer(status, message)
        if self.is_htmx:
            fragment = self.render_string_page("upload/_error.html", message=message)
            return status, fragment, "text/html; charset=utf-8"
        page = self.render_string_page(
            "errors/error.html",
            status_code=status,
            reason=http.HTTPStatus(status).phrase,
            message=message,
        )
        return status, page, "text/html; charset=utf-8"

    def answer_ok(self, blob: Blob, upload: Upload, filename: str) -> None:
        if self.plain_text:
            super().answer_ok(blob, upload, filename)
            return
        urls = file_urls(self.public_url(), blob, filename)
        self.render_page(
            "upload/result.html",
            fragment="upload_result",
            blob=blob,
            upload=upload,
            filename=filename,
            urls=urls,
            delete_url=self.delete_url,
        )


@tornado.web.stream_request_body
class ApiUploadHandler(UploadFlow, ApiHandler):
    """POST /api/upload: JSON in the shape the API page documents.

    `Authorization: Bearer <key>` registers the upload to the key's account. A key that is
    malformed, unknown or invalidated is a 401, never a silent anonymous upload.
    """

    # A PUT to this URL is routed to ApiPutHandler (see `routes`); it is listed so that the
    # Allow header of OPTIONS and of a 405 tells the truth.
    SUPPORTED_METHODS: tuple[str, ...] = ("POST", "PUT", "OPTIONS")
    how_to_upload = (
        "POST a multipart form with the file in a field named 'file' (curl -F file=@FILE),"
        " or PUT the file itself as the body (curl -T FILE)"
    )

    async def authorize(self) -> None:
        try:
            header = self.authorization()
            if header is not None:
                self.api_key = await self.bearer_key(header)
        except Refusal as refused:  # in the upload's own answer format
            raise UploadError(refused.status_code, refused.message, refused.headers) from None
        if header is None:
            await super().authorize()

    def error_answer(self, status: int, message: str) -> tuple[int, str, str]:
        return json_error(status, message)

    def answer_ok(self, blob: Blob, upload: Upload, filename: str) -> None:
        self.write_json(upload_answer(self.public_url(), blob, upload, filename, self.delete_url))


@tornado.web.stream_request_body
class ApiPutHandler(ApiUploadHandler):
    """PUT /api/upload/<filename>: the body is the file itself (`curl -T`). Keys, limits,
    expiry and answers are those of POST /api/upload; the name is checked as a form's is.
    PUT /api/upload and /api/upload/ (`curl -T file URL/api/upload`, or stdin's `curl -T -`,
    to which curl adds no name) store it as "file", as a form part with no filename is."""

    SUPPORTED_METHODS = ("PUT", "OPTIONS")  # not the POST it inherits
    how_to_upload = (
        "this URL takes the file itself as a PUT body (curl -T FILE URL); a multipart form"
        " goes to POST /api/upload"
    )
    framing_bytes = 0
    kind = "put"
    filename = "file"

    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        # The URL-decoded name as latin-1, as clean_filename() takes a form's header values,
        # so that invalid UTF-8 is its 400 in JSON rather than Tornado's bare one.
        if name is None:
            return value.decode("latin-1")
        return super().decode_argument(value, name)

    def check_framing(self) -> None:
        self.filename = clean_filename(self.path_args[0] if self.path_args else None)

    def open_body(self, admission: limits.Admission) -> UploadBody:
        return RawBody(
            self.filename,
            max_file_bytes=admission.max_file_bytes,
            too_large=admission.too_large,
            open_writer=self.store.writer,
        )

    async def put(self, filename: str = "") -> None:
        await self.post()


@tornado.web.stream_request_body
class RootUploadHandler(ApiUploadHandler):
    """POST / (`curl -F file=@shot.png https://host/`), as 0x0.st takes files: the upload
    of POST /api/upload, Bearer keys included, answered as 0x0.st answers, with the file's
    URL (its `ext` form) on one line. Refusals are the plain-text protocol's `ERROR ...`."""

    SUPPORTED_METHODS = ("POST",)  # GET, HEAD and OPTIONS of / are the upload page's
    refusal_format = plain_error

    def error_answer(self, status: int, message: str) -> tuple[int, str, str]:
        return plain_error(status, message)

    def answer_ok(self, blob: Blob, upload: Upload, filename: str) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(file_urls(self.public_url(), blob, filename)["ext"] + "\n")


class MethodTo(PathMatches):
    """A route for one method alone: Tornado routes by path, and /api/upload takes a POST
    (ApiUploadHandler) and a PUT (ApiPutHandler), two different bodies; / shows the upload
    page and takes a POST (RootUploadHandler), a streamed body."""

    def __init__(self, method: str, path_pattern: str) -> None:
        super().__init__(path_pattern)
        self.method = method

    def match(self, request: httputil.HTTPServerRequest) -> dict[str, Any] | None:
        return super().match(request) if request.method == self.method else None


# Before the upload page's route, which takes every method of /.
root_routes: list[tuple[str | PathMatches, Any]] = [(MethodTo("POST", r"/"), RootUploadHandler)]

routes: list[tuple[str | PathMatches, Any]] = [
    (r"/upload", UploadHandler),
    (MethodTo("PUT", r"/api/upload/?"), ApiPutHandler),
    (r"/api/upload", ApiUploadHandler),
    (r"/api/upload/([^/]+)", ApiPutHandler),
]
