"""Uploads over real HTTP: the answers the API page promises, bad input, streaming, races."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import gc
import hashlib
import json
import os
import resource
import signal
import socket

import pytest
from helpers import (
    assert_refused,
    blob_files,
    hold_writer,
    multipart_body,
    nothing,
    raw_exchange,
    streamed_upload,
    temp_files,
)

from hostd import db as queries
from hostd.handlers.upload import ApiUploadHandler, storage_failure
from hostd.hashes import public_hash_candidates

LIMIT = 8 * 1024 * 1024  # the config fixture's max_upload_bytes
# Each test with an app runs on both stores (conftest.pytest_generate_tests).
STORAGE_BACKENDS = ("local", "s3")


async def post(client, url, *, fields=None, files=None, headers=None):
    body, base_headers = multipart_body(fields, files)
    return await client.fetch(
        url,
        method="POST",
        body=body,
        headers={**base_headers, **(headers or {})},
        raise_error=False,
    )


async def post_streamed(client, url, producer, headers):
    """POST a body from a producer (see helpers.streamed_upload), never as one object."""
    return await client.fetch(
        url, method="POST", body_producer=producer, headers=headers, raise_error=False
    )


def live_handlers(app, kind):
    return [h for h in gc.get_objects() if isinstance(h, kind) and h.application is app]


def many_clients_one_address(app):
    """Clients that all come from 127.0.0.1 here, not past the per-address cap."""
    app.settings["hostd_config"] = dataclasses.replace(
        app.settings["hostd_config"], uploads_in_flight_per_address=1000
    )


def expected_hash(data: bytes) -> str:
    return public_hash_candidates(hashlib.sha256(data).hexdigest())[0]


# -- the answers ----------------------------------------------------------------------


@pytest.mark.gen_test
async def test_api_upload_answers_json_with_the_four_urls(http_client, base_url):
    response = await post(
        http_client, f"{base_url}/api/upload", files=[("file", "image.png", b"png!")]
    )

    assert response.code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    answer = json.loads(response.body)
    h = expected_hash(b"png!")
    assert answer.pop("delete_url").startswith(f"{base_url}/delete/")  # see test_deletion.py
    assert answer == {
        "hash": h,
        "status": True,
        "urls": {
            "base": f"{base_url}/",
            "full": f"{base_url}/{h}/image.png",
            "ext": f"{base_url}/{h}.png",
            "hash": f"{base_url}/{h}",
        },
        "expires_at": None,  # kept forever: no [retention] here
    }


@pytest.mark.gen_test
async def test_public_hash_is_url_safe_short_and_the_same_for_the_same_bytes(http_client, base_url):
    first = await post(http_client, f"{base_url}/api/upload", files=[("file", "a.txt", b"same")])
    second = await post(http_client, f"{base_url}/api/upload", files=[("file", "b.bin", b"same")])

    h1, h2 = json.loads(first.body)["hash"], json.loads(second.body)["hash"]
    assert h1 == h2
    assert 1 <= len(h1) <= 16
    assert all(c.isalnum() or c in "-_" for c in h1)


@pytest.mark.gen_test
async def test_full_url_quotes_the_filename(http_client, base_url):
    response = await post(
        http_client, f"{base_url}/api/upload", files=[("file", "my photo #1 ü.png", b"x")]
    )

    urls = json.loads(response.body)["urls"]
    assert urls["full"].endswith("/my%20photo%20%231%20%C3%BC.png")
    assert urls["ext"].endswith(".png")


@pytest.mark.gen_test
async def test_ext_url_falls_back_to_the_detected_type(http_client, base_url):
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 32

    response = await post(http_client, f"{base_url}/api/upload", files=[("file", "noext", png)])

    assert json.loads(response.body)["urls"]["ext"].endswith(".png")


@pytest.mark.parametrize("where", ["query", "form"])
@pytest.mark.gen_test
async def test_regular_url_with_api_1_answers_ok_hash(http_client, base_url, where):
    url = f"{base_url}/upload" + ("?api=1" if where == "query" else "")
    fields = {"api": "1"} if where == "form" else None

    response = await post(http_client, url, fields=fields, files=[("file", "x.txt", b"plain")])

    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.body.decode() == f"OK {expected_hash(b'plain')}\n"


@pytest.mark.gen_test
async def test_regular_url_with_api_1_answers_error_message(http_client, base_url):
    response = await post(http_client, f"{base_url}/upload?api=1", files=[("file", "x.txt", b"")])

    assert response.code == 400
    assert response.body.decode() == "ERROR the file is empty\n"


@pytest.mark.gen_test
async def test_a_post_to_the_root_answers_the_files_url_as_0x0_st_does(http_client, base_url, db):
    response = await post(http_client, f"{base_url}/", files=[("file", "shot.png", b"0x0 way")])

    assert response.code == 200
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.body.decode() == f"{base_url}/{expected_hash(b'0x0 way')}.png\n"
    assert response.headers["X-Delete-Url"].startswith(f"{base_url}/delete/")
    fetched = await http_client.fetch(response.body.decode().strip())
    assert fetched.body == b"0x0 way"
    (stored,) = await queries.all_uploads(db)
    assert stored.user_id is None


@pytest.mark.gen_test
async def test_a_post_to_the_root_takes_a_key_and_refuses_in_plain_text(
    http_client, base_url, db, make_api_key
):
    token = await make_api_key()

    keyed = await post(
        http_client,
        f"{base_url}/",
        files=[("file", "a.txt", b"keyed at the root")],
        headers={"Authorization": f"Bearer {token}"},
    )
    bad_key = await post(
        http_client,
        f"{base_url}/",
        files=[("file", "a.txt", b"bad key")],
        headers={"Authorization": "Bearer nonsense"},
    )
    empty = await post(http_client, f"{base_url}/", files=[("file", "a.txt", b"")])

    assert keyed.code == 200
    (stored,) = await queries.all_uploads(db)
    assert stored.user_id is not None
    assert bad_key.code == 401 and bad_key.body.decode().startswith("ERROR the API key")
    assert (empty.code, empty.body.decode()) == (400, "ERROR the file is empty\n")


@pytest.mark.gen_test
async def test_regular_url_without_api_answers_an_html_page_with_the_urls(http_client, base_url):
    response = await post(http_client, f"{base_url}/upload", files=[("file", "<b>.txt", b"html")])

    body = response.body.decode()
    h = expected_hash(b"html")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert f'href="{base_url}/{h}.txt"' in body
    assert "&lt;b&gt;.txt" in body and "<b>.txt" not in body


@pytest.mark.gen_test
async def test_upload_is_recorded_with_detected_type_and_original_name(http_client, base_url, db):
    gif = b"GIF89a" + b"\0" * 10

    await post(http_client, f"{base_url}/api/upload", files=[("file", "cat.jpg", gif)])

    blob = await queries.get_blob(db, expected_hash(gif))
    assert blob is not None
    assert blob.content_type == "image/gif"  # from the bytes, not from the name
    assert blob.size_bytes == len(gif)
    assert blob.sha256 == hashlib.sha256(gif).hexdigest()
    assert [u.original_name for u in await queries.all_uploads(db)] == ["cat.jpg"]


@pytest.mark.gen_test
async def test_public_url_setting_replaces_the_request_host(http_client, base_url, app):
    import dataclasses

    app.settings["hostd_config"] = dataclasses.replace(
        app.settings["hostd_config"], public_url="https://files.example.org"
    )

    response = await post(http_client, f"{base_url}/api/upload", files=[("file", "a.txt", b"a")])

    assert json.loads(response.body)["urls"]["base"] == "https://files.example.org/"


@pytest.mark.parametrize("trust_proxy", [False, True])
@pytest.mark.gen_test
async def test_forwarded_headers_count_only_when_the_proxy_is_trusted(
    http_client, base_url, app, trust_proxy
):
    import dataclasses

    app.settings["hostd_config"] = dataclasses.replace(
        app.settings["hostd_config"], trust_proxy=trust_proxy
    )
    headers = {"X-Forwarded-Host": "files.example.org", "X-Forwarded-Proto": "https"}

    response = await post(
        http_client, f"{base_url}/api/upload", files=[("file", "a.txt", b"a")], headers=headers
    )

    base = json.loads(response.body)["urls"]["base"]
    assert base.endswith("files.example.org/") is trust_proxy


# -- bad input -----------------------------------------------------------------------


@pytest.mark.gen_test
async def test_not_multipart_is_a_400_that_says_what_to_send(http_client, base_url):
    response = await http_client.fetch(
        f"{base_url}/api/upload",
        method="POST",
        body=b"hello",
        headers={"Content-Type": "text/plain"},
        raise_error=False,
    )

    assert response.code == 400
    assert json.loads(response.body) == {
        "status": False,
        "error": "expected multipart/form-data with a 'file' field, got text/plain",
    }


@pytest.mark.gen_test
async def test_missing_file_field_is_a_400(http_client, base_url):
    response = await post(
        http_client, f"{base_url}/api/upload", files=[("document", "a.txt", b"wrong field")]
    )

    assert response.code == 400
    assert "multipart field named 'file'" in json.loads(response.body)["error"]


@pytest.mark.gen_test
async def test_empty_file_is_a_400(http_client, base_url, config):
    response = await post(http_client, f"{base_url}/api/upload", files=[("file", "a.txt", b"")])

    assert response.code == 400
    assert json.loads(response.body)["error"] == "the file is empty"
    assert temp_files(config) == [] and blob_files(config) == []


@pytest.mark.parametrize(
    "body",
    [
        b"no boundary here at all",
        b'--hostd-test-boundary\r\nContent-Disposition: form-data; name="file"; '
        b'filename="a"\r\n\r\ntruncated before the closing boundary',
        b"--hostd-test-boundary\r\nthis header has no colon\r\n\r\ndata\r\n--hostd-test-boundary--",
        b"--hostd-test-boundary\r\nContent-Type: text/plain\r\n\r\nno disposition\r\n"
        b"--hostd-test-boundary--",
    ],
    ids=["no-boundary", "truncated", "bad-header", "no-disposition"],
)
@pytest.mark.gen_test
async def test_broken_multipart_is_a_400_and_leaves_nothing(http_client, base_url, config, body):
    response = await http_client.fetch(
        f"{base_url}/api/upload",
        method="POST",
        body=body,
        headers={"Content-Type": "multipart/form-data; boundary=hostd-test-boundary"},
        raise_error=False,
    )

    assert response.code == 400
    assert json.loads(response.body)["error"].startswith("malformed multipart body")
    assert temp_files(config) == [] and blob_files(config) == []


@pytest.mark.gen_test
async def test_boundary_missing_from_content_type_is_a_400(http_client, base_url):
    response = await http_client.fetch(
        f"{base_url}/api/upload",
        method="POST",
        body=b"x",
        headers={"Content-Type": "multipart/form-data"},
        raise_error=False,
    )

    assert response.code == 400
    assert "boundary" in json.loads(response.body)["error"]


@pytest.mark.parametrize(
    ("filename", "message"),
    [
        ("../../etc/passwd", "path parts"),
        ("dir/name.txt", "path parts"),
        ("..", "path parts"),
        ("bell\x07.txt", "control characters"),
        ("new\u2028line.txt", "control characters"),
        (b"caf\xe9.txt", "not valid UTF-8"),
        ("a" * 1000 + ".txt", "longer than 255 bytes"),
    ],
    ids=["traversal", "slash", "dotdot", "control", "line-separator", "latin1", "long"],
)
@pytest.mark.gen_test
async def test_hostile_filenames_are_refused_with_a_clear_message(
    http_client, base_url, config, filename, message
):
    response = await post(http_client, f"{base_url}/api/upload", files=[("file", filename, b"x")])

    assert response.code == 400
    assert message in json.loads(response.body)["error"]
    assert temp_files(config) == [] and blob_files(config) == []


@pytest.mark.gen_test
async def test_utf8_filename_is_kept(http_client, base_url, db):
    await post(http_client, f"{base_url}/api/upload", files=[("file", "日本語.txt", b"jp")])

    assert [u.original_name for u in await queries.all_uploads(db)] == ["日本語.txt"]


@pytest.mark.gen_test
async def test_two_files_in_one_request_are_refused(http_client, base_url):
    response = await post(
        http_client, f"{base_url}/api/upload", files=[("file", "a", b"1"), ("file", "b", b"2")]
    )

    assert response.code == 400
    assert "one file per request" in json.loads(response.body)["error"]


# -- size limit ----------------------------------------------------------------------


@pytest.mark.gen_test
async def test_content_length_over_the_limit_is_refused_before_the_body_is_read(
    http_client, base_url, config
):
    producer, headers, _ = streamed_upload(LIMIT + 1024 * 1024)
    sent = 0

    async def counting(write):
        nonlocal sent

        async def counted(data):
            nonlocal sent
            sent += len(data)
            await write(data)

        await producer(counted)

    headers["Expect"] = "100-continue"
    response = await http_client.fetch(
        f"{base_url}/api/upload",
        method="POST",
        body_producer=counting,
        headers=headers,
        raise_error=False,
        expect_100_continue=True,
    )

    assert response.code == 413
    assert "larger than the limit" in json.loads(response.body)["error"]
    assert sent == 0  # the server answered instead of asking for the body
    assert temp_files(config) == []


@pytest.mark.gen_test(timeout=40)
async def test_413_reaches_a_client_that_keeps_sending(http_server, http_port, config):
    size = LIMIT * 3
    head = (
        "POST /api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {size}\r\n\r\n"
    ).encode()

    answer = await raw_exchange(http_port, head, size)

    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"<reset>" not in answer
    assert b'"error": "the file is larger than the limit' in answer


@pytest.mark.gen_test(timeout=40)
async def test_plain_text_413_reaches_a_client_that_keeps_sending(http_server, http_port):
    size = LIMIT * 2
    head = (
        "POST /upload?api=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {size}\r\n\r\n"
    ).encode()

    answer = await raw_exchange(http_port, head, size)

    assert answer.startswith(b"HTTP/1.1 413 ")
    assert answer.endswith(b"\r\n\r\nERROR the file is larger than the limit of 8388608 bytes\n")


@pytest.mark.gen_test(timeout=40)
async def test_chunked_body_growing_past_the_limit_is_a_413_and_leaves_no_temp_file(
    http_client, base_url, config
):
    producer, headers, _ = streamed_upload(LIMIT + 256 * 1024)
    del headers["Content-Length"]  # chunked: the server only learns the size as it reads

    response = await post_streamed(http_client, f"{base_url}/api/upload", producer, headers)

    assert response.code == 413
    assert temp_files(config) == [] and blob_files(config) == []


@pytest.mark.gen_test(timeout=60)
async def test_a_file_of_exactly_the_limit_is_accepted(http_client, base_url, store):
    producer, headers, digest = streamed_upload(LIMIT)

    response = await post_streamed(http_client, f"{base_url}/api/upload", producer, headers)

    answer = json.loads(response.body)
    assert answer["status"] is True
    reader = await store.open(digest.hex())
    stored = hashlib.sha256()
    async for chunk in reader.chunks(0, LIMIT - 1):
        stored.update(chunk)
    reader.close()
    assert stored.digest() == digest


# -- streaming, disconnects and races --------------------------------------------------


@pytest.mark.local_storage
@pytest.mark.gen_test(timeout=60)
async def test_streamed_upload_lands_in_the_fanned_out_blob_path(
    http_client, base_url, config, store
):
    producer, headers, digest = streamed_upload(5 * 1024 * 1024 + 7)

    response = await post_streamed(http_client, f"{base_url}/api/upload", producer, headers)

    sha = digest.hex()
    assert json.loads(response.body)["hash"] == public_hash_candidates(sha)[0]
    assert blob_files(config) == [config.blobs_dir / sha[:2] / sha[2:4] / sha]
    assert store.path(sha).stat().st_size == 5 * 1024 * 1024 + 7
    assert temp_files(config) == []


@pytest.mark.local_storage  # the S3 case: tests/test_s3.py
@pytest.mark.gen_test(timeout=30)
async def test_client_vanishing_mid_upload_leaves_no_temp_file_and_no_row(
    http_server, http_port, config, db, app, access_log
):
    body_start = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n\r\n'
        + b"x" * 300_000
    )
    head = (
        "POST /api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {len(body_start) + 1_000_000}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", http_port))
    sock.sendall(head + body_start)
    for _ in range(100):  # wait until the server has a temp file open for it
        if temp_files(config):
            break
        await asyncio.sleep(0.02)
    assert temp_files(config), "the upload never started"

    sock.close()
    for _ in range(100):
        if not temp_files(config):
            break
        await asyncio.sleep(0.02)

    assert temp_files(config) == []
    assert blob_files(config) == []
    assert await queries.all_uploads(db) == []
    await asyncio.sleep(0.05)
    gc.collect()
    assert live_handlers(app, ApiUploadHandler) == []  # not left waiting for the rest of the body
    assert "499 POST /api/upload (127.0.0.1)" in access_log.text  # and the access log says so


@pytest.mark.gen_test(timeout=30)
async def test_a_client_gone_while_its_upload_waits_to_be_recorded_leaves_nothing(
    http_server, http_port, config, db
):
    release, busy = await hold_writer(db)
    body, headers = multipart_body(files=[("file", "w.bin", b"whole, but never recorded")])
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock = socket.create_connection(("127.0.0.1", http_port))
    request = f"POST /api/upload HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(body)}\r\n\r\n"
    sock.sendall(request.encode() + body)
    try:
        for _ in range(250):  # the whole body is in and its registration waits in line
            if db.waiting:
                break
            await asyncio.sleep(0.02)
        assert db.waiting == 1 and len(blob_files(config)) == 1

        sock.close()
        for _ in range(250):
            if not db.waiting:
                break
            await asyncio.sleep(0.02)
    finally:
        release()
        await busy
    await db.write(nothing)  # the writer has gone round again

    assert db.waiting == 0
    assert await queries.all_uploads(db) == []
    assert blob_files(config) == [] and temp_files(config) == []


@pytest.fixture
def file_size_limit():
    """Lower this process's RLIMIT_FSIZE, so that the disk refuses writes past it (EFBIG),
    as it would when it is full; SIGXFSZ is ignored so the write fails instead."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def lower(limit: int) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))

    yield lower
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, old_handler)


