"""Resumable uploads (tus 1.0.0) at /api/tus/: the protocol over HTTP against the app in
this process, and tuspy (a real tus client) against a real `hostd serve`, stopped and
broken off mid-way."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import email.utils
import fcntl
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from helpers import hostd, multipart_body, partial_files, start
from tornado.simple_httpclient import HTTPStreamClosedError
from tusclient import client as tus_client
from tusclient.exceptions import TusCommunicationError

from hostd import db as queries
from hostd import resumable
from hostd.app import prune_now_and_then
from hostd.db import sqlite as sqlite_backend
from hostd.handlers import tus
from hostd.hashes import public_hash_candidates

# The finished file goes into whichever blob store there is: each test runs on both.
STORAGE_BACKENDS = ("local", "s3")
TUS = {"Tus-Resumable": "1.0.0"}
LIMIT = 128 * 1024 * 1024  # the served hostd's max_upload_bytes
OCTETS = {**TUS, "Content-Type": "application/offset+octet-stream"}


def metadata(**pairs: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in pairs.items())


def public_hash(data: bytes) -> str:
    return public_hash_candidates(hashlib.sha256(data).hexdigest())[0]


def unique_bytes(size: int) -> bytes:
    block = hashlib.sha256(os.urandom(16)).digest() * 2048  # 64 KiB, different each call
    return (block * (size // len(block) + 1))[:size]


async def create(client, base_url, length, *, headers=None, meta="", body=None):
    response = await client.fetch(
        f"{base_url}/api/tus/",
        method="POST",
        headers={
            **TUS,
            "Upload-Length": str(length),
            "Upload-Metadata": meta or metadata(filename="big.bin"),
            **({"Content-Type": "application/offset+octet-stream"} if body is not None else {}),
            **(headers or {}),
        },
        body=body if body is not None else b"",
        raise_error=False,
        allow_nonstandard_methods=True,
    )
    return response


async def patch(client, url, offset, data, *, headers=None):
    return await client.fetch(
        url,
        method="PATCH",
        headers={**OCTETS, "Upload-Offset": str(offset), **(headers or {})},
        body=data,
        raise_error=False,
    )


async def head(client, url, *, headers=None):
    return await client.fetch(
        url, method="HEAD", headers={**TUS, **(headers or {})}, raise_error=False
    )


async def new_key(db, auth, user) -> str:
    minted = await auth.mint_key()
    await queries.insert_api_key(
        db, user_id=user.id, key_id=minted.key_id, secret_hash=minted.secret_hash, label="t"
    )
    return minted.token


# -- the protocol, in this process --------------------------------------------------------


@pytest.mark.gen_test
async def test_options_advertises_the_protocol_and_its_limits(http_client, base_url, config):
    response = await http_client.fetch(f"{base_url}/api/tus/", method="OPTIONS")

    assert response.code == 204
    assert response.headers["Tus-Version"] == "1.0.0"
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert set(response.headers["Tus-Extension"].split(",")) == {
        "creation",
        "creation-with-upload",
        "termination",
        "expiration",
        "checksum",
    }
    assert response.headers["Tus-Max-Size"] == str(config.max_upload_bytes)
    assert response.headers["Tus-Checksum-Algorithm"] == "sha256"


@pytest.mark.gen_test
async def test_an_upload_in_two_parts_is_registered_like_any_other(
    http_client, base_url, config, wall_clock
):
    data = unique_bytes(300_000)
    created = await create(http_client, base_url, len(data), meta=metadata(filename="two.bin"))
    url = created.headers["Location"]

    first = await patch(http_client, url, 0, data[:100_000])
    last = await patch(http_client, url, 100_000, data[100_000:])

    assert created.code == 201 and url.startswith(f"{base_url}/api/tus/")
    assert created.headers["Upload-Offset"] == "0"
    assert first.code == 204 and first.headers["Upload-Offset"] == "100000"
    assert "Upload-Info" not in first.headers
    assert last.code == 204 and last.headers["Upload-Offset"] == str(len(data))
    info = json.loads(last.headers["Upload-Info"])
    assert info["status"] is True and info["hash"] == public_hash(data)
    assert info["urls"]["full"] == f"{base_url}/{info['hash']}/two.bin"
    assert last.headers["X-Delete-Url"] == info["delete_url"]
    fetched = await http_client.fetch(info["urls"]["hash"])
    assert fetched.body == data
    assert partial_files(config) == []  # the partial file went once the upload was stored
    # The same answer again, for a client that lost it:
    again = await head(http_client, url)
    assert again.code == 200 and json.loads(again.headers["Upload-Info"]) == info
    assert again.headers["Upload-Offset"] == again.headers["Upload-Length"] == str(len(data))
    got = json.loads((await http_client.fetch(url, headers=TUS)).body)
    assert got["complete"] is True and got["hash"] == info["hash"]
    assert got["delete_url"] == info["delete_url"]


@pytest.mark.gen_test
async def test_the_access_log_does_not_hold_an_uploads_url(http_client, base_url, access_log):
    created = await create(http_client, base_url, 1000)
    id = created.headers["Location"].rsplit("/", 1)[1]

    await patch(http_client, created.headers["Location"], 0, b"x" * 10)
    await head(http_client, created.headers["Location"])

    not_allowed = await http_client.fetch(
        created.headers["Location"], method="POST", body=b"", headers=TUS, raise_error=False
    )

    assert id not in access_log.text
    assert access_log.text.count(f"/api/tus/{id[:6]}...") == 3
    assert not_allowed.code == 405 and f"405 POST /api/tus/{id[:6]}..." in access_log.text


@pytest.mark.gen_test
async def test_a_url_past_an_uploads_is_a_json_404_that_does_not_log_the_id(
    http_client, base_url, access_log
):
    created = await create(http_client, base_url, 1000)
    id = created.headers["Location"].rsplit("/", 1)[1]

    slashed = await head(http_client, created.headers["Location"] + "/")
    deeper = await patch(http_client, created.headers["Location"] + "/x", 0, b"x")

    assert slashed.code == 404 and deeper.code == 404
    assert json.loads(deeper.body) == {
        "status": False,
        "error": "There is nothing at this address.",
    }
    assert id not in access_log.text
    assert f"404 PATCH /api/tus/{id[:6]}..." in access_log.text


@pytest.mark.gen_test
async def test_the_same_bytes_get_the_same_hash_as_a_multipart_upload(http_client, base_url):
    data = unique_bytes(70_000)
    body, headers = multipart_body(files=[("file", "same.bin", data)])
    plain = json.loads(
        (
            await http_client.fetch(
                f"{base_url}/api/upload", method="POST", body=body, headers=headers
            )
        ).body
    )

    created = await create(http_client, base_url, len(data), body=data)

    info = json.loads(created.headers["Upload-Info"])
    assert created.code == 201 and created.headers["Upload-Offset"] == str(len(data))
    assert info["hash"] == plain["hash"] == public_hash(data)
    assert info["delete_url"] != plain["delete_url"]  # two uploads of one file


@pytest.mark.gen_test
async def test_a_wrong_offset_is_a_409_and_changes_nothing(http_client, base_url):
    created = await create(http_client, base_url, 1000)
    url = created.headers["Location"]
    await patch(http_client, url, 0, b"a" * 100)

    behind = await patch(http_client, url, 0, b"b" * 100)
    ahead = await patch(http_client, url, 500, b"c" * 100)

    assert behind.code == ahead.code == 409
    assert (await head(http_client, url)).headers["Upload-Offset"] == "100"


@pytest.mark.gen_test
async def test_a_file_over_the_limit_is_a_413_and_leaves_nothing(http_client, base_url, config):
    too_big = await create(http_client, base_url, config.max_upload_bytes + 1)
    created = await create(http_client, base_url, 1000)
    too_long = await patch(http_client, created.headers["Location"], 0, b"x" * 1001)

    assert too_big.code == 413 and "limit" in json.loads(too_big.body)["error"]
    assert too_long.code == 413
    assert (await head(http_client, created.headers["Location"])).headers["Upload-Offset"] == "0"
    assert partial_files(config) == [created.headers["Location"].rsplit("/", 1)[1]]


def anonymous_refusal(size: int) -> str:
    return (
        f"anonymous uploads may be at most 1000 bytes, and this file is {size} bytes; sign in"
        " or use an API key to upload up to 8388608 bytes"
    )


@pytest.mark.parametrize("body", [None, b"x" * 100], ids=["creation", "creation-with-upload"])
@pytest.mark.gen_test
async def test_an_anonymous_upload_over_the_anonymous_limit_is_a_413_at_creation(
    http_client, base_url, config, db, login, auth, limit, body
):
    limit(anonymous_max_upload_bytes=1000)
    key = await new_key(db, auth, (await login()).user)

    refused = await create(http_client, base_url, 1001, body=body)
    keyed = await create(
        http_client, base_url, 1001, body=body, headers={"Authorization": f"Bearer {key}"}
    )

    assert refused.code == 413
    assert json.loads(refused.body) == {"status": False, "error": anonymous_refusal(1001)}
    assert keyed.code == 201
    assert partial_files(config) == [keyed.headers["Location"].rsplit("/", 1)[1]]


@pytest.mark.gen_test
async def test_an_anonymous_upload_begun_under_a_higher_limit_is_held_to_todays(
    http_client, base_url, config, db, limit
):
    """An admin who lowers anonymous_max_upload_bytes: parts and the registration of an
    upload begun before are refused, as its creation would be now."""
    data = unique_bytes(2000)
    resumed_url = (await create(http_client, base_url, len(data))).headers["Location"]
    finished_url = (await create(http_client, base_url, len(data))).headers["Location"]
    finished_id = finished_url.rsplit("/", 1)[1]
    # As a server that stopped between the last part's offset and the registration leaves it:
    (config.data_dir / "partials" / finished_id).write_bytes(data)
    await queries.update_resumable_offset(db, id=finished_id, offset_bytes=len(data))
    limit(anonymous_max_upload_bytes=1000)

    part = await patch(http_client, resumed_url, 0, data[:500])
    finished = await head(http_client, finished_url)

    assert part.code == 413
    assert json.loads(part.body) == {"status": False, "error": anonymous_refusal(2000)}
    assert (await head(http_client, resumed_url)).headers["Upload-Offset"] == "0"
    assert finished.code == 413
    assert (await head(http_client, finished_url)).code == 404
    assert partial_files(config) == [resumed_url.rsplit("/", 1)[1]]
    assert [p for p in config.blobs_dir.rglob("*") if p.is_file()] == []


@pytest.mark.gen_test
async def test_answers_that_carry_the_deletion_link_are_kept_by_no_cache(http_client, base_url):
    data = unique_bytes(1000)
    created = await create(http_client, base_url, len(data))
    url = created.headers["Location"]

    last = await patch(http_client, url, 0, data)
    replayed = await http_client.fetch(url, headers=TUS)

    assert "delete_url" in json.loads(last.headers["Upload-Info"])
    assert "delete_url" in json.loads(replayed.body)
    assert last.headers["Cache-Control"] == replayed.headers["Cache-Control"] == "no-store"


@pytest.mark.gen_test
async def test_a_part_must_be_sent_as_offset_octet_stream(http_client, base_url):
    created = await create(http_client, base_url, 1000)

    response = await patch(
        http_client,
        created.headers["Location"],
        0,
        b"x" * 10,
        headers={"Content-Type": "application/octet-stream"},
    )

    assert response.code == 415


@pytest.mark.gen_test
async def test_a_part_with_no_bytes_answers_where_the_upload_stands(http_client, base_url):
    created = await create(http_client, base_url, 1000)
    await patch(http_client, created.headers["Location"], 0, b"x" * 10)

    response = await patch(http_client, created.headers["Location"], 10, b"")

    assert response.code == 204
    assert response.headers["Upload-Offset"] == "10"


@pytest.mark.gen_test
async def test_requests_without_the_tus_version_are_a_412(http_client, base_url):
    response = await http_client.fetch(
        f"{base_url}/api/tus/",
        method="POST",
        headers={"Upload-Length": "10"},
        body=b"",
        raise_error=False,
    )

    assert response.code == 412 and response.headers["Tus-Version"] == "1.0.0"


@pytest.mark.parametrize("version", ["{}", "0.2.2", "1.0", "2.0.0"])
@pytest.mark.parametrize("method", ["POST", "HEAD", "GET", "PATCH", "DELETE"])
@pytest.mark.gen_test
async def test_any_other_tus_version_is_a_412_that_names_the_one_spoken(
    http_client, base_url, method, version
):
    created = await create(http_client, base_url, 10)
    url = f"{base_url}/api/tus/" if method == "POST" else created.headers["Location"]
    headers = {"Upload-Length": "10", "Upload-Offset": "0", "Tus-Resumable": version}

    response = await http_client.fetch(
        url,
        method=method,
        headers=headers,
        body=b"" if method in ("POST", "PATCH") else None,
        raise_error=False,
    )

    assert response.code == 412 and response.headers["Tus-Version"] == "1.0.0"
    if method != "HEAD":
        assert json.loads(response.body)["status"] is False


@pytest.mark.parametrize("method", ["HEAD", "GET", "PATCH", "DELETE"])
@pytest.mark.parametrize("id", ["%C2%84", "%FF", "a.b", "q" * 65, "%2F"])
@pytest.mark.gen_test
async def test_an_id_hostd_never_makes_is_a_404_in_json_like_an_unknown_one(
    http_client, base_url, method, id
):
    """Whatever the last path segment, the answer is the tus endpoint's own, not a page."""
    answers = [
        await http_client.fetch(
            f"{base_url}/api/tus/{segment}",
            method=method,
            headers={**OCTETS, "Upload-Offset": "0"},
            body=b"" if method == "PATCH" else None,
            raise_error=False,
        )
        for segment in (id, "q" * 32)
    ]

    for response in answers:
        assert response.code == 404, response.body
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        assert response.headers["Tus-Resumable"] == "1.0.0"
    if method != "HEAD":
        assert json.loads(answers[0].body) == json.loads(answers[1].body)


