"""The HTTP server: Tornado's HTTPServer with hostd's rules for what a connection may cost.

This adapts the HTTP/1.x server of Tornado 6.6 (tornado/http1connection.py and
httpserver.py, read at 6.6.1; pyproject.toml pins 6.6.x for this reason). It overrides
private parts, which a Tornado upgrade must re-read: HTTP1Connection's _read_message,
_parse_headers, _read_body, _read_fixed_body, _read_chunked_body (a copy, with changes)
and its _read_finished, _response_start_line and _max_body_size; HTTP1ServerConnection's
_server_request_loop (a copy, to make HostdConnections); HTTPServer's handle_stream;
TCPServer's add_sockets, with a copy of netutil.add_accept_handler.
What it changes, and why:

- A head (request line and header fields) over MAX_HEAD_BYTES is answered 431 before the
  connection closes. Tornado's IOStream closes the socket the moment its `max_bytes` is
  exceeded, with no answer; so the head is first awaited with a zero-width look at the
  read buffer (`read_until_regex` with a lookahead consumes nothing), which lets through
  only heads Tornado's own limit (4 bytes more) accepts.
- A head Tornado cannot parse (a header line without a colon, a malformed request line)
  is answered 400 with what is wrong, in the URL's format; Tornado's answer is a bare
  "400 Bad Request" with no body.
- Field lines are parsed by parse_field_lines(): the same headers and the same errors as
  Tornado's HTTPHeaders.parse, at a third of its cost (a browser's dozen lines: 61 us
  there, 21 us here; a head as nginx sends it, five lines: 29 us there, 10 us here).
- The Host header must be a host name or address and at most a port (the URLs in an
  upload's answer are made of it), and there is one; an HTTP/1.0 request without one gets
  the server's own address and port.
- An HTTP/1.0 request with Transfer-Encoding is refused (RFC 9112 section 6.1: faulty
  framing, 400 and close); Tornado reads it as chunked.
- Chunk extensions are ignored and a trailer section is read (RFC 9112 7.1.1, 7.1.2);
  Tornado refuses both with a 400.
- A chunked body whose chunks average under MIN_AVERAGE_CHUNK_BYTES (the last aside)
  past its first FREE_CHUNKS is refused with 400. Each chunk costs Tornado's parser
  ~15 us of Python however small it is (1-byte chunks: a core for ~60 KB/s of body), and
  Tornado 6.6 joins small chunks before data_received, so only the chunk reader can
  count them. This holds for every handler, streaming or not.
- A body that is not streamed to its handler (forms) must arrive whole within
  `body_seconds`, else 408; streaming handlers lift that (`streaming()`) and watch their
  own pace (BodyPace).
- A broken body (bad framing, a handler that raised) gets a full answer with a message
  (400, 500) in the handler's format when it gave one, instead of Tornado's bare
  "400 Bad Request" or nothing; `ended_by` tells the handler what the server answered, for
  its access-log line.
- A body longer than chunk_size is read in pieces of up to BIG_READ_BYTES, straight into
  one buffer per request, which grows to that only while the body arrives faster than it
  is handed on (see _read_fixed_body).
- accept() failing for want of file descriptors or memory (EMFILE: every descriptor the
  process may open is open) stops accepting for ACCEPT_PAUSE_SECONDS, as nginx does, with
  one log line a minute; Tornado's own accept handler fails at once, again and again, on
  the still-readable socket: a core at 100% and a traceback for each try, some 40,000
  log lines a second. raise_open_files_limit() makes that later to come.
- One client address (an IPv4 address or an IPv6 /64) may hold at most
  `connections_per_address` connections at once; the next is answered 429 (plain text,
  Retry-After) and closed before its request is read. Each costs a descriptor and a little
  memory for as long as the client keeps it (a head may take header_timeout to arrive, an
  idle connection stays that long): without a cap one address could hold them all. Not
  applied behind a proxy (xheaders): every connection is then the proxy's, which limits
  its clients itself.
- Closing with request bytes still unread "lingers" (as nginx's lingering_close): the
  write side is shut after the answer and what the client still sends is read and
  dropped for a few seconds on a duplicate of the socket, so the kernel does not answer
  those bytes with a reset that can destroy the answer before the client reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import http
import json
import logging
import re
import resource
import socket
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from tornado import gen, httputil, iostream, netutil
from tornado.escape import native_str
from tornado.http1connection import (
    _CHUNK_YIELD_COST,
    _YIELD_THRESHOLD,
    HTTP1Connection,
    HTTP1ConnectionParameters,
    HTTP1ServerConnection,
    _is_done,
    parse_hex_int,
)
from tornado.httpserver import HTTPServer, _HTTPRequestContext
from tornado.ioloop import IOLoop
from tornado.log import gen_log

from hostd.throttle import AddressCounts

log = logging.getLogger("hostd")

# How much of an oversized head's request line is read to tell its URL (and so the format
# of the 431).
MAX_REQUEST_LINE_BYTES = 8192
# The largest head accepted (Tornado's default limit, now answered with 431).
MAX_HEAD_BYTES = 64 * 1024
# Zero-width when a whole head (through its first empty line) of at most MAX_HEAD_BYTES + 1
# is in the buffer; when more than MAX_HEAD_BYTES are there without one, the request line
# (up to MAX_REQUEST_LINE_BYTES of it, and at least a byte), for the 431's format. (Bounded:
# Tornado's own limit stays near MAX_HEAD_BYTES, as IOStream keeps using it as how much to
# read ahead when no read is pending.)
HEAD_OR_OVERSIZE = re.compile(
    rb"\A(?=[\s\S]{0,%d}?\n\r?\n)|\A(?=[\s\S]{%d})(?:[^\r\n]{1,%d}|[\s\S])"
    % (MAX_HEAD_BYTES - 2, MAX_HEAD_BYTES + 1, MAX_REQUEST_LINE_BYTES)
)
# A Host header (RFC 9110 7.2, RFC 3986 3.2.2): a name or IPv4 address, or an IPv6 one in
# brackets, then at most a port. Tornado's own check lets through "", "[::1" and "x:abc",
# which the URLs in an upload's answer are then made of.
HOST_VALUE = re.compile(
    r"(?:(?:[A-Za-z0-9\-._~!$&'()*+;=]|%[0-9A-Fa-f]{2})+|\[[0-9A-Fa-f:.]+\])"
    r"(?::(?P<port>[0-9]{0,5}))?"
)
# How many Host headers found good are remembered.
GOOD_HOSTS = 64
# A chunked body's trailer section (fields after the last chunk, RFC 9112 7.1.2) is read
# and dropped: this many lines of at most this many bytes.
MAX_TRAILER_LINES = 32
MAX_TRAILER_LINE_BYTES = 8192
# A chunked body may use this many chunks of any size; past them, its chunks must average
# at least MIN_AVERAGE_CHUNK_BYTES. Clients send chunks of what they read: curl from a
# pipe, nginx relaying a phone's body (a TCP segment or more each); not a few bytes.
FREE_CHUNKS = 1024
MIN_AVERAGE_CHUNK_BYTES = 256
# A streamed body, past its first idle-timeout's worth of seconds, must average at least
# this (GPRS, the slowest mobile data still in use, uploads at 2-5 KB/s).
MIN_BODY_BYTES_PER_SECOND = 512
# The most of a long body (Content-Length over chunk_size) read and handed on at once; its
# buffer starts at FIRST_READ_BYTES and doubles each time a read fills half of it or more
# (see _read_fixed_body).
BIG_READ_BYTES = 1024 * 1024
FIRST_READ_BYTES = 64 * 1024
# How long a closed connection keeps reading and dropping what the client still sends.
LINGER_SECONDS = 10.0
LINGER_IDLE_SECONDS = 2.0
# The longest address whose validity is remembered (an IPv6 address with a zone is at most
# 45 + 1 + 15 characters): a header's worth of junk never fills the memory.
# A field line (RFC 9110 5.1, 5.5; RFC 9112 5), as Tornado 6.6's httputil._ABNF has it: a
# token, a colon, optional whitespace, a value that starts and ends with a visible character
# or obs-text (or is empty), optional whitespace, and CRLF or a bare LF.
_FIELD_NAME = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_FIELD_VCHAR = r"[\x21-\x7e\x80-\xff]"
_FIELD_VALUE = rf"(?:{_FIELD_VCHAR}(?:[\x21-\x7e\x80-\xff \t]*{_FIELD_VCHAR})?)?"
FIELD_LINE = re.compile(rf"({_FIELD_NAME}):[ \t]*({_FIELD_VALUE})[ \t]*\r?\n")
# What follows the request line: its LF, the field lines, the empty line that ends them.
FIELD_LINES = re.compile(rf"\n(?:{_FIELD_NAME}:[ \t]*{_FIELD_VALUE}[ \t]*\r?\n)*\r?\n")

LONGEST_ADDRESS = 64

ErrorFormat = Callable[[int, str], tuple[int, str, str]]
# The format of a refusal to a request (method, target) before any handler has its say:
# the format of the endpoint the URL names.
FormatFor = Callable[[str, str], ErrorFormat]


def plain_error(status: int, message: str) -> tuple[int, str, str]:
    """(status, body, content type) of a refusal in hostd's plain-text protocol."""
    return status, f"ERROR {message}\n", "text/plain; charset=utf-8"


