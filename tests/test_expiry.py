"""Expiry: what an upload asks for, what [retention] promises, and that it happens: not
served from the moment it expires, removed by `hostd prune` and by the server itself.

Time is the app's wall clock (the `wall_clock` fixture), moved by the tests, never slept."""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import hashlib
import json
import re
import signal
import sqlite3
import time
from importlib import resources
from pathlib import Path

import pytest
from helpers import (
    blob_files,
    hostd,
    multipart_body,
    png_of_one_colour,
    raw_sql,
    start,
    temp_files,
    wait_for_line,
)

from hostd import db as queries
from hostd import uploads
from hostd.config import ConfigError, load_config
from hostd.db import Database
from hostd.hashes import public_hash_candidates

HOUR = 3600
MINUTE = 60
MiB = 1024 * 1024


@pytest.fixture
def policy(app, config):
    """Give the running app a [retention] policy: policy(anonymous_hours=1, ...)."""

    def set_policy(**retention):
        app.settings["hostd_config"] = dataclasses.replace(config, **retention)

    return set_policy


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def http_date(epoch: float) -> str:
    return email.utils.formatdate(epoch, usegmt=True)


def hash_of(data: bytes) -> str:
    return public_hash_candidates(hashlib.sha256(data).hexdigest())[0]


async def upload(
    client,
    base_url,
    data: bytes = b"a file that expires",
    *,
    path: str = "/api/upload",
    name: str = "note.txt",
    fields: dict[str, str] | None = None,
    fields_after: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
):
    body, form_headers = multipart_body(
        fields=fields, files=[("file", name, data)], fields_after=fields_after
    )
    return await client.fetch(
        f"{base_url}{path}",
        method="POST",
        body=body,
        headers={**form_headers, **(headers or {})},
        raise_error=False,
    )


async def status(client, url: str, method: str = "GET") -> int:
    response = await client.fetch(url, method=method, raise_error=False)
    return response.code


async def nothing_stored(db, config) -> bool:
    return not blob_files(config) and not temp_files(config) and not await queries.all_uploads(db)


# -- the promise: served until its time, not a moment longer, then removed ---------------


@pytest.mark.gen_test
async def test_an_upload_with_a_one_hour_default_is_served_at_59_minutes_and_gone_at_61(
    http_client, base_url, policy, wall_clock, db, store, thumbs, config
):
    policy(anonymous_hours=1)
    data = b"kept for an hour"
    uploaded_at = wall_clock()

    answer = await upload(http_client, base_url, data, name="hour.txt")
    h = hash_of(data)
    urls = [f"{base_url}/{h}", f"{base_url}/{h}.txt", f"{base_url}/{h}/hour.txt"]

    assert answer.code == 200
    assert json.loads(answer.body)["expires_at"] == iso(uploaded_at + HOUR)
    assert answer.headers["X-Expires"] == http_date(uploaded_at + HOUR)

    wall_clock.advance(59 * MINUTE)
    assert [await status(http_client, url) for url in urls] == [200, 200, 200]

    wall_clock.advance(2 * MINUTE)
    assert [await status(http_client, url) for url in urls] == [404, 404, 404]
    assert await status(http_client, urls[0], "HEAD") == 404
    assert len(blob_files(config)) == 1  # not served, though not yet swept

    removed = await uploads.prune(db, store, thumbs, now=int(wall_clock()))

    assert [item.hash for item in removed] == [h]
    assert blob_files(config) == []
    assert await queries.all_uploads(db) == []


@pytest.mark.gen_test
async def test_expiry_is_to_the_second_cached_or_not(http_client, base_url, policy, wall_clock):
    policy(anonymous_hours=1)
    answer = await upload(http_client, base_url)
    url = f"{base_url}/{json.loads(answer.body)['hash']}"

    wall_clock.advance(HOUR - 1)
    assert await status(http_client, url) == 200  # now remembered in memory
    wall_clock.advance(1)
    assert await status(http_client, url) == 404


