"""Serving over real HTTP: the three URL forms, validators, ranges, types and safety headers."""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import hashlib
import json
import logging
import os
import re
import socket
from typing import Any

import pytest
from helpers import multipart_body, raw_sql, streamed_upload, text_of
from seaweed import put_s3_object

from hostd import uploads
from hostd.handlers import all_routes, download
from hostd.handlers.download import content_disposition, parse_range
from hostd.hashes import PUBLIC_HASH_PATTERN
from hostd.local import LocalBlobStore
from hostd.storage import READ_CHUNK_BYTES, store_from

ACCEL_PREFIX = "/_hostd_blobs/"

# Each test with an app runs on both stores (conftest.pytest_generate_tests).
STORAGE_BACKENDS = ("local", "s3")


async def upload(client, base_url, data: bytes, filename: str = "file.bin") -> str:
    body, headers = multipart_body(files=[("file", filename, data)])
    response = await client.fetch(
        f"{base_url}/api/upload", method="POST", body=body, headers=headers
    )
    return json.loads(response.body)["hash"]


@pytest.mark.parametrize("suffix", ["", ".png", ".tar.gz", "/holiday.jpg", "/any/name.txt"])
@pytest.mark.gen_test
async def test_all_three_url_forms_serve_the_same_bytes(http_client, base_url, suffix):
    data = bytes(range(256)) * 40
    h = await upload(http_client, base_url, data)

    response = await http_client.fetch(f"{base_url}/{h}{suffix}")

    assert response.code == 200
    assert response.body == data


@pytest.mark.gen_test
async def test_head_sends_the_headers_without_the_body(http_client, base_url):
    h = await upload(http_client, base_url, b"abc" * 100)

    response = await http_client.fetch(f"{base_url}/{h}", method="HEAD")

    assert response.code == 200
    assert response.headers["Content-Length"] == "300"
    assert response.body == b""


@pytest.mark.gen_test
async def test_unknown_hash_is_a_404_page(http_client, base_url):
    response = await http_client.fetch(f"{base_url}/AAAAAAAAAAAA.png", raise_error=False)

    assert response.code == 404
    assert response.headers["Content-Type"].startswith("text/html")
    assert b"There is no file with this hash." in response.body
    assert "immutable" not in response.headers.get("Cache-Control", "")


@pytest.mark.gen_test
async def test_any_other_unknown_path_is_a_404_page(http_client, base_url):
    response = await http_client.fetch(f"{base_url}/no/such/page", raise_error=False)

    assert response.code == 404
    assert b"<html" in response.body


@pytest.mark.gen_test
async def test_file_responses_carry_caching_and_safety_headers(http_client, base_url):
    data = b"cache me"
    h = await upload(http_client, base_url, data)

    response = await http_client.fetch(f"{base_url}/{h}")

    assert response.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert email.utils.parsedate_to_datetime(response.headers["Last-Modified"])
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
    csp = response.headers["Content-Security-Policy"]
    assert "sandbox" in csp.split(";")[-1]
    assert "default-src 'none'" in csp
    assert "Server" not in response.headers  # no version for scanners


@pytest.mark.gen_test
async def test_if_none_match_gives_304(http_client, base_url):
    h = await upload(http_client, base_url, b"etag")
    first = await http_client.fetch(f"{base_url}/{h}")

    second = await http_client.fetch(
        f"{base_url}/{h}.txt", headers={"If-None-Match": first.headers["ETag"]}, raise_error=False
    )

    assert second.code == 304
    assert second.body == b""
    assert "sandbox" in second.headers["Content-Security-Policy"]
    assert second.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.gen_test
async def test_if_modified_since_gives_304(http_client, base_url):
    h = await upload(http_client, base_url, b"ims")
    first = await http_client.fetch(f"{base_url}/{h}")

    second = await http_client.fetch(
        f"{base_url}/{h}",
        headers={"If-Modified-Since": first.headers["Last-Modified"]},
        raise_error=False,
    )

    assert second.code == 304


@pytest.mark.parametrize("form", ["rfc850", "asctime"])
@pytest.mark.gen_test
async def test_if_modified_since_in_an_obsolete_form_gives_304(http_client, base_url, form):
    h = await upload(http_client, base_url, b"ims")
    first = await http_client.fetch(f"{base_url}/{h}")
    moment = email.utils.parsedate_to_datetime(first.headers["Last-Modified"])
    since = {
        "rfc850": moment.strftime("%A, %d-%b-%y %H:%M:%S GMT"),
        "asctime": f"{moment:%a %b} {moment.day:2} {moment:%H:%M:%S %Y}",  # "Sun Nov  6"
    }[form]

    second = await http_client.fetch(
        f"{base_url}/{h}", headers={"If-Modified-Since": since}, raise_error=False
    )

    assert second.code == 304