@pytest.mark.gen_test
async def test_another_accounts_key_gets_a_404(http_client, base_url, login, db, auth, config):
    owner, other = (await login()).user, (await login()).user
    mine, theirs = await new_key(db, auth, owner), await new_key(db, auth, other)
    created = await create(http_client, base_url, 1000, headers={"Authorization": f"Bearer {mine}"})
    url = created.headers["Location"]

    foreign = {"Authorization": f"Bearer {theirs}"}
    answers = [
        (await head(http_client, url, headers=foreign)).code,
        (await patch(http_client, url, 0, b"x" * 10, headers=foreign)).code,
        (
            await http_client.fetch(
                url, method="DELETE", headers={**TUS, **foreign}, raise_error=False
            )
        ).code,
        (await head(http_client, url)).code,  # anonymous
    ]

    assert answers == [404, 404, 404, 404]
    mine_head = await head(http_client, url, headers={"Authorization": f"Bearer {mine}"})
    assert mine_head.code == 200 and mine_head.headers["Upload-Offset"] == "0"


@pytest.mark.gen_test
async def test_a_keyed_upload_is_the_keys_accounts(http_client, base_url, login, db, auth):
    user = (await login()).user
    key = {"Authorization": f"Bearer {await new_key(db, auth, user)}"}
    data = unique_bytes(5000)

    created = await create(http_client, base_url, len(data), headers=key, body=data)

    assert created.code == 201
    files, _ = await queries.list_user_files(db, user_id=user.id, limit=10)
    assert [f.blob.hash for f in files] == [json.loads(created.headers["Upload-Info"])["hash"]]