@pytest.mark.gen_test
async def test_an_expiring_file_may_be_cached_only_until_its_time(
    http_client, base_url, policy, wall_clock
):
    policy(anonymous_hours=2)
    expiring = json.loads((await upload(http_client, base_url, b"expiring")).body)["hash"]
    policy()
    forever = json.loads((await upload(http_client, base_url, b"forever")).body)["hash"]
    wall_clock.advance(30 * MINUTE)

    first = await http_client.fetch(f"{base_url}/{expiring}")
    second = await http_client.fetch(f"{base_url}/{forever}")

    assert first.headers["Cache-Control"] == f"public, max-age={90 * MINUTE}"
    assert second.headers["Cache-Control"] == "public, max-age=31536000, immutable"


@pytest.mark.gen_test
async def test_an_expired_image_has_no_thumbnail(http_client, base_url, policy, wall_clock):
    policy(anonymous_hours=1)
    answer = await upload(http_client, base_url, png_of_one_colour(8, 8), name="a.png")
    thumb = f"{base_url}/thumbs/{json.loads(answer.body)['hash']}.webp"
    assert await status(http_client, thumb) == 200

    wall_clock.advance(HOUR)

    assert await status(http_client, thumb) == 404


@pytest.mark.gen_test
async def test_files_lists_an_upload_until_it_expires(
    http_client, base_url, policy, wall_clock, login
):
    policy(account_hours=2)
    alice = await login()
    answer = await upload(
        http_client, base_url, name="mine.txt", path="/upload?api=1", headers=alice.headers
    )
    assert answer.code == 200

    wall_clock.advance(HOUR)
    before = (await http_client.fetch(f"{base_url}/files", headers=alice.headers)).body.decode()
    wall_clock.advance(HOUR)
    after = (await http_client.fetch(f"{base_url}/files", headers=alice.headers)).body.decode()

    assert "mine.txt" in before
    assert f'expires <time datetime="{iso(wall_clock())}">' in before
    assert "mine.txt" not in after
    assert "You have no files yet" in after


# -- several uploads of the same bytes ------------------------------------------------------


@pytest.mark.gen_test
async def test_the_bytes_live_while_any_upload_of_them_does(
    http_client, base_url, policy, wall_clock, db, store, thumbs, config
):
    policy(anonymous_hours=1)
    data = b"uploaded twice, half an hour apart"
    url = f"{base_url}/{hash_of(data)}"
    await upload(http_client, base_url, data)
    wall_clock.advance(30 * MINUTE)
    await upload(http_client, base_url, data)

    wall_clock.advance(31 * MINUTE)  # the first upload has expired, the second has not
    assert await status(http_client, url) == 200
    first = await uploads.prune(db, store, thumbs, now=int(wall_clock()))
    assert [item.blob_gone for item in first] == [False]
    assert await status(http_client, url) == 200
    assert len(blob_files(config)) == 1

    wall_clock.advance(30 * MINUTE)
    assert await status(http_client, url) == 404
    second = await uploads.prune(db, store, thumbs, now=int(wall_clock()))
    assert [item.blob_gone for item in second] == [True]
    assert blob_files(config) == []


@pytest.mark.gen_test
async def test_deleting_the_upload_that_kept_the_bytes_alive_ends_them_at_once(
    http_client, base_url, policy, wall_clock, login, db
):
    policy(anonymous_hours=1)  # an account's uploads are kept forever
    alice = await login()
    data = b"anonymous for an hour, and alice's for ever"
    url = f"{base_url}/{hash_of(data)}"
    await upload(http_client, base_url, data)
    await upload(http_client, base_url, data, path="/upload?api=1", headers=alice.headers)
    wall_clock.advance(2 * HOUR)
    assert await status(http_client, url) == 200  # alice's upload keeps it, now from memory
    (mine,) = [u.id for u in await queries.all_uploads(db) if u.user_id == alice.user.id]

    deleted = await http_client.fetch(
        f"{base_url}/files/{mine}", method="DELETE", headers=alice.headers
    )

    assert deleted.code == 200
    assert await status(http_client, url) == 404  # the anonymous upload expired an hour ago