@pytest.mark.parametrize(
    "since",
    [
        "Thu, 01 Oct 0052 00:00:00 GMT",  # the year 52, not 2052
        "01 Oct 0052 00:00:00 GMT",
        "Thu, 01 Oct 2099 00:00:00 GMT",  # later than our clock: not a date we sent
        "Thu, 01 Oct 2099 00:00:00 +0000",
        "Thu, 01 Oct 2099 00:00:00",
        "thu, 01 oct 2099 00:00:00 gmt",
        "Thu Oct  1 00:00:00 2099",
        "1 Oct 2099 00:00 GMT",
        "Thu, 01 Oct 2099 00:00:00 GMT, Fri, 02 Oct 2099 00:00:00 GMT",
    ],
)
@pytest.mark.gen_test
async def test_if_modified_since_that_is_no_valid_http_date_is_ignored(
    http_client, base_url, since
):
    h = await upload(http_client, base_url, b"ims")

    response = await http_client.fetch(
        f"{base_url}/{h}", headers={"If-Modified-Since": since}, raise_error=False
    )

    assert response.code == 200
    assert response.body == b"ims"


@pytest.mark.gen_test
async def test_stale_if_none_match_gives_the_file(http_client, base_url):
    h = await upload(http_client, base_url, b"fresh")

    response = await http_client.fetch(f"{base_url}/{h}", headers={"If-None-Match": '"other"'})

    assert response.code == 200
    assert response.body == b"fresh"


@pytest.mark.parametrize(
    ("name", "value", "status"),
    [
        ("If-Match", "{etag}", 200),
        ("If-Match", '"other", {etag}', 200),
        ("If-Match", "*", 200),
        ("If-Match", '"other"', 412),
        ("If-Match", "W/{etag}", 412),  # a weak tag never matches (strong comparison)
        ("If-Unmodified-Since", "{last_modified}", 200),
        ("If-Unmodified-Since", "Sat, 01 Jan 2000 00:00:00 GMT", 412),
        ("If-Unmodified-Since", "not a date", 200),  # ignored
    ],
)
@pytest.mark.gen_test
async def test_if_match_and_if_unmodified_since_guard_the_file(
    http_client, base_url, name, value, status
):
    h = await upload(http_client, base_url, b"the version read")
    first = await http_client.fetch(f"{base_url}/{h}")
    value = value.format(etag=first.headers["ETag"], last_modified=first.headers["Last-Modified"])

    response = await http_client.fetch(f"{base_url}/{h}", headers={name: value}, raise_error=False)

    assert response.code == status
    assert response.body == (b"the version read" if status == 200 else b"")


@pytest.mark.parametrize(
    ("header", "content_range", "expected"),
    [
        ("bytes=0-3", "bytes 0-3/10", b"0123"),
        ("bytes=4-", "bytes 4-9/10", b"456789"),
        ("bytes=-3", "bytes 7-9/10", b"789"),
        ("bytes=8-100", "bytes 8-9/10", b"89"),
        ("bytes=0-", "bytes 0-9/10", b"0123456789"),  # how browsers open media
        ("bytes=-50", "bytes 0-9/10", b"0123456789"),
        ("bytes=0-99999999999999999999", "bytes 0-9/10", b"0123456789"),
        ("bytes=0-" + "9" * 5000, "bytes 0-9/10", b"0123456789"),
        ("bytes=-" + "9" * 5000, "bytes 0-9/10", b"0123456789"),
    ],
)
@pytest.mark.gen_test
async def test_a_byte_range_gives_206(http_client, base_url, header, content_range, expected):
    h = await upload(http_client, base_url, b"0123456789")

    response = await http_client.fetch(f"{base_url}/{h}", headers={"Range": header})

    assert response.code == 206
    assert response.headers["Content-Range"] == content_range
    assert response.body == expected
    assert "sandbox" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    "header", ["bytes=10-", "bytes=20-30", "bytes=-0", "bytes=" + "9" * 5000 + "-"]
)
@pytest.mark.gen_test
async def test_an_unsatisfiable_range_gives_416(http_client, base_url, header):
    h = await upload(http_client, base_url, b"0123456789")

    response = await http_client.fetch(
        f"{base_url}/{h}", headers={"Range": header}, raise_error=False
    )

    assert response.code == 416
    assert response.headers["Content-Range"] == "bytes */10"
    assert "sandbox" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    "header", ["bytes=0-1,4-5", "bytes=5-3", "items=0-1", "bytes=\u00b2-3", "bytes=0-\u00b3"]
)
@pytest.mark.gen_test
async def test_ranges_we_do_not_serve_get_the_whole_file(http_client, base_url, header):
    h = await upload(http_client, base_url, b"0123456789")

    response = await http_client.fetch(f"{base_url}/{h}", headers={"Range": header})

    assert response.code == 200
    assert response.body == b"0123456789"


