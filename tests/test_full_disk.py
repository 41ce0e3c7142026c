"""A full disk, real (a small tmpfs) and injected (a blob store with no room): every refusal
is a 507 that the client reads in full, in the endpoint's own format, nothing is left behind,
and once there is room again everything works without a restart."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time

import pytest
from conftest import XSRF, form_body
from helpers import assert_refused, blob_files, multipart_body, temp_files

# On SQLite only: SQLite's file and the blobs share the small tmpfs (PostgreSQL's disk_full,
# 53100, is the same 507 through db.is_full).
pytestmark = pytest.mark.sqlite_only


@pytest.fixture
def config(config):
    """The disk itself running out, with the guard that keeps storage.min_free_bytes free
    turned off (tests/test_limits.py tests the guard)."""
    return dataclasses.replace(config, min_free_bytes=0)


OUT_OF_SPACE = "the server is out of storage space; the file was not stored"
PAGE_MESSAGE = "The server is out of storage space. Try again later."
ENDPOINTS = ["/api/upload", "/upload?api=1", "/upload"]


async def upload(client, url, data=b"some bytes"):
    body, headers = multipart_body(files=[("file", "a.bin", data)])
    return await client.fetch(url, method="POST", body=body, headers=headers, raise_error=False)


async def submit(client, url, headers=None, **fields):
    return await client.fetch(
        url,
        method="POST",
        body=form_body(**fields),
        headers=headers or {"Cookie": f"_xsrf={XSRF}"},
        follow_redirects=False,
        raise_error=False,
    )


def assert_out_of_space(response, endpoint):
    """A 507 with the usual message, as the endpoint answers: JSON, `ERROR ...` or a page."""
    assert_refused(response, endpoint, 507, OUT_OF_SPACE)


def assert_page_out_of_space(response):
    assert response.code == 507
    assert response.headers["Content-Type"].startswith("text/html")
    assert f'<p class="error-message">{PAGE_MESSAGE}</p>' in response.body.decode()


# The server hands a chunked body to the handler in pieces of exactly this size
# (make_server's chunk_size), however the client's writes arrive.
PIECE = 256 * 1024
PAGE = 4096
PREAMBLE = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n\r\n'


async def post_chunked(client, url, size):
    """POST a `size`-byte file as a chunked body, so that the server reads it in PIECEs."""
    block = os.urandom(64 * 1024)

    async def producer(write):
        await write(PREAMBLE)
        for _ in range(size // len(block)):
            await write(block)
        await write(b"\r\n--b--\r\n")

    headers = {"Content-Type": "multipart/form-data; boundary=b"}
    return await client.fetch(
        url, method="POST", body_producer=producer, headers=headers, raise_error=False
    )


# -- a real full disk: a 20 MiB tmpfs ------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.gen_test
async def test_at_zero_bytes_free_an_upload_is_a_507_that_leaves_no_temp_file(
    small_disk, http_client, base_url, config, endpoint
):
    small_disk.fill()

    refused = await upload(http_client, f"{base_url}{endpoint}")
    left = temp_files(config), blob_files(config)
    small_disk.empty()
    accepted = await upload(http_client, f"{base_url}{endpoint}")

    assert_out_of_space(refused, endpoint)
    assert left == ([], [])
    assert accepted.code == 200


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.gen_test(timeout=60)
async def test_a_disk_that_fills_mid_body_answers_507_in_full_and_then_works_again(
    small_disk, http_client, base_url, config, endpoint
):
    # The disk runs out less than a page before the end of the file's second piece: the
    # kernel takes that write in part, and Python's file buffer keeps the rest, so that
    # closing the temp file fails too.
    second_piece_ends = 2 * PIECE - len(PREAMBLE)
    small_disk.fill(leave=(second_piece_ends - 1) // PAGE * PAGE)

    refused = await post_chunked(http_client, f"{base_url}{endpoint}", 4 * 1024 * 1024)
    left = temp_files(config), blob_files(config)
    accepted = await upload(http_client, f"{base_url}{endpoint}", os.urandom(256 * 1024))

    assert_out_of_space(refused, endpoint)  # the whole answer: a reset fails the fetch
    assert left == ([], [])
    assert accepted.code == 200  # the failed upload's bytes are not in the way


@pytest.mark.gen_test(timeout=60)
async def test_room_for_the_file_but_not_for_its_row_is_a_507_that_leaves_no_bytes(
    small_disk, http_client, base_url, config
):
    data = os.urandom(64 * 1024)
    small_disk.fill(leave=len(data))  # the file fits; the database's log cannot grow

    refused = await upload(http_client, f"{base_url}/api/upload", data)
    left = temp_files(config), blob_files(config)
    small_disk.empty()
    accepted = await upload(http_client, f"{base_url}/api/upload", data)
    download = await http_client.fetch(json.loads(accepted.body)["urls"]["hash"])

    assert_out_of_space(refused, "/api/upload")
    assert left == ([], [])
    assert accepted.code == 200
    assert download.body == data


@pytest.mark.gen_test
async def test_registering_on_a_full_disk_is_a_507_page(small_disk, http_client, base_url):
    fields = {"name": "alice", "password": "long enough", "confirm": "long enough"}
    small_disk.fill()

    refused = await submit(http_client, f"{base_url}/register", **fields)
    small_disk.empty()
    accepted = await submit(http_client, f"{base_url}/register", **fields)

    assert_page_out_of_space(refused)
    assert accepted.code == 303


@pytest.mark.gen_test
async def test_signing_in_on_a_full_disk_is_a_507_page(small_disk, http_client, base_url, login):
    await login("bob", password="correct horse")
    small_disk.fill()

    refused = await submit(http_client, f"{base_url}/login", name="bob", password="correct horse")
    small_disk.empty()
    accepted = await submit(http_client, f"{base_url}/login", name="bob", password="correct horse")

    assert_page_out_of_space(refused)
    assert accepted.code == 303


@pytest.mark.parametrize("htmx", [True, False])
@pytest.mark.gen_test
async def test_making_a_key_on_a_full_disk_is_a_507_page(
    small_disk, http_client, base_url, login, htmx
):
    user = await login()
    headers = {**user.headers, **({"HX-Request": "true"} if htmx else {})}
    small_disk.fill()

    refused = await submit(http_client, f"{base_url}/api/keys", headers=headers, label="laptop")
    small_disk.empty()
    accepted = await submit(http_client, f"{base_url}/api/keys", headers=headers, label="laptop")

    assert_page_out_of_space(refused)  # htmx shows the page's .error-message too
    assert accepted.code in (200, 303)


# -- an injected full disk: the blob store's writes fail with ENOSPC --------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.gen_test
async def test_a_store_with_no_room_refuses_with_507_and_leaves_no_temp_file(
    http_client, base_url, config, cramped_store, endpoint
):
    refused = await upload(http_client, f"{base_url}{endpoint}")
    left = temp_files(config)
    cramped_store.room = 1024 * 1024
    accepted = await upload(http_client, f"{base_url}{endpoint}")

    assert_out_of_space(refused, endpoint)
    assert left == []
    assert accepted.code == 200


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.gen_test(timeout=60)
async def test_a_store_that_runs_out_of_room_mid_body_answers_507_in_full(
    http_client, base_url, config, cramped_store, endpoint
):
    cramped_store.room = 2 * PIECE - len(PREAMBLE) - 1000  # as on the tmpfs above

    refused = await post_chunked(http_client, f"{base_url}{endpoint}", 4 * 1024 * 1024)

    assert_out_of_space(refused, endpoint)
    assert temp_files(config) == [] and blob_files(config) == []


# -- a disk that turns read-only ------------------------------------------------------------

NOT_WRITABLE = "the file storage cannot be written just now; the file was not stored, retry later"


@pytest.mark.parametrize("endpoint", ["/api/upload", "/upload?api=1", "/api/tus/"])
@pytest.mark.gen_test
async def test_on_a_read_only_disk_an_upload_is_refused_in_its_format_without_a_traceback(
    small_disk, http_client, base_url, caplog, endpoint
):
    with small_disk.read_only():
        if endpoint == "/api/tus/":
            refused = await http_client.fetch(
                f"{base_url}{endpoint}",
                method="POST",
                body=b"",
                headers={"Tus-Resumable": "1.0.0", "Upload-Length": "1000"},
                raise_error=False,
            )
        else:
            refused = await upload(http_client, f"{base_url}{endpoint}")
    accepted = await upload(http_client, f"{base_url}/api/upload")

    if endpoint == "/upload?api=1":
        assert_refused(refused, endpoint, 503, NOT_WRITABLE)
    else:
        assert refused.code == 503
        assert json.loads(refused.body) == {"status": False, "error": NOT_WRITABLE}
    if endpoint != "/api/tus/":  # (tus's own answers set their headers themselves)
        assert refused.headers["Retry-After"] == "5"
    assert "Traceback" not in caplog.text and "Read-only file system" in caplog.text
    assert accepted.code == 200


@pytest.mark.gen_test(timeout=60)
async def test_a_tus_part_the_disk_cannot_take_is_a_507_and_logged_as_one(
    small_disk, http_client, base_url, config, access_log
):
    tus = {"Tus-Resumable": "1.0.0"}
    created = await http_client.fetch(
        f"{base_url}/api/tus/",
        method="POST",
        headers={**tus, "Upload-Length": str(6 * 1024 * 1024)},
        body=b"",
    )
    small_disk.fill(leave=1024 * 1024)

    refused = await http_client.fetch(
        created.headers["Location"],
        method="PATCH",
        headers={
            **tus,
            "Content-Type": "application/offset+octet-stream",
            "Upload-Offset": "0",
        },
        body=os.urandom(6 * 1024 * 1024),
        raise_error=False,
    )

    deadline = time.monotonic() + 10  # logged as the request ends: after its answer
    while "PATCH" not in access_log.text:
        assert time.monotonic() < deadline, "no PATCH in the access log"
        await asyncio.sleep(0.05)

    assert refused.code == 507
    (line,) = [line for line in access_log.text.splitlines() if "PATCH" in line]
    assert " 507 PATCH " in line