def json_error(status: int, message: str) -> tuple[int, str, str]:
    """(status, body, content type) of a refusal in the JSON API's format."""
    body = json.dumps({"status": False, "error": message}) + "\n"
    return status, body, "application/json; charset=utf-8"


def always_plain(method: str, target: str) -> ErrorFormat:
    return plain_error


class Refused(Exception):
    """The server ends this request with an answer (status, message) and closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class HostdParameters(HTTP1ConnectionParameters):
    """Tornado's connection parameters, plus hostd's (shared by every connection)."""

    def __init__(
        self,
        base: HTTP1ConnectionParameters,
        *,
        body_seconds: float,
        format_for: FormatFor = always_plain,
        xheaders: bool = False,
    ) -> None:
        super().__init__(
            no_keep_alive=base.no_keep_alive,
            chunk_size=base.chunk_size,
            max_header_size=base.max_header_size,
            header_timeout=base.header_timeout,
            max_body_size=base.max_body_size,
            body_timeout=None,  # HostdConnection answers its own deadline with a 408
            decompress=base.decompress,
        )
        self.body_seconds = body_seconds
        self.format_for = format_for
        self.xheaders = xheaders
        self.lingering: set[asyncio.Task[None]] = set()
        # Host headers found good: nearly every request names one of a few (bounded, as
        # a client may send any).
        self.good_hosts: set[str] = set()


# What a connection refused for its address's cap is asked to wait.
CONNECTIONS_RETRY_SECONDS = 5
# How long the server stops accepting when accept() finds no descriptor or memory left
# (connections wait in the listen backlog meanwhile), and how often that is logged.
ACCEPT_PAUSE_SECONDS = 0.5
ACCEPT_FAILURE_LOG_SECONDS = 60.0
OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class CannotListen(Exception):
    """The server's address cannot be listened on: in use, not this machine's, a port
    below 1024 without the right to it. The message is the admin's one line."""


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    try:
        return netutil.bind_sockets(port, address=host)
    except OSError as exc:
        shown = f"[{host}]" if ":" in host else host
        raise CannotListen(f"cannot listen on {shown}:{port}: {exc.strerror or exc}") from exc