@pytest.mark.gen_test
async def test_if_range_with_another_validator_gets_the_whole_file(http_client, base_url):
    h = await upload(http_client, base_url, b"0123456789")

    response = await http_client.fetch(
        f"{base_url}/{h}", headers={"Range": "bytes=0-1", "If-Range": '"old"'}
    )

    assert response.code == 200


@pytest.mark.parametrize(
    ("suffix", "content_type"),
    [
        ("", "image/png"),
        (".png", "image/png"),
        (".txt", "text/plain"),  # no charset: these bytes are not UTF-8
        ("/picture.jpg", "image/jpeg"),
        (".unknownext", "image/png"),
    ],
)
@pytest.mark.gen_test
async def test_content_type_comes_from_the_url_name_else_from_the_bytes(
    http_client, base_url, suffix, content_type
):
    h = await upload(http_client, base_url, b"\x89PNG\r\n\x1a\n" + b"\0" * 16, "upload")

    response = await http_client.fetch(f"{base_url}/{h}{suffix}")

    assert response.headers["Content-Type"] == content_type


@pytest.mark.parametrize("suffix", ["", ".html", ".svg", ".xml", "/page.html"])
@pytest.mark.gen_test
async def test_uploaded_markup_is_sandboxed_whatever_the_url(http_client, base_url, suffix):
    h = await upload(
        http_client, base_url, b"<html><script>alert(document.cookie)</script>", "x.html"
    )

    response = await http_client.fetch(f"{base_url}/{h}{suffix}")

    assert "sandbox" in response.headers["Content-Security-Policy"]
    assert "script-src" not in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.gen_test
async def test_filename_url_sends_content_disposition_inline(http_client, base_url):
    h = await upload(http_client, base_url, b"report")

    plain = await http_client.fetch(f"{base_url}/{h}/report.txt")
    fancy = await http_client.fetch(f"{base_url}/{h}/r%C3%A9sum%C3%A9.txt")
    nested = await http_client.fetch(f"{base_url}/{h}/2026/report.txt")
    bare = await http_client.fetch(f"{base_url}/{h}")
    unnamed = await http_client.fetch(f"{base_url}/{h}/docs/")

    assert plain.headers["Content-Disposition"] == 'inline; filename="report.txt"'
    assert fancy.headers["Content-Disposition"] == (
        "inline; filename=\"r_sum_.txt\"; filename*=UTF-8''r%C3%A9sum%C3%A9.txt"
    )
    assert nested.headers["Content-Disposition"] == 'inline; filename="report.txt"'
    assert "Content-Disposition" not in bare.headers
    assert "Content-Disposition" not in unnamed.headers  # not an empty filename=""
    assert unnamed.body == bare.body == b"report"


@pytest.mark.gen_test
async def test_download_in_the_query_makes_any_url_save_the_file(http_client, base_url):
    h = await upload(http_client, base_url, b"<svg xmlns='http://www.w3.org/2000/svg'/>")

    named = await http_client.fetch(f"{base_url}/{h}/r%C3%A9sum%C3%A9.svg?download")
    with_ext = await http_client.fetch(f"{base_url}/{h}.svg?download=1")
    bare = await http_client.fetch(f"{base_url}/{h}?download")
    ranged = await http_client.fetch(f"{base_url}/{h}.svg?download", headers={"Range": "bytes=0-3"})

    assert named.headers["Content-Disposition"] == (
        "attachment; filename=\"r_sum_.svg\"; filename*=UTF-8''r%C3%A9sum%C3%A9.svg"
    )
    assert with_ext.headers["Content-Disposition"] == f'attachment; filename="{h}.svg"'
    # Saved with the extension of the type read from the bytes, so that it opens.
    assert bare.headers["Content-Disposition"] == f'attachment; filename="{h}.svg"'
    assert ranged.code == 206 and ranged.headers["Content-Disposition"].startswith("attachment")
    assert with_ext.headers["Content-Type"] == "image/svg+xml"  # the same file, only saved
    assert with_ext.body == bare.body


@pytest.mark.gen_test
async def test_scripts_and_stylesheets_are_served_as_plain_text_so_no_site_can_run_them(
    http_client, base_url
):
    h = await upload(http_client, base_url, b"alert(document.domain)\n")

    answers = [
        await http_client.fetch(f"{base_url}/{h}{suffix}")
        for suffix in (".js", ".mjs", ".css", ".sh", ".py", "/bundle.js")
    ]

    # With nosniff, no browser runs text/plain as a script or applies it as a stylesheet.
    for answer in answers:
        assert answer.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert answer.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.gen_test
