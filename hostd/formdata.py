"""Streaming upload bodies: multipart/form-data parsed as the body arrives, or a raw body
that is the file itself (PUT); never buffered.

The parser is `multipart`'s PushMultipartParser (chosen by measurement; see
bench/multipart_parsers.py). This module turns its events into one BlobWriter for the
`file` field and a few small text fields, and its failures into UploadError.
"""

from __future__ import annotations

import ctypes
import re
import unicodedata
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Protocol, cast

import multipart

from hostd.storage import BlobWriter, WrittenBlob

FILE_FIELD = "file"
MAX_FILENAME_BYTES = 255
# Unicode categories a filename must not hold: controls, format characters, line breaks.
NOT_IN_FILENAMES = ("Cc", "Cf", "Zl", "Zp")
MAX_TEXT_FIELD_BYTES = 1024
MAX_PARTS = 16
MAX_HEADER_LINES = 8  # in one part
MAX_HEADER_LINE_BYTES = 4096
MAX_BOUNDARY_CHARS = 200
# What the parser says past each of its limits (multipart.ParserLimitReached), and what we
# say: the limit, with its number, as the README states it.
LIMIT_MESSAGES = {
    "Maximum segment count exceeded": f"the form has more than {MAX_PARTS} parts, its limit",
    "Maximum segment header count exceeded": (
        f"a part of the form has more than {MAX_HEADER_LINES} header lines, the limit of a part"
    ),
    "Maximum segment header length exceeded": (
        f"a header line in the form is longer than {MAX_HEADER_LINE_BYTES} bytes, the limit"
        " of a line"
    ),
}
# Room for the multipart framing around the file (boundaries, part headers, small fields).
FORM_OVERHEAD_BYTES = 64 * 1024


def _find_memmem() -> Callable[[bytes, int, bytes, int], int | None] | None:
    """libc's memmem, or None."""
    try:
        function = ctypes.CDLL(None).memmem
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t)
    function.restype = ctypes.c_void_p
    return cast(Callable[[bytes, int, bytes, int], "int | None"], function)


_memmem = _find_memmem()


def contains(data: bytes, needle: bytes) -> bool:
    """`needle in data`. libc's memmem (glibc's, on random bytes) finds a multipart
    delimiter 2.5 times faster than CPython 3.11's own search, which had been a quarter of
    the event loop's time in a big upload."""
    if _memmem is None:
        return needle in data
    return _memmem(data, len(data), needle, len(needle)) is not None


class UploadError(Exception):
    """An upload that cannot be accepted: an HTTP status and a message for the user."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}  # e.g. Retry-After


# A parameter of a Content-Type: name=token or name="quoted string" (RFC 9110, 5.6.6).
_PARAMETER = re.compile(
    r""";[ \t]*([!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]*=[ \t]*(?:"((?:[^"\\]|\\.)*)"|([^;\s"]*))"""
)
_QUOTED_PAIR = re.compile(r"\\(.)")


def boundary_of(content_type: str | None) -> str:
    """The multipart boundary from a Content-Type header, or UploadError 400. Parsed here
    rather than by the email package, whose general parser cost more than the rest of a
    small upload's form."""
    if not content_type:
        raise UploadError(400, "the request has no Content-Type; send multipart/form-data")
    kind, _, parameters = content_type.partition(";")
    kind = kind.strip().lower()
    if kind != "multipart/form-data":
        raise UploadError(
            400, f"expected multipart/form-data with a 'file' field, got {kind or 'nothing'}"
        )
    boundary = None
    for match in _PARAMETER.finditer(";" + parameters):
        if match[1].lower() == "boundary":
            quoted, token = match[2], match[3]
            boundary = _QUOTED_PAIR.sub(r"\1", quoted) if quoted is not None else token
            break
    if not boundary:
        raise UploadError(400, "the multipart/form-data Content-Type has no valid boundary")
    if len(boundary) > MAX_BOUNDARY_CHARS:
        raise UploadError(
            400,
            f"the multipart/form-data boundary is longer than {MAX_BOUNDARY_CHARS} characters,"
            " its limit",
        )
    return boundary


# RFC 5987's extended parameter in a part's Content-Disposition: filename*=UTF-8''r%C3%A9.txt
_EXTENDED_FILENAME = re.compile(
    r";[ \t]*filename\*[ \t]*=[ \t]*(utf-8|iso-8859-1)'[^']*'([^;\s]*)", re.IGNORECASE
)


def filename_of(segment: multipart.MultipartSegment) -> str | None:
    """The part's filename, as header text read as latin-1 (what clean_filename() takes):
    `filename*=UTF-8''...` when the part has one, else `filename=`. RFC 7578 asks senders
    not to use filename*, yet .NET (PowerShell's -Form) sends it for a name that is not
    ASCII, beside a `filename` holding the name MIME-encoded (=?utf-8?B?...?=)."""
    match = _EXTENDED_FILENAME.search(segment.header("Content-Disposition") or "")
    if match is None or not match[2].isascii():
        return segment.filename
    try:
        name = urllib.parse.unquote(match[2], encoding=match[1].lower(), errors="strict")
    except UnicodeDecodeError:
        raise UploadError(400, "the filename is not valid UTF-8") from None
    return name.encode("utf-8").decode("latin-1")