@pytest.mark.local_storage  # the S3 case: tests/test_s3.py
@pytest.mark.gen_test(timeout=60)
async def test_a_file_the_disk_refuses_is_a_clear_error_and_leaves_nothing(
    http_client, base_url, config, db, file_size_limit
):
    producer, headers, _ = streamed_upload(6 * 1024 * 1024)
    file_size_limit(2 * 1024 * 1024)

    response = await post_streamed(http_client, f"{base_url}/api/upload", producer, headers)

    assert response.code == 500
    assert json.loads(response.body) == {
        "status": False,
        "error": "the server could not store the file; it was not stored",
    }
    assert temp_files(config) == [] and blob_files(config) == []
    assert await queries.all_uploads(db) == []


def test_a_full_disk_is_reported_as_such():
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    assert storage_failure(full) == (
        507,
        "the server is out of storage space; the file was not stored",
    )


@pytest.mark.gen_test(timeout=60)
async def test_fifty_concurrent_uploads_of_the_same_bytes_give_one_hash_and_one_blob(
    http_client, base_url, config, db, app
):
    many_clients_one_address(app)
    data = os.urandom(200_000)

    responses = await asyncio.gather(
        *(
            post(http_client, f"{base_url}/api/upload", files=[("file", f"{i}.bin", data)])
            for i in range(50)
        )
    )

    assert {r.code for r in responses} == {200}
    assert {json.loads(r.body)["hash"] for r in responses} == {expected_hash(data)}
    assert len(blob_files(config)) == 1
    assert temp_files(config) == []
    assert len(await queries.all_uploads(db)) == 50