async def test_a_text_name_says_utf_8_only_for_bytes_that_are(http_client, base_url):
    latin_1 = await upload(http_client, base_url, "café crème\n".encode("latin-1"))
    utf_8 = await upload(http_client, base_url, "café crème\n".encode())

    as_latin_1 = await http_client.fetch(f"{base_url}/{latin_1}.txt")
    as_utf_8 = await http_client.fetch(f"{base_url}/{utf_8}.txt")

    assert as_latin_1.headers["Content-Type"] == "text/plain"  # the browser's own charset
    assert as_utf_8.headers["Content-Type"] == "text/plain; charset=utf-8"


def test_a_url_name_cannot_save_the_file_under_a_name_that_reads_as_another():
    header = content_disposition("photo\u202egpj.exe")  # shown as "photoexe.jpg"

    assert "\u202e" not in header and "%E2%80%AE" not in header
    assert header == 'inline; filename="photo_gpj.exe"'


def test_content_disposition_cannot_be_broken_out_of():
    header = content_disposition('evil".txt\r\nSet-Cookie: x=1')

    assert "\r" not in header and "\n" not in header
    assert header.startswith('inline; filename="evil_.txt__Set-Cookie: x=1";')


@pytest.mark.parametrize(
    ("header", "expected"),
    [("bytes=0-0", (0, 0)), ("bytes=5-", (5, 9)), ("bytes=-20", (0, 9)), ("bytes=10-", None)],
)
def test_parse_range(header, expected):
    assert parse_range(header, 10) == expected


@pytest.mark.parametrize("header", ["bytes=1-2,3-4", "items=0-1", "bytes=-", "bytes=a-b"])
def test_parse_range_refuses_what_it_does_not_serve(header):
    with pytest.raises(ValueError):
        parse_range(header, 10)


@pytest.mark.gen_test(timeout=60)
async def test_a_large_file_streams_back_whole(http_client, base_url):
    producer, headers, digest = streamed_upload(6 * 1024 * 1024 + 3)
    answer = await http_client.fetch(
        f"{base_url}/api/upload", method="POST", body_producer=producer, headers=headers
    )
    h = json.loads(answer.body)["hash"]
    received = hashlib.sha256()

    await http_client.fetch(f"{base_url}/{h}", streaming_callback=received.update)

    assert received.digest() == digest


@pytest.mark.gen_test
async def test_a_short_hash_collision_never_serves_the_wrong_bytes(http_client, base_url, db):
    # Plant a blob that holds the 12-character hash the next upload would get.
    from hostd.hashes import public_hash_candidates

    data = b"the real content"
    sha = hashlib.sha256(data).hexdigest()
    taken = public_hash_candidates(sha)[0]
    await db.write(  # another blob holding the prefix: raw SQL, as no upload can make one
        raw_sql(
            "INSERT INTO blobs (sha256, hash, size_bytes, content_type, created_at)"
            " VALUES (?, ?, 1, 'text/plain', 0)",
            ("f" * 64, taken),
        )
    )

    h = await upload(http_client, base_url, data)
    response = await http_client.fetch(f"{base_url}/{h}")

    assert h == public_hash_candidates(sha)[1]
    assert len(h) == 13
    assert response.body == data


