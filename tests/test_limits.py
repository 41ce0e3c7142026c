"""The limits that protect the box, over real HTTP: account quotas, the anonymous size limit,
the full-disk guard (on a real 20 MiB tmpfs, and with ENOSPC injected at the store) and the
upload rate budgets (on the injected clock). Each refusal says its numbers, and leaves
nothing behind."""

from __future__ import annotations

import asyncio
import dataclasses
import html
import json
import math
import os
import socket
import sqlite3
import textwrap

import pytest
from helpers import blob_files, multipart_body, run_cli, streamed_upload, temp_files, text_of

from hostd import db as queries
from hostd import uploads
from hostd.config import ConfigError, load_config
from hostd.db import Database
from hostd.db.core import SQLITE, migrations
from hostd.limits import LOW_ON_SPACE, DiskGuard
from hostd.throttle import UploadLimiter

KiB = 1024
MiB = 1024 * 1024
ENDPOINTS = ["/api/upload", "/upload?api=1", "/upload"]
OUT_OF_SPACE = "the server is out of storage space; the file was not stored"


@pytest.fixture
def config(config):
    # X-Real-IP names the client's address, so that one test can speak from several.
    return dataclasses.replace(config, trust_proxy=True)


@pytest.fixture
def make_key(db, auth):
    async def make(user):
        minted = await auth.mint_key()
        await queries.insert_api_key(
            db, user_id=user.id, key_id=minted.key_id, secret_hash=minted.secret_hash, label=""
        )
        return minted.token

    return make


async def upload(client, url, data=b"some bytes", *, headers=None, name="a.bin"):
    body, base = multipart_body(files=[("file", name, data)])
    return await client.fetch(
        url, method="POST", body=body, headers={**base, **(headers or {})}, raise_error=False
    )


async def streamed(client, url, size, *, chunked=False, headers=None, seed=b""):
    """A `size`-byte file sent in 64 KiB pieces; with chunked=True, without Content-Length.
    Returns (response, bytes of the body the client sent, the file's SHA-256)."""
    producer, base, digest = streamed_upload(size, seed=seed)
    if chunked:
        del base["Content-Length"]
    sent = 0

    async def counting(write):
        async def counted(data):
            nonlocal sent
            sent += len(data)
            await write(data)

        await producer(counted)

    # The client waits for "100 Continue", so a refusal can come before any of the body.
    response = await client.fetch(
        url,
        method="POST",
        body_producer=counting,
        headers={**base, **(headers or {}), "Expect": "100-continue"},
        expect_100_continue=True,
        raise_error=False,
    )
    return response, sent, digest


def error_of(response, endpoint="/api/upload"):
    """The refusal's message, whatever the endpoint's format."""
    body = response.body.decode()
    if endpoint == "/api/upload":
        answer = json.loads(body)
        assert answer["status"] is False
        return answer["error"]
    if endpoint.endswith("api=1"):
        assert body.startswith("ERROR ")
        return body.removeprefix("ERROR ").removesuffix("\n")
    assert response.headers["Content-Type"].startswith("text/html")
    return html.unescape(body)


def as_account(endpoint, signed_in, key):
    """Headers that make an upload to `endpoint` the account's: its key for /api/upload
    (which ignores cookies), its session elsewhere."""
    if endpoint == "/api/upload":
        return {"Authorization": f"Bearer {key}"}
    return signed_in.headers


async def used_bytes(db, user):
    return (await queries.get_user(db, id=user.id)).used_bytes