@pytest.mark.gen_test(timeout=120)
async def test_two_hundred_concurrent_different_uploads_all_come_back_byte_for_byte(
    http_client, base_url, config, db, app
):
    many_clients_one_address(app)
    payloads = [os.urandom(1000 + i * 97) for i in range(200)]
    commits_before = db.stats.commits

    responses = await asyncio.gather(
        *(
            post(http_client, f"{base_url}/api/upload", files=[("file", f"{i}.bin", data)])
            for i, data in enumerate(payloads)
        )
    )
    hashes = [json.loads(r.body)["hash"] for r in responses]
    downloads = await asyncio.gather(*(http_client.fetch(f"{base_url}/{h}") for h in hashes))

    assert [d.body for d in downloads] == payloads
    assert len(set(hashes)) == 200
    assert len(blob_files(config)) == 200
    commits = db.stats.commits - commits_before
    assert commits < 200, f"{commits} commits for 200 uploads: concurrent uploads share commits"


@pytest.mark.gen_test
async def test_get_on_an_upload_url_is_not_allowed(http_client, base_url):
    response = await http_client.fetch(f"{base_url}/api/upload", raise_error=False)

    assert response.code == 405


@pytest.mark.parametrize(
    ("method", "query", "body"),
    [("DELETE", "?api=1", None), ("PUT", "", b"x"), ("PATCH", "?api=1", b"x")],
)
@pytest.mark.gen_test
async def test_another_method_on_the_upload_url_is_told_how_it_takes_a_file(
    http_client, base_url, method, query, body
):
    response = await http_client.fetch(
        f"{base_url}/upload{query}", method=method, body=body, raise_error=False
    )

    assert_refused(
        response,
        f"/upload{query}",
        405,
        "Method Not Allowed: POST a multipart form with the file in a field named 'file'"
        " (curl -F file=@FILE); api=1 in the query string (or a form field before the file)"
        " answers in plain text",
    )
    assert response.headers["Allow"] == "POST, OPTIONS"


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/api/upload", {}),
        ("/upload?api=1", {}),
        ("/upload", {}),
        ("/upload", {"HX-Request": "true"}),
        ("/", {}),
    ],
)
@pytest.mark.gen_test
async def test_an_answer_that_carries_the_deletion_link_is_kept_by_no_cache(
    http_client, base_url, path, headers
):
    response = await post(
        http_client, f"{base_url}{path}", files=[("file", "a.txt", b"secret link")], headers=headers
    )

    assert response.code == 200
    assert "/delete/" in response.headers["X-Delete-Url"]
    assert response.headers["Cache-Control"] == "no-store"