def clean_filename(raw: str | None) -> str:
    """The client's filename, checked: it is shown to people and put in URLs, never used
    as a path. Refuses (400) path parts, control characters, invalid UTF-8 and overlong
    names, rather than guessing what a hostile name meant. No name, and curl's `-` for
    standard input (`-F file=@-`), are "file"."""
    if raw is None or raw in ("", "-"):
        return "file"
    try:
        name = raw.encode("latin-1").decode("utf-8")
    except UnicodeEncodeError:
        name = raw  # already decoded text (e.g. from filename*=UTF-8'')
    except UnicodeDecodeError:
        raise UploadError(400, "the filename is not valid UTF-8") from None
    name = unicodedata.normalize("NFC", name)
    if any(unicodedata.category(ch) in NOT_IN_FILENAMES for ch in name):
        raise UploadError(400, "the filename contains control characters")
    if "/" in name or "\\" in name or name in (".", ".."):
        raise UploadError(400, "the filename must not contain path parts ('/', '\\', '..')")
    if len(name.encode("utf-8")) > MAX_FILENAME_BYTES:
        raise UploadError(400, f"the filename is longer than {MAX_FILENAME_BYTES} bytes")
    if not name.strip():
        return "file"
    return name


class UploadBody(Protocol):
    """What an upload handler feeds its body to: the file goes through a BlobWriter."""

    fields: dict[str, str]
    filename: str

    def feed(self, chunk: bytes) -> None: ...

    def backpressure(self) -> Awaitable[None] | None: ...

    async def finish(self) -> WrittenBlob: ...

    def abort(self) -> None: ...

    async def dropped(self) -> None: ...


class FileBody:
    """What both kinds of upload body do with the file in them: write it through a
    BlobWriter up to `max_file_bytes` (413, with the message `too_large` when given),
    refuse it empty, commit it, or drop it."""

    def __init__(self, *, max_file_bytes: int, too_large: str | None) -> None:
        self._max_file_bytes = max_file_bytes
        self._too_large = (
            too_large or f"the file is larger than the limit of {max_file_bytes} bytes"
        )
        self._writer: BlobWriter | None = None
        self._dropping: Awaitable[None] | None = None
        self.fields: dict[str, str] = {}

    def backpressure(self) -> Awaitable[None] | None:
        """Something to wait for before feeding more, when the file's writer is behind."""
        return self._writer.backpressure() if self._writer is not None else None

    async def _commit(self, no_file: str) -> WrittenBlob:
        if self._writer is None:
            raise UploadError(400, no_file)
        if self._writer.size_bytes == 0:
            self.abort()
            raise UploadError(400, "the file is empty")
        writer, self._writer = self._writer, None
        return await writer.commit()

    def abort(self) -> None:
        """Drop whatever was written; safe to call more than once."""
        if self._writer is not None:
            self._dropping = self._writer.abort()
            self._writer = None

    async def dropped(self) -> None:
        """Wait until an aborted file's temp file is gone (see BlobWriter.abort)."""
        if self._dropping is not None:
            await self._dropping

    def _write_file(self, data: bytes) -> None:
        assert self._writer is not None
        if self._writer.size_bytes + len(data) > self._max_file_bytes:
            raise UploadError(413, self._too_large)
        self._writer.write(data)


