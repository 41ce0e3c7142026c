"""Handler bases: BaseHandler for HTML pages, ApiHandler for JSON; early refusals."""

from __future__ import annotations

import asyncio
import errno
import functools
import http
import json
import logging
import math
import secrets
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import jinja2
import markupsafe
import tornado.iostream
import tornado.web
from tornado import httputil

from hostd import db
from hostd.auth import AccountDisabled, Auth, Busy, session_token_hash
from hostd.config import Config
from hostd.db import Database, User
from hostd.parsing import parse_count
from hostd.server import ErrorFormat, FormatFor, json_error, plain_error
from hostd.storage import BlobStore
from hostd.throttle import AddressLimiter, SignInLimiter
from hostd.thumbs import Thumbnails

if TYPE_CHECKING:
    from hostd import limits
    from hostd.db import ApiKey
    from hostd.handlers.upload import UploadsInFlight

log = logging.getLogger("hostd")

# How long a refused upload's connection keeps reading (and dropping) what the client still
# sends, so that closing with unread bytes does not reset the connection before the client
# has read our answer.
LINGER_SECONDS = 10.0
LINGER_IDLE_SECONDS = 2.0

# Every HTML page: only the scripts and stylesheets its own tags name, no inline script, no
# framing. Not 'self': an uploaded .js at /<hash>.js is same-origin too, and must not be
# loadable by a page of ours; a fresh nonce per answer, carried by our own <script> and
# <link> tags, allows exactly those, whatever host, port or proxy the page is reached by.
PAGE_CSP = (
    "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
    "img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
# The same for an answer that renders no page (JSON, a redirect, plain text): no nonce to
# make, and no script or style at all.
NO_PAGE_CSP = PAGE_CSP.replace("'nonce-{nonce}'", "'none'")


class Refusal(tornado.web.HTTPError):
    """An HTTP error with a message for the user (HTTPError's log_message would also be
    logged as a second line for the request), and headers for its answer (Retry-After)."""

    def __init__(
        self, status_code: int, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status_code)
        self.message = message
        self.headers = headers or {}


OUT_OF_SPACE = "The server is out of storage space. Try again later."
DATABASE_UNAVAILABLE = "The database is busy or cannot be reached. Try again in a moment."
# What a 503 for a busy or unreachable database asks the client to wait.
UNAVAILABLE_RETRY_SECONDS = 5


def out_of_space(exc: BaseException | None) -> bool:
    """A full disk (or quota), as the filesystem or SQLite ("database or disk is full") says it."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return exc is not None and db.is_full(exc)


def error_message(status_code: int, reason: str, kwargs: dict[str, Any]) -> str:
    exc = kwargs.get("exc_info", (None, None, None))[1]
    if isinstance(exc, Refusal):
        return exc.message
    if isinstance(exc, db.Unavailable):
        return DATABASE_UNAVAILABLE
    if isinstance(exc, db.OwnerGone):
        return exc.message
    return OUT_OF_SPACE if out_of_space(exc) else reason


SESSION_COOKIE = "hostd_session"
SESSION_DAYS = 30
SIGNED_OUT = "You are signed out (in another tab, or the session ended). Sign in, then try again."
STALE_FORM = "This form is out of date or came from another site. Reload the page and try again."

Method = TypeVar("Method", bound=Callable[..., Any])


def signed_in(method: Method) -> Method:
    """tornado.web.authenticated, with words: a GET goes to the sign-in page and back; any
    other request without a session (one that ended in another tab, say) is refused with
    what to do, where Tornado's says only "Forbidden"."""
    checked = tornado.web.authenticated(method)

    @functools.wraps(method)
    def wrapper(self: BaseHandler, *args: Any, **kwargs: Any) -> Any:
        if self.current_user is None and self.request.method not in ("GET", "HEAD"):
            raise Refusal(403, SIGNED_OUT)
        return checked(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def implemented_methods(cls: type[tornado.web.RequestHandler]) -> tuple[str, ...]:
    """The methods a handler class answers: those it defines, HEAD wherever GET is
    (RFC 9110 9.1), and OPTIONS; in Tornado's order."""
    unimplemented = tornado.web.RequestHandler
    methods = {
        method
        for method in ("GET", "POST", "DELETE", "PATCH", "PUT")
        if getattr(cls, method.lower()) is not getattr(unimplemented, method.lower())
    }
    if "GET" in methods:
        methods.add("HEAD")
    methods.add("OPTIONS")
    return tuple(m for m in unimplemented.SUPPORTED_METHODS if m in methods)


def has_body(request: httputil.HTTPServerRequest) -> bool:
    """Whether the request has a body: one framed by Transfer-Encoding or a Content-Length
    other than 0 (RFC 9112 6.3)."""
    headers = request.headers
    length = headers.get("Content-Length", "0")
    # at_most=0: 0 is no body, 1 "more than 0", None a length that is not a number.
    return "Transfer-Encoding" in headers or parse_count(length, at_most=0) != 0


class BaseHandler(tornado.web.RequestHandler):
    """HTML pages: Jinja2 rendering, htmx fragments, error pages, the session user."""

    current_user: User | None
    api_key: ApiKey | None = None  # the Bearer key an API request came with, once verified
    # How the server answers a request to this handler's URLs that it refuses before the
    # handler has its say (a head too big, a body over the URL's limit or too slow).
    refusal_format: ClassVar[ErrorFormat] = plain_error  # read from the class: not bound

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Tornado refuses a method outside SUPPORTED_METHODS before anything else: before it
        # parses the body or checks the xsrf token (a 403 where 405 is right).
        super().__init_subclass__(**kwargs)
        if "SUPPORTED_METHODS" not in cls.__dict__:
            cls.SUPPORTED_METHODS = implemented_methods(cls)

    def initialize(self) -> None:
        # Tornado parses the body of each request that does not stream by its Content-Type,
        # and a multipart/form-data one with no body is a 400: with no body there is nothing
        # for a Content-Type to describe, so a stray one (on a GET) must not matter.
        if not has_body(self.request):
            self.request.headers.pop("Content-Type", None)

    async def head(self, *args: Any, **kwargs: Any) -> None:
        # GET without the body (RFC 9110 9.3.2): Tornado drops the body of a HEAD answer.
        answer = self.get(*args, **kwargs)
        if answer is not None:
            await answer

    def options(self, *args: Any, **kwargs: Any) -> None:
        # The methods this URL answers. No Access-Control-* headers: to a browser's CORS
        # preflight this is still a refusal.
        self.set_header("Allow", ", ".join(self.SUPPORTED_METHODS))
        self.set_status(204)
        self.finish()

    def check_xsrf_cookie(self) -> None:
        try:
            super().check_xsrf_cookie()
        except tornado.web.HTTPError:  # its log_message is for the log; the user gets words
            raise Refusal(403, STALE_FORM) from None

    async def prepare(self) -> None:
        # get_current_user() cannot be async, so the user is loaded here
        # (see the RequestHandler.current_user docstring).
        self.current_user = await self.session_user()

    async def session_user(self) -> User | None:
        token = self.get_signed_cookie(SESSION_COOKIE, max_age_days=SESSION_DAYS)
        if not token:
            return None
        return await db.get_session_user(self.db, token_hash=session_token_hash(token.decode()))

    @property
    def auth(self) -> Auth:
        return self.settings["hostd_auth"]

    @property
    def thumbs(self) -> Thumbnails:
        return self.settings["hostd_thumbs"]

    @property
    def limiter(self) -> SignInLimiter:
        return self.settings["hostd_limiter"]

    @property
    def address(self) -> str:
        """The client's address (X-Real-IP's when trust_proxy is on)."""
        return self.request.remote_ip or ""

    @property
    def invalid_keys(self) -> AddressLimiter:
        return self.settings["hostd_invalid_keys"]

    @property
    def in_flight(self) -> UploadsInFlight:
        return self.settings["hostd_in_flight"]

    @property
    def upload_limits(self) -> limits.Limits:
        return self.settings["hostd_limits"]

    @property
    def owner_id(self) -> int | None:
        """The account this request acts for (an upload is registered to): the API key's,
        else the session's; None when anonymous."""
        if self.api_key is not None:
            return self.api_key.user_id
        return self.current_user.id if self.current_user else None

    def redirect_after_post(self, url: str) -> None:
        """303 for a plain form post; for htmx, which would swap the page in, HX-Redirect."""
        if self.is_htmx:
            self.set_header("HX-Redirect", url)
            self.finish()
        else:
            self.redirect(url, status=303)

    @property
    def config(self) -> Config:
        return self.settings["hostd_config"]

    @property
    def db(self) -> Database:
        return self.settings["hostd_db"]

    @property
    def store(self) -> BlobStore:
        return self.settings["hostd_store"]

    def now(self) -> int:
        """The wall clock in epoch seconds (make_app's, which tests move on)."""
        return int(self.settings["hostd_wall_clock"]())

    def set_default_headers(self) -> None:
        self.clear_header("Server")  # no version for scanners to match against
        # Also runs again when an error clears the headers: the page then gets a new nonce.
        self._csp_nonce: str | None = None
        self.set_header("Content-Security-Policy", NO_PAGE_CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")

    @property
    def csp_nonce(self) -> str:
        """This answer's nonce for our own <script> and <link> tags, made (and put in the
        policy) when a page first asks for it: most answers are files and JSON."""
        if self._csp_nonce is None:
            self._csp_nonce = secrets.token_urlsafe(16)
            self.set_header("Content-Security-Policy", PAGE_CSP.format(nonce=self._csp_nonce))
        return self._csp_nonce

    @property
    def is_htmx(self) -> bool:
        # History restores carry HX-Request too, but need the full page.
        headers = self.request.headers
        return (
            headers.get("HX-Request") == "true"
            and headers.get("HX-History-Restore-Request") != "true"
        )

    def set_private_cookie(self, name: str, value: str, **options: Any) -> None:
        """A signed cookie scripts cannot read, not sent cross-site."""
        self.set_signed_cookie(name, value, httponly=True, samesite="Lax", **options)

    def set_cookie(self, name: str, value: str | bytes, *args: Any, **options: Any) -> None:
        """Every cookie (the session's, the xsrf token's) is Secure when the site is https:
        its public URL, or the proxy's X-Forwarded-Proto with trust_proxy."""
        options.setdefault("secure", self.public_url().startswith("https://"))
        super().set_cookie(name, value, *args, **options)

    def public_url(self) -> str:
        """The external base URL, without a trailing slash: server.public_url, else the
        request's scheme and Host (X-Forwarded-* only with server.trust_proxy)."""
        if self.config.public_url:
            return self.config.public_url
        host = self.request.host
        if self.config.trust_proxy:
            forwarded = self.request.headers.get("X-Forwarded-Host")
            if forwarded:
                # The last value is the one our own proxy set (as Tornado does for the scheme).
                host = forwarded.split(",")[-1].strip()
        return f"{self.request.protocol}://{host}"

    def template_context(self, context: dict[str, Any]) -> dict[str, Any]:
        return {
            "current_user": self.current_user,
            "public_url": self.public_url(),
            "config": self.config,
            "xsrf_form_html": lambda: markupsafe.Markup(self.xsrf_form_html()),
            "xsrf_token": self.xsrf_token.decode(),
            "static_url": self.static_url,
            "request_path": self.request.path,
            "csp_nonce": self.csp_nonce,
            **context,
        }

    def keep_out_of_caches(self) -> None:
        """A page made for a signed-in user (their name, files, keys) is kept by no cache,
        the browser's history included: after signing out, Back asks the server again
        rather than showing the account's pages, and after a change it shows the change."""
        if self.current_user is not None:
            self.set_header("Cache-Control", "no-store")

    def render_string_page(self, template: str, **context: Any) -> str:
        self.keep_out_of_caches()
        env: jinja2.Environment = self.settings["jinja_env"]
        return env.get_template(template).render(self.template_context(context))

    def render_fragment(self, template: str, block: str, **context: Any) -> str:
        """One named block of a page template: the htmx partial that can't drift from it."""
        self.keep_out_of_caches()
        env: jinja2.Environment = self.settings["jinja_env"]
        tmpl = env.get_template(template)
        return "".join(tmpl.blocks[block](tmpl.new_context(self.template_context(context))))

    def render_page(self, template: str, *, fragment: str | None = None, **context: Any) -> None:
        """Render a page, or only its `fragment` block for an htmx request."""
        self.set_header("Vary", "HX-Request")
        if fragment is not None and self.is_htmx:
            self.finish(self.render_fragment(template, fragment, **context))
        else:
            self.finish(self.render_string_page(template, **context))

    def write_json(self, payload: dict[str, Any]) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(payload) + "\n")

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        # A full disk is not a bug in the handler: 507, whatever it was saving; nor is a
        # database that is busy or out of reach: 503; nor an account removed or disabled,
        # or a key invalidated, while its upload arrived: 401, as its next request would get.
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if status_code == 500 and out_of_space(exc):
            status_code = 507
        elif status_code == 500 and isinstance(exc, db.Unavailable):
            status_code = 503
        elif status_code == 500 and isinstance(exc, db.OwnerGone):
            status_code = 401
        super().send_error(status_code, **kwargs)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        # An HTTP error is already the access log's line for this request: one line each.
        if out_of_space(value):
            log.error(
                "%s %s: out of storage space: %s", self.request.method, self.request.uri, value
            )
        elif isinstance(value, db.Unavailable):
            log.error("%s %s: %s", self.request.method, self.request.uri, value)
        elif isinstance(value, db.OwnerGone):
            log.info("%s %s: %s", self.request.method, self.request.uri, value.message)
        elif not isinstance(value, tornado.web.HTTPError):
            super().log_exception(typ, value, tb)

    def set_error_headers(self, status_code: int, kwargs: dict[str, Any]) -> None:
        """What an error answer says beside its body: the methods a 405 would take, when to
        try again after a 503 (the database, the file storage, or the server itself busy or
        out of reach: each for a moment)."""
        if status_code == 405:
            self.set_header("Allow", ", ".join(self.SUPPORTED_METHODS))  # RFC 9110 15.5.6
        if status_code == 503:
            self.set_header("Retry-After", str(UNAVAILABLE_RETRY_SECONDS))
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, Refusal):
            for name, value in exc.headers.items():
                self.set_header(name, value)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_error_headers(status_code, kwargs)
        message = error_message(status_code, self._reason, kwargs)
        try:
            body = self.render_string_page(
                "errors/error.html", status_code=status_code, reason=self._reason, message=message
            )
        except Exception:
            body = f"{status_code} {self._reason}"
            self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(body)


# Headers other file hosts' clients send a key in (see ApiHandler.authorization).
OTHER_KEY_HEADERS = ("X-Api-Key", "Api-Key")


class ApiHandler(BaseHandler):
    """JSON endpoints for scripts: errors are {"status": false, "error": ...}.

    Cookies are ignored: an API request is who its Bearer key says, so no other site can
    make a signed-in browser act through the API.
    """

    refusal_format = json_error

    async def session_user(self) -> User | None:
        return None

    def authorization(self) -> str | None:
        """The Authorization header; a Refusal (401) when there is none but a key comes in
        a header other file hosts read (chibisafe's X-Api-Key): ignored, it would make the
        upload anonymous without a word."""
        header = self.request.headers.get("Authorization")
        if header is None:
            for name in OTHER_KEY_HEADERS:
                if name in self.request.headers:
                    raise Refusal(
                        401, f"send the API key as 'Authorization: Bearer <key>', not as {name}"
                    )
        return header

    async def bearer_key(self, header: str) -> ApiKey:
        """The usable key an `Authorization: Bearer <key>` header names; else a Refusal
        saying why (401: not valid, or its account disabled), or 503 while the key checks
        are all busy."""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Refusal(401, "the Authorization header must be 'Bearer <API key>'")
        counted = False

        def admit() -> None:
            # A token naming no usable key: its check costs an Argon2 run, so an address
            # gets only limits.invalid_keys_per_hour of them (counted as they start).
            nonlocal counted
            wait = self.invalid_keys.take(self.address)
            if wait > 0:
                raise Refusal(
                    429,
                    f"too many invalid API keys from your address"
                    f" ({self.invalid_keys.limit} an hour); retry in {math.ceil(wait)} s",
                    {"Retry-After": str(math.ceil(wait))},
                )
            counted = True

        try:
            key = await self.auth.verify_key(self.db, token.strip(), admit)
        except AccountDisabled:
            raise Refusal(401, "the account of this API key is disabled") from None
        except BaseException as exc:
            if counted:  # no answer about the key (busy, the database out of reach, gone)
                self.invalid_keys.give_back(self.address)
            if isinstance(exc, Busy):
                raise Refusal(
                    503, "the server is busy checking other API keys; retry soon"
                ) from None
            raise
        if key is None:
            raise Refusal(401, "the API key is not valid (unknown or invalidated)")
        if counted:
            self.invalid_keys.give_back(self.address)
        return key

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_error_headers(status_code, kwargs)
        message = error_message(status_code, self._reason, kwargs)
        self.write_json({"status": False, "error": message})


def refusal_formats(app: tornado.web.Application) -> FormatFor:
    """The server's FormatFor: the refusal format of the handler the URL names."""

    def format_for(method: str, target: str) -> ErrorFormat:
        start_line = httputil.RequestStartLine(method, target, "HTTP/1.1")
        headers = httputil.HTTPHeaders({"Host": "hostd"})  # routes do not look at the host
        request = httputil.HTTPServerRequest(start_line=start_line, headers=headers)
        handler_class = getattr(app.find_handler(request), "handler_class", None)
        return getattr(handler_class, "refusal_format", plain_error)

    return format_for


def refuse_early(
    handler: tornado.web.RequestHandler, status: int, body: str, content_type: str
) -> None:
    """Answer before the request body has been read, and still let the client read it.

    Tornado would close the connection as soon as the answer is written, with body bytes
    unread; the kernel then sends a reset, which can destroy the answer before the client
    reads it. So: send the answer, take the stream over, half-close it and drop what the
    client still sends for a bounded time (as nginx's lingering_close does).
    """
    data = body.encode("utf-8")
    handler.set_status(status, http.HTTPStatus(status).phrase)
    handler.set_header("Content-Type", content_type)
    handler.set_header("Content-Length", str(len(data)))
    handler.set_header("Connection", "close")
    handler.write(data)
    # flush(), not finish(): finish() would close the connection as soon as the write is done.
    handler.flush()
    stream = handler.detach()
    handler.application.log_request(handler)
    asyncio.get_running_loop().create_task(_linger(stream))


async def _linger(stream: tornado.iostream.IOStream) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LINGER_SECONDS
    try:
        await stream.write(b"")  # resolves once the answer has been handed to the kernel
        stream.socket.shutdown(socket.SHUT_WR)
        while (left := deadline - loop.time()) > 0:
            await asyncio.wait_for(
                stream.read_bytes(256 * 1024, partial=True), min(left, LINGER_IDLE_SECONDS)
            )
    except (tornado.iostream.StreamClosedError, TimeoutError, OSError):
        pass
    finally:
        stream.close()