def raise_open_files_limit() -> int:
    """Let this process open as many files as its hard limit allows (systemd's default soft
    limit is 1,024: a thousand idle connections would leave no descriptor for an upload's
    temp file). Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


class OpenConnections(AddressCounts):
    """The server's connections open now, by client address: at most `per_address` from one
    (None: no cap; behind a proxy every connection is the proxy's)."""

    def __init__(self, per_address: int | None) -> None:
        super().__init__()
        self.per_address = per_address
        self.refused = 0  # connections answered 429, for /metrics

    def enter(self, ip: str) -> str:
        """Count a new connection from `ip`: the key it counts under, or "" when the
        address has its cap already (and nothing is counted)."""
        who, count = self.count_of(ip)
        if self.per_address is not None and count >= self.per_address:
            self.refused += 1
            return ""
        self.count_in(who)
        return who


class HostdServer(HTTPServer):
    """HTTPServer whose connections are HostdServerConnections."""

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        # As TCPServer.add_sockets, with accept_connections for Tornado's accept handler.
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = accept_connections(sock, self._handle_connection)

    def initialize(  # type: ignore[override]  # Tornado's Configurable passes __init__'s args
        self,
        request_callback: Any,
        *,
        body_seconds: float,
        format_for: FormatFor = always_plain,
        connections: OpenConnections | None = None,
        **kwargs: Any,
    ) -> None:
        # Past the heads HEAD_OR_OVERSIZE lets through; HostdConnection answers the rest 431.
        super().initialize(request_callback, max_header_size=MAX_HEAD_BYTES + 4, **kwargs)
        self.conn_params = HostdParameters(
            self.conn_params,
            body_seconds=body_seconds,
            format_for=format_for,
            xheaders=self.xheaders,
        )
        self.connections = connections or OpenConnections(None)

    def handle_stream(self, stream: iostream.IOStream, address: tuple[Any, ...]) -> None:
        # As HTTPServer.handle_stream, with HostdServerConnection, and the cap per address.
        ip = address[0] if isinstance(address, tuple) and address else ""
        who = self.connections.enter(ip) if isinstance(ip, str) and ip else None
        if who == "":
            self._refuse(stream)
            return
        context = HostdRequestContext(stream, address, self.protocol, self.trusted_downstream)
        conn = HostdServerConnection(stream, self.conn_params, context)
        conn.address_key = who
        self._connections.add(conn)
        conn.start_serving(self)

    def on_close(self, server_conn: object) -> None:
        super().on_close(server_conn)
        who = getattr(server_conn, "address_key", None)
        if who is not None:
            self.connections.leave(who)

    def _refuse(self, stream: iostream.IOStream) -> None:
        """A connection over the address's cap: a 429, at once and with nothing kept (no
        task, no lingering close: a client opening thousands must not make the server hold
        a descriptor for each). A fresh socket's buffer takes the answer whole; what the
        client has sent already is read and dropped, so that the close does not reset the
        connection before the answer is read."""
        _, body, content_type = plain_error(
            429,
            f"too many connections from your address ({self.connections.per_address} at"
            " once); close some and retry",
        )
        data = body.encode("utf-8")
        head = (
            "HTTP/1.1 429 Too Many Requests\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(data)}\r\n"
            f"Retry-After: {CONNECTIONS_RETRY_SECONDS}\r\n"
            "X-Content-Type-Options: nosniff\r\n"
            "Connection: close\r\n\r\n"
        )
        sock = stream.socket
        try:
            sock.send(head.encode("latin-1") + data)
            sock.shutdown(socket.SHUT_WR)
            for _ in range(4):  # what has arrived (the request line and headers, mostly)
                if not sock.recv(64 * 1024):
                    break
        except OSError:  # BlockingIOError: nothing more has come; or the client is gone
            pass
        stream.close()

    async def let_answers_through(self, seconds: float) -> None:
        """Wait (at most `seconds`) for lingering closes to end."""
        if self._lingering:
            await asyncio.wait(self._lingering, timeout=seconds)

    async def close_all_connections(self) -> None:
        await super().close_all_connections()
        for task in list(self._lingering):
            task.cancel()
        if self._lingering:
            await asyncio.wait(self._lingering)

    @property
    def _lingering(self) -> set[asyncio.Task[None]]:
        assert isinstance(self.conn_params, HostdParameters)
        return self.conn_params.lingering


def accept_connections(
    sock: socket.socket, callback: Callable[[socket.socket, Any], None]
) -> Callable[[], None]:
    """Tornado's netutil.add_accept_handler (6.6), and a pause when accept() fails for want
    of resources (see the module). Returns what stops accepting for good."""
    io_loop = IOLoop.current()
    state = {"removed": False, "paused": False, "logged": -ACCEPT_FAILURE_LOG_SECONDS}

    def accept(fd: Any, events: int) -> None:
        for _ in range(netutil._DEFAULT_BACKLOG):  # then let other callbacks run
            if state["removed"]:
                return
            try:
                connection, address = sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in OUT_OF_RESOURCES:
                    raise
                pause(exc)
                return
            callback(connection, address)

    def pause(exc: OSError) -> None:
        now = io_loop.time()
        if now - state["logged"] >= ACCEPT_FAILURE_LOG_SECONDS:
            state["logged"] = now
            log.error(
                "cannot accept connections: %s; pausing %g s at a time until it can",
                exc.strerror,
                ACCEPT_PAUSE_SECONDS,
            )
        io_loop.remove_handler(sock)
        state["paused"] = True
        io_loop.call_later(ACCEPT_PAUSE_SECONDS, resume)

    def resume() -> None:
        if not state["removed"]:
            state["paused"] = False
            io_loop.add_handler(sock, accept, IOLoop.READ)

    def remove() -> None:
        if not state["paused"]:
            io_loop.remove_handler(sock)
        state["removed"] = True

    io_loop.add_handler(sock, accept, IOLoop.READ)
    return remove


class HostdRequestContext(_HTTPRequestContext):
    """A connection's addresses. Behind a trusted proxy (xheaders) each request names its
    client in X-Real-IP or X-Forwarded-For, and Tornado checks the name with getaddrinfo,
    which lets go of the GIL: on every request, 2% of the IOLoop's time at 4 KiB uploads,
    and a turn for any other thread that wants the GIL. Here the answer is remembered."""

    def _apply_xheaders(self, headers: httputil.HTTPHeaders) -> None:
        # As Tornado 6.6's, with valid_ip() for netutil.is_valid_ip().
        ip = ""
        for candidate in reversed(headers.get("X-Forwarded-For", self.remote_ip).split(",")):
            ip = candidate.strip()
            if ip not in self.trusted_downstream:
                break
        ip = headers.get("X-Real-Ip", ip)
        if valid_ip(ip):
            self.remote_ip = ip
        scheme = headers.get("X-Scheme", headers.get("X-Forwarded-Proto", self.protocol))
        if scheme:
            scheme = scheme.split(",")[-1].strip().lower()  # a scheme is case-insensitive
        if scheme in ("http", "https"):
            self.protocol = scheme


def parse_field_lines(text: str) -> httputil.HTTPHeaders:
    """A head's field lines (from the request line's LF on, decoded as Latin-1) as Tornado's
    HTTPHeaders.parse(text) has them, in two passes of compiled regexes where Tornado's
    makes five calls for each line: a browser's dozen lines cost the IOLoop 61 us there
    (a sixth of a small download), 21 us here. Anything but plain, valid field lines (an empty
    line among them, a malformed one) goes to Tornado's own parser, which raises its
    HTTPInputError or takes it as it always has."""
    if FIELD_LINES.fullmatch(text) is None:
        return httputil.HTTPHeaders.parse(text)
    headers = httputil.HTTPHeaders()
    for name, value in FIELD_LINE.findall(text):
        if name in headers:
            headers.add(name, value)
        else:
            headers[name] = value
    return headers


def valid_host(value: str) -> bool:
    """Whether a Host (or X-Forwarded-Host) value is a host name or address and at most a
    port: what the URLs of an upload's answer may be made of."""
    valid = HOST_VALUE.fullmatch(value)
    return valid is not None and int(valid["port"] or 0) <= 65535


def host_refusal(header: str, value: str) -> Refused:
    shown = value if len(value) <= 100 else value[:100] + "..."
    return Refused(400, f"the {header} header is not a host name and port: {shown!r}")


def valid_ip(address: str) -> bool:
    """Tornado's netutil.is_valid_ip, remembered for the last few thousand addresses."""
    if len(address) > LONGEST_ADDRESS:
        return netutil.is_valid_ip(address)
    return _remembered_valid_ip(address)


@functools.lru_cache(maxsize=4096)
def _remembered_valid_ip(address: str) -> bool:
    return netutil.is_valid_ip(address)


class HostdServerConnection(HTTP1ServerConnection):
    """HTTP1ServerConnection whose requests are read by HostdConnection."""

    address_key: str | None = None  # the address it counts for (HostdServer's cap)

    async def _server_request_loop(self, delegate: httputil.HTTPServerConnectionDelegate) -> None:
        # Tornado 6.6.1's loop, with HostdConnection in place of HTTP1Connection.
        try:
            while True:
                conn = HostdConnection(self.stream, False, self.params, self.context)
                request_delegate = delegate.start_request(self, conn)
                try:
                    ret = await conn.read_response(request_delegate)
                except (
                    iostream.StreamClosedError,
                    iostream.UnsatisfiableReadError,
                    asyncio.CancelledError,
                ):
                    return
                except Exception:
                    gen_log.error("Uncaught exception", exc_info=True)
                    conn.close()
                    return
                if not ret:
                    return
                await asyncio.sleep(0)
        finally:
            delegate.on_close(self)


class HostdConnection(HTTP1Connection):
    """One request on a server connection, read under hostd's rules (see the module)."""

    def __init__(
        self,
        stream: iostream.IOStream,
        is_client: bool,
        params: HTTP1ConnectionParameters | None = None,
        context: object | None = None,
    ) -> None:
        super().__init__(stream, is_client, params, context)
        assert isinstance(self.params, HostdParameters)
        self.hostd_params: HostdParameters = self.params
        self.body_seconds: float | None = self.hostd_params.body_seconds
        # The format of refusals made here: the handler's once it streams its body, else
        # that of the URL the request line names, else plain text.
        self.error_format: ErrorFormat | None = None
        self._head = b""  # what came of the head, for the request line a refusal reads
        # Set when the server ended the request itself: what it answered.
        self.ended_by: Refused | None = None
        self._input_started = False

    def streaming(self, error_format: ErrorFormat) -> None:
        """For a handler that streams its body: no deadline for the whole body (the handler
        watches its pace), and refusals made here are answered in the handler's format."""
        self.body_seconds = None
        self.error_format = error_format

    async def _read_message(self, delegate: httputil.HTTPMessageDelegate) -> bool:
        try:
            if not await self._head_arrived():
                return False
            return await super()._read_message(delegate)
        except Refused as refusal:
            self.ended_by = refusal
            await self._answer(refusal)
            self.close()
            return False

    async def _head_arrived(self) -> bool:
        """Wait until a whole head is in the read buffer (False: the idle timeout passed);
        raises Refused(431) when it is over MAX_HEAD_BYTES."""
        peek = self.stream.read_until_regex(HEAD_OR_OVERSIZE.pattern)
        timeout = self.params.header_timeout
        if timeout is None:
            seen = await peek
        else:
            try:
                seen = await gen.with_timeout(
                    self.stream.io_loop.time() + timeout,
                    peek,
                    quiet_exceptions=iostream.StreamClosedError,
                )
            except TimeoutError:
                self.close()
                return False
        self._input_started = True
        if seen:
            self._head = seen
            raise Refused(431, f"the request's header fields are over {MAX_HEAD_BYTES} bytes")
        return True

    def _parse_headers(self, data: bytes) -> tuple[str, httputil.HTTPHeaders]:
        # Tornado answers a head it cannot parse with a bare "400 Bad Request" and no word
        # of what is wrong; here each is a Refused, answered in the URL's format.
        self._head = data  # a reference: the request line is cut only for a refusal
        if len(data) > MAX_HEAD_BYTES:
            raise Refused(431, f"the request's header fields are over {MAX_HEAD_BYTES} bytes")
        try:
            # Tornado's HTTP1Connection._parse_headers, with parse_field_lines().
            text = data.decode("latin1").lstrip("\r\n")
            eol = text.find("\n")
            start_line = text[:eol].rstrip("\r")
            headers = parse_field_lines(text[eol:])
            method, target, version = httputil.parse_request_start_line(start_line)
        except httputil.HTTPInputError as exc:
            raise Refused(400, f"the request's head is malformed: {exc}") from None
        if target[:8].lower().startswith(("http://", "https://")):
            start_line = self._origin_form(method, target, version, headers)
        if "Transfer-Encoding" in headers and version == "HTTP/1.0":
            raise Refused(
                400, "an HTTP/1.0 request cannot use Transfer-Encoding (RFC 9112, section 6.1)"
            )
        self._check_host(headers, version)
        if self.hostd_params.xheaders and "X-Forwarded-Host" in headers:
            # The answers' URLs are made of it (BaseHandler.public_url), as of Host: the
            # last value, the one our own proxy set, gets Host's check.
            last = headers["X-Forwarded-Host"].split(",")[-1].strip()
            if last and not valid_host(last):
                raise host_refusal("X-Forwarded-Host", last)
        return start_line, headers

    @staticmethod
    def _origin_form(method: str, target: str, version: str, headers: httputil.HTTPHeaders) -> str:
        """The request line of a request in absolute form (`GET http://host/x HTTP/1.1`,
        which a server must take: RFC 9112, 3.2.2), in origin form; its authority becomes
        the Host, as the RFC asks, and is checked as one."""
        url = urllib.parse.urlsplit(target)
        if not url.netloc or "@" in url.netloc:
            raise Refused(400, "the request's target is an absolute URL without a host name")
        headers.pop("Host", None)
        headers["Host"] = url.netloc
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        return f"{method} {path} {version}"

    def _check_host(self, headers: httputil.HTTPHeaders, version: str) -> None:
        """Refuse a Host header that cannot be part of a URL (the answer's URLs are made of
        it), or more than one; an HTTP/1.0 request without one gets this server's own
        address and port (Tornado's default, "127.0.0.1", drops the port)."""
        hosts = headers.get_list("Host")
        if len(hosts) > 1:
            raise Refused(400, "the request has more than one Host header")
        if not hosts:
            if version != "HTTP/1.0":
                raise Refused(400, "the request has no Host header, which HTTP/1.1 requires")
            headers["Host"] = self._own_address()
            return
        host = hosts[0]
        good = self.hostd_params.good_hosts
        if host in good:
            return
        if not valid_host(host):
            raise host_refusal("Host", host)
        if len(good) < GOOD_HOSTS:
            good.add(host)

    def _own_address(self) -> str:
        try:
            address = self.stream.socket.getsockname()
        except OSError:
            address = None
        if not isinstance(address, tuple):
            return "127.0.0.1"
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _read_body(
        self, code: int, headers: httputil.HTTPHeaders, delegate: httputil.HTTPMessageDelegate
    ) -> Awaitable[None] | None:
        length = headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self._max_body_size:
            raise Refused(413, self._too_big())  # Tornado's own: a 400
        try:
            reading = super()._read_body(code, headers, delegate)
        except httputil.HTTPInputError as exc:
            raise Refused(400, f"the request's body framing is invalid: {exc}") from None
        return None if reading is None else self._watch_body(reading)

    def _too_big(self) -> str:
        """Why a body over this URL's limit is refused. Only the server-wide limit says
        where files go: an upload's handler, having raised its own, refuses its way first."""
        limit = self._max_body_size
        message = f"the request's body is over the {limit:,} bytes this URL takes"
        if limit == self.params.max_body_size:
            message += "; upload files with POST /api/upload or PUT /api/upload/<name>"
        return message

    async def _watch_body(self, reading: Awaitable[None]) -> None:
        seconds = self.body_seconds
        try:
            if seconds is None:
                await reading
            else:
                await asyncio.wait_for(reading, seconds)
        except iostream.StreamClosedError:
            raise  # the client went away, or a handler's answer closed the connection
        except Exception as exc:
            # Set before Tornado tells the handler the connection is closing (the access log).
            self.ended_by = body_refusal(exc, seconds)
            raise self.ended_by from None

    async def _read_fixed_body(
        self, content_length: int, delegate: httputil.HTTPMessageDelegate
    ) -> None:
        # Tornado's reader hands a body on in pieces of at most chunk_size (256 KiB), each
        # read into a fresh buffer and copied twice. A longer body (a big upload) is read
        # straight into one buffer of up to BIG_READ_BYTES and copied once: a quarter of
        # the trips through the handler for each MiB, and a copy less. The buffer starts
        # small and doubles only when a read fills half of it: an upload that trickles in (or a
        # head that promises 50 MB and sends a byte) holds 64 KiB, not a whole MiB; 300
        # of them held 330 MiB.
        if content_length <= self.params.chunk_size:
            return await super()._read_fixed_body(content_length, delegate)
        view = memoryview(bytearray(min(content_length, FIRST_READ_BYTES)))
        while content_length > 0:
            piece = view[: min(len(view), content_length)]
            # Any writable buffer, says read_into's docstring; its annotation says bytearray.
            read = await self.stream.read_into(piece, partial=True)  # type: ignore[arg-type]
            content_length -= read
            await self._deliver_body(delegate, view[:read].tobytes())
            if 2 * read >= len(view) and len(view) < min(BIG_READ_BYTES, content_length):
                view = memoryview(bytearray(min(2 * len(view), BIG_READ_BYTES)))
            await asyncio.sleep(0)  # as Tornado's reader does every _YIELD_THRESHOLD bytes

    async def _read_chunked_body(self, delegate: httputil.HTTPMessageDelegate) -> None:
        # Tornado 6.6.1's reader, with the chunk count, chunk extensions ignored and a
        # trailer section read (RFC 9112 7.1.1 and 7.1.2: Tornado refuses both with a 400)
        # (marked "hostd").
        total_size = 0
        chunks = 0  # hostd
        pending = bytearray()
        work = 0

        def read(future: Awaitable[bytes]) -> Awaitable[bytes]:
            if pending and not _is_done(future):
                return flush_and_read(future)
            return future

        async def flush_and_read(future: Awaitable[bytes]) -> bytes:
            data = bytes(pending)
            pending.clear()
            await self._deliver_body(delegate, data)
            return await future

        while True:
            work += _CHUNK_YIELD_COST
            if work >= _YIELD_THRESHOLD:
                work = 0
                await asyncio.sleep(0)
            chunk_len_str = await read(self.stream.read_until(b"\r\n", max_bytes=64))
            size = chunk_len_str[:-2].partition(b";")[0].rstrip(b" \t")  # hostd
            try:
                chunk_len = parse_hex_int(native_str(size))
            except ValueError:
                raise httputil.HTTPInputError("invalid chunk size") from None
            if chunk_len == 0:
                for _ in range(MAX_TRAILER_LINES + 1):  # hostd: the trailer's fields
                    line = await read(
                        self.stream.read_until(b"\r\n", max_bytes=MAX_TRAILER_LINE_BYTES)
                    )
                    if line == b"\r\n":
                        break
                else:
                    raise httputil.HTTPInputError("too many trailer fields")
                if pending:
                    await self._deliver_body(delegate, bytes(pending))
                return
            total_size += chunk_len
            if total_size > self._max_body_size:
                raise Refused(413, self._too_big())  # hostd: Tornado's a 400
            chunks += 1  # hostd
            # The last chunk may be short: it is not counted in the average.
            if chunks > FREE_CHUNKS and total_size < (chunks - 1) * MIN_AVERAGE_CHUNK_BYTES:
                raise Refused(
                    400,
                    f"the body's chunks average under {MIN_AVERAGE_CHUNK_BYTES} bytes; "
                    "send bigger chunks, or a Content-Length",
                )
            bytes_to_read = chunk_len
            while bytes_to_read:
                chunk = await read(
                    self.stream.read_bytes(min(bytes_to_read, self.params.chunk_size), partial=True)
                )
                bytes_to_read -= len(chunk)
                if not pending and len(chunk) == self.params.chunk_size:
                    await self._deliver_body(delegate, chunk)
                else:
                    pending += chunk
                    if len(pending) >= self.params.chunk_size:
                        data = bytes(pending[: self.params.chunk_size])
                        del pending[: self.params.chunk_size]
                        await self._deliver_body(delegate, data)
                work += len(chunk)
                if work >= _YIELD_THRESHOLD:
                    work = 0
                    await asyncio.sleep(0)
            crlf = await read(self.stream.read_bytes(2))
            if crlf != b"\r\n":
                raise httputil.HTTPInputError("improperly terminated chunk")

    async def _answer(self, refusal: Refused) -> None:
        """Write the refusal, unless an answer has already begun or the client is gone."""
        if self._response_start_line is not None or self.stream is None or self.stream.closed():
            return
        try:
            error_format = self.error_format or self._format_of_url()
            status, body, content_type = error_format(refusal.status, refusal.message)
        except Exception:  # a template that fails must not cost the client its answer
            status, body, content_type = plain_error(refusal.status, refusal.message)
        data = body.encode("utf-8")
        head = (
            f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(data)}\r\n"
            "X-Content-Type-Options: nosniff\r\n"
            "Connection: close\r\n\r\n"
        )
        with contextlib.suppress(iostream.StreamClosedError):
            await self.stream.write(head.encode("latin-1") + data)

    def _format_of_url(self) -> ErrorFormat:
        request_line = self._head.partition(b"\n")[0][:MAX_REQUEST_LINE_BYTES]
        method, _, rest = request_line.decode("latin-1").strip().partition(" ")
        target = rest.rpartition(" ")[0] if rest.endswith(("HTTP/1.0", "HTTP/1.1")) else rest
        return self.hostd_params.format_for(method, target) if target else plain_error

    def close(self) -> None:
        stream = self.stream
        if (
            stream is not None
            and not stream.closed()
            and self._input_started
            and not self._read_finished
        ):
            linger(stream, self.hostd_params.lingering)
        super().close()