# -- quotas ---------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_a_file_over_the_account_quota_is_a_413_with_the_numbers_and_nothing_is_kept(
    http_client, base_url, config, db, login, limit
):
    limit(quota_bytes=200 * KiB)
    user = await login()
    first = await upload(
        http_client, f"{base_url}/upload?api=1", os.urandom(150 * KiB), headers=user.headers
    )

    # Chunked: the size is known only once the body has ended.
    refused, _, _ = await streamed(
        http_client, f"{base_url}/upload?api=1", 60 * KiB, chunked=True, headers=user.headers
    )

    assert first.code == 200
    assert refused.code == 413
    assert error_of(refused, "/upload?api=1") == (
        f"this file ({60 * KiB} bytes) does not fit in your account's quota:"
        f" {150 * KiB} of {200 * KiB} bytes used, {50 * KiB} left; delete files on /files to"
        " make room"
    )
    assert len(blob_files(config)) == 1 and temp_files(config) == []
    assert len(await queries.all_uploads(db)) == 1
    assert await used_bytes(db, user.user) == 150 * KiB


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.gen_test(timeout=30)
async def test_a_content_length_over_the_quota_is_refused_before_the_body_is_read(
    http_client, base_url, config, db, login, make_key, limit, endpoint
):
    limit(quota_bytes=1 * MiB)
    user = await login()
    headers = as_account(endpoint, user, await make_key(user.user))
    length = int(streamed_upload(2 * MiB)[1]["Content-Length"])

    refused, sent, _ = await streamed(
        http_client, f"{base_url}{endpoint}", 2 * MiB, headers=headers
    )

    assert refused.code == 413
    assert sent == 0  # answered instead of asking for the body
    assert (
        f"this upload ({length} bytes) does not fit in your account's quota: 0 of {MiB} bytes"
        f" used, {MiB} left; delete files on /files to make room"
    ) in error_of(refused, endpoint)
    assert temp_files(config) == [] and await queries.all_uploads(db) == []


@pytest.mark.parametrize("waits", [True, False], ids=["waits-for-100-continue", "sent-at-once"])
@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.gen_test
async def test_a_short_body_over_the_quota_is_refused_unsent_only_if_the_client_waits(
    http_client, base_url, config, db, login, make_key, limit, endpoint, waits
):
    # Up to QUOTA_AFTER_BODY_BYTES, reading a body already on its way costs less than the
    # database read that would refuse it first; recording the upload refuses it then.
    limit(quota_bytes=100 * KiB)
    user = await login()
    headers = as_account(endpoint, user, await make_key(user.user))
    url = f"{base_url}{endpoint}"

    if waits:
        refused, sent, _ = await streamed(http_client, url, 300 * KiB, headers=headers)
    else:
        refused, sent = await upload(http_client, url, os.urandom(300 * KiB), headers=headers), None

    assert refused.code == 413
    if waits:
        assert sent == 0
        assert "does not fit in your account's quota" in error_of(refused, endpoint)
    else:
        assert (
            f"this file ({300 * KiB} bytes) does not fit in your account's quota: 0 of"
            f" {100 * KiB} bytes used, {100 * KiB} left; delete files on /files to make room"
        ) in error_of(refused, endpoint)
    assert blob_files(config) == [] and temp_files(config) == []
    assert await queries.all_uploads(db) == []
    assert await used_bytes(db, user.user) == 0


@pytest.mark.gen_test
async def test_an_account_whose_quota_is_used_up_is_refused_before_a_chunked_body(
    http_client, base_url, db, login, make_key, limit
):
    limit(quota_bytes=100 * KiB)
    user = await login()
    key = await make_key(user.user)
    await upload(
        http_client,
        f"{base_url}/api/upload",
        os.urandom(100 * KiB),
        headers={"Authorization": f"Bearer {key}"},
    )

    refused, sent, _ = await streamed(
        http_client,
        f"{base_url}/api/upload",
        1 * MiB,
        chunked=True,
        headers={"Authorization": f"Bearer {key}"},
    )

    assert refused.code == 413
    assert error_of(refused) == (
        f"your account's quota is used up: {100 * KiB} of {100 * KiB} bytes used;"
        " delete files on /files to make room"
    )
    assert sent == 0


@pytest.mark.gen_test(timeout=60)
async def test_concurrent_uploads_of_one_account_stop_exactly_at_its_quota(
    http_client, base_url, config, db, login, make_key, limit
):
    limit(quota_bytes=5 * 100 * KiB, uploads_in_flight_per_address=64)  # all from 127.0.0.1
    user = await login()
    key = await make_key(user.user)
    headers = {"Authorization": f"Bearer {key}"}

    answers = await asyncio.gather(
        *(
            upload(http_client, f"{base_url}/api/upload", os.urandom(100 * KiB), headers=headers)
            for _ in range(12)
        )
    )

    codes = sorted(a.code for a in answers)
    assert codes == [200] * 5 + [413] * 7
    assert await used_bytes(db, user.user) == 5 * 100 * KiB
    assert len(await queries.all_uploads(db)) == 5
    assert len(blob_files(config)) == 5  # the refused files' bytes are gone