@pytest.mark.gen_test
async def test_a_range_across_read_pieces_is_served_exactly(http_client, base_url):
    data = hashlib.sha256(b"pieces").digest() * (3 * READ_CHUNK_BYTES // 32) + b"tail"
    h = await upload(http_client, base_url, data)
    first, last = READ_CHUNK_BYTES - 5, 2 * READ_CHUNK_BYTES + 5

    response = await http_client.fetch(
        f"{base_url}/{h}", headers={"Range": f"bytes={first}-{last}"}
    )

    assert response.code == 206
    assert response.body == data[first : last + 1]


@pytest.mark.gen_test
async def test_the_404_at_a_file_url_is_a_page_with_the_page_policy(http_client, base_url, login):
    user = await login()

    response = await http_client.fetch(
        f"{base_url}/AAAAAAAAAAAA", headers=user.headers, raise_error=False
    )

    assert response.code == 404
    assert f"Signed in as {user.user.name}" in text_of(response.body)
    assert "script-src 'nonce-" in response.headers["Content-Security-Policy"]
    assert "sandbox" not in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store"  # a page for a signed-in user
    assert "ETag" not in response.headers
    anonymous = await http_client.fetch(f"{base_url}/AAAAAAAAAAAA", raise_error=False)
    assert anonymous.headers["Cache-Control"] == "no-cache"  # asked again: it may be uploaded


# -- server.accel_redirect: hostd sends the headers, nginx the bytes (tests/test_nginx.py) ----


class RemoteLikeStore(LocalBlobStore):
    """A store whose bytes are nowhere nginx can read them (as an S3 store's would be)."""

    def accel_path(self, sha256: str) -> None:
        return None


@pytest.mark.local_storage  # nginx reads the local blobs
class TestAccelRedirect:
    @pytest.fixture
    def config(self, config):
        return dataclasses.replace(config, accel_redirect=ACCEL_PREFIX)

    @pytest.mark.parametrize(
        ("method", "headers", "status"),
        [
            ("GET", {}, 200),
            ("HEAD", {}, 200),
            ("GET", {"Range": "bytes=2-5"}, 206),
            ("HEAD", {"Range": "bytes=-3"}, 206),
            ("GET", {"Range": "bytes=2-5", "If-Range": "ETAG"}, 206),
        ],
    )
    @pytest.mark.gen_test
    async def test_file_answers_carry_x_accel_redirect_with_the_headers_and_no_body(
        self, http_client, base_url, method, headers, status
    ):
        data = b"0123456789"
        sha = hashlib.sha256(data).hexdigest()
        h = await upload(http_client, base_url, data)
        headers = {k: v.replace("ETAG", f'"{sha}"') for k, v in headers.items()}

        response = await http_client.fetch(
            f"{base_url}/{h}/notes.txt", method=method, headers=headers
        )

        assert response.code == status
        assert response.headers["X-Accel-Redirect"] == f"{ACCEL_PREFIX}{sha[:2]}/{sha[2:4]}/{sha}"
        assert response.body == b""
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert response.headers["ETag"] == f'"{sha}"'
        assert email.utils.parsedate_to_datetime(response.headers["Last-Modified"])
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert response.headers["Content-Security-Policy"].endswith("sandbox")
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Content-Disposition"] == 'inline; filename="notes.txt"'
        # nginx's range filter announces ranges itself on a whole file, and would repeat it.
        assert response.headers.get("Accept-Ranges") == ("bytes" if status == 206 else None)

    @pytest.mark.parametrize(
        "headers",
        [
            {"If-Match": "*"},  # nginx compares with its own ETag
            {"If-Unmodified-Since": "LAST_MODIFIED"},  # and its file's mtime
            {"Range": "bytes=0-1,4-5"},
            {"Range": "bytes=5-3"},
            {"Range": "bytes= 0-3"},
            {"Range": "bytes=0-99999999999999999999"},
            {"Range": "bytes=0-3", "If-Range": '"old"'},
            {"Range": "bytes=0-3", "If-Range": "LAST_MODIFIED"},
        ],
    )
    @pytest.mark.gen_test
    async def test_what_nginx_would_answer_otherwise_hostd_sends_itself(
        self, http_client, base_url, headers
    ):
        # nginx would judge a precondition by its own validators, give a multipart 206 or a
        # 416, or honour a date in If-Range,
        # where hostd sends the file or the range (see test_nginx.py for the comparison).
        data = b"0123456789"
        h = await upload(http_client, base_url, data)
        last_modified = (await http_client.fetch(f"{base_url}/{h}")).headers["Last-Modified"]
        headers = {k: v.replace("LAST_MODIFIED", last_modified) for k, v in headers.items()}

        response = await http_client.fetch(f"{base_url}/{h}", headers=headers)

        assert "X-Accel-Redirect" not in response.headers
        assert response.body in (data, data[:4])  # the file, or the range, from hostd

    @pytest.mark.parametrize(
        ("headers", "status"),
        [
            ({"If-None-Match": "ETAG"}, 304),
            ({"Range": "bytes=10-"}, 416),
            ({"If-Match": '"something"'}, 412),
            ({"If-Unmodified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}, 412),
        ],
    )
    @pytest.mark.gen_test
    async def test_hostd_answers_304_412_and_416_itself(
        self, http_client, base_url, headers, status
    ):
        data = b"0123456789"
        h = await upload(http_client, base_url, data)
        etag = f'"{hashlib.sha256(data).hexdigest()}"'

        response = await http_client.fetch(
            f"{base_url}/{h}",
            headers={k: v.replace("ETAG", etag) for k, v in headers.items()},
            raise_error=False,
        )

        assert response.code == status
        assert "X-Accel-Redirect" not in response.headers

    @pytest.mark.parametrize("served_before", [False, True])
    @pytest.mark.gen_test
    async def test_a_file_whose_bytes_are_gone_is_hostds_404(
        self, http_client, base_url, store, served_before
    ):
        data = b"taken down elsewhere"
        h = await upload(http_client, base_url, data)
        if served_before:
            assert "X-Accel-Redirect" in (await http_client.fetch(f"{base_url}/{h}")).headers
        await store.delete(hashlib.sha256(data).hexdigest())  # as `hostd file rm` would

        response = await http_client.fetch(f"{base_url}/{h}", raise_error=False)

        assert response.code == 404
        assert "X-Accel-Redirect" not in response.headers
        assert b"There is no file with this hash." in response.body

    @pytest.mark.gen_test
    async def test_a_file_found_once_is_not_opened_again(self, http_client, base_url, store):
        # Its row says it is there; the open, fstat and close were 8% of the answer's time.
        data = b"opened once"
        h = await upload(http_client, base_url, data)
        first = await http_client.fetch(f"{base_url}/{h}")
        store.path(hashlib.sha256(data).hexdigest()).unlink()  # not opened again to find out

        second = await http_client.fetch(f"{base_url}/{h}")

        assert second.code == first.code == 200
        assert second.headers["X-Accel-Redirect"] == first.headers["X-Accel-Redirect"]

    @pytest.mark.gen_test
    async def test_a_store_nginx_cannot_read_streams_the_bytes(self, http_client, base_url, app):
        store = app.settings["hostd_store"]
        remote = RemoteLikeStore(store.root)
        app.settings["hostd_store"] = remote
        data = b"in a bucket"
        try:
            h = await upload(http_client, base_url, data)

            response = await http_client.fetch(f"{base_url}/{h}")
        finally:
            app.settings["hostd_store"] = store
            remote.close()

        assert "X-Accel-Redirect" not in response.headers
        assert response.body == data


@pytest.mark.parametrize("method", ["PUT", "POST", "PATCH", "DELETE"])
@pytest.mark.parametrize("suffix", ["", ".txt", "/name.txt"])
@pytest.mark.gen_test
async def test_a_file_url_refuses_other_methods_with_405_and_allow(
    http_client, base_url, method, suffix
):
    h = await upload(http_client, base_url, b"read-only")

    response = await http_client.fetch(
        f"{base_url}/{h}{suffix}",
        method=method,
        body=None if method == "DELETE" else b"x",
        raise_error=False,
    )

    assert response.code == 405
    assert response.headers["Allow"] == "GET, HEAD, OPTIONS"
    assert "text/html" in response.headers["Content-Type"]
    assert (await http_client.fetch(f"{base_url}/{h}{suffix}")).body == b"read-only"


@pytest.mark.parametrize("content_type", ["multipart/form-data", "multipart/form-data; boundary=x"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.gen_test
async def test_a_stray_content_type_without_a_body_does_not_matter(
    http_client, base_url, method, content_type
):
    h = await upload(http_client, base_url, b"no body")

    response = await http_client.fetch(
        f"{base_url}/{h}", method=method, headers={"Content-Type": content_type}
    )

    assert response.code == 200
    assert response.headers["Content-Length"] == "7"


def test_no_named_route_can_be_taken_for_a_hash_route():
    # The hash routes come first in the URL map (most requests are downloads), so a named
    # path must never start with a segment a public hash could be.
    hash_routes = dict(download.routes)
    patterns = [p if isinstance(p, str) else p.regex.pattern for p, _ in all_routes()]
    named = [pattern for pattern in patterns if pattern not in hash_routes]

    assert list(hash_routes) == patterns[: len(hash_routes)]
    for pattern in named:
        first = pattern.removesuffix("$").lstrip("/").split("/")[0].replace(r"\.", ".")
        assert re.fullmatch(r"[a-z.]*", first), f"{pattern}: its first segment is not literal"
        assert not re.fullmatch(rf"{PUBLIC_HASH_PATTERN}(\..*)?", first), pattern


@pytest.mark.gen_test
async def test_a_small_file_from_memory_is_the_same_as_from_disk(http_client, base_url, store):
    data = bytes(range(256)) * 20
    h = await upload(http_client, base_url, data, "notes.txt")

    from_disk = await http_client.fetch(f"{base_url}/{h}")
    from_memory = await http_client.fetch(f"{base_url}/{h}")
    ranged = await http_client.fetch(f"{base_url}/{h}", headers={"Range": "bytes=10-19"})

    assert from_disk.body == from_memory.body == data
    assert without_date(from_disk.headers) == without_date(from_memory.headers)
    assert ranged.code == 206 and ranged.body == data[10:20]
    if isinstance(store, LocalBlobStore):
        assert store.hot.get(hashlib.sha256(data).hexdigest()) == data


@pytest.mark.gen_test
async def test_a_small_file_taken_down_by_another_process_is_not_served_from_memory(
    http_client, base_url, config, other_process, thumbs
):
    data = b"in memory, then taken down elsewhere"
    h = await upload(http_client, base_url, data)
    assert (await http_client.fetch(f"{base_url}/{h}")).body == data
    assert (await http_client.fetch(f"{base_url}/{h}")).body == data  # from memory now

    elsewhere = store_from(config)  # the other process's own store
    try:
        await uploads.take_down(
            other_process, elsewhere, thumbs, sha256=hashlib.sha256(data).hexdigest()
        )
    finally:
        elsewhere.close()
    after = await http_client.fetch(f"{base_url}/{h}", raise_error=False)

    assert after.code == 404


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.gen_test
async def test_a_file_whose_bytes_were_lost_is_a_404_and_a_warning_for_the_admin(
    http_client, base_url, store, caplog, method
):
    data = b"on a disk that lost it"
    h = await upload(http_client, base_url, data)
    sha256 = hashlib.sha256(data).hexdigest()
    await store.delete(sha256)  # behind hostd's back: its row stays

    response = await http_client.fetch(f"{base_url}/{h}.bin", method=method, raise_error=False)

    assert response.code == 404
    assert f"the bytes of {h} ({sha256}) are missing from the store" in caplog.text


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("damage", ["cut-short", "grown"])
@pytest.mark.parametrize("size", [100, 300_000], ids=["small", "big"])
@pytest.mark.gen_test
async def test_bytes_that_are_not_the_size_recorded_are_never_served(
    http_client, base_url, store, config, caplog, damage, size, method
):
    data = os.urandom(size)
    h = await upload(http_client, base_url, data)
    sha256 = hashlib.sha256(data).hexdigest()
    damaged = data[: size // 2] if damage == "cut-short" else data + b"more"
    if isinstance(store, LocalBlobStore):
        store.hot.drop(sha256)  # as after a restart: nothing of it in memory
        store.path(sha256).write_bytes(damaged)
    else:
        put_s3_object(config, sha256, damaged)

    whole = await http_client.fetch(f"{base_url}/{h}", method=method, raise_error=False)
    ranged = await http_client.fetch(
        f"{base_url}/{h}", method=method, headers={"Range": "bytes=0-9"}, raise_error=False
    )

    assert (whole.code, ranged.code) == (404, 404)
    assert data[:10] not in whole.body
    assert f"the bytes of {h} ({sha256}) are not the {size} uploaded" in caplog.text


@pytest.mark.local_storage  # S3 keeps its own checksums
@pytest.mark.parametrize("size", [100, 300_000], ids=["small", "big"])
@pytest.mark.gen_test
async def test_bytes_written_over_at_their_size_are_never_served_whole(
    http_client, base_url, http_port, store, caplog, size
):
    data = os.urandom(size)
    h = await upload(http_client, base_url, data)
    sha256 = hashlib.sha256(data).hexdigest()
    assert (await http_client.fetch(f"{base_url}/{h}")).body == data  # read and checked once
    written_over = data[:50] + bytes([data[50] ^ 1]) + data[51:]  # one flipped bit
    store.hot.drop(sha256)  # as after a restart: nothing of it in memory
    store.path(sha256).write_bytes(written_over)

    reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
    writer.write(f"GET /{h} HTTP/1.1\r\nHost: hostd\r\nConnection: close\r\n\r\n".encode())
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    ranged = await http_client.fetch(f"{base_url}/{h}", headers={"Range": "bytes=0-59"})
    store.hot.drop(sha256)
    head_only = await http_client.fetch(f"{base_url}/{h}", method="HEAD", raise_error=False)

    head, _, body = answer.partition(b"\r\n\r\n")
    if size == 100:  # read in one piece: checked before the headers go, for a HEAD too
        assert head.startswith(b"HTTP/1.1 404 ") and head_only.code == 404
    else:  # checked as it goes: the last piece never goes, the client sees a cut
        assert head.startswith(b"HTTP/1.1 200 ") and f"Content-Length: {size}".encode() in head
        assert 0 < len(body) < size and body == written_over[: len(body)]
        assert head_only.code == 200  # as the GET's status line
    assert written_over not in body
    assert f"the bytes of {h} ({sha256}) are not the {size} uploaded" in caplog.text
    # A range is sent as it is on disk, unchecked (`hostd gc --verify` finds the damage).
    assert ranged.code == 206 and ranged.body == written_over[:60]


def without_date(headers) -> dict[str, str]:
    return {name: value for name, value in headers.get_all() if name != "Date"}


# -- clients that go away or stall --------------------------------------------------------


async def start_download(http_port: int, h: str) -> tuple[asyncio.StreamReader, Any]:
    """A GET of /<h> from a client whose receive buffer is small, that reads nothing yet."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", http_port))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(f"GET /{h} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


@pytest.mark.gen_test(timeout=60)
async def test_a_client_that_goes_away_mid_download_is_no_error(
    http_client, base_url, http_port, caplog
):
    data = os.urandom(7 * 1024 * 1024)
    h = await upload(http_client, base_url, data)
    reader, writer = await start_download(http_port, h)
    await reader.readexactly(64 * 1024)

    writer.transport.abort()  # a reset, as a browser that cancels does
    after = await http_client.fetch(f"{base_url}/{h}")

    assert after.body == data
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.gen_test(timeout=60)
async def test_a_client_that_takes_no_byte_for_send_idle_seconds_is_cut_off(
    http_client, base_url, http_port, app, caplog
):
    app.settings["hostd_config"] = dataclasses.replace(
        app.settings["hostd_config"], send_idle_seconds=0.5
    )
    size = 7 * 1024 * 1024  # under the tests' max_upload_bytes, over what sockets buffer
    h = await upload(http_client, base_url, os.urandom(size))
    reader, writer = await start_download(http_port, h)
    try:
        await asyncio.sleep(2)  # stalled, past the limit
        received = await asyncio.wait_for(reader.read(), 10)  # what was on its way, then EOF
    finally:
        writer.close()

    assert received.startswith(b"HTTP/1.1 200 ")
    assert len(received) < size, "the whole file went out: nothing stalled"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize(
    ("limits", "refused", "message"),
    [
        (
            {"downloads_in_flight_per_address": 2},
            429,
            "2 downloads from your address are already in progress",
        ),
        ({"downloads_in_flight": 2}, 503, "The server is sending as many files as it can"),
    ],
    ids=["per address", "in all"],
)
@pytest.mark.gen_test(timeout=60)
async def test_big_downloads_whose_bytes_have_not_gone_out_are_counted(
    http_client, base_url, http_port, app, limits, refused, message
):
    app.settings["hostd_config"] = dataclasses.replace(app.settings["hostd_config"], **limits)
    downloads = app.settings["hostd_downloads"]
    size = 7 * 1024 * 1024  # over what sockets buffer
    big = await upload(http_client, base_url, os.urandom(size))
    small = await upload(http_client, base_url, os.urandom(64 * 1024))  # sent in one write
    taken = [len((await http_client.fetch(f"{base_url}/{big}")).body) for _ in range(3)]
    counted_after_taken = downloads.total
    stalled = [await start_download(http_port, big) for _ in range(2)]
    try:
        for reader, _ in stalled:
            assert (await reader.readline()).startswith(b"HTTP/1.1 200 ")
        third = await http_client.fetch(f"{base_url}/{big}", raise_error=False)
        one_small = await http_client.fetch(f"{base_url}/{small}")
        stalled.pop()[1].transport.abort()  # one of them goes away
        await asyncio.sleep(0.2)
        again = await http_client.fetch(f"{base_url}/{big}")
    finally:
        for _, writer in stalled:
            writer.transport.abort()
    for _ in range(50):  # the server sees the last one go at its next write
        if downloads.total == 0:
            break
        await asyncio.sleep(0.1)

    assert taken == [size] * 3 and counted_after_taken == 0  # taken whole: counted no more
    assert third.code == refused and third.headers["Retry-After"] == "5"
    assert message in third.body.decode()
    assert one_small.code == 200 and again.code == 200 and len(again.body) == size
    assert downloads.total == 0


@pytest.mark.gen_test(timeout=30)
async def test_a_slow_reader_is_not_a_stalled_one_but_a_trickle_is():
    """A client that takes MIN_SEND_PROGRESS_BYTES in each idle_seconds keeps its download
    going (a phone on 2G takes a 256 KiB piece in a minute); one that takes a few bytes now
    and then holds its piece of the file as surely as one that takes none, and is cut off."""
    sent, stalled_at, stalled = [0], [], asyncio.Event()
    loop = asyncio.get_running_loop()

    def cut_off() -> None:
        stalled_at.append(loop.time())
        stalled.set()

    began = loop.time()
    watch = download.StallWatch(0.4, lambda: sent[0], cut_off)
    try:
        for _ in range(15):  # slow, but twice the least in each idle_seconds
            await asyncio.sleep(0.1)
            sent[0] += download.MIN_SEND_PROGRESS_BYTES // 2
        moving = list(stalled_at)
        trickling = loop.time()
        for _ in range(30):  # a byte every 0.1 s: never idle, never the least
            await asyncio.sleep(0.1)
            sent[0] += 1
            if stalled.is_set():
                break
    finally:
        watch.stop()

    assert moving == [], f"cut off after {moving[0] - began:.2f} s while it moved"
    assert stalled_at and 0.3 <= stalled_at[0] - trickling <= 1.5
