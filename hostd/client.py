"""`hostd upload`: send files to a hostd server, as a script would; standard library only.

A file up to `resumable_above` bytes is sent in one `PUT /api/upload/<name>`; a bigger one
with tus 1.0 at /api/tus/ (when the server offers it), in PATCHes of at most PATCH_BYTES, so
that a dropped connection costs a retry from the offset the server reports, not the file,
and a run killed midway is carried on by the next one (Journal). `-` is standard input,
sent as it is read in one chunked PUT (a pipe cannot be read again, so it is not resumed).
Bodies are read as they are sent, never held whole.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import math
import os
import select
import socket
import ssl
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TextIO, TypeVar

try:
    import fcntl
except ImportError:  # Windows: the journal goes unlocked
    fcntl = None  # type: ignore[assignment]

MiB = 1024 * 1024
DEFAULT_URL = "http://127.0.0.1:8000"
RESUMABLE_ABOVE_BYTES = 16 * MiB
PATCH_BYTES = 8 * MiB
SEND_BLOCK_BYTES = 256 * 1024
TIMEOUT_SECONDS = 60.0
# How long a body waits for "100 Continue" before it is sent anyway (curl waits 1 s).
CONTINUE_WAIT_SECONDS = 1.0
# Waits between tries of a tus upload that failed without making progress; progress resets.
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 30.0)
# How often a PUT is sent when the server answers 503 or 429 (see Client.upload_put), and
# the longest its Retry-After is waited out.
PUT_TRIES = 3
PUT_WAIT_SECONDS = 30.0
TUS_VERSION = "1.0.0"
TUS_PATH = "/api/tus/"
UPLOAD_PATH = "/api/upload"
REDIRECTS = (301, 302, 303, 307, 308)

STDIN = Path("-")  # the file name that stands for standard input

T = TypeVar("T")
# Where a tus upload stands: the offset, and the upload's answer once it is complete.
TusState = tuple[int, dict[str, Any] | None]


# How the server begins a refusal of what --expires sent (a header; tus: metadata).
EXPIRES_REFUSALS = ("the Expires header ", "the expires metadata ")


class UploadFailed(Exception):
    """An upload the server refused (`status`), or a server that could not be reached
    (`status` None); the message is the server's when it gave one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return self.message if self.status is None else f"{self.message} (HTTP {self.status})"


class WrongURL(UploadFailed):
    """The URL given is not a hostd server's base URL: the server redirects elsewhere, or has
    no upload endpoint there. Every file would fail the same way."""


class Unreachable(UploadFailed):
    """The server could not be reached, the connection broke, or the server is busy: worth
    a retry for tus (not before `retry_after` seconds, when the server said so)."""

    retry_after = 0.0


@dataclass(frozen=True)
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> dict[str, Any]:
        try:
            payload = json.loads(self.body)
        except ValueError:
            return {}
        return payload if isinstance(payload, dict) else {}

    def refusal(self) -> UploadFailed:
        """The server's message for an error answer: its JSON `error`, else its plain text
        (hostd's own answers), else the status's name (a proxy's HTML page)."""
        message = self.json().get("error")
        if not isinstance(message, str) or not message:
            text = self.body.decode("utf-8", "replace").strip()
            plain = self.headers.get_content_type() == "text/plain"
            message = text.splitlines()[0][:300] if plain and text else ""
        return UploadFailed(message or http.client.responses.get(self.status, "error"), self.status)