def body_refusal(exc: Exception, seconds: float | None) -> Refused:
    """What the server answers when reading a request's body failed with `exc`."""
    if isinstance(exc, Refused):
        return exc
    if isinstance(exc, TimeoutError):
        return Refused(408, f"the request body did not arrive within {seconds:g} seconds")
    if isinstance(exc, httputil.HTTPInputError):
        return Refused(400, f"the request's body is malformed: {exc}")
    # A handler's data_received raised; Tornado has logged it.
    return Refused(500, "the server failed while reading the request")


def linger(stream: iostream.IOStream, tasks: set[asyncio.Task[None]]) -> None:
    """Keep reading (and dropping) what the client sends after the stream closes, on a
    duplicate of its socket, with the write side shut so the client sees the answer end."""
    try:
        sock = stream.socket.dup()
        sock.setblocking(False)
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        sock.close()
        return
    task = asyncio.get_running_loop().create_task(_drain(sock))
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    task.add_done_callback(lambda _: sock.close())  # also when cancelled before it ran


async def _drain(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LINGER_SECONDS
    try:
        while (left := deadline - loop.time()) > 0:
            data = await asyncio.wait_for(
                loop.sock_recv(sock, 256 * 1024), min(left, LINGER_IDLE_SECONDS)
            )
            if not data:
                break
    except (TimeoutError, OSError):
        pass


class BodyPace:
    """Watches a streamed body: `stalled(message)` is called when no byte has come for
    `idle_seconds`, or (from `arrived`) when, past its first `idle_seconds`, the body
    averages under MIN_BODY_BYTES_PER_SECOND. Time spent waiting for the server's own disk
    does not count."""

    def __init__(self, idle_seconds: float, stalled: Callable[[str], None]) -> None:
        self._idle_seconds = idle_seconds
        self._stalled = stalled
        self._loop = asyncio.get_running_loop()
        self._started = self._loop.time()
        self._paused_seconds = 0.0
        self._bytes = 0
        self._running = True
        self._timer: asyncio.TimerHandle | None = None
        self._restart()

    def arrived(self, size: int) -> str | None:
        """Count `size` bytes; returns the refusal message when the body is too slow."""
        if not self._running:
            return None
        self._restart()
        self._bytes += size
        elapsed = self._loop.time() - self._started - self._paused_seconds
        if elapsed > self._idle_seconds and self._bytes < MIN_BODY_BYTES_PER_SECOND * elapsed:
            self.stop()
            return (
                f"the upload arrived slower than {MIN_BODY_BYTES_PER_SECOND} bytes a second "
                "on average; it was dropped"
            )
        return None

    async def paused(self, waiting: Awaitable[None]) -> None:
        """Await what the server itself is waiting for, with the clock stopped."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        began = self._loop.time()
        try:
            await waiting
        finally:
            self._paused_seconds += self._loop.time() - began
            if self._running:
                self._restart()

    def stop(self) -> None:
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _restart(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(self._idle_seconds, self._idle)

    def _idle(self) -> None:
        self._timer = None
        self._running = False
        self._stalled(f"no data arrived for {self._idle_seconds:g} seconds; the upload was dropped")