@pytest.mark.gen_test
async def test_use_is_the_sum_of_the_uploads_and_deleting_one_gives_its_size_back(
    http_client, base_url, db, store, app, login, limit
):
    limit(quota_bytes=MiB)
    user = await login()
    data = os.urandom(300 * KiB)
    url = f"{base_url}/upload?api=1"

    for _ in range(2):  # the same bytes twice: stored once, counted twice
        assert (await upload(http_client, url, data, headers=user.headers)).code == 200
    twice = await used_bytes(db, user.user)
    third = await upload(http_client, url, os.urandom(500 * KiB), headers=user.headers)
    first, second = await queries.all_uploads(db)
    deleted = await http_client.fetch(
        f"{base_url}/files/{first.id}", method="DELETE", headers=user.headers
    )
    once = await used_bytes(db, user.user)
    await uploads.take_down(db, store, app.settings["hostd_thumbs"], sha256=second.sha256)

    assert twice == 600 * KiB
    assert third.code == 413  # 600 KiB + 500 KiB > 1 MiB
    assert deleted.code == 200
    assert once == 300 * KiB
    assert await used_bytes(db, user.user) == 0


@pytest.mark.gen_test
async def test_an_accounts_own_quota_overrides_the_default_and_none_lifts_it(
    http_client, base_url, db, login, limit
):
    limit(quota_bytes=10 * KiB)
    user = await login()
    url = f"{base_url}/upload?api=1"
    data = os.urandom(50 * KiB)

    held = await upload(http_client, url, data, headers=user.headers)
    await queries.set_quota(db, user_id=user.user.id, own=True, quota_bytes=100 * KiB)
    own = await upload(http_client, url, data, headers=user.headers)
    await queries.set_quota(db, user_id=user.user.id, own=True, quota_bytes=None)
    unlimited = await upload(http_client, url, os.urandom(2 * MiB), headers=user.headers)
    await queries.set_quota(db, user_id=user.user.id, own=False, quota_bytes=None)
    default_again = await upload(http_client, url, b"x", headers=user.headers)

    assert held.code == 413
    assert own.code == 200
    assert unlimited.code == 200
    assert default_again.code == 413


@pytest.mark.gen_test
async def test_the_quota_migration_counts_what_accounts_uploaded_before_it(tmp_path):
    # A database as the release before quotas left it: raw SQL, as that release wrote it.
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    for number, sql in migrations(SQLITE):
        if number < 7:
            old.executescript(sql)
            old.execute(f"PRAGMA user_version = {number}")
    old.execute("INSERT INTO users (id, name, password_hash, created_at) VALUES (1, 'old', '', 0)")
    for sha256, size in (("a" * 64, 100), ("b" * 64, 50)):
        old.execute(
            "INSERT INTO blobs (sha256, hash, size_bytes, content_type, created_at)"
            " VALUES (?, ?, ?, 'text/plain', 0)",
            (sha256, sha256[:12], size),
        )
    for sha256, user_id in (("a" * 64, 1), ("a" * 64, 1), ("b" * 64, 1), ("b" * 64, None)):
        old.execute(
            "INSERT INTO uploads (sha256, original_name, created_at, user_id)"
            " VALUES (?, 'f', 0, ?)",
            (sha256, user_id),
        )
    old.commit()
    old.close()

    database = await Database.open(path)
    try:
        user = await queries.get_user(database, id=1)
    finally:
        await database.close()

    assert user.used_bytes == 250  # its three uploads; the anonymous one is nobody's


@pytest.mark.gen_test
async def test_the_files_page_shows_use_against_quota(http_client, base_url, login, limit):
    limit(quota_bytes=4 * MiB)
    user = await login()
    await upload(http_client, f"{base_url}/upload?api=1", os.urandom(MiB), headers=user.headers)

    page = await http_client.fetch(f"{base_url}/files", headers=user.headers)
    fragment = await http_client.fetch(
        f"{base_url}/files", headers={**user.headers, "HX-Request": "true"}
    )

    for body in (page.body.decode(), fragment.body.decode()):
        assert "Using 1.0 MiB of your 4.0 MiB quota" in body
        assert f'<meter min="0" max="{4 * MiB}" value="{MiB}"' in body


