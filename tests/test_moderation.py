"""Moderation: banned bytes (451), disabled and removed accounts, `hostd stats`, `hostd gc
--dry-run/--json`; the commands against a running server and with bad input."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import XSRF, form_body
from helpers import (
    blob_files,
    hostd,
    multipart_body,
    run_cli,
    start,
    store_upload,
    temp_files,
    wait_for_line,
)
from PIL import Image

from hostd import db as queries
from hostd import uploads
from hostd.db import moderation
from hostd.db.core import BAN_LIST_SECONDS, BanList
from hostd.db.stats import DAY_SECONDS as DAY
from hostd.hashes import public_hash_candidates
from hostd.local import LocalBlobStore

REASON = "reported as stolen artwork (ticket 42)"


def png(colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(out, "PNG")
    return out.getvalue()


async def upload(client, url: str, data: bytes, headers: dict | None = None, fields=None):
    body, base = multipart_body(fields, files=[("file", "shot.png", data)])
    return await client.fetch(
        url, method="POST", body=body, headers={**base, **(headers or {})}, raise_error=False
    )


async def get(client, url: str, method: str = "GET", headers: dict | None = None):
    return await client.fetch(
        url, method=method, headers=headers, follow_redirects=False, raise_error=False
    )


async def new_key(db, auth, user_id: int) -> str:
    minted = await auth.mint_key()
    await queries.insert_api_key(
        db, user_id=user_id, key_id=minted.key_id, secret_hash=minted.secret_hash, label=""
    )
    return minted.token


async def nothing_stored(db, config) -> bool:
    return (
        await queries.all_uploads(db) == []
        and await queries.blob_times(db) == {}
        and blob_files(config) == []
        and temp_files(config) == []
    )


# -- bans ------------------------------------------------------------------------------


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "path, headers, answer",
    [
        ("/api/upload", {}, "json"),
        ("/upload?api=1", {}, "text"),
        ("/upload", {}, "page"),
        ("/upload", {"HX-Request": "true"}, "fragment"),
    ],
)
async def test_banned_bytes_are_refused_451_in_each_endpoints_format_and_nothing_stays(
    http_client, base_url, db, store, thumbs, config, path, headers, answer, caplog
):
    data = png()
    first = await upload(http_client, f"{base_url}/api/upload", data)
    await uploads.ban(db, store, thumbs, sha256=hashlib.sha256(data).hexdigest(), reason=REASON)

    response = await upload(http_client, f"{base_url}{path}", data, headers)

    assert first.code == 200
    assert response.code == 451
    body = response.body.decode()
    if answer == "json":
        assert json.loads(body) == {
            "status": False,
            "error": f"this file is banned from this server and cannot be uploaded: {REASON}",
        }
    elif answer == "text":
        assert (
            body == f"ERROR this file is banned from this server and cannot be uploaded: {REASON}\n"
        )
    else:
        assert "banned from this server" in body and "ticket 42" in body
        assert ("<html" in body) == (answer == "page")
    assert await nothing_stored(db, config)
    assert "Uncaught exception" not in caplog.text  # the refusal is the request's end


@pytest.mark.gen_test
@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("path", ["/{h}", "/{h}.png", "/{h}/shot.png", "/thumbs/{h}.webp"])
async def test_a_banned_hash_answers_451_with_a_page_that_says_why(
    http_client, base_url, db, store, thumbs, path, method
):
    data = png()
    h = json.loads((await upload(http_client, f"{base_url}/api/upload", data)).body)["hash"]
    before = await get(http_client, base_url + path.format(h=h), method)
    await uploads.ban(db, store, thumbs, sha256=hashlib.sha256(data).hexdigest(), reason=REASON)

    response = await get(http_client, base_url + path.format(h=h), method)
    unknown = await get(http_client, base_url + path.format(h="A" * 12), method)

    assert before.code == 200
    assert response.code == 451
    assert response.reason == "Unavailable For Legal Reasons"
    assert response.headers["Content-Type"].startswith("text/html")
    assert "ETag" not in response.headers
    if method == "GET":
        page = response.body.decode()
        assert "451 Unavailable For Legal Reasons" in page
        assert (
            f"taken down by the admin of this server and cannot be served. Reason: {REASON}" in page
        )
    assert unknown.code == 404


@pytest.mark.gen_test
async def test_bytes_banned_before_anyone_uploaded_them_are_refused_and_their_hash_is_451(
    http_client, base_url, db, store, thumbs, config
):
    data = b"never uploaded here, banned on a list from elsewhere"
    ban, removal = await uploads.ban(
        db, store, thumbs, sha256=hashlib.sha256(data).hexdigest(), reason=""
    )

    response = await upload(http_client, f"{base_url}/api/upload", data)
    page = await get(http_client, f"{base_url}/{ban.hash}")

    assert removal.uploads == 0
    assert ban.hash == public_hash_candidates(ban.sha256)[0]
    assert response.code == 451
    assert json.loads(response.body)["error"] == (
        "this file is banned from this server and cannot be uploaded"
    )
    assert page.code == 451
    assert await nothing_stored(db, config)


class BannedWhilePlacing(LocalBlobStore):
    """A store where a ban of the bytes commits (as from another process) after the upload
    checked for one and while it places its bytes."""

    db: queries.Database

    async def place(self, written):
        await queries.insert_ban(self.db, sha256=written.sha256, reason="just now")
        await super().place(written)


@pytest.mark.gen_test
async def test_a_ban_that_lands_while_the_bytes_are_placed_still_leaves_nothing(db, config):
    store = BannedWhilePlacing(config.blobs_dir)
    store.db = db
    writer = store.writer()
    writer.write(b"uploaded at the moment the admin bans it")
    written = await writer.commit()

    try:
        with pytest.raises(uploads.Banned) as refused:
            await uploads.register(
                db,
                store,
                written,
                content_type="text/plain",
                original_name="a.txt",
                user_id=None,
                api_key_id=None,
            )
        assert refused.value.reason == "just now"
        assert await nothing_stored(db, config)
    finally:
        store.close()


class CountingPlaces(LocalBlobStore):
    placed = 0

    async def place(self, written):
        self.placed += 1
        await super().place(written)


@pytest.mark.gen_test
async def test_banned_bytes_are_refused_before_they_are_placed(db, config, thumbs):
    store = CountingPlaces(config.blobs_dir)
    data = b"banned long ago"
    sha = hashlib.sha256(data).hexdigest()
    assert await queries.find_ban(db, sha) is None  # the process's list of bans, read
    await uploads.ban(db, store, thumbs, sha256=sha, reason="")  # and out of date
    writer = store.writer()
    writer.write(data)
    written = await writer.commit()

    try:
        with pytest.raises(uploads.Banned):
            await uploads.register(
                db,
                store,
                written,
                content_type="text/plain",
                original_name="a.txt",
                user_id=None,
                api_key_id=None,
            )
        assert store.placed == 0
        assert await nothing_stored(db, config)
    finally:
        store.close()


@pytest.mark.gen_test
async def test_a_ban_made_elsewhere_after_this_process_read_its_bans_still_stops_an_upload(
    db, store, config, other_process
):
    data = b"banned by another process a moment ago"
    assert await queries.find_ban(db, hashlib.sha256(data).hexdigest()) is None  # list read
    await queries.insert_ban(
        other_process, sha256=hashlib.sha256(data).hexdigest(), reason="just now"
    )

    with pytest.raises(uploads.Banned) as refused:
        await store_upload(db, store, data)

    assert refused.value.reason == "just now"
    assert await nothing_stored(db, config)


@pytest.mark.gen_test
async def test_a_ban_lifted_elsewhere_lets_the_bytes_back_at_once(db, store, other_process):
    data = b"banned, then not"
    sha = hashlib.sha256(data).hexdigest()
    await queries.insert_ban(other_process, sha256=sha, reason="for now")
    known = await queries.find_ban(db, sha)  # now on this process's list of bans
    await queries.delete_ban(other_process, sha256=sha)

    blob, _ = await store_upload(db, store, data)

    assert known is not None and known.reason == "for now"
    assert blob.sha256 == sha


@pytest.mark.gen_test
async def test_past_the_limit_of_bans_kept_each_upload_asks_the_database(db, monkeypatch):
    monkeypatch.setattr(moderation, "BAN_LIST_LIMIT", 1)
    banned = [hashlib.sha256(b"%d" % n).hexdigest() for n in range(2)]
    for sha in banned:
        await queries.insert_ban(db, sha256=sha, reason=sha[:4])

    found = [await queries.find_ban(db, sha) for sha in banned]
    free = await queries.find_ban(db, hashlib.sha256(b"never banned").hexdigest())

    assert [ban.reason if ban else None for ban in found] == [sha[:4] for sha in banned]
    assert free is None


@pytest.mark.gen_test
async def test_the_list_of_bans_is_read_once_for_many_and_again_when_old_or_forgotten(clock):
    bans, reads = BanList(clock), []

    async def read():
        reads.append(clock())
        await asyncio.sleep(0)
        return frozenset({"banned"})

    together = await asyncio.gather(*(bans.get(read) for _ in range(10)))
    clock.advance(BAN_LIST_SECONDS - 0.1)
    await bans.get(read)
    clock.advance(0.1)
    await bans.get(read)
    bans.forget()
    await bans.get(read)

    assert together == [frozenset({"banned"})] * 10
    assert reads == [1000.0, 1000.0 + BAN_LIST_SECONDS, 1000.0 + BAN_LIST_SECONDS]


@pytest.mark.gen_test
async def test_lifting_a_ban_lets_the_same_bytes_back(http_client, base_url, db, store, thumbs):
    data = png()
    sha = hashlib.sha256(data).hexdigest()
    await uploads.ban(db, store, thumbs, sha256=sha, reason=REASON)

    lifted = await queries.delete_ban(db, sha256=sha)
    again = await upload(http_client, f"{base_url}/api/upload", data)
    h = json.loads(again.body)["hash"]

    assert lifted is not None and lifted.reason == REASON
    assert again.code == 200
    assert (await get(http_client, f"{base_url}/{h}")).code == 200
    assert await queries.delete_ban(db, sha256=sha) is None  # not banned any more


@pytest.mark.gen_test
async def test_banning_twice_is_refused_and_keeps_the_first_ban(db, store, thumbs):
    sha = hashlib.sha256(b"x").hexdigest()
    first, _ = await uploads.ban(db, store, thumbs, sha256=sha, reason="first")

    with pytest.raises(queries.AlreadyBanned):
        await uploads.ban(db, store, thumbs, sha256=sha, reason="second")

    assert await queries.list_bans(db) == [first]


@pytest.mark.gen_test
async def test_serving_a_known_file_asks_the_database_nothing(http_client, base_url, db):
    h = json.loads((await upload(http_client, f"{base_url}/api/upload", png())).body)["hash"]
    await get(http_client, f"{base_url}/{h}")  # the first request learns the blob
    reads = []
    real_read, real_lookup = db.read, db.lookup

    async def counted_read(work):
        reads.append(work)
        return await real_read(work)

    async def counted_lookup(work):
        reads.append(work)
        return await real_lookup(work)

    db.read, db.lookup = counted_read, counted_lookup
    try:
        answers = [(await get(http_client, f"{base_url}/{h}")).code for _ in range(5)]
        missing = await get(http_client, f"{base_url}/{'B' * 12}")
    finally:
        del db.read, db.lookup

    assert answers == [200] * 5
    assert missing.code == 404
    assert len(reads) == 2  # only the miss: its blob row, then its ban


# -- accounts --------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_disabling_an_account_stops_its_session_and_keys_at_the_next_request(
    http_client, base_url, db, auth, login
):
    alice = await login("alice")
    key = await new_key(db, auth, alice.user.id)
    bearer = {"Authorization": f"Bearer {key}"}
    before = (
        (await get(http_client, f"{base_url}/files", headers=alice.headers)).code,
        (await upload(http_client, f"{base_url}/api/upload", b"one", bearer)).code,
    )

    await queries.set_user_disabled(db, user_id=alice.user.id, disabled=True)
    disabled = (
        await get(http_client, f"{base_url}/files", headers=alice.headers),
        await upload(http_client, f"{base_url}/api/upload", b"two", bearer),
    )
    await queries.set_user_disabled(db, user_id=alice.user.id, disabled=False)
    enabled = (
        (await get(http_client, f"{base_url}/files", headers=alice.headers)).code,
        (await upload(http_client, f"{base_url}/api/upload", b"three", bearer)).code,
    )

    assert before == (200, 200)
    assert disabled[0].code == 302 and disabled[0].headers["Location"].startswith("/login")
    assert disabled[1].code == 401
    assert json.loads(disabled[1].body)["error"] == "the account of this API key is disabled"
    assert enabled == (200, 200)
    owners = [u.user_id for u in await queries.all_uploads(db)]
    assert owners == [alice.user.id, alice.user.id]  # nothing went in while disabled


@pytest.mark.gen_test
async def test_only_the_right_secret_learns_that_a_keys_account_is_disabled(
    http_client, base_url, db, auth, login
):
    alice = await login("alice")
    key = await new_key(db, auth, alice.user.id)
    await queries.set_user_disabled(db, user_id=alice.user.id, disabled=True)

    right = await upload(
        http_client, f"{base_url}/api/upload", b"one", {"Authorization": f"Bearer {key}"}
    )
    wrong_key = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    wrong = await upload(
        http_client, f"{base_url}/api/upload", b"one", {"Authorization": f"Bearer {wrong_key}"}
    )

    assert (right.code, wrong.code) == (401, 401)
    assert json.loads(right.body)["error"] == "the account of this API key is disabled"
    assert json.loads(wrong.body)["error"] == "the API key is not valid (unknown or invalidated)"


async def sign_in(client, base_url, name: str, password: str):
    return await client.fetch(
        f"{base_url}/login",
        method="POST",
        body=form_body(name=name, password=password),
        headers={"Cookie": f"_xsrf={XSRF}"},
        follow_redirects=False,
        raise_error=False,
    )


@pytest.mark.gen_test
async def test_a_disabled_account_cannot_sign_in_and_only_its_password_learns_why(
    http_client, base_url, db, login
):
    alice = await login("alice", password="correct horse")
    await queries.set_user_disabled(db, user_id=alice.user.id, disabled=True)

    wrong = await sign_in(http_client, base_url, "alice", "wrong horse")
    nobody = await sign_in(http_client, base_url, "nobody", "wrong horse")
    right = await sign_in(http_client, base_url, "alice", "correct horse")

    assert wrong.code == nobody.code == 401
    assert "Wrong name or password." in wrong.body.decode()
    assert "disabled" not in wrong.body.decode()
    assert right.code == 403
    assert "This account is disabled." in right.body.decode()
    assert not any(c.startswith("hostd_session=") for c in right.headers.get_list("Set-Cookie"))


@pytest.mark.gen_test
async def test_removing_an_account_keeps_its_files_as_anonymous_uploads(
    http_client, base_url, db, store, thumbs, auth, login
):
    alice = await login("alice")
    key = await new_key(db, auth, alice.user.id)
    bearer = {"Authorization": f"Bearer {key}"}
    answer = await upload(http_client, f"{base_url}/api/upload", b"alice's", bearer)

    deleted = await uploads.remove_user(
        db, store, thumbs, user_id=alice.user.id, delete_files=False
    )
    after = (
        (await get(http_client, json.loads(answer.body)["urls"]["hash"])).code,
        (await get(http_client, f"{base_url}/files", headers=alice.headers)).code,
        (await upload(http_client, f"{base_url}/api/upload", b"more", bearer)).code,
    )

    assert deleted == 0
    assert after == (200, 302, 401)
    (kept,) = await queries.all_uploads(db)
    assert (kept.user_id, kept.api_key_id) == (None, None)
    assert await queries.get_user(db, name="alice") is None
    assert (await login("alice")).user.name == "alice"  # the name is free again


@pytest.mark.gen_test
async def test_removing_an_account_with_its_files_leaves_bytes_someone_else_uploaded(
    http_client, base_url, db, store, thumbs, login, config
):
    alice = await login("alice")
    own = await upload(http_client, f"{base_url}/upload?api=1", b"only alice's", alice.headers)
    await upload(http_client, f"{base_url}/upload?api=1", b"shared", alice.headers)
    shared = await upload(http_client, f"{base_url}/api/upload", b"shared")
    own_hash = own.body.decode().split()[1]

    deleted = await uploads.remove_user(db, store, thumbs, user_id=alice.user.id, delete_files=True)

    assert deleted == 2
    assert (await get(http_client, f"{base_url}/{own_hash}")).code == 404
    assert (await get(http_client, json.loads(shared.body)["urls"]["hash"])).code == 200
    assert not await store.exists(hashlib.sha256(b"only alice's").hexdigest())
    assert await store.exists(hashlib.sha256(b"shared").hexdigest())
    assert [u.user_id for u in await queries.all_uploads(db)] == [None]
    assert len(blob_files(config)) == 1


async def remove_keeping_files(db, store, thumbs, user_id: int) -> None:
    await uploads.remove_user(db, store, thumbs, user_id=user_id, delete_files=False)


async def remove_with_files(db, store, thumbs, user_id: int) -> None:
    await uploads.remove_user(db, store, thumbs, user_id=user_id, delete_files=True)


async def disable(db, store, thumbs, user_id: int) -> None:
    await queries.set_user_disabled(db, user_id=user_id, disabled=True)


async def invalidate_its_key(db, store, thumbs, user_id: int) -> None:
    [key] = await queries.list_api_keys(db, user_id=user_id)
    await queries.invalidate_api_key(db, key_id=key.key_id)


@pytest.mark.parametrize(
    ("meanwhile", "error"),
    [
        (remove_keeping_files, "the account this upload was for was removed"),
        (remove_with_files, "the account this upload was for was removed"),
        (disable, "the account this upload was for was disabled"),
        (
            invalidate_its_key,
            "the API key this upload was sent with was invalidated while it arrived",
        ),
    ],
)
@pytest.mark.gen_test(timeout=30)
async def test_an_upload_in_flight_when_its_account_or_key_goes_is_refused_leaving_nothing(
    http_port, http_server, db, store, thumbs, auth, login, config, meanwhile, error
):
    alice = await login("alice")
    key = await new_key(db, auth, alice.user.id)
    data = b"x" * 300_000
    reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
    writer.write(
        f"PUT /api/upload/slow.bin HTTP/1.1\r\nHost: hostd\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
        + data[:100_000]
    )
    await writer.drain()
    await asyncio.sleep(0.2)  # the key is accepted; the body is arriving

    await meanwhile(db, store, thumbs, alice.user.id)
    writer.write(data[100_000:])
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 ")
    assert json.loads(body) == {"status": False, "error": f"{error}; the file was not stored"}
    assert await queries.all_uploads(db) == []
    assert blob_files(config) == []
    assert temp_files(config) == []


# -- stats and gc ----------------------------------------------------------------------


@pytest.mark.gen_test
async def test_stats_count_uploads_blobs_bytes_dedup_savings_and_uploaders(
    http_client, base_url, db, login
):
    alice, bob = await login("alice"), await login("bob")
    await upload(http_client, f"{base_url}/upload?api=1", b"a" * 100, alice.headers)
    await upload(http_client, f"{base_url}/upload?api=1", b"b" * 50, alice.headers)
    await upload(http_client, f"{base_url}/upload?api=1", b"a" * 100, bob.headers)
    await upload(http_client, f"{base_url}/api/upload", b"c" * 10)
    await queries.set_user_disabled(db, user_id=bob.user.id, disabled=True)
    now = queries.now()

    today = await queries.get_stats(db, now=now)
    a_day_later = await queries.get_stats(db, now=now + DAY)

    assert (today.uploads, today.blobs) == (4, 3)
    assert (today.stored_bytes, today.uploaded_bytes, today.dedup_saved_bytes) == (160, 260, 100)
    assert (today.users, today.disabled_users, today.bans) == (2, 1, 0)
    assert [count for _, count in today.per_day] == [0, 0, 0, 0, 0, 0, 4]
    assert today.per_day[-1][0] == now // DAY * DAY
    assert [count for _, count in a_day_later.per_day] == [0, 0, 0, 0, 0, 4, 0]
    assert [(u.name, u.uploads, u.bytes) for u in today.top_uploaders] == [
        ("alice", 2, 150),
        ("bob", 1, 100),
        (None, 1, 10),
    ]


@pytest.mark.gen_test
async def test_gc_dry_run_says_what_it_would_remove_and_removes_nothing(db, store, thumbs):
    writer = store.writer()
    writer.write(b"bytes a crash left without a row")
    written = await writer.commit()
    await store.place(written)

    dry = await uploads.collect_garbage(db, store, thumbs, grace_seconds=0, dry_run=True)
    still_there = await store.exists(written.sha256)
    real = await uploads.collect_garbage(db, store, thumbs, grace_seconds=0)

    assert dry.removed == [written.sha256] and still_there
    assert real.removed == [written.sha256]
    assert not await store.exists(written.sha256)


# -- the commands ----------------------------------------------------------------------


def fetch(url: str, data: bytes | None = None, headers: dict | None = None):
    """(status, body) of a GET, or of a POST of `data` as an upload to /api/upload."""
    if data is not None:
        body, base = multipart_body(files=[("file", "shot.png", data)])
        request = urllib.request.Request(url, data=body, headers={**base, **(headers or {})})
    else:
        request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode(errors="replace")


def test_file_rm_ban_reaches_a_running_server_at_once(tmp_path, free_port):
    data = ["--data-dir", str(tmp_path / "d")]
    image = png((1, 2, 3))
    sha = hashlib.sha256(image).hexdigest()
    base = f"http://127.0.0.1:{free_port}"
    proc = start(["serve", *data, "--port", str(free_port)], tmp_path)
    try:
        wait_for_line(proc, "listening on")
        status, body = fetch(f"{base}/api/upload", image)
        h = json.loads(body)["hash"]
        served = fetch(f"{base}/{h}")[0], fetch(f"{base}/thumbs/{h}.webp")[0]  # now in memory
        removed = hostd(
            "file", "rm", f"{base}/{h}.png", "--ban", "--reason", REASON, *data, cwd=tmp_path
        )
        after = fetch(f"{base}/{h}"), fetch(f"{base}/thumbs/{h}.webp")[0]
        again = fetch(f"{base}/api/upload", image)
        listed = hostd("ban", "list", *data, cwd=tmp_path)
        as_json = hostd("ban", "list", "--json", *data, cwd=tmp_path)
        lifted = hostd("ban", "rm", sha, *data, cwd=tmp_path)
        back = fetch(f"{base}/api/upload", image)[0], fetch(f"{base}/{h}")[0]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)

    assert status == 200 and served == (200, 200)
    assert removed.returncode == 0, removed.stderr
    assert f"removed {h}: 1 upload" in removed.stderr and f"banned {sha}" in removed.stderr
    assert after[0][0] == 451 and REASON in after[0][1]
    assert after[1] == 451
    assert again[0] == 451 and REASON in json.loads(again[1])["error"]
    header, row = listed.stdout.splitlines()
    assert header.split() == ["sha256", "hash", "banned", "reason"]
    assert row.startswith(f"{sha}  {h}  ") and row.endswith(f"UTC  {REASON}")
    (ban,) = json.loads(as_json.stdout)
    assert (ban["sha256"], ban["hash"], ban["reason"]) == (sha, h, REASON)
    assert ban["banned_at"].endswith("Z")
    assert lifted.returncode == 0 and "may be uploaded again" in lifted.stderr
    assert back == (200, 200)
    assert not [p for p in (tmp_path / "d" / "tmp").rglob("upload-*")]


def test_user_commands_and_stats_reach_a_running_server(tmp_path, free_port):
    data = ["--data-dir", str(tmp_path / "d")]
    hostd("user", "add", "alice", "--password-stdin", *data, cwd=tmp_path, stdin="long enough\n")
    key = hostd("key", "create", "alice", *data, cwd=tmp_path).stdout.strip()
    bearer = {"Authorization": f"Bearer {key}"}
    base = f"http://127.0.0.1:{free_port}"
    proc = start(["serve", *data, "--port", str(free_port)], tmp_path)
    try:
        wait_for_line(proc, "listening on")
        first = fetch(f"{base}/api/upload", b"alice's first", bearer)
        disabled = hostd("user", "disable", "alice", *data, cwd=tmp_path)
        while_disabled = fetch(f"{base}/api/upload", b"while disabled", bearer)[0]
        listed = hostd("user", "list", *data, cwd=tmp_path)
        enabled = hostd("user", "enable", "alice", *data, cwd=tmp_path)
        again = fetch(f"{base}/api/upload", b"alice's second", bearer)[0]
        fetch(f"{base}/api/upload", b"alice's second")  # anonymous, the same bytes
        stats = hostd("stats", *data, cwd=tmp_path)
        stats_json = hostd("stats", "--json", *data, cwd=tmp_path)
        removed = hostd("user", "rm", "alice", "--files", "delete", *data, cwd=tmp_path)
        gone = fetch(json.loads(first[1])["urls"]["hash"])[0]
        key_after = fetch(f"{base}/api/upload", b"after", bearer)[0]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    gc = hostd("gc", "--dry-run", "--json", "--grace", "0", *data, cwd=tmp_path)

    assert first[0] == 200 and again == 200
    assert disabled.returncode == 0 and "disabled alice" in disabled.stderr
    assert while_disabled == 401
    assert listed.stdout.splitlines()[1].split()[-1] == "disabled"
    assert enabled.returncode == 0 and "enabled alice" in enabled.stderr
    lines = stats.stdout.splitlines()
    assert lines[:4] == [
        "uploads      3",
        "blobs        2",
        "stored       27 bytes",
        "uploaded     41 bytes",
    ]
    assert "dedup saved  14 bytes" in lines
    assert lines[-3].split() == ["name", "uploads", "bytes"]
    assert lines[-2].split() == ["alice", "2", "27"]
    assert lines[-1].split() == ["(anonymous)", "1", "14"]
    figures = json.loads(stats_json.stdout)
    assert figures["dedup_saved_bytes"] == 14 and figures["uploads_per_day"][-1]["uploads"] == 3
    assert figures["top_uploaders"][0] == {"name": "alice", "uploads": 2, "bytes": 27}
    assert removed.returncode == 0 and "removed user alice and their 2 uploads" in removed.stderr
    assert gone == 404 and key_after == 401
    assert gc.returncode == 0 and json.loads(gc.stdout) == {
        "dry_run": True,
        "removed": [],
        "young": 0,
        "missing": [],
        "damaged": [],
        "hashes": {},
    }


@pytest.fixture(scope="module")
def moderated(tmp_path_factory) -> Path:
    """A data dir with one ban (of 'a' * 64) and one user (alice), made once."""
    data_dir = tmp_path_factory.mktemp("moderated") / "d"
    for args, stdin in [
        (["ban", "add", "a" * 64, "--reason", "spam"], b""),
        (["user", "add", "alice", "--password-stdin"], b"long enough\n"),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "hostd", *args, "--data-dir", str(data_dir)],
            input=stdin,
            capture_output=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
    return data_dir


@pytest.mark.parametrize(
    "args, status, message",
    [
        (["ban", "add", "xyz"], 2, "'xyz' is not a SHA-256 (64 hex digits)"),
        (["ban", "add", "f" * 63 + "g"], 2, "is not a SHA-256"),
        (["ban", "add", "a" * 64], 1, f"{'a' * 64} is banned already, since"),
        (["ban", "add", "b" * 64, "--reason", "two\nlines"], 2, "a reason is one line of at"),
        (["ban", "add", "b" * 64, "--reason", "x" * 501], 2, "at most 500 printable"),
        (["ban", "rm", "b" * 64], 1, f"{'b' * 64} is not banned"),
        (["ban", "rm", "nope"], 2, "'nope' is not a SHA-256"),
        (["user", "disable", "nobody"], 1, "there is no user 'nobody'"),
        (["user", "enable", "nobody"], 1, "there is no user 'nobody'"),
        (["user", "rm", "nobody"], 1, "there is no user 'nobody'"),
        (["user", "rm", "alice", "--files", "shred"], 2, "invalid choice: 'shred'"),
        (["file", "rm", "AAAAAAAAAAAA", "--ban"], 1, "there is no file 'AAAAAAAAAAAA'"),
        (["file", "rm", "AAAAAAAAAAAA", "--reason", "x"], 1, "--reason goes with --ban"),
        (["file", "rm", "not a hash"], 2, "'not a hash' is not a file's hash, URL or SHA-256"),
        (["file", "info", "short"], 2, "'short' is not a file's hash, URL or SHA-256"),
        (["key", "invalidate", "zz"], 2, "'zz' is not a key id (the 16 hex characters after hk_)"),
        (["key", "invalidate", "0123456789abcdef"], 1, "there is no key '0123456789abcdef'"),
        (["user", "quota", "alice", "1G"], 2, "a quota is a whole number of bytes"),
    ],
)
def test_moderation_commands_refuse_bad_input_and_change_nothing(
    moderated, tmp_path, capsys, args, status, message
):
    shutil.copytree(moderated, tmp_path / "d")
    data = ["--data-dir", str(tmp_path / "d")]
    before = run_cli(capsys, "ban", "list", "--json", *data), run_cli(capsys, "user", "list", *data)

    refused = run_cli(capsys, *args, *data)

    assert refused[0] == status
    assert message in refused[2]
    assert refused[1] == ""
    after = run_cli(capsys, "ban", "list", "--json", *data), run_cli(capsys, "user", "list", *data)
    assert after == before
    assert '"reason": "spam"' in before[0][1] and "alice" in before[1][1]