@pytest.mark.gen_test
async def test_expired_bytes_uploaded_again_are_served_again_at_once(
    http_client, base_url, policy, wall_clock
):
    policy(anonymous_hours=1)
    data = b"expired, then uploaded again before any prune"
    url = f"{base_url}/{hash_of(data)}"
    await upload(http_client, base_url, data)
    wall_clock.advance(2 * HOUR)
    assert await status(http_client, url) == 404

    again = await upload(http_client, base_url, data)

    assert json.loads(again.body)["expires_at"] == iso(wall_clock() + HOUR)
    assert await status(http_client, url) == 200


# -- asking for an expiry ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "ask",
    [
        {"fields": {"expires": "5"}},
        {"fields_after": {"expires": "5"}},  # known only once the body has ended
        {"headers": {"Expires": "5"}},
        {"path": "/api/upload?expires=5"},  # ShareX's "Parameters"
    ],
    ids=["field-before-the-file", "field-after-the-file", "header", "url"],
)
@pytest.mark.gen_test
async def test_an_upload_may_ask_for_hours(http_client, base_url, wall_clock, ask):
    answer = await upload(http_client, base_url, **ask)

    assert answer.code == 200
    assert json.loads(answer.body)["expires_at"] == iso(wall_clock() + 5 * HOUR)
    assert answer.headers["X-Expires"] == http_date(wall_clock() + 5 * HOUR)


@pytest.mark.gen_test
async def test_an_upload_may_ask_for_an_iso_8601_time_in_any_zone(
    http_client, base_url, wall_clock
):
    at = int(wall_clock()) + 3 * HOUR
    in_paris_summer = time.strftime("%Y-%m-%dT%H:%M:%S+02:00", time.gmtime(at + 2 * HOUR))

    utc = await upload(http_client, base_url, b"one", fields={"expires": iso(at)})
    offset = await upload(http_client, base_url, b"two", headers={"Expires": in_paris_summer})

    assert json.loads(utc.body)["expires_at"] == iso(at)
    assert json.loads(offset.body)["expires_at"] == iso(at)


@pytest.mark.gen_test
async def test_an_upload_that_asks_nothing_gets_its_kinds_default(
    http_client, base_url, policy, wall_clock, login
):
    policy(anonymous_hours=24, account_hours=720)
    alice = await login()

    anonymous = await upload(http_client, base_url, b"anonymous", path="/upload?api=1")
    hers = await upload(http_client, base_url, b"hers", path="/upload?api=1", headers=alice.headers)

    assert anonymous.headers["X-Expires"] == http_date(wall_clock() + 24 * HOUR)
    assert hers.headers["X-Expires"] == http_date(wall_clock() + 720 * HOUR)


@pytest.mark.gen_test
async def test_without_retention_files_never_expire(http_client, base_url):
    json_answer = await upload(http_client, base_url, b"json")
    text_answer = await upload(http_client, base_url, b"text", path="/upload?api=1")

    assert json.loads(json_answer.body)["expires_at"] is None
    assert json_answer.headers["X-Expires"] == "never"
    assert text_answer.body == f"OK {hash_of(b'text')}\n".encode()
    assert text_answer.headers["X-Expires"] == "never"


@pytest.mark.gen_test
async def test_what_an_upload_asks_is_capped_by_max_hours(
    http_client, base_url, policy, wall_clock
):
    policy(anonymous_hours=24, max_hours=48)

    longer = await upload(http_client, base_url, b"long", fields={"expires": "1000"})
    far = await upload(http_client, base_url, b"far", headers={"Expires": "2100-01-01T00:00:00Z"})
    shorter = await upload(http_client, base_url, b"short", fields={"expires": "2"})

    assert json.loads(longer.body)["expires_at"] == iso(wall_clock() + 48 * HOUR)
    assert json.loads(far.body)["expires_at"] == iso(wall_clock() + 48 * HOUR)
    assert json.loads(shorter.body)["expires_at"] == iso(wall_clock() + 2 * HOUR)


