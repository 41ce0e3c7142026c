"""What only the S3 store has to show, against a real SeaweedFS: bounded memory, nothing left
behind, dedup, a clear stop at start, 503 while S3 is down, and redirect mode.

(The whole upload, download and API suites also run on S3: see STORAGE_BACKENDS there.)"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import secrets
import socket
import time
import tracemalloc
from pathlib import Path

import pytest
import tornado.httpclient
from helpers import (
    bytes_under,
    hostd,
    multipart_body,
    png_of_one_colour,
    start,
    store_upload,
    streamed_upload,
    temp_files,
    wait_for_line,
)
from seaweed import SeaweedFS, put_s3_object
from test_download import start_download
from test_upload import many_clients_one_address

from hostd import db as queries
from hostd import s3, uploads
from hostd.db import Database
from hostd.local import LocalBlobStore
from hostd.migrate import COPIES_AT_ONCE, MigrationError, migrate
from hostd.storage import store_from

STORAGE_BACKENDS = ("s3",)
MiB = 1024 * 1024
BIG = 3 * MiB  # past SINGLE_PUT_BYTES: a multipart upload to a temp key


def toml_for(config, data_dir: Path, **s3_more: object) -> str:
    """hostd.toml for a `hostd serve` on the test's bucket and prefix."""
    fields = {
        "endpoint": config.s3_endpoint,
        "bucket": config.s3_bucket,
        "prefix": config.s3_prefix,
        "path_style": True,
        **s3_more,
    }
    lines = [f"{key} = {json.dumps(value)}" for key, value in fields.items()]
    return (
        f'[storage]\ndata_dir = "{data_dir}"\nbackend = "s3"\n\n[storage.s3]\n'
        + "\n".join(lines)
        + "\n"
    )


async def upload(client, base_url, data: bytes, *, url: str = "/api/upload", name="f.bin"):
    body, headers = multipart_body(files=[("file", name, data)])
    return await client.fetch(
        base_url + url, method="POST", body=body, headers=headers, raise_error=False
    )


def keys(config) -> list[str]:
    from helpers import blob_files

    return [str(key) for key in blob_files(config)]


@pytest.mark.gen_test(timeout=60)
async def test_a_big_upload_lands_under_its_sha256_and_leaves_no_temp_object(
    http_client, base_url, config
):
    data = bytes(range(256)) * (BIG // 256) + b"tail"

    response = await upload(http_client, base_url, data)

    assert response.code == 200
    sha = hashlib.sha256(data).hexdigest()
    assert keys(config) == [f"{config.s3_prefix}{sha}"]
    assert temp_files(config) == []
    got = await http_client.fetch(f"{base_url}/{json.loads(response.body)['hash']}")
    assert got.body == data


@pytest.mark.gen_test(timeout=60)
async def test_a_client_vanishing_mid_upload_leaves_no_object_and_no_multipart_upload(
    http_server, http_port, config
):
    start_of_body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n\r\n'
        + b"x" * (2 * MiB)
    )
    head = (
        "POST /api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {len(start_of_body) + 5 * MiB}\r\n\r\n"
    ).encode()
    _, writer = await asyncio.open_connection("127.0.0.1", http_port)
    writer.write(head + start_of_body)
    await writer.drain()
    for _ in range(200):  # until the multipart upload has begun
        if temp_files(config):
            break
        await asyncio.sleep(0.05)
    assert temp_files(config), "the multipart upload never started"

    writer.close()
    for _ in range(200):
        if not temp_files(config):
            break
        await asyncio.sleep(0.05)

    assert temp_files(config) == []  # no temp object, no incomplete multipart upload
    assert keys(config) == []