# -- the anonymous limit --------------------------------------------------------------------


@pytest.mark.gen_test
async def test_the_upload_page_states_the_limit_of_whoever_reads_it(
    http_client, base_url, limit, login
):
    """The page checks a file's size before sending it: with the reader's own limit."""
    limit(anonymous_max_upload_bytes=MiB)
    alice = await login()

    signed_out = await http_client.fetch(f"{base_url}/")
    signed_in = await http_client.fetch(f"{base_url}/", headers=alice.headers)

    assert f'data-max-bytes="{MiB}"' in signed_out.body.decode()
    assert "Up to 1.0 MiB per file while signed out (8.0 MiB with an account)." in text_of(
        signed_out.body
    )
    assert f'data-max-bytes="{8 * MiB}"' in signed_in.body.decode()
    assert "Up to 8.0 MiB per file." in text_of(signed_in.body)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.gen_test(timeout=30)
async def test_an_anonymous_content_length_over_its_limit_is_refused_before_the_body(
    http_client, base_url, config, limit, endpoint
):
    limit(anonymous_max_upload_bytes=MiB)

    refused, sent, _ = await streamed(http_client, f"{base_url}{endpoint}", 2 * MiB)

    assert refused.code == 413
    assert sent == 0
    message = error_of(refused, endpoint)
    assert f"anonymous uploads may be at most {MiB} bytes, and this upload's body is " in message
    assert f"use an API key to upload up to {8 * MiB} bytes" in message
    assert temp_files(config) == []


@pytest.mark.parametrize("chunked", [False, True], ids=["Content-Length", "chunked"])
@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.gen_test(timeout=30)
async def test_an_anonymous_body_over_every_limit_is_told_the_anonymous_one(
    http_client, base_url, config, limit, endpoint, chunked
):
    """Also past max_upload_bytes, the accounts' limit, whichever check stops it."""
    limit(anonymous_max_upload_bytes=MiB)

    refused, _, _ = await streamed(http_client, f"{base_url}{endpoint}", 9 * MiB, chunked=chunked)

    assert refused.code == 413
    message = error_of(refused, endpoint)
    this = "this file is larger" if chunked else "this upload's body is "
    assert f"anonymous uploads may be at most {MiB} bytes, and {this}" in message
    assert f"use an API key to upload up to {8 * MiB} bytes" in message
    assert temp_files(config) == []


@pytest.mark.gen_test(timeout=30)
async def test_an_anonymous_chunked_body_over_its_limit_is_stopped_while_streaming(
    http_client, base_url, config, db, limit
):
    limit(anonymous_max_upload_bytes=MiB)

    refused, sent, _ = await streamed(http_client, f"{base_url}/api/upload", 4 * MiB, chunked=True)
    fits = await upload(http_client, f"{base_url}/api/upload", os.urandom(MiB))

    assert refused.code == 413
    assert error_of(refused) == (
        f"anonymous uploads may be at most {MiB} bytes, and this file is larger; sign in or"
        f" use an API key to upload up to {8 * MiB} bytes"
    )
    assert temp_files(config) == [] and len(blob_files(config)) == 1
    assert fits.code == 200


@pytest.mark.gen_test(timeout=30)
async def test_accounts_are_not_held_to_the_anonymous_limit(http_client, base_url, login, limit):
    limit(anonymous_max_upload_bytes=MiB)
    user = await login()

    response, _, _ = await streamed(
        http_client, f"{base_url}/upload?api=1", 3 * MiB, headers=user.headers
    )

    assert response.code == 200