@pytest.mark.gen_test
async def test_a_session_counts_only_with_the_pages_xsrf_token(http_client, base_url, login, db):
    signed_in = await login()
    cookie_only = {"Cookie": signed_in.cookie}
    bad_token = {**signed_in.headers, "X-XSRFToken": "not-the-token"}

    anonymous = await create(http_client, base_url, 10, headers=cookie_only, body=b"0123456789")
    refused = await create(http_client, base_url, 10, headers=bad_token, body=b"abcdefghij")
    page = await create(http_client, base_url, 10, headers=signed_in.headers, body=b"ABCDEFGHIJ")

    assert anonymous.code == 201 and refused.code == 403 and page.code == 201
    files, _ = await queries.list_user_files(db, user_id=signed_in.user.id, limit=10)
    assert [f.blob.hash for f in files] == [json.loads(page.headers["Upload-Info"])["hash"]]


@pytest.mark.gen_test
async def test_a_second_writer_ends_the_first_and_is_asked_to_retry(http_client, base_url):
    created = await create(http_client, base_url, 1_000_000)
    url = created.headers["Location"]
    sent, hold = asyncio.Event(), asyncio.Event()

    async def stalled_body(write):
        await write(b"a" * 100_000)
        sent.set()
        await hold.wait()

    first = asyncio.ensure_future(
        http_client.fetch(
            url,
            method="PATCH",
            headers={**OCTETS, "Upload-Offset": "0", "Content-Length": "1000000"},
            body_producer=stalled_body,
            raise_error=False,
        )
    )
    await sent.wait()

    second = await patch(http_client, url, 0, b"b" * 10)
    hold.set()
    with pytest.raises(HTTPStreamClosedError):
        await first  # the server ended it
    deadline = time.monotonic() + 10
    retried = second
    while retried.code in (409, 423) and time.monotonic() < deadline:  # as a tus client does
        await asyncio.sleep(0.01)
        offset = int((await head(http_client, url)).headers["Upload-Offset"])
        retried = await patch(http_client, url, offset, b"c" * 10)

    assert second.code == 423 and second.headers["Retry-After"] == "1"
    assert retried.code == 204
    assert int(retried.headers["Upload-Offset"]) in (10, 100_010)  # the first's bytes kept