class Progress:
    """One line on a terminal, redrawn at most ten times a second: name, share, bytes."""

    def __init__(self, stream: TextIO, name: str, total: int | None) -> None:
        self.stream = stream
        self.name = name
        self.total = total
        self.done = 0
        self._drawn = 0.0

    def advance(self, size: int) -> None:
        self.at(self.done + size)

    def at(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if self.total is None:  # a pipe: how much has gone so far
            if now - self._drawn >= 0.1:
                self._drawn = now
                self._draw_sent()
                self.stream.flush()
            return
        if now - self._drawn >= 0.1 or done >= self.total:
            self._drawn = now
            share = 100 * done // self.total if self.total else 100
            width = 30
            filled = width * share // 100
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(
                f"\r{self.name[:40]} [{bar}] {share:3d}% {done // 1024} of {self.total // 1024} KiB"
            )
            self.stream.flush()

    def _draw_sent(self) -> None:
        self.stream.write(f"\r{self.name[:40]} {self.done // 1024} KiB sent")

    def end(self) -> None:
        if self.total is None:
            self._draw_sent()
        self.stream.write("\n")
        self.stream.flush()


class FileSlice:
    """`size` bytes of an open file from `offset`, read as http.client sends them."""

    def __init__(
        self, file: BinaryIO, offset: int, size: int, sent: Callable[[int], None] | None
    ) -> None:
        file.seek(offset)
        self._file = file
        self._left = size
        self._sent = sent

    def read(self, size: int = -1) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        data = self._file.read(size)
        self._left -= len(data)
        if self._sent is not None and data:
            self._sent(len(data))
        return data


def chunked(stream: BinaryIO, sent: Callable[[int], None] | None) -> Iterator[bytes]:
    """A stream's bytes as a chunked body (RFC 9112 7.1), read as http.client sends them."""
    while data := stream.read(SEND_BLOCK_BYTES):
        if sent is not None:
            sent(len(data))
        yield b"%x\r\n" % len(data) + data + b"\r\n"
    yield b"0\r\n\r\n"


# Unfinished tus uploads are remembered for the next run this long (the server keeps them
# for its server.resumable_hours, 24 by default; one it no longer has answers 404 or 410).
JOURNAL_DAYS = 7


def journal_path() -> Path | None:
    """Where `hostd upload` remembers unfinished uploads: $XDG_STATE_HOME/hostd/, else
    ~/.local/state/hostd/; None without a home directory to put it in."""
    state = os.environ.get("XDG_STATE_HOME")
    if not state:
        try:
            state = str(Path.home() / ".local" / "state")
        except RuntimeError:  # no $HOME, and no home in the password database
            return None
    return Path(state) / "hostd" / "unfinished-uploads.json"


@dataclass(frozen=True)
class Sending:
    """One file on its way to one server, as the journal knows it: `server`, a digest of
    the URL and key (the journal holds no secret); `file`, its path; `fingerprint`, all
    that must be the same for an upload to be carried on (the server, the path, device and
    inode, size, modification time, and the expiry asked for)."""

    server: str
    file: str
    fingerprint: str

    @classmethod
    def of(cls, client: Client, path: Path, stat: os.stat_result) -> Sending:
        key = hashlib.sha256(client.key.encode()).hexdigest() if client.key else ""
        server = hashlib.sha256(json.dumps([client.url, key]).encode()).hexdigest()
        file = str(path.resolve())
        seen = [server, file, stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns]
        seen.append(client.expires or "")
        return cls(server, file, hashlib.sha256(json.dumps(seen).encode()).hexdigest())


class Journal:
    """Unfinished tus uploads, in a small JSON file, so that a run killed midway (Ctrl-C, a
    closed laptop, a network down for longer than the retries wait) is carried on by the
    next run for the same file, unchanged, to the same server with the same key and expiry.
    Best effort: a journal that cannot be read or written is passed over, and the upload
    starts from its first byte, as without one. `path` None: remember nothing."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def location(self, sending: Sending) -> str | None:
        """Where the upload of these very bytes stands, if an earlier run left it unfinished."""
        entry = self._read().get(sending.fingerprint)
        return _location(entry)

    def stale(self, sending: Sending) -> list[tuple[str, str]]:
        """(fingerprint, location) of unfinished uploads of this path to this server that
        this one replaces: the file has changed since."""
        return [
            (fingerprint, location)
            for fingerprint, entry in self._read().items()
            if fingerprint != sending.fingerprint
            and isinstance(entry, dict)
            and (entry.get("server"), entry.get("file")) == (sending.server, sending.file)
            and (location := _location(entry)) is not None
        ]

    def remember(self, sending: Sending, location: str) -> None:
        entry = {"location": location, "server": sending.server, "file": sending.file}
        with self._locked():
            uploads = self._read()
            uploads[sending.fingerprint] = {**entry, "at": int(time.time())}
            self._write(uploads)

    def forget(self, fingerprint: str) -> None:
        with self._locked():
            uploads = self._read()
            if uploads.pop(fingerprint, None) is not None:
                self._write(uploads)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Held around each read, change and write of the journal (a lock on its directory),
        so that runs in parallel (`xargs -P4 hostd upload`) keep each other's entries.
        Where there is no flock (Windows) or no directory to lock, nothing is held."""
        fd = -1
        if self.path is not None and fcntl is not None:
            with contextlib.suppress(OSError):
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            if fd >= 0:
                os.close(fd)  # and with it the lock

    def _read(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        try:
            uploads = json.loads(self.path.read_text(encoding="utf-8")).get("uploads")
        except (OSError, ValueError, AttributeError):
            return {}
        return uploads if isinstance(uploads, dict) else {}

    def _write(self, uploads: dict[str, Any]) -> None:
        """The journal, replaced whole (written beside it, then renamed); readable only by
        its owner. Entries older than JOURNAL_DAYS go; an empty journal is removed."""
        if self.path is None:
            return
        horizon = time.time() - JOURNAL_DAYS * 24 * 3600
        kept = {
            fingerprint: entry
            for fingerprint, entry in uploads.items()
            if isinstance(entry, dict)
            and isinstance(entry.get("at"), int)
            and entry["at"] >= horizon
        }
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            if not kept:
                self.path.unlink(missing_ok=True)
                return
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump({"uploads": kept}, out)
            os.replace(temporary, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)


def _location(entry: object) -> str | None:
    """A journal entry's upload location, if it is one (a path below TUS_PATH)."""
    location = entry.get("location") if isinstance(entry, dict) else None
    return location if isinstance(location, str) and location.startswith(TUS_PATH) else None


def server_url_parts(url: str) -> urllib.parse.SplitResult | None:
    """The parts of an http(s)://host[:port][/path] URL; None for anything else, a port that
    is not a number from 0 to 65535 or a bracketed host that is no IPv6 address included
    (urlsplit raises ValueError for those, some only when .port is read)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts


class Client:
    """Uploads to one server with one key (None: anonymously)."""

    def __init__(
        self,
        url: str,
        key: str | None,
        *,
        resumable_above: int = RESUMABLE_ABOVE_BYTES,
        expires: str | None = None,
        progress_to: TextIO | None = None,
        sleep: Callable[[float], None] = time.sleep,
        journal: Journal | None = None,
    ) -> None:
        # The upload endpoint (a ShareX config's RequestURL, pasted) stands for its server.
        self.url = url.rstrip("/").removesuffix(UPLOAD_PATH)
        parts = server_url_parts(self.url)
        if parts is None:
            raise UploadFailed(f"the server URL must be http(s)://host[:port][/path], not {url!r}")
        self._parts = parts
        self.key = key
        self.resumable_above = resumable_above
        self.expires = expires  # hours, or an ISO 8601 time: as the server's Expires header
        self.progress_to = progress_to
        self._sleep = sleep
        self.journal = journal or Journal(None)
        self._has_tus: bool | None = None

    def upload(self, path: Path) -> dict[str, Any]:
        """The server's JSON answer for one file (as POST /api/upload gives it)."""
        with path.open("rb") as file:
            stat = os.fstat(file.fileno())
            size = stat.st_size
            progress = Progress(self.progress_to, path.name, size) if self.progress_to else None
            try:
                if size > self.resumable_above and self.offers_tus():
                    sending = Sending.of(self, path, stat)
                    return self.upload_tus(file, path.name, size, progress, sending)
                return self.upload_put(file, path.name, size, progress)
            finally:
                if progress is not None:
                    progress.end()

    # -- PUT /api/upload/<name>

    def upload_put(
        self, file: BinaryIO, name: str, size: int, progress: Progress | None
    ) -> dict[str, Any]:
        """One PUT; sent again after a 503 (the server restarting, its database or storage
        out of reach for a moment: nothing was stored) or a 429 (a rate limit), up to
        PUT_TRIES times, each after the server's Retry-After or RETRY_DELAYS. A 503's wait is
        cut to PUT_WAIT_SECONDS; a 429 that asks for longer is the answer (its message says
        when to try again)."""
        for tries in range(1, PUT_TRIES + 1):
            if progress is not None:
                progress.at(0)
            answer = self.request(
                "PUT",
                f"{UPLOAD_PATH}/{urllib.parse.quote(os.fsencode(name), safe='')}",
                {
                    "Content-Length": str(size),
                    **({"Expires": self.expires} if self.expires else {}),
                },
                FileSlice(file, 0, size, progress.advance if progress else None),
            )
            if answer.status not in (429, 503) or tries == PUT_TRIES:
                break
            wait = retry_after(answer, at_most=math.inf) or RETRY_DELAYS[tries - 1]
            if answer.status == 429 and wait > PUT_WAIT_SECONDS:
                break
            self._sleep(min(wait, PUT_WAIT_SECONDS))
        return self.uploaded(answer)

    def upload_stream(self, stream: BinaryIO, name: str | None) -> dict[str, Any]:
        """The server's JSON answer for what `stream` (a pipe) holds, up to its end, sent as
        it is read; with no name the server calls it `file`."""
        shown = name or "stdin"
        progress = Progress(self.progress_to, shown, None) if self.progress_to else None
        target = f"{UPLOAD_PATH}/{urllib.parse.quote(os.fsencode(name), safe='')}" if name else ""
        try:
            answer = self.request(
                "PUT",
                target or UPLOAD_PATH,
                {
                    "Transfer-Encoding": "chunked",
                    **({"Expires": self.expires} if self.expires else {}),
                },
                chunked(stream, progress.advance if progress else None),
            )
        finally:
            if progress is not None:
                progress.end()
        return self.uploaded(answer)

    def uploaded(self, answer: Answer) -> dict[str, Any]:
        """The JSON of a PUT's answer; UploadFailed with the server's message when it refused
        the file, WrongURL when there is no upload endpoint at this URL (404)."""
        if answer.status == 404:
            raise WrongURL(
                f"nothing at {self.url}{UPLOAD_PATH}: give --url the server's base URL,"
                " e.g. http://host:port",
                404,
            )
        if answer.status != 200:
            raise answer.refusal()
        return answer.json()

    # -- tus 1.0 (https://tus.io/protocols/resumable-upload)

    def offers_tus(self) -> bool:
        """Whether the server speaks tus 1.0 with creation (asked once; a 404 means no)."""
        if self._has_tus is None:
            answer = self.request("OPTIONS", TUS_PATH, {})
            versions = answer.headers.get("Tus-Version", "")
            extensions = answer.headers.get("Tus-Extension", "")
            self._has_tus = (
                answer.status in (200, 204)
                and TUS_VERSION in [v.strip() for v in versions.split(",")]
                and "creation" in [e.strip() for e in extensions.split(",")]
            )
        return self._has_tus

    def upload_tus(
        self,
        file: BinaryIO,
        name: str,
        size: int,
        progress: Progress | None,
        sending: Sending,
    ) -> dict[str, Any]:
        """Carry on the upload an earlier run left unfinished, or create one; then PATCH it
        from the offset the server holds, retrying (with the waits of RETRY_DELAYS) while
        the connection fails or the server is busy. The journal keeps the upload until it
        is done, or refused."""
        location, offset, info = self.resumed(sending)
        if location is None:
            self.terminate_stale(sending)
            location = self.retrying(lambda: self.tus_create(name, size))
            self.journal.remember(sending, location)
        elif progress is not None:
            progress.at(offset)
        try:
            info = self.patch_all(location, file, offset, size, progress, info)
        except UploadFailed as exc:
            if exc.status is not None:  # refused: there is nothing to carry on
                self.journal.forget(sending.fingerprint)
            raise
        self.journal.forget(sending.fingerprint)
        return info

    def resumed(self, sending: Sending) -> tuple[str | None, int, dict[str, Any] | None]:
        """The location of the upload an earlier run left unfinished, and where the server
        stands with it; (None, 0, None) when there is none, or the server no longer has it
        (expired, or taken by `hostd prune`: 404 or 410)."""
        location = self.journal.location(sending)
        if location is None:
            return None, 0, None
        try:
            offset, info = self.retrying(lambda: self.tus_state(location))
        except UploadFailed as exc:
            if exc.status is None:  # unreachable: a new upload could not be made either
                raise
            self.journal.forget(sending.fingerprint)
            return None, 0, None
        return location, offset, info

    def terminate_stale(self, sending: Sending) -> None:
        """End (tus termination) the unfinished uploads of an earlier version of this file,
        whose parts would otherwise hold the server's disk, and the account's quota, until
        they expire; whatever the server answers, they are forgotten."""
        for fingerprint, location in self.journal.stale(sending):
            with contextlib.suppress(UploadFailed):
                self.request("DELETE", location, {"Tus-Resumable": TUS_VERSION})
            self.journal.forget(fingerprint)

    def patch_all(
        self,
        location: str,
        file: BinaryIO,
        offset: int,
        size: int,
        progress: Progress | None,
        info: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """PATCH from `offset` until the server has the whole file; its answer."""
        failures, problem = 0, Unreachable("")
        while info is None:
            try:
                if offset < size:
                    reached, info = self.tus_patch(location, file, offset, size, progress)
                else:  # every byte is in, and the answer was lost: ask for it again
                    reached, info = self.tus_state(location)
                    if info is None:
                        raise UploadFailed("the server has every byte but says nothing of the file")
            except Unreachable as exc:
                reached, problem = None, exc
            if info is not None:
                break
            if reached is not None and reached > offset:
                offset, failures = reached, 0
                continue
            if reached is not None:
                problem = Unreachable("the server kept none of the bytes sent")
            failures += 1
            self.pause(failures, problem)
            try:
                offset, info = self.tus_state(location)
            except Unreachable as exc:
                problem = exc  # the next PATCH learns where the server is (409)
            if progress is not None:
                progress.at(offset)
        return info

    def pause(self, failures: int, problem: Unreachable) -> None:
        """Wait before the next try; UploadFailed once RETRY_DELAYS are used up."""
        if failures > len(RETRY_DELAYS):
            raise UploadFailed(f"gave up after {failures} tries: {problem}")
        self._sleep(max(RETRY_DELAYS[failures - 1], problem.retry_after))

    def retrying(self, attempt: Callable[[], T]) -> T:
        """attempt(), tried again while the server cannot be reached or is busy."""
        failures = 0
        while True:
            try:
                return attempt()
            except Unreachable as exc:
                failures += 1
                self.pause(failures, exc)

    def tus_create(self, name: str, size: int) -> str:
        metadata = f"filename {b64(name)}" + (
            f",expires {b64(self.expires)}" if self.expires else ""
        )
        answer = self.request(
            "POST",
            TUS_PATH,
            {
                "Tus-Resumable": TUS_VERSION,
                "Upload-Length": str(size),
                "Upload-Metadata": metadata,
                "Content-Length": "0",
            },
        )
        self.check_busy(answer)
        if answer.status != 201 or not answer.headers.get("Location"):
            raise answer.refusal()
        # The upload's id, at the URL given: the Location is made with server.public_url,
        # which may be another name for this server, and the key goes nowhere else.
        upload_id = urllib.parse.urlsplit(answer.headers["Location"]).path.rstrip("/")
        return TUS_PATH + urllib.parse.quote(upload_id.rpartition("/")[2], safe="")

    def tus_patch(
        self, location: str, file: BinaryIO, offset: int, size: int, progress: Progress | None
    ) -> TusState:
        """Send the next PATCH_BYTES at most; where the server then stands."""
        length = min(PATCH_BYTES, size - offset)
        answer = self.request(
            "PATCH",
            location,
            {
                "Tus-Resumable": TUS_VERSION,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
                "Content-Length": str(length),
            },
            FileSlice(file, offset, length, progress.advance if progress else None),
        )
        self.check_busy(answer)
        if answer.status == 409:  # the server holds another offset: ask it which
            return self.tus_state(location)
        if answer.status != 204:
            raise answer.refusal()
        return self.state_of(answer)

    def tus_state(self, location: str) -> TusState:
        answer = self.request("HEAD", location, {"Tus-Resumable": TUS_VERSION})
        self.check_busy(answer)
        if answer.status not in (200, 204):
            raise answer.refusal()
        return self.state_of(answer)

    @staticmethod
    def state_of(answer: Answer) -> TusState:
        """The offset a tus answer gives, and once the upload is complete, what POST
        /api/upload would have answered (hostd sends it as JSON in Upload-Info)."""
        try:
            offset = int(answer.headers.get("Upload-Offset", ""))
        except ValueError:
            raise UploadFailed(
                "the server's tus answer has no Upload-Offset", answer.status
            ) from None
        info = answer.headers.get("Upload-Info")
        if info is None:
            return offset, None
        try:
            parsed = json.loads(info)
        except ValueError:
            raise UploadFailed("the server's Upload-Info is not JSON", answer.status) from None
        return offset, parsed if isinstance(parsed, dict) else None

    @staticmethod
    def check_busy(answer: Answer) -> None:
        """Unreachable for what a retry may mend: a server error or a busy server (5xx but
        507), a locked upload (423), a rate limit (429), a stalled body (408)."""
        if answer.status in (408, 423, 429) or (answer.status >= 500 and answer.status != 507):
            refusal = answer.refusal()
            busy = Unreachable(refusal.message, refusal.status)
            busy.retry_after = retry_after(answer, at_most=300.0) or 0.0
            raise busy

    # -- HTTP

    def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: FileSlice | Iterable[bytes] | None = None,
    ) -> Answer:
        """One request for `target` (a path below the server's URL) on a new connection;
        Unreachable when the connection fails.

        A body waits for the server's "100 Continue" (at most CONTINUE_WAIT_SECONDS, over
        plain HTTP), so that a refusal (a bad key, a file over the limit) arrives before the
        file is sent.
        """
        path = self._parts.path + target
        https = self._parts.scheme == "https"
        conn_class = http.client.HTTPSConnection if https else http.client.HTTPConnection
        conn = conn_class(
            self._parts.hostname or "",
            self._parts.port,
            timeout=TIMEOUT_SECONDS,
            blocksize=SEND_BLOCK_BYTES,
        )
        headers = {"User-Agent": "hostd-upload", **headers}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            expect = body is not None and not https
            if expect:
                headers["Expect"] = "100-continue"
            for name, value in headers.items():
                conn.putheader(name, value)
            conn.endheaders()
            if body is not None and (not expect or await_continue(conn)):
                # The server may answer and close before the end: its answer is read below.
                with contextlib.suppress(OSError):
                    conn.send(body)
            response = conn.getresponse()
            answer = Answer(response.status, response.headers, response.read())
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(f"{self.url}: {reason(exc)}") from None
        finally:
            conn.close()
        if answer.status in REDIRECTS and answer.headers.get("Location"):
            raise self.redirected(target, answer.headers["Location"], answer.status)
        return answer

    def redirected(self, target: str, location: str, status: int) -> WrongURL:
        """Where the server redirects, as the --url to give instead when it sends `target`
        elsewhere (http to https, another host or path); as it is when not."""
        parts = self._parts
        asked = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}{target}"
        there = urllib.parse.urljoin(asked, location)
        where = urllib.parse.urlsplit(there)
        if where.path.endswith(target):
            base = where._replace(path=where.path.removesuffix(target), query="", fragment="")
            return WrongURL(f"the server redirects to {base.geturl()}; use that as --url", status)
        return WrongURL(
            f"the server redirects to {there}: give --url the server's base URL,"
            " e.g. https://host:port",
            status,
        )


def retry_after(answer: Answer, *, at_most: float) -> float | None:
    """The seconds the answer's Retry-After asks for (at most `at_most`); None without one
    (or with one that is no number of seconds, NaN and negative ones included)."""
    try:
        seconds = float(answer.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return min(seconds, at_most) if seconds >= 0 else None


def await_continue(conn: http.client.HTTPConnection) -> bool:
    """After a head with `Expect: 100-continue`: True to send the body (the server said
    "100 Continue", or said nothing in time); False when it has answered already."""
    sock = conn.sock
    assert isinstance(sock, socket.socket) and not isinstance(sock, ssl.SSLSocket)
    deadline = time.monotonic() + CONTINUE_WAIT_SECONDS
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            return True
        seen = sock.recv(4096, socket.MSG_PEEK)  # peeked: a final answer stays for http.client
        if not seen or not seen.startswith(b"HTTP/1.1 100"[: len(seen)]):
            return False  # an answer, or the connection closed: getresponse() tells which
        if b"\r\n\r\n" in seen:
            sock.recv(seen.index(b"\r\n\r\n") + 4)  # take the interim answer off the socket
            return True
        time.sleep(0.01)  # only part of "100 Continue" is in: the socket stays readable


def b64(text: str) -> str:
    return base64.b64encode(os.fsencode(text)).decode()


def reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is hostd running there?)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror})"
    if isinstance(exc, TimeoutError):
        return f"no answer within {TIMEOUT_SECONDS:g} seconds"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the server closed the connection without an answer"
    return str(exc) or type(exc).__name__