class UploadForm(FileBody):
    """Feeds body chunks to the multipart parser and routes the parts.

    Exactly one `file` part is stored through the writer that `open_writer` returns;
    other fields are kept as short text. The file may not grow past `max_file_bytes`
    (413, with the message `too_large` when given).
    """

    def __init__(
        self,
        boundary: str,
        *,
        max_file_bytes: int,
        open_writer: Callable[[], BlobWriter],
        too_large: str | None = None,
    ) -> None:
        # Header lines are read as latin-1 so that clean_filename() can tell
        # invalid UTF-8 apart from other header trouble.
        self._parser = multipart.PushMultipartParser(
            boundary,
            max_header_size=MAX_HEADER_LINE_BYTES,
            max_header_count=MAX_HEADER_LINES,
            max_segment_count=MAX_PARTS,
            header_charset="latin-1",
        )
        super().__init__(max_file_bytes=max_file_bytes, too_large=too_large)
        self._open_writer = open_writer
        self._body_bytes = 0
        self._done_file = False
        self._misnamed_file: str | None = None  # the first other field that held a file
        self._text: bytearray | None = None
        self._field: str | None = None
        self.filename = "file"
        self._delimiter = b"\r\n--" + self._parser.boundary
        # In the file's body, the parser holding nothing back: a piece of the body with no
        # delimiter in it, nor the start of one at its end, is all file (see _feed).
        self._in_plain_body = False
        self._may_skip_parser = b"\r" not in self._parser.boundary
        self._file_has_length = False  # a Content-Length of its own, which the parser checks

    def feed(self, chunk: bytes) -> None:
        """Parse one piece of the body. On UploadError the partial file is already gone."""
        try:
            self._feed(chunk)
        except UploadError:
            self.abort()
            raise
        except multipart.ParserLimitReached as exc:
            self.abort()
            message = LIMIT_MESSAGES.get(str(exc), f"malformed multipart body: {exc}")
            raise UploadError(400, message) from None
        except multipart.ParserError as exc:
            self.abort()
            raise UploadError(400, f"malformed multipart body: {exc}") from None

    def _feed(self, chunk: bytes) -> None:
        # The whole body counts, not only the file: other parts are dropped, but a client
        # must not stream an endless one past the limit.
        self._body_bytes += len(chunk)
        if self._body_bytes > self._max_file_bytes + FORM_OVERHEAD_BYTES:
            raise UploadError(413, self._too_large)
        # The bulk of a big file passes the parser by: it would only search each piece for
        # the delimiter, and hand the piece on whole when it is not there. (An empty piece,
        # the end of the body, always goes to the parser.)
        if (
            self._in_plain_body
            and type(chunk) is bytes
            and len(chunk) > len(self._delimiter)
            and not contains(chunk, self._delimiter)
            and not self._may_hold_back(chunk)
        ):
            self._write_file(chunk)
            return
        self._parse(chunk)
        self._in_plain_body = (
            self._may_skip_parser
            and self._field == FILE_FIELD
            and not self._file_has_length
            and self._writer is not None
            and len(chunk) > len(self._delimiter)
            and not self._may_hold_back(chunk)
        )

    def _may_hold_back(self, chunk: bytes) -> bool:
        """Whether the end of `chunk` may be part of a delimiter (its start, or all of it
        but the two bytes that tell a part's end from the form's): bytes the parser holds
        back until the next piece. A delimiter's only CR is its first byte."""
        size = len(self._delimiter)
        at = chunk.rfind(b"\r", max(0, len(chunk) - size - 1))
        return at >= 0 and self._delimiter.startswith(chunk[at : at + size])

    def _parse(self, chunk: bytes) -> None:
        for event in self._parser.parse(chunk):
            if isinstance(event, multipart.MultipartSegment):
                self._start_part(event)
            elif event is None:
                self._end_part()
            elif self._field == FILE_FIELD:
                self._write_file(event)
            elif self._text is not None:
                self._text += event
                if len(self._text) > MAX_TEXT_FIELD_BYTES:
                    raise UploadError(
                        400, f"form field '{self._field}' is over {MAX_TEXT_FIELD_BYTES} bytes"
                    )

    async def finish(self) -> WrittenBlob:
        """Call when the body has ended: checks the form is complete and commits the file."""
        self.feed(b"")  # end of input: raises if the last boundary never came
        return await self._commit(self._no_file())

    def _no_file(self) -> str:
        """Why there is no file, for a form that came without one: a file sent under
        another name (a ShareX uploader's FileFormName), or a URL to fetch (0x0.st's `url`
        field), get a sentence of their own."""
        wanted = "send the file in a multipart field named 'file'"
        if self._misnamed_file is not None:
            return f"no file: the file came in the field '{self._misnamed_file}'; {wanted}"
        if "url" in self.fields:
            return f"no file: hostd does not fetch files from URLs (the 'url' field); {wanted}"
        return f"no file: {wanted}"

    def _start_part(self, segment: multipart.MultipartSegment) -> None:
        self._field = segment.name
        self._text = None
        if segment.name == FILE_FIELD:
            if self._done_file or self._writer is not None:
                raise UploadError(400, "send one file per request in the 'file' field")
            self.filename = clean_filename(filename_of(segment))
            self._file_has_length = segment.header("Content-Length") is not None
            self._writer = self._open_writer()
        elif segment.filename is None:
            self._text = bytearray()
        elif self._misnamed_file is None:
            self._misnamed_file = segment.name[:40]

    def _end_part(self) -> None:
        if self._field == FILE_FIELD:
            self._done_file = True
        elif self._text is not None and self._field:
            if self._field in self.fields:  # which one would count? (`expires` twice)
                raise UploadError(400, f"the form has the field '{self._field}' twice")
            self.fields[self._field] = self._text.decode("utf-8", "replace")
        self._field, self._text = None, None


class RawBody(FileBody):
    """A body that is the file itself (`PUT /api/upload/<filename>`, `curl -T`): each chunk
    goes straight to the writer. The interface of UploadForm, with no fields."""

    def __init__(
        self,
        filename: str,
        *,
        max_file_bytes: int,
        open_writer: Callable[[], BlobWriter],
        too_large: str | None = None,
    ) -> None:
        super().__init__(max_file_bytes=max_file_bytes, too_large=too_large)
        self._writer = open_writer()
        self.filename = filename

    def feed(self, chunk: bytes) -> None:
        """Write one piece of the body. On UploadError the partial file is already gone."""
        if self._writer is None:
            return
        try:
            self._write_file(chunk)
        except UploadError:
            self.abort()
            raise

    async def finish(self) -> WrittenBlob:
        return await self._commit("the upload was dropped")