@pytest.mark.gen_test
async def test_a_partial_file_has_one_writer_whichever_process_opens_it(tmp_path):
    # A lock on the file, so that two hostd processes on one data dir never write one
    # upload at once (flock: each open of the file is its own holder, as another process).
    (tmp_path / "id").write_bytes(b"")
    first = resumable.PartFile(tmp_path / "id", 0)
    await first.open()

    with pytest.raises(resumable.PartialBusy):
        await resumable.PartFile(tmp_path / "id", 0).open()
    await first.close()
    second = resumable.PartFile(tmp_path / "id", 0)
    await second.open()
    await second.close()


@pytest.mark.gen_test
async def test_termination_removes_the_partial_upload(http_client, base_url, config):
    created = await create(http_client, base_url, 1000)
    url = created.headers["Location"]
    await patch(http_client, url, 0, b"x" * 500)

    deleted = await http_client.fetch(url, method="DELETE", headers=TUS, raise_error=False)

    assert deleted.code == 204
    assert (await head(http_client, url)).code == 404
    assert partial_files(config) == []


@pytest.mark.gen_test
async def test_a_part_that_fails_its_checksum_is_a_460_and_is_dropped(http_client, base_url):
    created = await create(http_client, base_url, 1000)
    url = created.headers["Location"]
    part = b"y" * 400
    good = "sha256 " + base64.b64encode(hashlib.sha256(part).digest()).decode()
    bad = "sha256 " + base64.b64encode(hashlib.sha256(b"other").digest()).decode()

    mismatch = await patch(http_client, url, 0, part, headers={"Upload-Checksum": bad})
    offset_after_mismatch = (await head(http_client, url)).headers["Upload-Offset"]
    unknown = await patch(http_client, url, 0, part, headers={"Upload-Checksum": "md5 AAAA"})
    matched = await patch(http_client, url, 0, part, headers={"Upload-Checksum": good})

    assert mismatch.code == 460 and offset_after_mismatch == "0"
    assert unknown.code == 400
    assert matched.code == 204 and matched.headers["Upload-Offset"] == "400"