@pytest.mark.gen_test
async def test_max_hours_caps_a_longer_default_as_it_caps_what_an_upload_asks(
    http_client, base_url, policy, wall_clock, login, tmp_path
):
    path = tmp_path / "capped.toml"
    path.write_text("[retention]\nanonymous_hours = 24\naccount_hours = 100\nmax_hours = 48\n")
    loaded = load_config(path)
    policy(anonymous_hours=24, account_hours=loaded.account_hours, max_hours=loaded.max_hours)
    alice = await login()

    hers = await upload(http_client, base_url, b"hers", path="/upload?api=1", headers=alice.headers)
    page = (await http_client.fetch(f"{base_url}/api")).body.decode()

    assert hers.headers["X-Expires"] == http_date(wall_clock() + 48 * HOUR)
    assert "Anonymous uploads are kept for 1 day, uploads to an account for 2 days." in page


@pytest.mark.gen_test
async def test_an_expires_header_may_be_an_http_date_or_what_date_r_writes(
    http_client, base_url, wall_clock
):
    at = int(wall_clock()) + 5 * HOUR
    date_r = email.utils.formatdate(at + 3600, localtime=False).replace("-0000", "+0100")

    answer = await upload(http_client, base_url, b"dated", headers={"Expires": http_date(at)})
    offset = await upload(http_client, base_url, b"offset", headers={"Expires": date_r})
    past = await upload(
        http_client, base_url, b"past", headers={"Expires": "Sun, 06 Nov 1994 08:49:37 GMT"}
    )

    assert json.loads(answer.body)["expires_at"] == iso(at)
    assert json.loads(offset.body)["expires_at"] == iso(at)  # 13:00 +0100 is 12:00 UTC
    assert past.code == 400 and "is in the past" in json.loads(past.body)["error"]


@pytest.mark.gen_test
async def test_expires_may_be_unix_time_in_milliseconds_as_0x0_st_takes_it(
    http_client, base_url, wall_clock
):
    at = int(wall_clock()) + 5 * HOUR

    answer = await upload(http_client, base_url, fields={"expires": str(at * 1000 + 999)})
    header = await upload(http_client, base_url, b"by header", headers={"Expires": str(at * 1000)})

    assert json.loads(answer.body)["expires_at"] == iso(at)
    assert json.loads(header.body)["expires_at"] == iso(at)


@pytest.mark.gen_test
async def test_bigger_files_are_kept_for_less_time(http_client, base_url, policy, wall_clock):
    policy(anonymous_hours=720, hours_by_size=((1024, 168), (MiB, 24)))

    small = await upload(http_client, base_url, b"s" * 1023)
    middle = await upload(http_client, base_url, b"m" * 1024)
    big = await upload(http_client, base_url, b"b" * MiB, fields={"expires": "100"})

    assert json.loads(small.body)["expires_at"] == iso(wall_clock() + 720 * HOUR)
    assert json.loads(middle.body)["expires_at"] == iso(wall_clock() + 168 * HOUR)
    assert json.loads(big.body)["expires_at"] == iso(wall_clock() + 24 * HOUR)


@pytest.mark.gen_test
async def test_the_upload_page_says_when_the_file_expires(http_client, base_url, wall_clock, login):
    alice = await login()

    answer = await upload(
        http_client, base_url, path="/upload", fields={"expires": "3"}, headers=alice.headers
    )

    shown = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(wall_clock() + 3 * HOUR))
    assert answer.code == 200
    assert f">{shown}</time>" in answer.body.decode()
    assert answer.headers["X-Expires"] == http_date(wall_clock() + 3 * HOUR)


# -- bad expiries: a 400 that says why, in the endpoint's own format, and nothing stored ----

BAD_EXPIRIES = [
    ("soon", "must be a whole number of hours, or an ISO 8601 time"),
    ("0", "must be from 1 to 1000000 hours"),
    ("1000001", "must be from 1 to 1000000 hours"),
    ("99999999999999999999999", "is more than 1000000 hours away"),  # as milliseconds
    ("1700000000", "or a time: Unix time in milliseconds"),  # Unix seconds: not taken
    ("1000000000000", "is in the past"),  # 2001-09-09, in milliseconds
    ("1.5", "must be a whole number of hours"),
    ("-3", "must be a whole number of hours"),
    ("\uff12\uff14", "must be a whole number of hours"),  # fullwidth "24"
    ("2001-01-01T00:00:00Z", "is in the past"),
    ("2030-01-01T00:00:00", "needs a time zone"),
    ("2030-02-30T00:00:00Z", "is not a real time"),
    ("Thu, 31 Feb 2030 13:00:00 +0100", "is not a real time"),
    ("2030-01-01", "must be a whole number of hours, or an ISO 8601 time"),
    ("9999-12-31T23:59:59Z", "is more than 1000000 hours away"),
]


