"""The streaming form parser, fed the way Tornado feeds it: in arbitrary pieces."""

from __future__ import annotations

import hashlib

import pytest
from helpers import multipart_body

from hostd.formdata import (
    FORM_OVERHEAD_BYTES,
    UploadError,
    UploadForm,
    boundary_of,
    clean_filename,
)
from hostd.storage import LocalBlobStore


@pytest.fixture
def local(tmp_path):
    store = LocalBlobStore(tmp_path / "blobs")
    yield store
    store.close()


def form(local, limit=1000):
    return UploadForm("hostd-test-boundary", max_file_bytes=limit, open_writer=local.writer)


@pytest.mark.parametrize("piece", [1, 7, 64, 100_000])
@pytest.mark.gen_test
async def test_any_chunking_gives_the_same_file_and_fields(local, piece):
    data = b"\r\n--hostd-test-boundar" * 20  # near-misses of the boundary inside the file
    body, _ = multipart_body({"api": "1"}, [("file", "name.bin", data)])
    parsed = form(local)

    for i in range(0, len(body), piece):
        parsed.feed(body[i : i + piece])
    written = await parsed.finish()

    assert written.sha256 == hashlib.sha256(data).hexdigest()
    assert parsed.fields == {"api": "1"}
    assert parsed.filename == "name.bin"


def test_a_file_over_the_limit_is_a_413_as_soon_as_it_shows(local):
    body, _ = multipart_body(files=[("file", "big", b"x" * 2000)])
    parsed = form(local)

    with pytest.raises(UploadError) as caught:
        parsed.feed(body)

    assert caught.value.status == 413


def test_other_file_parts_count_against_the_limit_too(local):
    parsed = form(local)
    parsed.feed(
        b"--hostd-test-boundary\r\n"
        b'Content-Disposition: form-data; name="file"; filename="small"\r\n\r\nok\r\n'
        b"--hostd-test-boundary\r\n"
        b'Content-Disposition: form-data; name="junk"; filename="junk.bin"\r\n\r\n'
    )
    junk = b"x" * 8192

    with pytest.raises(UploadError) as caught:
        for _ in range((1000 + FORM_OVERHEAD_BYTES) // len(junk) + 1):
            parsed.feed(junk)

    assert caught.value.status == 413


def test_a_long_text_field_is_refused(local):
    body, _ = multipart_body({"note": "x" * 5000})

    with pytest.raises(UploadError, match="over 1024 bytes"):
        form(local).feed(body)


def test_too_many_parts_is_refused(local):
    body, _ = multipart_body({f"f{i}": "x" for i in range(40)})

    with pytest.raises(UploadError, match="malformed multipart body"):
        form(local).feed(body)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, "file"),
        ("", "file"),
        ("   ", "file"),
        ("photo.png", "photo.png"),
        ("Ã©tÃ©.txt", "été.txt"),  # UTF-8 bytes as the parser hands them over (latin-1)
        ("e\u0301.txt", "é.txt"),  # NFC
    ],
)
def test_clean_filename_keeps_good_names(raw, expected):
    assert clean_filename(raw) == expected


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "application/json",
        "multipart/form-data; boundary=" + "x" * 201,
        'multipart/form-data; boundary=""',
        "multipart/form-data; charset=utf-8",
        "multipart/mixed; boundary=abc",
    ],
)
def test_boundary_of_refuses_what_is_not_a_form(content_type):
    with pytest.raises(UploadError) as caught:
        boundary_of(content_type)

    assert caught.value.status == 400


def test_boundary_of_reads_quoted_boundaries():
    assert boundary_of('multipart/form-data; boundary="a b:c"') == "a b:c"


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        ("multipart/form-data; boundary=abc", "abc"),
        ("Multipart/Form-Data;BOUNDARY=abc", "abc"),  # names are case-insensitive
        ("multipart/form-data; charset=utf-8; boundary=----x7", "----x7"),
        ("multipart/form-data; boundary = abc ; charset=utf-8", "abc"),
        (r'multipart/form-data; boundary="a\"b"', 'a"b'),  # a quoted pair
        ('multipart/form-data; boundary="semi;colon"', "semi;colon"),
    ],
)
def test_boundary_of_reads_the_parameter_wherever_it_is(content_type, boundary):
    assert boundary_of(content_type) == boundary