def unreadable(path: Path) -> str | None:
    """Why `path` cannot be sent, or None."""
    if path.is_dir():
        return "is a directory (give its files: hostd upload dir/*)"
    if not path.exists():
        return "no such file"
    if not path.is_file():
        return "not a regular file (send a pipe as standard input: - )"
    if not os.access(path, os.R_OK):
        return "not readable (permission denied)"
    return None


def run(
    files: list[Path],
    *,
    url: str | None,
    key: str | None,
    as_json: bool,
    resumable_above: int,
    expires: str | None = None,
    stdin_name: str | None = None,
    stdin: BinaryIO | None = None,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:
    """`hostd upload`: 0 when every file was uploaded; 1 when one was refused or the server
    could not be reached; 2 when a file cannot be read (nothing is sent then). The file `-`
    is `stdin` (None: sys.stdin's bytes), named `stdin_name` (None: the server names it).

    Each uploaded file's URL goes to `stdout` and its deletion link to `stderr` (`delete:
    <url>`: the n-th goes with the n-th URL), or with `as_json` its answer to `stdout`; a
    file that fails is named on `stderr`, with the reason."""
    if files.count(STDIN) > 1:
        print("hostd upload: '-' (standard input) can be given once", file=stderr)
        return 2
    if stdin_name is not None and STDIN not in files:
        print("hostd upload: --name names '-' (standard input), which is not given", file=stderr)
        return 2
    for path in files:
        problem = None if path == STDIN else unreadable(path)
        if problem is not None:
            print(f"hostd upload: {path}: {problem}", file=stderr)
            return 2
    try:
        client = Client(
            url or os.environ.get("HOSTD_URL") or DEFAULT_URL,
            key or os.environ.get("HOSTD_KEY") or None,
            resumable_above=resumable_above,
            expires=expires,
            progress_to=stderr if stderr.isatty() else None,
            journal=Journal(journal_path()),
        )
    except UploadFailed as exc:
        print(f"hostd upload: {exc}", file=stderr)
        return 2
    status = 0
    for path in files:
        try:
            if path == STDIN:
                answer = client.upload_stream(stdin or sys.stdin.buffer, stdin_name)
            else:
                answer = client.upload(path)
        except KeyboardInterrupt:
            print(f"hostd upload: {path}: interrupted", file=stderr)
            return 130
        except (Unreachable, WrongURL) as exc:
            print(f"hostd upload: {path}: {exc}", file=stderr)
            return 1  # the next file would fail the same way
        except UploadFailed as exc:
            if exc.status == 400 and exc.message.startswith(EXPIRES_REFUSALS):
                reason = exc.message.split(" ", 3)[3]  # after "the Expires header"
                print(f"hostd upload: --expires {expires}: {reason}", file=stderr)
                return 2  # the command's own mistake, the same for every file
            print(f"hostd upload: {path}: {exc}", file=stderr)
            if exc.status == 401:
                # The key or the account: the next file would fail the same way, and each
                # try of a wrong key counts against this address (invalid_keys_per_hour).
                return 1
            status = 1
            continue
        except OSError as exc:
            print(f"hostd upload: {path}: {exc}", file=stderr)
            status = 1
            continue
        if as_json:
            print(json.dumps(answer), file=stdout, flush=True)
            continue
        print(answer.get("urls", {}).get("ext", ""), file=stdout, flush=True)
        # The deletion link is shown this once (the server keeps only its hash), and is an
        # anonymous upload's only way to go; stdout stays one URL a line for scripts.
        if answer.get("delete_url"):
            print(f"delete: {answer['delete_url']}", file=stderr, flush=True)
    return status