# -- the full-disk guard: a real 20 MiB tmpfs (storage.min_free_bytes: 5% of it, 1 MiB) ------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.gen_test(timeout=30)
async def test_an_upload_whose_content_length_would_cross_the_line_is_a_507_before_its_body(
    small_disk, http_client, base_url, config, endpoint
):
    small_disk.fill(leave=3 * MiB)  # 2 MiB above the line

    refused, sent, _ = await streamed(http_client, f"{base_url}{endpoint}", 2 * MiB + 100 * KiB)
    fits, _, _ = await streamed(http_client, f"{base_url}{endpoint}", 1 * MiB)

    assert refused.code == 507
    assert sent == 0
    assert LOW_ON_SPACE in error_of(refused, endpoint)
    assert temp_files(config) == [] and len(blob_files(config)) == 1
    assert fits.code == 200


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.gen_test(timeout=60)
async def test_an_upload_that_crosses_the_line_while_streaming_is_stopped_and_cleaned_up(
    small_disk, http_client, base_url, config, db, endpoint
):
    small_disk.fill(leave=3 * MiB)
    url = f"{base_url}{endpoint}"

    refused, sent, _ = await streamed(http_client, url, 4 * MiB, chunked=True, seed=b"big")
    left = temp_files(config), blob_files(config), await queries.all_uploads(db)
    free_after = small_disk.free_bytes()
    small_disk.empty()
    again, _, digest = await streamed(http_client, url, 4 * MiB, chunked=True, seed=b"big")

    assert refused.code == 507  # the whole answer: a reset would fail the fetch
    assert LOW_ON_SPACE in error_of(refused, endpoint)
    assert left == ([], [], [])
    assert free_after >= 2 * MiB  # stopped near the line, long before the disk was full
    assert again.code == 200
    assert [p.name for p in blob_files(config)] == [digest.hex()]


@pytest.mark.gen_test(timeout=30)
async def test_downloads_go_on_while_the_disk_is_full_and_uploads_come_back_when_freed(
    small_disk, http_client, base_url, config
):
    data = os.urandom(512 * KiB)
    stored = json.loads((await upload(http_client, f"{base_url}/api/upload", data)).body)
    small_disk.fill()

    download = await http_client.fetch(stored["urls"]["ext"])
    refused = await upload(http_client, f"{base_url}/api/upload", b"more bytes")
    chunked, _, _ = await streamed(http_client, f"{base_url}/api/upload", MiB, chunked=True)
    small_disk.empty()
    accepted = await upload(http_client, f"{base_url}/api/upload", b"more bytes")

    assert download.code == 200 and download.body == data
    assert refused.code == 507 and error_of(refused) == LOW_ON_SPACE
    assert chunked.code == 507 and error_of(chunked) == LOW_ON_SPACE
    assert accepted.code == 200
    assert temp_files(config) == []