@pytest.mark.gen_test
async def test_an_owner_has_a_bounded_number_of_unfinished_uploads(http_client, base_url, app):
    app.settings["hostd_config"] = dataclasses.replace(
        app.settings["hostd_config"], resumable_in_flight=2
    )

    answers = [(await create(http_client, base_url, 100)).code for _ in range(3)]

    assert answers == [201, 201, 429]


@pytest.mark.gen_test
async def test_unfinished_uploads_count_against_the_quota(http_client, base_url, login, db, auth):
    user = (await login()).user
    await queries.set_quota(db, user_id=user.id, own=True, quota_bytes=1500)
    key = {"Authorization": f"Bearer {await new_key(db, auth, user)}"}

    first = await create(http_client, base_url, 1000, headers=key)
    second = await create(http_client, base_url, 1000, headers=key)

    assert first.code == 201
    assert second.code == 413 and "quota" in json.loads(second.body)["error"]


@pytest.mark.gen_test
async def test_parallel_creations_meet_the_quota_one_after_the_other(
    http_client, base_url, login, db, auth
):
    user = (await login()).user
    await queries.set_quota(db, user_id=user.id, own=True, quota_bytes=1_000_000)
    key = {"Authorization": f"Bearer {await new_key(db, auth, user)}"}

    answers = await asyncio.gather(
        *(create(http_client, base_url, 300_000, headers=key) for _ in range(12))
    )

    assert sorted(answer.code for answer in answers) == [201] * 3 + [413] * 9


@pytest.mark.gen_test
async def test_anonymous_tus_follows_allow_anonymous(http_client, base_url, app):
    app.settings["hostd_config"] = dataclasses.replace(
        app.settings["hostd_config"], allow_anonymous=False
    )

    response = await create(http_client, base_url, 100)

    assert response.code == 401


@pytest.mark.gen_test
async def test_expired_partial_uploads_are_gone_and_the_periodic_task_removes_them(
    http_client, base_url, app, db, store, config, wall_clock
):
    created = await create(http_client, base_url, 1000)
    url = created.headers["Location"]
    await patch(http_client, url, 0, b"z" * 300)
    expires = created.headers["Upload-Expires"]

    wall_clock.advance(config.resumable_hours * 3600)
    late = await patch(http_client, url, 300, b"z" * 300)
    # A round reads the clock for the resumable uploads, then again for the other ones.
    reads, partials_done = [], asyncio.Event()

    def round_clock() -> float:
        reads.append(1)
        if len(reads) == 2:
            partials_done.set()
        return wall_clock()

    sweeping = asyncio.ensure_future(
        prune_now_and_then(
            db,
            store,
            app.settings["hostd_thumbs"],
            clock=round_clock,
            partials=app.settings["hostd_partials"],
        )
    )
    await asyncio.wait_for(partials_done.wait(), 10)
    sweeping.cancel()

    assert expires == email.utils.formatdate(int(wall_clock()), usegmt=True)
    assert late.code == 410
    assert partial_files(config) == []
    assert (await head(http_client, url)).code == 404


async def expired_partial_upload(http_client, base_url, config, wall_clock) -> str:
    """The URL of a resumable upload begun, and expired an hour ago by the real clock."""
    wall_clock.now = float(int(time.time()) - (config.resumable_hours + 1) * 3600)
    created = await create(http_client, base_url, 1000)
    url = created.headers["Location"]
    assert (await patch(http_client, url, 0, b"z" * 300)).code == 204
    wall_clock.now = float(int(time.time()))
    return url


