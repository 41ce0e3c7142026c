"""Content types from bytes and from names."""

from __future__ import annotations

import pytest

from hostd import sniff


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n\0\0", "image/png"),
        (b"\xff\xd8\xff\xe0\0\x10JFIF", "image/jpeg"),
        (b"GIF89a\x01\0", "image/gif"),
        (b"RIFF\0\0\0\0WEBPVP8 ", "image/webp"),
        (b"\0\0\0\x1cftypavif", "image/avif"),
        (b"\0\0\0\x18ftypisom", "video/mp4"),
        (b"\x1aE\xdf\xa3\x01", "video/webm"),
        (b"%PDF-1.7\n", "application/pdf"),
        (b"PK\x03\x04\x14\0", "application/zip"),
        (b"\x1f\x8b\x08\0", "application/gzip"),
        (b"ID3\x04\0", "audio/mpeg"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "image/svg+xml"),
        (b"<?xml version='1.0'?>\n<svg></svg>", "image/svg+xml"),
        (b"  <!DOCTYPE html><p>hi", "text/html; charset=utf-8"),
        (b"hello, world\n", "text/plain; charset=utf-8"),
        ("héllo wörld".encode()[:-1], "text/plain; charset=utf-8"),  # cut mid-character
        (b"\x00\x01\x02\x03", "application/octet-stream"),
        (b"\xff\xfe\xfd", "application/octet-stream"),
    ],
)
def test_detect_from_bytes(head, expected):
    assert sniff.detect(head) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (".png", "image/png"),
        ("photo.JPG", "image/jpeg"),
        (".txt", "text/plain; charset=utf-8"),
        (".tar.gz", "application/gzip"),
        (".webp", "image/webp"),
        (".md", "text/markdown; charset=utf-8"),
        (".js", "text/plain; charset=utf-8"),  # never a script another site can run
        (".css", "text/plain; charset=utf-8"),
        (".nosuchext", None),
        ("noext", None),
    ],
)
def test_type_from_name(name, expected):
    assert sniff.from_name(name) == expected


@pytest.mark.parametrize(
    ("name", "content_type", "expected"),
    [
        ("image.png", "image/png", ".png"),
        ("Archive.TAR.GZ", "application/gzip", ".tar.gz"),
        ("my.holiday.photo.jpeg", "image/jpeg", ".jpeg"),
        ("noext", "image/png", ".png"),
        ("noext", "text/plain; charset=utf-8", ".txt"),
        ("weird.ext with space", "application/octet-stream", ".bin"),
    ],
)
def test_extension_for_the_ext_url(name, content_type, expected):
    assert sniff.extension_for(name, content_type) == expected