def start_upload(port, length, sent=300 * KiB):
    """A raw client that declares `length` bytes of body, sends `sent` of them and waits."""
    body_start = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n\r\n'
        + b"x" * sent
    )
    head = (
        "POST /api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(head + body_start)
    return sock


async def until(condition):
    for _ in range(250):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("never happened")


@pytest.mark.gen_test(timeout=30)
async def test_uploads_in_flight_count_against_the_line_and_give_it_back_when_they_go(
    small_disk, http_client, base_url, http_port, app, config
):
    small_disk.fill(leave=4 * MiB)  # 3 MiB above the line: room for one 2 MiB file, not two
    guard = app.settings["hostd_limits"].guard

    first = start_upload(http_port, 2 * MiB)
    await until(lambda: guard.promised > 0)
    second, sent, _ = await streamed(http_client, f"{base_url}/api/upload", 2 * MiB)
    first.close()  # the first client vanishes: its reservation goes with it
    await until(lambda: guard.promised == 0)
    again, _, _ = await streamed(http_client, f"{base_url}/api/upload", 2 * MiB)

    assert second.code == 507 and sent == 0
    assert again.code == 200
    assert temp_files(config) == []


def test_the_line_is_1_gib_or_5_percent_of_the_filesystem_whichever_is_smaller(tmp_path):
    def filesystem(total_bytes):
        blocks = total_bytes // 4096
        fields = (4096, 4096, blocks, blocks, blocks, 0, 0, 0, 0, 255)
        return lambda path: os.statvfs_result(fields)

    small = DiskGuard(tmp_path, None, statvfs=filesystem(20 * MiB))
    big = DiskGuard(tmp_path, None, statvfs=filesystem(1024 * 1024 * MiB))  # 1 TiB
    chosen = DiskGuard(tmp_path, 5 * MiB, statvfs=filesystem(1024 * 1024 * MiB))

    assert small.min_free_bytes == MiB
    assert big.min_free_bytes == 1024 * MiB
    assert chosen.min_free_bytes == 5 * MiB


@pytest.mark.gen_test(timeout=60)
async def test_free_space_is_measured_per_upload_and_every_few_mib_not_per_chunk(
    http_client, base_url, app, config
):
    measures = []

    def statvfs(path):
        measures.append(path)
        return os.statvfs(path)

    app.settings["hostd_limits"].guard = DiskGuard(config.data_dir, None, statvfs=statvfs)

    response, sent, _ = await streamed(http_client, f"{base_url}/api/upload", 8 * MiB, chunked=True)

    assert response.code == 200
    assert sent // (64 * KiB) >= 128  # the client's pieces
    assert 1 <= len(measures) <= 3  # at the start, then at most every 4 MiB


# -- the full-disk guard with ENOSPC injected at the store: the guard sees room, the disk
#    says no; the 507 still comes, and the upload gives back what it reserved -------------


@pytest.mark.parametrize("room", [0, 300 * KiB])
@pytest.mark.gen_test(timeout=60)
async def test_enospc_at_the_store_is_a_507_that_leaves_nothing_and_frees_the_reservation(
    http_client, base_url, app, config, cramped_store, room
):
    cramped_store.room = room
    guard = app.settings["hostd_limits"].guard

    refused, _, _ = await streamed(http_client, f"{base_url}/api/upload", 2 * MiB)
    promised_after = guard.promised
    cramped_store.room = 4 * MiB
    accepted, _, _ = await streamed(http_client, f"{base_url}/api/upload", 2 * MiB)

    assert refused.code == 507 and error_of(refused) == OUT_OF_SPACE
    assert temp_files(config) == [] and len(blob_files(config)) == 1
    assert promised_after == 0
    assert accepted.code == 200
    assert guard.promised == 0


# -- rate budgets (the app's throttles run on the `clock` fixture) ---------------------------


def at(address, **headers):
    return {"X-Real-IP": address, **headers}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.gen_test
async def test_uploads_past_the_per_minute_budget_get_a_429_with_retry_after(
    http_client, base_url, clock, limit, endpoint
):
    limit(uploads_per_minute=3)
    url = f"{base_url}{endpoint}"

    first = [
        await upload(http_client, url, f"n{i}".encode(), headers=at("192.0.2.1")) for i in range(3)
    ]
    refused = await upload(http_client, url, b"n3", headers=at("192.0.2.1"))
    elsewhere = await upload(http_client, url, b"n4", headers=at("192.0.2.2"))
    clock.advance(19)
    early = await upload(http_client, url, b"n5", headers=at("192.0.2.1"))
    clock.advance(1)
    later = await upload(http_client, url, b"n6", headers=at("192.0.2.1"))

    assert [r.code for r in first] == [200] * 3
    assert refused.code == 429
    assert refused.headers["Retry-After"] == "20"  # one upload back every 60/3 s
    assert (
        "too many uploads: at most 3 a minute from one address or API key; try again in 20 s"
        in (error_of(refused, endpoint))
    )
    assert elsewhere.code == 200
    assert early.code == 429 and early.headers["Retry-After"] == "1"
    assert later.code == 200


@pytest.mark.gen_test
async def test_a_key_has_its_own_budget_wherever_it_is_used_from(
    http_client, base_url, login, make_key, limit
):
    limit(uploads_per_minute=2)
    key = await make_key((await login()).user)
    url = f"{base_url}/api/upload"
    bearer = {"Authorization": f"Bearer {key}"}

    one = await upload(http_client, url, b"1", headers=at("192.0.2.1", **bearer))
    two = await upload(http_client, url, b"2", headers=at("192.0.2.2", **bearer))
    three = await upload(http_client, url, b"3", headers=at("192.0.2.3", **bearer))
    anonymous = await upload(http_client, url, b"4", headers=at("192.0.2.3"))

    assert (one.code, two.code) == (200, 200)
    assert three.code == 429 and three.headers["Retry-After"] == "30"
    assert anonymous.code == 200  # the address had budget left; the key did not


@pytest.mark.gen_test(timeout=30)
async def test_the_hourly_byte_budget_refuses_a_content_length_it_has_no_room_for(
    http_client, base_url, clock, config, limit
):
    limit(upload_bytes_per_hour=MiB)
    url = f"{base_url}/api/upload"

    length = int(streamed_upload(600 * KiB)[1]["Content-Length"])
    first, _, _ = await streamed(http_client, url, 600 * KiB, headers=at("192.0.2.1"))
    refused, sent, _ = await streamed(http_client, url, 600 * KiB, headers=at("192.0.2.1"))
    wait = int(refused.headers["Retry-After"])
    clock.advance(wait - 1)
    early, _, _ = await streamed(http_client, url, 600 * KiB, headers=at("192.0.2.1"))
    clock.advance(1)
    later, _, _ = await streamed(http_client, url, 600 * KiB, headers=at("192.0.2.1"))

    assert first.code == 200
    assert refused.code == 429 and sent == 0
    assert error_of(refused) == (
        f"too much uploaded: at most {MiB} bytes an hour from one address or API key;"
        f" try again in {wait} s"
    )
    # Room for the second body must come back at 1 MiB an hour: about 10 minutes.
    assert wait == math.ceil((2 * length - MiB) * 3600 / MiB)
    assert early.code == 429
    assert later.code == 200


@pytest.mark.gen_test(timeout=30)
async def test_a_chunked_body_past_the_hourly_byte_budget_is_stopped_while_streaming(
    http_client, base_url, config, db, limit
):
    limit(upload_bytes_per_hour=MiB)

    refused, _, _ = await streamed(
        http_client, f"{base_url}/api/upload", 4 * MiB, chunked=True, headers=at("192.0.2.1")
    )

    assert refused.code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert error_of(refused).startswith(f"too much uploaded: at most {MiB} bytes an hour")
    assert temp_files(config) == [] and blob_files(config) == []
    assert await queries.all_uploads(db) == []


@pytest.mark.gen_test(timeout=30)
async def test_refused_uploads_cost_none_of_the_hourly_byte_budget(
    http_client, base_url, clock, limit
):
    """Only bytes taken in count: a 413 from the head, or a resumable part refused for the
    budget, leaves it as it was, and the wait it is told does not grow with each retry."""
    limit(upload_bytes_per_hour=200_000, anonymous_max_upload_bytes=100_000)
    tus = {"Tus-Resumable": "1.0.0", **at("192.0.2.1")}
    part = {**tus, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}
    urls = [
        (
            await http_client.fetch(
                f"{base_url}/api/tus/",
                method="POST",
                headers={**tus, "Upload-Length": "90000"},
                body=b"",
            )
        ).headers["Location"]
        for _ in range(3)
    ]
    too_big, sent, _ = await streamed(
        http_client, f"{base_url}/api/upload", 170_000, headers=at("192.0.2.1")
    )

    parts = [
        await http_client.fetch(
            url, method="PATCH", headers=part, body=os.urandom(90_000), raise_error=False
        )
        for url in (urls[0], urls[1], urls[2], urls[2])
    ]
    clock.advance(int(parts[2].headers["Retry-After"]))
    retried = await http_client.fetch(
        urls[2], method="PATCH", headers=part, body=os.urandom(90_000), raise_error=False
    )

    assert too_big.code == 413 and sent == 0
    assert [p.code for p in parts] == [204, 204, 429, 429]
    # 20,000 bytes left: 70,000 more come back at 200,000 an hour in 1,260 s, each time.
    assert parts[2].headers["Retry-After"] == parts[3].headers["Retry-After"] == "1260"
    assert retried.code == 204


@pytest.mark.gen_test
async def test_a_content_length_over_the_whole_hourly_budget_is_a_413(http_client, base_url, limit):
    limit(upload_bytes_per_hour=100 * KiB)

    refused, sent, _ = await streamed(http_client, f"{base_url}/api/upload", 200 * KiB)

    assert refused.code == 413 and sent == 0
    assert "bytes an hour that one address or API key may upload" in error_of(refused)


def test_the_budgets_forget_the_least_recently_used_past_their_bound():
    budgets = UploadLimiter(per_minute=1, bytes_per_hour=None, max_entries=100, clock=lambda: 0.0)

    waits = [budgets.start([f"addr:10.0.{i // 256}.{i % 256}"], None) for i in range(1000)]
    again = budgets.start(["addr:10.0.3.231"], None)  # the last one: still remembered

    assert all(w == (0.0, 0.0) for w in waits)
    assert len(budgets) == 100
    assert again[0] == 60.0


# -- configuration and the command line: bad input is refused and changes nothing -----------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[accounts]\nquota_bytes = -1\n", "accounts.quota_bytes must be at least 0"),
        ("[accounts]\nquota_bytes = '1G'\n", "accounts.quota_bytes must be int"),
        ("[storage]\nmin_free_bytes = -5\n", "storage.min_free_bytes must be at least 0"),
        ("[limits]\nuploads_per_minute = 0\n", "limits.uploads_per_minute must be at least 1"),
        ("[limits]\nupload_bytes_per_hour = 0\n", "limits.upload_bytes_per_hour must be at"),
        (
            "[limits]\nanonymous_max_upload_bytes = 0\n",
            "limits.anonymous_max_upload_bytes must be at least 1",
        ),
        (
            "[limits]\nmax_upload_bytes = 100\nanonymous_max_upload_bytes = 200\n",
            "limits.anonymous_max_upload_bytes (200) must not be more than"
            " limits.max_upload_bytes (100)",
        ),
    ],
)
def test_limit_mistakes_stop_the_start_and_name_the_key(tmp_path, text, message):
    path = tmp_path / "hostd.toml"
    path.write_text(text)

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert message in str(caught.value)