@pytest.mark.gen_test
async def test_hostd_prune_removes_expired_resumable_uploads_and_their_files(
    http_client, base_url, config, wall_clock, tmp_path
):
    url = await expired_partial_upload(http_client, base_url, config, wall_clock)
    data = ["--data-dir", str(config.data_dir)]

    dry = hostd("prune", "--dry-run", *data, cwd=tmp_path)
    left = partial_files(config)
    done = hostd("prune", "--json", *data, cwd=tmp_path)

    assert dry.returncode == 0 and len(left) == 1
    assert "prune: would remove 1 expired resumable upload and their partial files" in dry.stderr
    assert done.returncode == 0 and json.loads(done.stdout)["resumable_uploads"] == 1
    assert "prune: removed 1 expired resumable upload" in done.stderr
    assert partial_files(config) == []
    assert (await head(http_client, url)).code == 404


@pytest.mark.gen_test
async def test_a_resumable_upload_another_process_is_writing_is_left_for_the_next_round(
    http_client, base_url, db, app, config, wall_clock
):
    await expired_partial_upload(http_client, base_url, config, wall_clock)
    (name,) = partial_files(config)
    partials = app.settings["hostd_partials"]
    now = int(time.time())

    with partials.path(name).open("rb") as held:  # a request in another hostd holds its lock
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        while_held = await resumable.prune(db, partials, now=now)
        still = partial_files(config)
    after = await resumable.prune(db, partials, now=now)

    assert while_held == 0 and still == [name]
    assert after == 1 and partial_files(config) == []


@pytest.mark.gen_test
async def test_partial_files_no_upload_names_are_removed_after_an_hour(db, app, config):
    partials = app.settings["hostd_partials"]
    (config.data_dir / "partials" / "left-by-a-crash").write_bytes(b"x")

    young = await resumable.prune(db, partials, now=int(time.time()))
    old = await resumable.prune(
        db, partials, now=int(time.time()), clock=lambda: time.time() + 3600
    )

    assert young == old == 0
    assert partial_files(config) == []


@pytest.mark.gen_test
async def test_a_banned_file_is_refused_at_its_last_byte_and_leaves_nothing(
    http_client, base_url, db, config
):
    data = unique_bytes(4000)
    await queries.insert_ban(db, sha256=hashlib.sha256(data).hexdigest(), reason="spam")
    created = await create(http_client, base_url, len(data))
    url = created.headers["Location"]

    first = await patch(http_client, url, 0, data[:1000])
    last = await patch(http_client, url, 1000, data[1000:])

    assert first.code == 204
    assert last.code == 451 and "spam" in json.loads(last.body)["error"]
    assert (await head(http_client, url)).code == 404
    assert partial_files(config) == []
    assert [p for p in config.blobs_dir.rglob("*") if p.is_file()] == []


@pytest.mark.gen_test
async def test_an_upload_whose_last_part_was_recorded_but_not_stored_is_stored_on_the_next_head(
    http_client, base_url, app, db, config
):
    data = unique_bytes(2000)
    created = await create(http_client, base_url, len(data))
    url = created.headers["Location"]
    id = url.rsplit("/", 1)[1]
    # As a server that stopped between the last part's offset and the registration leaves it:
    (config.data_dir / "partials" / id).write_bytes(data)
    await queries.update_resumable_offset(db, id=id, offset_bytes=len(data))

    response = await head(http_client, url)

    assert response.code == 200
    assert json.loads(response.headers["Upload-Info"])["hash"] == public_hash(data)
    assert partial_files(config) == []


@pytest.mark.gen_test
async def test_once_its_file_is_deleted_the_upload_is_gone(http_client, base_url):
    data = unique_bytes(3000)
    created = await create(http_client, base_url, len(data), body=data)
    info = json.loads(created.headers["Upload-Info"])

    await http_client.fetch(info["delete_url"], method="POST", body=b"")
    response = await head(http_client, created.headers["Location"])

    assert response.code == 410


# -- a busy database, a disk that fails or fills: the upload is given back, and resumes ------

MiB = 1024 * 1024


@pytest.fixture
def short_busy_timeout(monkeypatch):
    """A write that meets another program's lock fails after 0.2 s, not 5 (name it before
    the app's fixtures: the connection takes it when it opens)."""
    monkeypatch.setattr(sqlite_backend, "BUSY_TIMEOUT_MS", 200)


async def put(client, base_url, data):
    return await client.fetch(
        f"{base_url}/api/upload/plain.bin", method="PUT", body=data, raise_error=False
    )