@pytest.mark.parametrize(("value", "why"), BAD_EXPIRIES, ids=[v for v, _ in BAD_EXPIRIES])
@pytest.mark.gen_test
async def test_a_bad_expires_field_after_the_file_is_a_400_and_nothing_is_stored(
    http_client, base_url, db, config, value, why
):
    answer = await upload(http_client, base_url, fields_after={"expires": value})

    assert answer.code == 400
    error = json.loads(answer.body)
    assert error["status"] is False
    assert error["error"].startswith("the expires field ")
    assert why in error["error"]
    assert await nothing_stored(db, config)


@pytest.mark.parametrize(
    ("path", "body_starts"),
    [
        ("/api/upload", b'{"status": false, "error": "the Expires header '),
        ("/upload?api=1", b"ERROR the Expires header "),
        ("/upload", b"<!doctype html>"),
    ],
)
@pytest.mark.gen_test
async def test_a_bad_expires_header_is_refused_before_the_body_in_each_endpoints_format(
    http_client, base_url, db, config, path, body_starts
):
    answer = await upload(http_client, base_url, path=path, headers={"Expires": "tomorrow"})

    assert answer.code == 400
    assert answer.body.startswith(body_starts)
    assert b"must be a whole number of hours, or an ISO 8601 time" in answer.body
    assert answer.headers["Connection"] == "close"  # answered before the body was read
    assert await nothing_stored(db, config)


@pytest.mark.gen_test
async def test_asking_twice_is_a_400(http_client, base_url, db, config):
    answer = await upload(
        http_client,
        base_url,
        path="/upload?api=1",
        fields_after={"expires": "2"},
        headers={"Expires": "2"},
    )

    assert answer.code == 400
    assert answer.body == (
        b"ERROR send the expiry once: an 'expires' field, an Expires header or ?expires= in"
        b" the URL, not two of them\n"
    )
    assert await nothing_stored(db, config)


@pytest.mark.gen_test
async def test_a_put_may_ask_in_its_url(http_client, base_url, wall_clock):
    answer = await http_client.fetch(
        f"{base_url}/api/upload/notes.txt?expires=168", method="PUT", body=b"for a week"
    )

    assert answer.headers["X-Expires"] == http_date(wall_clock() + 168 * HOUR)


@pytest.mark.parametrize(
    "path, ask, message",
    [
        ("/upload?api=1&expires=2", {"headers": {"Expires": "2"}}, b"not two of them"),
        ("/upload?api=1&expires=2", {"fields_after": {"expires": "2"}}, b"not two of them"),
        ("/upload?api=1&expires=2&expires=3", {}, b"the URL has ?expires= twice"),
        ("/upload?api=1&expires=soon", {}, b"the URL's ?expires= must be"),
    ],
    ids=["and-a-header", "and-a-field", "twice", "not-a-time"],
)
@pytest.mark.gen_test
async def test_asking_in_the_url_beside_another_or_badly_is_a_400(
    http_client, base_url, db, config, path, ask, message
):
    answer = await upload(http_client, base_url, path=path, **ask)

    assert answer.code == 400
    assert answer.body.startswith(b"ERROR ")
    assert message in answer.body
    assert await nothing_stored(db, config)


@pytest.mark.gen_test
async def test_an_empty_field_beside_the_header_asks_nothing_so_only_the_header_counts(
    http_client, base_url, wall_clock
):
    """As the README says: a field and a header are a 400 when both have a value."""
    answer = await upload(
        http_client, base_url, fields_after={"expires": ""}, headers={"Expires": "24"}
    )

    assert answer.code == 200
    assert json.loads(answer.body)["expires_at"] == time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall_clock() + 24 * 3600)
    )
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    assert "a field and a header both with a value" in readme