def test_every_limit_is_read(tmp_path):
    path = tmp_path / "hostd.toml"
    path.write_text(
        textwrap.dedent(
            """
            [storage]
            min_free_bytes = 0
            [limits]
            anonymous_max_upload_bytes = 1000
            uploads_per_minute = 10
            upload_bytes_per_hour = 5000
            [accounts]
            quota_bytes = 0
            """
        )
    )

    config = load_config(path)

    assert (config.min_free_bytes, config.quota_bytes) == (0, 0)
    assert config.anonymous_max_upload_bytes == 1000
    assert (config.uploads_per_minute, config.upload_bytes_per_hour) == (10, 5000)


def test_hostd_user_quota_shows_sets_and_clears_an_accounts_quota(tmp_path, monkeypatch, capsys):
    data = ["--data-dir", str(tmp_path / "d")]
    monkeypatch.chdir(tmp_path)  # no ./hostd.toml: the defaults (no quota)
    run_cli(
        capsys,
        "user",
        "add",
        "alice",
        "--password-stdin",
        *data,
        stdin=b"long enough\n",
    )

    shown = run_cli(capsys, "user", "quota", "alice", *data)
    set_ = run_cli(capsys, "user", "quota", "alice", "1048576", *data)
    none = run_cli(capsys, "user", "quota", "alice", "none", *data)
    default = run_cli(capsys, "user", "quota", "alice", "default", *data)

    assert shown == (
        0,
        "alice: quota none, accounts.quota_bytes\nalice: using 0 bytes (0 bytes)\n",
        "",
    )
    assert set_[0] == 0
    assert set_[1].startswith("alice: quota 1048576 bytes (1.0 MiB), its own\n")
    assert none[1].startswith("alice: quota none, its own\n")
    assert default[1].startswith("alice: quota none, accounts.quota_bytes\n")


@pytest.mark.parametrize("value", ["-1", "1G", "1.5", "99999999999999999999"])
def test_hostd_user_quota_refuses_what_is_not_a_quota_and_changes_nothing(
    tmp_path, monkeypatch, capsys, value
):
    data = ["--data-dir", str(tmp_path / "d")]
    monkeypatch.chdir(tmp_path)
    run_cli(capsys, "user", "add", "bob", "--password-stdin", *data, stdin=b"long enough\n")
    run_cli(capsys, "user", "quota", "bob", "5000", *data)

    code, _, err = run_cli(capsys, "user", "quota", "bob", value, *data)
    after = run_cli(capsys, "user", "quota", "bob", *data)

    assert code == 2  # an argument it cannot read
    assert "a quota is a whole number of bytes" in err
    assert after[1].startswith("bob: quota 5000 bytes")


def test_hostd_user_quota_for_nobody_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_cli(capsys, "db", "migrate", "--data-dir", str(tmp_path / "d"))

    code, _, err = run_cli(
        capsys, "user", "quota", "nobody", "5", "--data-dir", str(tmp_path / "d")
    )

    assert code == 1 and "there is no user 'nobody'" in err