@pytest.mark.sqlite_only
@pytest.mark.gen_test
async def test_a_part_whose_offset_cannot_be_recorded_is_a_503_and_the_upload_resumes(
    short_busy_timeout, http_client, base_url, sqlite_lock, limit
):
    limit(uploads_in_flight_per_address=1)
    created = await create(http_client, base_url, 1000)
    url = created.headers["Location"]
    await patch(http_client, url, 0, b"a" * 100)
    sqlite_lock.take()  # another program holds the lock as the part ends

    refused = await patch(http_client, url, 100, b"b" * 300)
    sqlite_lock.give_back()
    offset = (await head(http_client, url)).headers["Upload-Offset"]
    resumed = await patch(http_client, url, 100, b"b" * 300)
    plain = await put(http_client, base_url, b"the address's one place in flight")

    assert refused.code == 503 and refused.headers["Retry-After"] == "5"
    assert json.loads(refused.body)["status"] is False
    assert offset == "100"
    assert resumed.code == 204 and resumed.headers["Upload-Offset"] == "400"
    assert plain.code == 200


@pytest.mark.gen_test(timeout=30)
async def test_a_part_whose_file_cannot_be_opened_is_a_503_and_gives_everything_back(
    small_disk, http_client, base_url, limit, caplog
):
    limit(uploads_in_flight_per_address=1)
    # Room for a 7 MiB part and then a 6 MiB file above the guard's line (1 MiB), but not
    # for both at once.
    small_disk.fill(leave=12 * MiB)
    data = unique_bytes(7 * MiB)
    created = await create(http_client, base_url, len(data))
    url = created.headers["Location"]

    with small_disk.read_only():
        refused = await patch(http_client, url, 0, data)
    plain = await put(http_client, base_url, unique_bytes(6 * MiB))
    resumed = await patch(http_client, url, 0, data[:MiB])

    assert refused.code == 503 and refused.headers["Retry-After"] == "5"
    assert json.loads(refused.body) == {"status": False, "error": tus.NOT_WRITTEN}
    assert "Traceback" not in caplog.text and "Read-only file system" in caplog.text
    assert plain.code == 200  # the part's place in flight and on the disk were given back
    assert resumed.code == 204 and resumed.headers["Upload-Offset"] == str(MiB)


@pytest.mark.gen_test(timeout=30)
async def test_a_part_that_fills_the_disk_is_a_507_and_leaves_the_disk_as_it_found_it(
    small_disk, http_client, base_url, limit
):
    limit(min_free_bytes=0)  # the disk itself runs out, not the guard's line
    data = unique_bytes(4 * MiB)
    created = await create(http_client, base_url, len(data))
    url = created.headers["Location"]
    await patch(http_client, url, 0, data[:MiB])
    # The disk runs out a page before the end of a piece of the body: the kernel takes that
    # write in part (make_server hands a body over in pieces of 256 KiB).
    small_disk.fill(leave=MiB - 4096)

    refused = await patch(http_client, url, MiB, data[MiB:])
    offset = int((await head(http_client, url)).headers["Upload-Offset"])
    free = small_disk.free_bytes()
    small_disk.empty()
    resumed = await patch(http_client, url, offset, data[offset:])

    assert refused.code == 507
    assert offset == MiB  # what was recorded before; the part's bytes went again
    assert free == MiB - 4096
    assert resumed.code == 204
    assert json.loads(resumed.headers["Upload-Info"])["hash"] == public_hash(data)


# -- tuspy against a real `hostd serve` ---------------------------------------------------


