"""Content types from the bytes themselves (magic numbers), and from names in URLs."""

from __future__ import annotations

import mimetypes
import re

# (offset, magic, content type), checked in order.
SIGNATURES: list[tuple[int, bytes, str]] = [
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (0, b"BM", "image/bmp"),
    (0, b"\x00\x00\x01\x00", "image/vnd.microsoft.icon"),
    (0, b"II*\x00", "image/tiff"),
    (0, b"MM\x00*", "image/tiff"),
    (0, b"%PDF-", "application/pdf"),
    (0, b"\x1f\x8b", "application/gzip"),
    (0, b"BZh", "application/x-bzip2"),
    (0, b"\xfd7zXZ\x00", "application/x-xz"),
    (0, b"(\xb5/\xfd", "application/zstd"),
    (0, b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
    (0, b"Rar!\x1a\x07", "application/vnd.rar"),
    (0, b"PK\x03\x04", "application/zip"),
    (0, b"PK\x05\x06", "application/zip"),
    (0, b"\x1aE\xdf\xa3", "video/webm"),
    (0, b"OggS", "audio/ogg"),
    (0, b"fLaC", "audio/flac"),
    (0, b"ID3", "audio/mpeg"),
    (0, b"\x7fELF", "application/x-executable"),
    (0, b"MZ", "application/vnd.microsoft.portable-executable"),
    (0, b"wOFF", "font/woff"),
    (0, b"wOF2", "font/woff2"),
    (0, b"\x00asm", "application/wasm"),
    (0, b"SQLite format 3\x00", "application/vnd.sqlite3"),
    (257, b"ustar", "application/x-tar"),
]
RIFF_TYPES = {b"WEBP": "image/webp", b"WAVE": "audio/wav", b"AVI ": "video/x-msvideo"}
FTYP_BRANDS = {
    b"avif": "image/avif",
    b"avis": "image/avif",
    b"heic": "image/heic",
    b"heix": "image/heic",
    b"mif1": "image/heif",
    b"qt  ": "video/quicktime",
    b"M4A ": "audio/mp4",
}
MARKUP = re.compile(
    rb"^\s*(<\?xml[^>]*>\s*)?(<!--.*?-->\s*)*<(!doctype\s+html|html|svg|head|body|script)",
    re.I | re.S,
)
OCTET_STREAM = "application/octet-stream"
UTF_8 = "; charset=utf-8"
TEXT_PLAIN = "text/plain" + UTF_8

# A fixed table, so the answer does not depend on the host's /etc/mime.types.
_NAME_TYPES = mimetypes.MimeTypes(filenames=())
_NAME_TYPES.add_type("text/markdown", ".md")
_NAME_TYPES.add_type("image/webp", ".webp")
_NAME_TYPES.add_type("image/avif", ".avif")


def detect(head: bytes) -> str:
    """The content type of a blob, judged from its first few KiB."""
    for offset, magic, kind in SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return kind
    if head[:4] == b"RIFF" and head[8:12] in RIFF_TYPES:
        return RIFF_TYPES[head[8:12]]
    if head[4:8] == b"ftyp":
        return FTYP_BRANDS.get(head[8:12], "video/mp4")
    if head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return "audio/mpeg"
    match = MARKUP.match(head)
    if match:
        return "image/svg+xml" if match.group(3).lower() == b"svg" else "text/html; charset=utf-8"
    if _is_text(head):
        return TEXT_PLAIN
    return OCTET_STREAM


def _is_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # The head may end inside a multi-byte character.
        return exc.start >= len(head) - 3 and exc.reason == "unexpected end of data"
    return True


# Types a browser runs for any site that points at them (a <script src=...>, a stylesheet):
# served as such, every upload of them would be free hosting for other sites' scripts. As
# plain text, which a browser told nosniff never runs, they still read as what they are.
# Shell and other scripts too, which browsers would save rather than show.
PLAIN_TEXT_TYPES = frozenset(
    {
        "application/javascript",
        "application/ecmascript",
        "text/javascript",
        "text/ecmascript",
        "text/css",
        "application/x-sh",
        "application/x-csh",
        "text/x-python",
        "text/x-perl",
    }
)


def from_name(name: str) -> str | None:
    """The content type a file name or extension implies, or None when it implies none."""
    kind, encoding = _NAME_TYPES.guess_type("x" + name if name.startswith(".") else name)
    if kind in PLAIN_TEXT_TYPES:
        return TEXT_PLAIN
    if kind is None or encoding is not None:
        # foo.tar.gz is gzip bytes, whatever the inner name says.
        return {
            "gzip": "application/gzip",
            "bzip2": "application/x-bzip2",
            "xz": "application/x-xz",
        }.get(encoding or "")
    if kind.startswith("text/") or kind in ("application/javascript", "application/json"):
        return f"{kind}; charset=utf-8"
    return kind


def served_type(name: str | None, sniffed: str) -> str:
    """A download's Content-Type: what the name in its URL implies, else the type read
    from the bytes when they were stored. A name's text type says UTF-8 only when the bytes
    read as UTF-8: a Latin-1 .txt is then shown in the browser's own charset, not with
    every é turned into a replacement character."""
    kind = from_name(name) if name else None
    if kind is None:
        return sniffed
    if kind.endswith(UTF_8) and not sniffed.endswith(UTF_8):
        return kind.removesuffix(UTF_8)
    return kind


def extension_for(name: str, content_type: str) -> str:
    """The extension for an upload's `ext` URL: the original name's, else the type's."""
    match = re.search(r"(\.tar)?\.[A-Za-z0-9]{1,10}$", name, re.I)
    if match:
        return match.group(0).lower()
    guessed = _NAME_TYPES.guess_extension(content_type.split(";")[0])
    return guessed or ""