@pytest.mark.gen_test
async def test_a_time_that_passes_while_the_body_arrives_is_a_400(
    http_port, http_server, db, config, wall_clock
):
    """The header was good when the request's head was read; by the end of the body it is
    past. (The server says "100 Continue" once it has taken the head.)"""
    body, headers = multipart_body(files=[("file", "slow.txt", b"slow")])
    head = "".join(
        f"{name}: {value}\r\n"
        for name, value in {
            **headers,
            "Host": "127.0.0.1",
            "Content-Length": str(len(body)),
            "Expires": iso(wall_clock() + 10),
            "Expect": "100-continue",
            "Connection": "close",
        }.items()
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
    try:
        writer.write(f"POST /api/upload HTTP/1.1\r\n{head}\r\n".encode())
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 (Continue)\r\n\r\n"

        wall_clock.advance(MINUTE)
        writer.write(body)
        answer = await reader.read()
    finally:
        writer.close()

    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 400 Bad Request"
    error = json.loads(rest.partition(b"\r\n\r\n")[2])["error"]
    assert error.startswith("the Expires header is in the past")
    assert await nothing_stored(db, config)


# -- the policy, in words, from the config ---------------------------------------------------


@pytest.mark.gen_test
async def test_the_api_page_states_this_instances_policy(http_client, base_url, policy):
    default = (await http_client.fetch(f"{base_url}/api")).body.decode()
    policy(
        anonymous_hours=24,
        account_hours=720,
        max_hours=8760,
        hours_by_size=((100 * MiB, 168), (1024 * MiB, 12)),
    )
    configured = (await http_client.fetch(f"{base_url}/api")).body.decode()

    assert "Files are kept until they are deleted, unless their upload asks for an expiry." in (
        default
    )
    for sentence in [
        "Anonymous uploads are kept for 1 day, uploads to an account for 30 days.",
        "An upload may ask for a time of its own, up to 365 days: no upload is kept longer.",
        "Bigger files are kept for less time: files of 100 MiB or more at most 7 days;"
        " of 1 GiB or more at most 12 hours.",
    ]:
        assert sentence in configured
    assert '"expires_at": "2030-01-31T12:00:00Z"' in configured


def keep_options(page: bytes) -> list[tuple[str, str]]:
    """The upload page's "Keep" choices: (value, words)."""
    select = re.search(
        r'<select id="upload-expires" name="expires">(.*?)</select>', page.decode(), re.S
    )
    assert select is not None
    return re.findall(r'<option value="(\d*)">([^<]*)</option>', select.group(1))


@pytest.mark.gen_test
async def test_the_upload_page_offers_how_long_to_keep_within_the_policy(
    http_client, base_url, policy, login
):
    alice = await login()
    default = keep_options((await http_client.fetch(f"{base_url}/")).body)
    policy(anonymous_hours=24, account_hours=720, max_hours=8760)
    anonymous = keep_options((await http_client.fetch(f"{base_url}/")).body)
    signed_in = keep_options((await http_client.fetch(f"{base_url}/", headers=alice.headers)).body)

    assert default == [
        ("", "until deleted (the default)"),
        ("1", "for 1 hour"),
        ("24", "for 1 day"),
        ("168", "for 7 days"),
        ("720", "for 30 days"),
        ("8760", "for 365 days"),
    ]
    assert anonymous == [
        ("", "for 1 day (the default)"),
        ("1", "for 1 hour"),
        ("168", "for 7 days"),  # longer than the default: an upload may ask for it
        ("720", "for 30 days"),
    ]
    assert signed_in[0] == ("", "for 30 days (the default)") and ("720", "for 30 days") not in (
        signed_in
    )


@pytest.mark.gen_test
async def test_the_upload_pages_keep_choice_is_an_expires_field_before_the_file(
    http_client, base_url, wall_clock
):
    """Without JavaScript the form itself posts it, in the page's order."""
    page = (await http_client.fetch(f"{base_url}/")).body.decode()
    assert page.index('name="expires"') < page.index('name="file"')
    body, headers = multipart_body(fields={"expires": "24"}, files=[("file", "k.txt", b"kept")])

    answer = await http_client.fetch(
        f"{base_url}/api/upload", method="POST", body=body, headers=headers
    )

    assert json.loads(answer.body)["expires_at"] == iso(wall_clock() + 24 * 3600)


@pytest.mark.parametrize(
    ("toml", "error"),
    [
        ("anonymous_hours = 0", "retention.anonymous_hours must be from 1 to 1000000 hours"),
        ("account_hours = 1000001", "retention.account_hours must be from 1 to 1000000 hours"),
        ('max_hours = "a week"', "retention.max_hours must be int"),
        ("hours_by_size = 5", "retention.hours_by_size must be a list of [bytes, hours] pairs"),
        ("hours_by_size = [[1024]]", "retention.hours_by_size must be a list of [bytes, hours]"),
        ("hours_by_size = [[1024, 0]]", "needs bytes of 0 or more and hours from 1 to 1000000"),
        ("hours_by_size = [[-1, 5]]", "needs bytes of 0 or more and hours from 1 to 1000000"),
        ("hours_by_size = [[1024, true]]", "retention.hours_by_size must be a list of"),
        ("max_days = 5", "unknown key retention.max_days"),
    ],
)
def test_a_retention_mistake_stops_the_start_and_names_the_key(tmp_path, toml, error):
    path = tmp_path / "hostd.toml"
    path.write_text(f"[retention]\n{toml}\n")

    with pytest.raises(ConfigError, match=re.escape(error)):
        load_config(path)


def test_retention_is_read_from_hostd_toml(tmp_path):
    path = tmp_path / "hostd.toml"
    path.write_text(
        "[retention]\nanonymous_hours = 24\naccount_hours = 720\nmax_hours = 8760\n"
        "hours_by_size = [[1073741824, 12], [104857600, 168]]\n"
    )

    config = load_config(path)

    assert (config.anonymous_hours, config.account_hours, config.max_hours) == (24, 720, 8760)
    assert config.hours_by_size == ((104857600, 168), (1073741824, 12))


# -- the database keeps each blob's expiry: the latest of its uploads' -----------------------


@pytest.mark.gen_test
async def test_a_blob_expires_with_the_last_of_its_uploads(db):
    async def add(expires_at):
        _, upload = await queries.register_upload(
            db,
            sha256="c" * 64,
            size_bytes=1,
            content_type="text/plain",
            original_name="c",
            expires_at=expires_at,
        )
        return upload

    async def blob_expiry():
        return (await queries.get_blob_by_sha256(db, "c" * 64)).expires_at

    await add(100)
    first = await blob_expiry()
    later = await add(300)
    await add(200)
    latest = await blob_expiry()
    forever = await add(None)
    never = await blob_expiry()
    await db.write(raw_sql("DELETE FROM uploads WHERE id = ?", (forever.id,)))
    back = await blob_expiry()
    await db.write(raw_sql("DELETE FROM uploads WHERE id = ?", (later.id,)))

    assert (first, latest, never, back, await blob_expiry()) == (100, 300, None, 300, 200)


@pytest.mark.gen_test
async def test_a_database_from_before_expiry_keeps_every_file_forever(tmp_path):
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    for number in (1, 2, 3):  # the schema as it was, with a file uploaded the old way
        (sql,) = resources.files("hostd.migrations").glob(f"{number:04d}_*.sql")
        conn.executescript(f"BEGIN;\n{sql.read_text()}\nPRAGMA user_version = {number};\nCOMMIT;")
    conn.execute("INSERT INTO blobs VALUES (?, 'oldoldoldold', 1, 'text/plain', 5)", ("d" * 64,))
    conn.execute(
        "INSERT INTO uploads (sha256, original_name, created_at) VALUES (?, 'o', 5)", ("d" * 64,)
    )
    conn.close()

    database = await Database.open(path)
    try:
        blob = await queries.get_blob(database, "oldoldoldold")
        (upload,) = await queries.all_uploads(database)
    finally:
        await database.close()

    assert blob.expires_at is None and blob.alive_at(2**40)
    assert upload.expires_at is None


# -- hostd prune, and the server's own sweep -------------------------------------------------


async def expired_and_kept(http_client, base_url, policy, wall_clock) -> tuple[str, str]:
    """One upload that expired an hour ago by the real clock (the app's clock was two hours
    behind it when it was made, and its policy an hour), and one kept for ever."""
    wall_clock.now = float(int(time.time()) - 2 * HOUR)
    policy(anonymous_hours=1)
    gone = await upload(http_client, base_url, b"expired an hour ago", name="old.txt")
    policy()
    kept = await upload(http_client, base_url, b"kept for ever", name="kept.txt")
    return json.loads(gone.body)["hash"], json.loads(kept.body)["hash"]


@pytest.mark.gen_test
async def test_hostd_prune_dry_run_lists_what_it_would_remove_and_changes_nothing(
    http_client, base_url, policy, wall_clock, db, config, tmp_path
):
    gone, kept = await expired_and_kept(http_client, base_url, policy, wall_clock)
    before = (blob_files(config), await queries.all_uploads(db))

    result = hostd("prune", "--dry-run", "--data-dir", str(config.data_dir), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["hash", "upload", "expired", "bytes", "owner", "name"]
    assert lines[1].startswith(gone) and lines[1].split()[-4:] == [
        "would",
        "remove",
        "anonymous",
        "old.txt",
    ]
    assert len(lines) == 2
    assert "prune: would remove 1 expired upload and 1 file (19 bytes)" in result.stderr
    assert (blob_files(config), await queries.all_uploads(db)) == before


@pytest.mark.gen_test
async def test_hostd_prune_removes_expired_uploads_and_their_bytes(
    http_client, base_url, policy, wall_clock, db, config, tmp_path
):
    gone, kept = await expired_and_kept(http_client, base_url, policy, wall_clock)

    result = hostd("prune", "--json", "--data-dir", str(config.data_dir), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["dry_run"] is False
    assert [(u["hash"], u["name"], u["bytes_removed"]) for u in answer["uploads"]] == [
        (gone, "old.txt", True)
    ]
    assert "prune: removed 1 expired upload and 1 file (19 bytes)" in result.stderr
    assert [u.original_name for u in await queries.all_uploads(db)] == ["kept.txt"]
    assert [p.name for p in blob_files(config)] == [hashlib.sha256(b"kept for ever").hexdigest()]
    assert await queries.get_blob(db, gone) is None
    again = hostd("prune", "--data-dir", str(config.data_dir), cwd=tmp_path)
    assert "prune: removed 0 expired uploads and 0 files (0 bytes)" in again.stderr


def test_hostd_prune_refuses_what_it_does_not_know(tmp_path):
    result = hostd("prune", "--dry-rnu", "--data-dir", str(tmp_path / "d"), cwd=tmp_path)

    assert result.returncode == 2
    assert "unrecognized arguments: --dry-rnu" in result.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.gen_test(timeout=60)
async def test_the_server_removes_expired_uploads_by_itself(
    http_client, base_url, policy, wall_clock, config, tmp_path, free_port
):
    gone, kept = await expired_and_kept(http_client, base_url, policy, wall_clock)
    assert len(blob_files(config)) == 2

    proc = start(["serve", "--data-dir", str(config.data_dir), "--port", str(free_port)], tmp_path)
    try:
        line = wait_for_line(proc, "prune: removed")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)

    assert "removed 1 expired upload(s), 1 file(s)" in line
    assert [p.name for p in blob_files(config)] == [hashlib.sha256(b"kept for ever").hexdigest()]


def test_the_shipped_retention_examples_load(tmp_path):
    shipped = (Path(__file__).parent.parent / "hostd.toml").read_text()
    section = shipped[shipped.index("[retention]") :].splitlines()
    examples = [
        line.removeprefix("# ") for line in section if line.startswith("# ") and " = " in line
    ]
    path = tmp_path / "hostd.toml"
    path.write_text("[retention]\n" + "\n".join(examples) + "\n")

    config = load_config(path)

    assert (config.anonymous_hours, config.account_hours, config.max_hours) == (720, 8760, 8760)
    assert config.hours_by_size == ((104857600, 168), (1073741824, 24))