@dataclass
class Served:
    """A `hostd serve` process on a fixed port and data dir, which a test may restart."""

    root: Path
    port: int
    proc: subprocess.Popen[str] | None = None
    reader: threading.Thread | None = None
    log: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = ["serve", "--config", "hostd.toml", "--data-dir", "data", "--port", str(self.port)]
        self.proc = start(args, self.root)
        listening = threading.Event()
        proc = self.proc

        def drain() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.log.append(line)
                if "listening on" in line:
                    listening.set()
            listening.set()

        self.reader = threading.Thread(target=drain, daemon=True)
        self.reader.start()
        assert listening.wait(30) and proc.poll() is None, "".join(self.log)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        status = self.proc.wait(30)
        assert self.reader is not None and self.proc.stdout is not None
        self.reader.join(10)
        self.proc.stdout.close()
        self.proc = None
        assert status == 0, "".join(self.log)

    def cli(self, *args: str, stdin: str | None = None) -> str:
        done = hostd(
            *args, "--config", "hostd.toml", "--data-dir", "data", cwd=self.root, stdin=stdin
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def key(self) -> str:
        name = f"u{os.urandom(4).hex()}"
        self.cli("user", "add", name, "--password-stdin", stdin="correct horse battery\n")
        return self.cli("key", "create", name).strip().splitlines()[-1].split()[-1]


@pytest.fixture
def served(tmp_path: Path, free_port: int) -> Iterator[Served]:
    (tmp_path / "hostd.toml").write_text(
        f"[server]\nshutdown_grace_seconds = 0\n[limits]\nmax_upload_bytes = {LIMIT}\n"
    )
    server = Served(tmp_path, free_port)
    server.start()
    yield server
    if server.proc is not None:
        server.stop()
    assert "Traceback" not in "".join(server.log), "".join(server.log)


def tus_uploader(base_url: str, data: bytes, *, key: str | None = None, url: str | None = None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    client = tus_client.TusClient(f"{base_url}/api/tus/", headers=headers)
    return client.uploader(
        file_stream=io.BytesIO(data),
        chunk_size=1024 * 1024,
        metadata={"filename": "tuspy.bin", "filetype": "application/octet-stream"},
        url=url,
    )


def info_of(url: str, key: str | None = None) -> dict:
    headers = {**TUS, **({"Authorization": f"Bearer {key}"} if key else {})}
    response = requests.head(url, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return json.loads(response.headers["Upload-Info"])


def test_tuspy_uploads_a_file_that_downloads_with_its_hash(served):
    key = served.key()
    data = unique_bytes(5 * 1024 * 1024 + 123)

    uploader = tus_uploader(served.base_url, data, key=key)
    uploader.upload()

    info = info_of(uploader.url, key)
    assert info["hash"] == public_hash(data)
    downloaded = requests.get(info["urls"]["hash"], timeout=30)
    assert hashlib.sha256(downloaded.content).digest() == hashlib.sha256(data).digest()


def test_a_connection_cut_mid_part_resumes_from_what_arrived(served):
    data = unique_bytes(3 * 1024 * 1024)
    created = requests.post(
        f"{served.base_url}/api/tus/",
        headers={
            **TUS,
            "Upload-Length": str(len(data)),
            "Upload-Metadata": metadata(filename="cut.bin"),
        },
        timeout=30,
    )
    url = created.headers["Location"]
    path = url.split("127.0.0.1", 1)[1].split("/", 1)[1]
    cut_at = 2 * 1024 * 1024 + 17

    # One PATCH of the whole file, whose connection dies after cut_at bytes of it.
    raw_patch(served.port, f"/{path}", len(data), data[:cut_at]).close()
    offset = 0
    deadline = time.monotonic() + 30
    while offset < cut_at and time.monotonic() < deadline:  # until the server has noticed
        offset = int(requests.head(url, headers=TUS, timeout=30).headers["Upload-Offset"])
    uploader = tus_uploader(served.base_url, data, url=url)
    resumed_from = uploader.get_offset()
    uploader.upload()

    assert resumed_from == cut_at
    assert info_of(url)["hash"] == public_hash(data)


def raw_patch(port: int, path: str, total: int, data: bytes) -> socket.socket:
    """A PATCH of `total` bytes from offset 0 whose first `data` is sent; left open."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        (
            f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
            "Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
            f"Content-Length: {total}\r\n\r\n"
        ).encode()
        + data
    )
    return sock


def test_a_part_still_arriving_when_the_server_stops_is_kept(served):
    data = unique_bytes(resumable.CHECKPOINT_BYTES + 16 * 1024 * 1024)
    created = requests.post(
        f"{served.base_url}/api/tus/",
        headers={**TUS, "Upload-Length": str(len(data)), "Upload-Metadata": metadata()},
        timeout=30,
    )
    url = created.headers["Location"]
    sent = resumable.CHECKPOINT_BYTES + 8 * 1024 * 1024
    with raw_patch(served.port, url.split(str(served.port), 1)[1], len(data), data[:sent]):
        offset = 0
        deadline = time.monotonic() + 60
        while offset < resumable.CHECKPOINT_BYTES and time.monotonic() < deadline:
            offset = int(requests.head(url, headers=TUS, timeout=30).headers["Upload-Offset"])

        served.stop()  # with the part still arriving: 503, and what arrived is recorded
    served.start()
    uploader = tus_uploader(served.base_url, data, url=url)
    resumed_from = uploader.get_offset()
    uploader.upload()

    assert resumable.CHECKPOINT_BYTES <= resumed_from <= sent
    assert info_of(url)["hash"] == public_hash(data)


def test_an_upload_survives_a_restart_of_the_server(served):
    key = served.key()
    data = unique_bytes(4 * 1024 * 1024 + 5)
    uploader = tus_uploader(served.base_url, data, key=key)
    uploader.upload(stop_at=2 * 1024 * 1024)
    url = uploader.url

    served.stop()
    served.start()
    again = tus_uploader(served.base_url, data, key=key, url=url)
    resumed_from = again.get_offset()
    again.upload()

    assert resumed_from == 2 * 1024 * 1024
    assert info_of(url, key)["hash"] == public_hash(data)
    assert list((served.root / "data" / "partials").iterdir()) == []


def test_tuspy_sees_the_limit_as_a_413(served):
    uploader = tus_uploader(served.base_url, b"x")
    uploader.file_size = LIMIT + 1
    uploader.get_file_size = lambda: LIMIT + 1

    with pytest.raises(TusCommunicationError) as refused:
        uploader.upload()

    assert refused.value.status_code == 413