@pytest.mark.gen_test(timeout=120)
async def test_fifty_concurrent_uploads_of_the_same_bytes_leave_one_object(
    http_client, base_url, config, app
):
    many_clients_one_address(app)
    data = b"same bytes " * (BIG // 11)

    answers = await asyncio.gather(*(upload(http_client, base_url, data) for _ in range(50)))

    assert {response.code for response in answers} == {200}
    assert len({json.loads(response.body)["hash"] for response in answers}) == 1
    assert keys(config) == [f"{config.s3_prefix}{hashlib.sha256(data).hexdigest()}"]
    assert temp_files(config) == []


@pytest.mark.gen_test(timeout=60)
async def test_redirect_mode_sends_an_image_to_a_presigned_url_and_streams_html(
    http_client, base_url, app, config
):
    app.settings["hostd_config"] = dataclasses.replace(config, s3_redirect=True)
    app.settings["hostd_store"].settings = dataclasses.replace(
        app.settings["hostd_store"].settings, redirect=True
    )
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    image = json.loads((await upload(http_client, base_url, png, name="a.png")).body)["hash"]
    page = json.loads((await upload(http_client, base_url, b"<html>hi</html>")).body)["hash"]

    moved = await http_client.fetch(
        f"{base_url}/{image}/a.png", follow_redirects=False, raise_error=False
    )
    html = await http_client.fetch(f"{base_url}/{page}.html", follow_redirects=False)

    assert moved.code == 302
    location = moved.headers["Location"]
    assert location.startswith(config.s3_endpoint) and "X-Amz-Signature=" in location
    assert moved.headers["Cache-Control"] == "no-cache"
    fetched = await http_client.fetch(location)
    assert fetched.body == png
    assert fetched.headers["Content-Type"] == "image/png"
    assert fetched.headers["Content-Disposition"] == 'inline; filename="a.png"'
    assert html.code == 200 and html.body == b"<html>hi</html>"
    assert "sandbox" in html.headers["Content-Security-Policy"]


def test_a_wrong_secret_key_stops_the_start_with_one_clear_line(
    tmp_path, config, free_port, monkeypatch
):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    (tmp_path / "hostd.toml").write_text(toml_for(config, tmp_path / "d"))

    done = hostd("serve", "--config", "hostd.toml", "--port", str(free_port), cwd=tmp_path)

    assert done.returncode == 1
    assert "hostd: cannot start: S3 refused the credentials for bucket" in done.stderr
    assert "check the access key and the secret key" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_bucket_stops_the_start_with_one_clear_line(tmp_path, config, free_port):
    config = dataclasses.replace(config, s3_bucket="no-such-bucket")
    (tmp_path / "hostd.toml").write_text(toml_for(config, tmp_path / "d"))

    done = hostd("serve", "--config", "hostd.toml", "--port", str(free_port), cwd=tmp_path)

    assert done.returncode == 1
    assert "hostd: cannot start: S3 bucket 'no-such-bucket' at" in done.stderr
    assert "does not exist (create it first)" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unreachable_endpoint_stops_the_start_with_one_clear_line(tmp_path, config, free_port):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = dataclasses.replace(config, s3_endpoint=nobody)
    (tmp_path / "hostd.toml").write_text(toml_for(config, tmp_path / "d"))

    done = hostd("serve", "--config", "hostd.toml", "--port", str(free_port), cwd=tmp_path)

    assert done.returncode == 1
    assert "hostd: cannot start: cannot reach the S3 endpoint for bucket" in done.stderr
    assert "Traceback" not in done.stderr


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_1_gib_streamed_upload_keeps_hostds_rss_under_100_mib(tmp_path, config, free_port):
    limits = "\n[limits]\nmax_upload_bytes = 2147483648\n"
    (tmp_path / "hostd.toml").write_text(toml_for(config, tmp_path / "d") + limits)
    server = start(["serve", "--config", "hostd.toml", "--port", str(free_port)], tmp_path)
    try:
        wait_for_line(server, "listening on", timeout=30)
        size = 1024 * MiB
        producer, headers, digest = streamed_upload(size)

        async def send() -> tornado.httpclient.HTTPResponse:
            client = tornado.httpclient.AsyncHTTPClient(force_instance=True)
            try:
                return await client.fetch(
                    f"http://127.0.0.1:{free_port}/api/upload",
                    method="POST",
                    headers=headers,
                    body_producer=producer,
                    request_timeout=600,
                )
            finally:
                client.close()

        response = asyncio.run(send())
        peak = peak_rss_bytes(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
        assert server.stdout is not None
        server.stdout.close()
    assert json.loads(response.body)["status"] is True
    assert keys(config) == [f"{config.s3_prefix}{digest.hex()}"]
    assert peak < 100 * MiB, f"hostd's peak RSS was {peak / MiB:.1f} MiB"


# -- S3 down in the middle of a run: a weed of the test's own -----------------------------


@pytest.fixture
def own_weed(tmp_path: Path) -> SeaweedFS:
    weed = SeaweedFS(tmp_path / "weed")
    try:
        weed.start()
        weed.create_bucket("down-and-up")
        yield weed
    finally:
        weed.stop()


@pytest.fixture
def config_on_own_weed(config, own_weed):
    return dataclasses.replace(config, s3_endpoint=own_weed.endpoint, s3_bucket="down-and-up")


@pytest.mark.gen_test(timeout=120)
async def test_s3_down_gives_503_in_each_endpoints_format_and_then_works_again(
    http_client, base_url, app, config_on_own_weed, own_weed
):
    store = store_from(config_on_own_weed)
    app.settings["hostd_store"] = store
    kept = json.loads((await upload(http_client, base_url, b"kept")).body)["hash"]
    doomed = json.loads((await upload(http_client, base_url, b"doomed")).body)
    image = json.loads((await upload(http_client, base_url, png_of_one_colour(8, 8))).body)

    own_weed.stop()
    as_json = await upload(http_client, base_url, b"a" * BIG)
    as_text = await upload(http_client, base_url, b"small", url="/upload?api=1")
    page = await http_client.fetch(f"{base_url}/{kept}", raise_error=False)
    etag = f'"{hashlib.sha256(b"kept").hexdigest()}"'
    revalidated = await http_client.fetch(
        f"{base_url}/{kept}", headers={"If-None-Match": etag}, raise_error=False
    )

    assert as_json.code == 503
    assert json.loads(as_json.body) == {
        "status": False,
        "error": "the file storage cannot be reached; the file was not stored, retry soon",
    }
    assert as_text.code == 503 and as_text.body.startswith(b"ERROR the file storage cannot")
    assert page.code == 503 and b"The file storage cannot be reached" in page.body
    assert page.headers["Content-Type"].startswith("text/html")
    assert revalidated.code == 304  # answered without asking S3
    thumbnail = await http_client.fetch(
        f"{base_url}/thumbs/{image['hash']}.webp", raise_error=False
    )
    assert thumbnail.code == 503 and "Retry-After" in thumbnail.headers  # "later"
    deleted = await http_client.fetch(
        doomed["delete_url"], method="POST", body=b"", raise_error=False
    )
    assert deleted.code == 200  # the deletion stands; gc removes the bytes later
    health = await http_client.fetch(f"{base_url}/healthz", raise_error=False)
    assert health.code == 503 and health.body == b"storage: failed (StoreUnavailable)\n"

    own_weed.start()
    again = await upload(http_client, base_url, b"b" * BIG)
    assert again.code == 200
    assert (await http_client.fetch(f"{base_url}/healthz")).body == b"ok\n"
    assert (await http_client.fetch(f"{base_url}/{kept}")).body == b"kept"
    store.close()


@pytest.mark.gen_test(timeout=120)
async def test_s3_down_a_download_and_its_head_are_both_a_503_with_retry_after(
    http_client, base_url, app, config_on_own_weed, own_weed
):
    store = store_from(config_on_own_weed)
    app.settings["hostd_store"] = store
    h = json.loads((await upload(http_client, base_url, b"kept")).body)["hash"]

    own_weed.stop()
    try:
        got = await http_client.fetch(f"{base_url}/{h}.bin", raise_error=False)
        head = await http_client.fetch(f"{base_url}/{h}.bin", method="HEAD", raise_error=False)
    finally:
        store.close()

    assert (got.code, head.code) == (503, 503)
    assert got.headers["Retry-After"] == head.headers["Retry-After"] == "5"
    assert head.body == b""


@pytest.mark.gen_test(timeout=120)
async def test_s3_lost_mid_download_cuts_it_off_with_one_log_line(
    http_client, base_url, http_port, app, config_on_own_weed, own_weed, caplog
):
    size = 48 * MiB  # more than the sockets between S3, hostd and the client can hold
    store = store_from(config_on_own_weed)
    app.settings["hostd_store"] = store
    bigger = dataclasses.replace(app.settings["hostd_config"], max_upload_bytes=size)
    app.settings["hostd_config"] = app.settings["hostd_limits"].config = bigger
    uploaded = await upload(http_client, base_url, b"s" * size)
    assert uploaded.code == 200, uploaded.body
    h = json.loads(uploaded.body)["hash"]
    reader, writer = await start_download(http_port, h)
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        own_weed.stop()
        body = await asyncio.wait_for(reader.read(), 60)  # what was on its way, then EOF
    finally:
        writer.close()
        store.close()

    assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: %d" % size in head
    assert len(body) < size, "all of it arrived: S3 was not lost mid-download"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith("could not read"), errors


@pytest.mark.gen_test(timeout=60)
async def test_stale_temp_objects_and_multipart_uploads_are_removed(store, config, monkeypatch):
    writer = store.writer()
    writer.write(b"x" * (2 * s3.SINGLE_PUT_BYTES))
    waiting = writer.backpressure()  # the multipart upload begins, as a crash would leave it
    if asyncio.iscoroutine(waiting):
        waiting.close()
    for _ in range(200):
        if temp_files(config):
            break
        await asyncio.sleep(0.05)
    assert temp_files(config)
    monkeypatch.setattr(s3, "STALE_SECONDS", 0.0)  # every leftover is old now

    removed = await store.remove_stale_temp_files()

    assert removed >= 1
    assert temp_files(config) == []
    gone = writer.abort()
    if gone is not None:
        await gone


@pytest.mark.gen_test(timeout=60)
async def test_a_group_lists_the_objects_whose_sha256_starts_with_it_and_no_other(
    db, store, config
):
    """gc lists one group at a time; to obstore a prefix is a folder, so a group is found
    from where the bucket's ordered listing reaches it (its offset) to where it ends."""
    sha256s = {
        prefix: (await store_upload(db, store, bytes_under(prefix)[0]))[0].sha256
        for prefix in ("0f", "10", "1f", "ff")
    }
    put_s3_object(config, "tmp/10-not-a-blob", b"an upload's temp object")
    put_s3_object(config, "10-not-a-sha256", b"someone else's")

    listed = {
        prefix: [blob.sha256 async for blob in store.list_blobs(prefix)]
        for prefix in ("0f", "10", "1", "fe", "ff")
    }

    assert listed["0f"] == [sha256s["0f"]]
    assert listed["10"] == [sha256s["10"]]
    assert sorted(listed["1"]) == sorted([sha256s["10"], sha256s["1f"]])
    assert listed["fe"] == []
    assert listed["ff"] == [sha256s["ff"]]


@pytest.mark.gen_test(timeout=60)
async def test_gc_reports_objects_gone_or_not_the_size_recorded(db, store, thumbs, config):
    whole, _ = await store_upload(db, store, b"kept whole")
    lost, _ = await store_upload(db, store, b"removed from the bucket behind hostd's back")
    cut, _ = await store_upload(db, store, b"replaced by fewer bytes")
    await store.delete(lost.sha256)
    put_s3_object(config, cut.sha256, b"fewer")

    found = await uploads.collect_garbage(db, store, thumbs)

    assert (found.missing, found.damaged, found.removed) == ([lost.sha256], [cut.sha256], [])


@pytest.mark.gen_test(timeout=60)
async def test_gc_verify_reads_objects_and_finds_ones_changed_at_the_same_size(
    db, store, thumbs, config
):
    flipped, _ = await store_upload(db, store, b"written over at the same size")
    whole, _ = await store_upload(db, store, b"kept whole")
    put_s3_object(config, flipped.sha256, b"WRITTEN over at the same size")

    found = await uploads.collect_garbage(db, store, thumbs, verify=True)

    assert found.damaged == [flipped.sha256]


# -- hostd storage migrate ------------------------------------------------------------------


async def store_locally(data_dir: Path, files: list[bytes]) -> None:
    """Uploads recorded in a local store, as `hostd serve` makes them by default."""
    database = await Database.open(data_dir / "hostd.sqlite3")
    store = LocalBlobStore(data_dir / "blobs")
    try:
        for data in files:
            writer = store.writer()
            writer.write(data)
            written = await writer.commit()
            await uploads.register(
                database,
                store,
                written,
                content_type="application/octet-stream",
                original_name="f.bin",
                user_id=None,
                api_key_id=None,
            )
    finally:
        store.close()
        await database.close()


def test_migrate_to_s3_copies_and_verifies_every_file_switches_nothing_and_resumes(
    tmp_path, config, io_loop
):
    files = [b"one", b"two" * 1000, bytes(range(256)) * (BIG // 256)]
    (tmp_path / "d").mkdir()
    io_loop.run_sync(lambda: store_locally(tmp_path / "d", files))
    toml = toml_for(config, tmp_path / "d").replace('backend = "s3"', 'backend = "local"')
    (tmp_path / "hostd.toml").write_text(toml)
    shas = sorted(hashlib.sha256(data).hexdigest() for data in files)

    first = hostd("storage", "migrate", "--to", "s3", "--config", "hostd.toml", cwd=tmp_path)

    assert first.returncode == 0, first.stderr
    assert first.stderr.count("copied") == 4  # three progress lines and the summary
    assert "[3/3]" in first.stderr and "verified" in first.stderr
    assert "3 file(s) copied to s3" in first.stderr
    assert first.stderr.splitlines()[-2:] == [
        "every file recorded before the last of 2 pass(es) is in s3; a running hostd stores"
        " more meanwhile",
        "to switch: stop hostd; run this command again (it copies only what came meanwhile);"
        ' set storage.backend = "s3" in hostd.toml; start hostd. local is left as it was',
    ]
    assert keys(config) == [f"{config.s3_prefix}{sha}" for sha in shas]
    assert (tmp_path / "hostd.toml").read_text() == toml  # nothing switched
    assert len([p for p in (tmp_path / "d" / "blobs").rglob("*") if p.is_file()]) == 3

    again = hostd("storage", "migrate", "--to", "s3", "--config", "hostd.toml", cwd=tmp_path)

    assert again.returncode == 0, again.stderr
    assert "0 file(s) copied to s3" in again.stderr and "3 already there" in again.stderr

    back = tmp_path / "back"
    back.mkdir()
    (tmp_path / "d" / "hostd.sqlite3").rename(tmp_path / "back.sqlite3")
    (tmp_path / "hostd.toml").write_text(toml.replace(str(tmp_path / "d"), str(back)))
    (tmp_path / "back.sqlite3").rename(back / "hostd.sqlite3")

    home = hostd("storage", "migrate", "--to", "local", "--config", "hostd.toml", cwd=tmp_path)

    assert home.returncode == 0, home.stderr
    assert "3 file(s) copied to local" in home.stderr
    stored = sorted(p.name for p in (back / "blobs").rglob("*") if p.is_file())
    assert stored == shas


async def migrate_while_serving(db, config, tmp_path, monkeypatch, first: bytes, meanwhile: bytes):
    """migrate() to S3 from a local store holding `first`, while the server stores
    `meanwhile` as the first copy is placed; the Migrated and the progress lines."""
    local = LocalBlobStore(tmp_path / "local" / "blobs")
    await store_upload(db, local, first)
    target = store_from(config)
    place = target.place
    arriving = [meanwhile]

    async def place_while_serving(written):
        if arriving:  # the server stores an upload meanwhile
            await store_upload(db, local, arriving.pop())
        return await place(written)

    monkeypatch.setattr(target, "place", place_while_serving)
    lines: list[str] = []
    try:
        done = await migrate(db, local, target, lines.append)
    finally:
        local.close()
        target.close()
    assert keys(config) == sorted(
        f"{config.s3_prefix}{hashlib.sha256(data).hexdigest()}" for data in (first, meanwhile)
    )
    return done, lines


@pytest.mark.gen_test(timeout=60)
async def test_migrate_takes_an_upload_to_a_group_it_has_walked_in_its_next_pass(
    db, config, tmp_path, monkeypatch
):
    first, _ = bytes_under("6")
    meanwhile, _ = bytes_under("3")  # a group the first pass has walked by then

    done, lines = await migrate_while_serving(db, config, tmp_path, monkeypatch, first, meanwhile)

    assert (done.copied, done.passes, done.settled) == (2, 3, True)
    assert "pass 2: 1 file(s) recorded since the last pass" in lines


@pytest.mark.gen_test(timeout=60)
async def test_migrate_takes_an_upload_to_a_group_yet_to_walk_in_the_same_pass(
    db, config, tmp_path, monkeypatch
):
    first, _ = bytes_under("3")
    meanwhile, _ = bytes_under("6")

    done, lines = await migrate_while_serving(db, config, tmp_path, monkeypatch, first, meanwhile)

    assert (done.copied, done.passes, done.settled) == (2, 2, True)
    assert not [line for line in lines if line.startswith("pass ")]


@pytest.fixture
def local_pair(tmp_path):
    """Two local stores, a source and a target for migrate()."""
    source = LocalBlobStore(tmp_path / "source" / "blobs")
    target = LocalBlobStore(tmp_path / "target" / "blobs")
    yield source, target
    source.close()
    target.close()


@pytest.mark.gen_test(timeout=60)
async def test_migrate_run_again_lists_the_target_a_group_at_a_time_and_asks_of_no_file(
    db, local_pair, monkeypatch
):
    source, target = local_pair
    for number in range(20):
        await store_upload(db, source, b"file %d" % number)
    await migrate(db, source, target)
    asked, listed = [], []
    monkeypatch.setattr(target, "exists", lambda sha256: asked.append(sha256))
    list_blobs = target.list_blobs

    def list_group(prefix=""):
        listed.append(prefix)
        return list_blobs(prefix)

    monkeypatch.setattr(target, "list_blobs", list_group)

    again = await migrate(db, source, target)

    assert (again.already_there, again.copied) == (20, 0)
    assert asked == [] and 0 < len(listed) <= 20 and all(len(p) == 2 for p in listed)


@pytest.mark.gen_test
async def test_migrate_copies_again_what_the_target_holds_at_another_size(db, local_pair):
    source, target = local_pair
    blob, _ = await store_upload(db, source, b"the whole file")
    cut_short = target.path(blob.sha256)
    cut_short.parent.mkdir(parents=True)
    cut_short.write_bytes(b"the wh")

    done = await migrate(db, source, target)

    assert (done.copied, done.already_there) == (1, 0)
    assert cut_short.read_bytes() == b"the whole file"


async def migrate_with_slow_places(db, local_pair, monkeypatch, count: int, place=None):
    """migrate() of `count` files, each in a group of its own (as in a small store), between
    two local stores, each place() in the target taking 10 ms (then running `place`); the
    Migrated, and the most places that were in flight at once."""
    source, target = local_pair
    for group in range(count):
        await store_upload(db, source, bytes_under(f"{group:02x}")[0])
    in_flight, most = 0, 0
    real_place = target.place

    async def slow_place(written):
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        try:
            await asyncio.sleep(0.01)
            return await (place or real_place)(written)
        finally:
            in_flight -= 1

    monkeypatch.setattr(target, "place", slow_place)
    done = await migrate(db, source, target)
    return done, most


@pytest.mark.gen_test
async def test_migrate_copies_small_files_several_at_once(db, local_pair, monkeypatch):
    done, most = await migrate_with_slow_places(db, local_pair, monkeypatch, 12)

    assert done.copied == 12
    assert most == COPIES_AT_ONCE


@pytest.mark.gen_test
async def test_migrate_copies_big_files_one_at_a_time(db, local_pair, monkeypatch):
    monkeypatch.setattr("hostd.migrate.SMALL_COPY_BYTES", 0)  # each file counts as big

    done, most = await migrate_with_slow_places(db, local_pair, monkeypatch, 4)

    assert done.copied == 4
    assert most == 1


@pytest.mark.gen_test
async def test_a_copy_that_reads_back_wrong_stops_migrate_and_the_copies_beside_it(
    db, local_pair, monkeypatch
):
    placed, after_the_end = [], []

    async def place_then_damage(written):
        if ended:
            after_the_end.append(written.sha256)
        store = written.handle._store
        there = await LocalBlobStore.place(store, written)
        placed.append(written.sha256)
        if len(placed) == 3:  # a disk that gives back other bytes
            store.path(written.sha256).write_bytes(b"other bytes")
        return there

    ended = False
    with pytest.raises(MigrationError, match="the copy reads back with another SHA-256"):
        await migrate_with_slow_places(db, local_pair, monkeypatch, 12, place=place_then_damage)
    ended = True

    await asyncio.sleep(0.05)  # a copy that went on would be placing its file by now
    assert after_the_end == []
    stored = [p for p in local_pair[1].root.rglob("*") if p.is_file()]
    damaged = [p.name for p in stored if hashlib.sha256(p.read_bytes()).hexdigest() != p.name]
    assert damaged == [placed[2]]  # and every other copy whole, or not made


@pytest.mark.gen_test(timeout=60)
async def test_migrate_holds_a_group_of_names_at_once_not_all_of_them(db, local_pair):
    """16,384 blobs recorded an hour ago (their bytes missing, the cheapest to go through):
    the names of all at once, and of those dealt with, peaked at 8 MB."""
    hour_ago = int(time.time()) - 3600
    await asyncio.gather(
        *(
            queries.register_upload(
                db,
                sha256=secrets.token_hex(32),
                size_bytes=1,
                content_type="application/octet-stream",
                original_name="f.bin",
                at=hour_ago,
            )
            for _ in range(16_384)
        )
    )
    source, target = local_pair
    tracemalloc.start()
    try:
        done = await migrate(db, source, target)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert (done.missing, done.passes, done.settled) == (16_384, 2, True)
    assert peak < 1024 * 1024


def test_accel_redirect_with_the_s3_store_is_one_warning_at_start(tmp_path, config, free_port):
    with socket.socket() as sock:  # S3 out of reach: the start stops right after the warning
        sock.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = dataclasses.replace(config, s3_endpoint=nobody)
    toml = '[server]\naccel_redirect = "/_hostd_blobs/"\n\n' + toml_for(config, tmp_path / "d")
    (tmp_path / "hostd.toml").write_text(toml)

    done = hostd("serve", "--config", "hostd.toml", "--port", str(free_port), cwd=tmp_path)

    warnings = [line for line in done.stderr.splitlines() if "accel_redirect" in line]
    assert len(warnings) == 1
    assert "WARNING hostd: accel_redirect is ignored with the S3 store: " in warnings[0]
