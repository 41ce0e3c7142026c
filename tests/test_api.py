"""API keys: the /api page with htmx partials, Bearer uploads, invalidation."""

from __future__ import annotations

import dataclasses
import html
import json
import re
import urllib.parse
from pathlib import Path

import pytest
import tornado.web
from conftest import XSRF, form_body
from helpers import blob_files, multipart_body, png_of_one_colour, raw_exchange, temp_files

from hostd import db as queries
from hostd.throttle import AddressLimiter

KEY = re.compile(r"hk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}")

# Each test with an app runs on both stores (conftest.pytest_generate_tests).
STORAGE_BACKENDS = ("local", "s3")


async def make_key(client, base_url, signed_in, label="laptop", htmx=True) -> tuple[str, str]:
    headers = {**signed_in.headers, **({"HX-Request": "true"} if htmx else {})}
    response = await client.fetch(
        f"{base_url}/api/keys", method="POST", body=form_body(label=label), headers=headers
    )
    body = response.body.decode()
    (token,) = set(KEY.findall(body))  # the key, and the ShareX uploader made with it
    return token, body


async def upload(client, base_url, data=b"keyed bytes", token=None, cookie=None):
    body, headers = multipart_body(files=[("file", "a.txt", data)])
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if cookie:
        headers["Cookie"] = cookie
    return await client.fetch(
        f"{base_url}/api/upload", method="POST", body=body, headers=headers, raise_error=False
    )


@pytest.mark.gen_test
async def test_visitors_see_the_docs_and_a_sign_in_link(http_client, base_url):
    response = await http_client.fetch(f"{base_url}/api")

    body = response.body.decode()
    assert 'href="/login?next=%2Fapi"' in body
    assert 'id="api-keys"' not in body


@pytest.mark.gen_test
async def test_signed_in_users_get_the_key_form(http_client, base_url, login):
    alice = await login()

    response = await http_client.fetch(f"{base_url}/api", headers=alice.headers)

    body = response.body.decode()
    assert 'id="api-keys"' in body
    assert 'hx-post="/api/keys"' in body and 'action="/api/keys"' in body
    assert "There is currently no limit to the number of API keys that can be issued." in body
    assert response.headers["Vary"] == "HX-Request"


@pytest.mark.gen_test
async def test_generating_a_key_with_htmx_answers_only_the_key_section(
    http_client, base_url, login
):
    alice = await login()

    token, body = await make_key(http_client, base_url, alice)

    assert body.lstrip().startswith('<section id="api-keys"')
    assert "<html" not in body
    assert "it will not be shown again" in body
    assert "laptop" in body


async def post_key_form(client, base_url, signed_in, label):
    """The key form posted without JavaScript: (the answer, the reveal cookie it set)."""
    posted = await client.fetch(
        f"{base_url}/api/keys",
        method="POST",
        body=form_body(label=label),
        headers=signed_in.headers,
        follow_redirects=False,
        raise_error=False,
    )
    cookies = posted.headers.get_list("Set-Cookie")
    (reveal,) = [c.split(";")[0] for c in cookies if c.startswith("hostd_new_key=")]
    return posted, reveal


@pytest.mark.gen_test
async def test_without_javascript_the_key_is_shown_once_on_the_page_redirected_to(
    http_client, base_url, login, db
):
    alice = await login()

    posted, reveal = await post_key_form(http_client, base_url, alice, "plain form")
    headers = {**alice.headers, "Cookie": f"{alice.headers['Cookie']}; {reveal}"}
    shown = await http_client.fetch(f"{base_url}/api", headers=headers)
    reloaded = await http_client.fetch(f"{base_url}/api", headers=headers)  # same cookie again

    assert posted.code == 303 and posted.headers["Location"] == "/api"
    assert not KEY.search(posted.body.decode())
    body = shown.body.decode()
    assert "<html" in body and "it will not be shown again" in body
    (token,) = set(KEY.findall(body))
    assert shown.headers["Cache-Control"] == "no-store"
    assert token not in reloaded.body.decode() and "it will not be shown again" not in (
        reloaded.body.decode()
    )
    assert len(await queries.list_api_keys(db, user_id=alice.user.id)) == 1


@pytest.mark.gen_test
async def test_a_new_key_is_shown_only_to_its_owner(http_client, base_url, login):
    alice, bob = await login(), await login()
    _, reveal = await post_key_form(http_client, base_url, alice, "alice's")

    as_bob = await http_client.fetch(
        f"{base_url}/api", headers={"Cookie": f"{bob.headers['Cookie']}; {reveal}"}
    )
    as_alice = await http_client.fetch(
        f"{base_url}/api", headers={"Cookie": f"{alice.headers['Cookie']}; {reveal}"}
    )

    assert not KEY.search(as_bob.body.decode())
    assert KEY.search(as_alice.body.decode())  # bob's try did not use up alice's view


@pytest.mark.gen_test
async def test_a_key_waiting_for_its_showing_is_in_the_database_only_sealed(
    http_client, base_url, login, db, config
):
    alice = await login()

    _, reveal = await post_key_form(http_client, base_url, alice, "sealed")
    (row,) = await db.read(lambda tx: tx.fetchall("SELECT * FROM key_reveals"))
    headers = {"Cookie": f"{alice.headers['Cookie']}; {reveal}"}
    shown = await http_client.fetch(f"{base_url}/api", headers=headers)
    left = await db.read(lambda tx: tx.fetchall("SELECT * FROM key_reveals"))

    (token,) = set(KEY.findall(shown.body.decode()))
    name, value = reveal.split("=", 1)
    one_time = tornado.web.decode_signed_value(config.cookie_secret, name, value.strip('"'))
    stored = " ".join(str(value) for value in row)
    assert token not in stored and token.encode().hex() not in stored
    assert one_time is not None and one_time.decode() not in stored  # nor what unseals it
    assert left == []  # taken out by the showing


@pytest.mark.gen_test
async def test_a_key_not_shown_within_two_minutes_is_not_shown(
    http_client, base_url, login, wall_clock
):
    alice = await login()

    _, reveal = await post_key_form(http_client, base_url, alice, "too late")
    wall_clock.advance(121)
    late = await http_client.fetch(
        f"{base_url}/api", headers={"Cookie": f"{alice.headers['Cookie']}; {reveal}"}
    )

    assert not KEY.search(late.body.decode())


@pytest.mark.sqlite_only  # reads SQLite's own files
@pytest.mark.gen_test
async def test_a_key_is_shown_once_and_stored_only_as_argon2(
    http_client, base_url, login, db, config
):
    alice = await login()
    token, _ = await make_key(http_client, base_url, alice)

    later = await http_client.fetch(f"{base_url}/api", headers=alice.headers)
    (key,) = await queries.list_api_keys(db, user_id=alice.user.id)
    secret = token.split("_", 2)[2]
    raw = config.db_path.read_bytes() + (config.data_dir / "hostd.sqlite3-wal").read_bytes()

    assert token not in later.body.decode()
    assert f"hk_{key.key_id}_…" in later.body.decode()
    assert key.secret_hash.startswith("$argon2id$")
    assert secret.encode() not in raw


@pytest.mark.gen_test
async def test_a_bearer_upload_is_registered_to_the_keys_account(http_client, base_url, login, db):
    alice = await login()
    token, _ = await make_key(http_client, base_url, alice)

    response = await upload(http_client, base_url, token=token)

    assert response.code == 200
    (key,) = await queries.list_api_keys(db, user_id=alice.user.id)
    (stored,) = await queries.all_uploads(db)
    assert (stored.user_id, stored.api_key_id) == (alice.user.id, key.id)
    assert key.last_used_at is not None


@pytest.mark.parametrize(
    "header",
    [
        "Bearer nonsense",
        "Bearer hk_0123456789abcdef_" + "A" * 43,
        "Basic dXNlcjpwYXNz",
        "Bearer ",
    ],
    ids=["malformed", "unknown", "other-scheme", "empty"],
)
@pytest.mark.gen_test
async def test_a_bad_key_is_a_401_and_nothing_is_stored(http_client, base_url, db, config, header):
    body, headers = multipart_body(files=[("file", "a.txt", b"should not land")])

    response = await http_client.fetch(
        f"{base_url}/api/upload",
        method="POST",
        body=body,
        headers={**headers, "Authorization": header},
        raise_error=False,
    )

    assert response.code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert json.loads(response.body)["status"] is False
    assert await queries.all_uploads(db) == []
    assert blob_files(config) == []


@pytest.mark.gen_test
async def test_a_wrong_secret_for_a_real_key_id_is_a_401(http_client, base_url, login):
    alice = await login()
    token, _ = await make_key(http_client, base_url, alice)
    wrong = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")

    response = await upload(http_client, base_url, token=wrong)

    assert response.code == 401


@pytest.mark.parametrize(
    "method, path",
    [("POST", "/api/upload"), ("PUT", "/api/upload/a.txt"), ("POST", "/api/tus/")],
)
@pytest.mark.gen_test
async def test_a_key_in_another_hosts_header_is_a_401_not_an_anonymous_upload(
    http_client, base_url, login, db, method, path
):
    # chibisafe's clients send X-Api-Key: read as no key, the upload would be anonymous.
    alice = await login()
    token, _ = await make_key(http_client, base_url, alice)
    body, headers = multipart_body(files=[("file", "a.txt", b"whose?")])
    headers = headers if path == "/api/upload" else {"Tus-Resumable": "1.0.0", "Upload-Length": "3"}

    response = await http_client.fetch(
        f"{base_url}{path}",
        method=method,
        body=body if path == "/api/upload" else (b"abc" if method == "PUT" else b""),
        headers={**headers, "X-Api-Key": token},
        raise_error=False,
    )

    assert response.code == 401
    assert json.loads(response.body)["error"] == (
        "send the API key as 'Authorization: Bearer <key>', not as X-Api-Key"
    )
    assert await queries.all_uploads(db) == []


BAD_KEY = "hk_0123456789abcdef_" + "A" * 43


@pytest.mark.gen_test
async def test_an_address_past_its_invalid_keys_is_told_to_wait_and_costs_no_check(
    http_client, base_url, login, app, auth, clock
):
    alice = await login()
    known, _ = await make_key(http_client, base_url, alice)
    assert (await upload(http_client, base_url, b"checked once", token=known)).code == 200
    unchecked, _ = await make_key(http_client, base_url, alice, label="phone")  # new: no check yet
    app.settings["hostd_invalid_keys"] = AddressLimiter(3, clock=clock)

    refused = [(await upload(http_client, base_url, token=BAD_KEY)).code for _ in range(3)]
    checks = auth.verifications["key"]
    waiting = await upload(http_client, base_url, token=BAD_KEY)
    checks_while_waiting = auth.verifications["key"] - checks
    replacement = await upload(http_client, base_url, b"a new key", token=unchecked)
    still_known = await upload(http_client, base_url, b"cached", token=known)
    clock.advance(3600)
    later = await upload(http_client, base_url, token=BAD_KEY)

    assert refused == [401, 401, 401]
    assert waiting.code == 429
    assert json.loads(waiting.body) == {
        "status": False,
        "error": "too many invalid API keys from your address (3 an hour); retry in 3600 s",
    }
    assert waiting.headers["Retry-After"] == "3600"
    assert checks_while_waiting == 0  # no Argon2 for a 429
    assert replacement.code == 200  # a usable key is checked whatever came before it
    assert still_known.code == 200
    assert later.code == 401  # an hour on, checked again


@pytest.mark.gen_test
async def test_a_valid_key_costs_none_of_the_addresss_invalid_keys(
    http_client, base_url, login, app, clock
):
    alice = await login()
    tokens = [(await make_key(http_client, base_url, alice, label=f"k{n}"))[0] for n in range(3)]
    app.settings["hostd_invalid_keys"] = AddressLimiter(1, clock=clock)

    valid = [
        (await upload(http_client, base_url, b"%d" % n, token=t)).code for n, t in enumerate(tokens)
    ]
    invalid = [(await upload(http_client, base_url, token=BAD_KEY)).code for _ in range(2)]

    assert valid == [200, 200, 200]
    assert invalid == [401, 429]


@pytest.mark.parametrize(
    "method, path",
    [
        ("PUT", "/api/upload/a.txt"),
        ("POST", "/api/tus/"),
        ("DELETE", "/api/files/abcdefgh"),
    ],
)
@pytest.mark.gen_test
async def test_every_url_that_takes_a_key_counts_invalid_ones(
    http_client, base_url, app, clock, method, path
):
    app.settings["hostd_invalid_keys"] = AddressLimiter(1, clock=clock)
    headers = {"Authorization": f"Bearer {BAD_KEY}", "Tus-Resumable": "1.0.0", "Upload-Length": "3"}

    answers = [
        await http_client.fetch(
            f"{base_url}{path}",
            method=method,
            headers=headers,
            body=b"abc" if method == "PUT" else (b"" if method == "POST" else None),
            raise_error=False,
            allow_nonstandard_methods=True,
        )
        for _ in range(2)
    ]

    assert [a.code for a in answers] == [401, 429]
    assert answers[1].headers["Retry-After"] == "3600"
    assert json.loads(answers[1].body)["error"].startswith("too many invalid API keys")


@pytest.mark.gen_test
async def test_invalidation_takes_effect_on_the_very_next_request(
    http_client, base_url, login, auth
):
    alice = await login()
    token, _ = await make_key(http_client, base_url, alice)
    assert (await upload(http_client, base_url, b"1", token=token)).code == 200
    assert (await upload(http_client, base_url, b"2", token=token)).code == 200  # cached now
    key_id = token.split("_")[1]

    row = await http_client.fetch(
        f"{base_url}/api/keys/{key_id}/invalidate",
        method="POST",
        body=form_body(confirm="yes"),
        headers={**alice.headers, "HX-Request": "true"},
    )
    after = await upload(http_client, base_url, b"3", token=token)

    assert row.body.decode().lstrip().startswith(f'<tr id="key-{key_id}"')
    assert "invalidated" in row.body.decode()
    assert after.code == 401


@pytest.mark.gen_test
async def test_invalidation_elsewhere_beats_the_cache(http_client, base_url, login, db):
    # As when `hostd key invalidate` runs in another process: this process's cache is not told.
    alice = await login()
    token, _ = await make_key(http_client, base_url, alice)
    assert (await upload(http_client, base_url, b"1", token=token)).code == 200

    await queries.invalidate_api_key(db, key_id=token.split("_")[1])

    assert (await upload(http_client, base_url, b"2", token=token)).code == 401


@pytest.mark.gen_test
async def test_invalidating_without_javascript_asks_first(http_client, base_url, login, db):
    alice = await login()
    token, _ = await make_key(http_client, base_url, alice)
    key_id = token.split("_")[1]

    asked = await http_client.fetch(
        f"{base_url}/api/keys/{key_id}/invalidate",
        method="POST",
        body=form_body(),
        headers={"Cookie": alice.cookie},
    )
    still = await queries.get_api_key(db, key_id=key_id)
    done = await http_client.fetch(
        f"{base_url}/api/keys/{key_id}/invalidate",
        method="POST",
        body=form_body(confirm="yes"),
        headers={"Cookie": alice.cookie},
        follow_redirects=False,
        raise_error=False,
    )

    assert "Invalidate the key laptop?" in asked.body.decode()
    assert still is not None and still.usable
    assert done.code == 303 and done.headers["Location"] == "/api"
    assert not (await queries.get_api_key(db, key_id=key_id)).usable


@pytest.mark.gen_test
async def test_nobody_can_invalidate_someone_elses_key(http_client, base_url, login, db):
    alice, mallory = await login(), await login()
    token, _ = await make_key(http_client, base_url, alice)
    key_id = token.split("_")[1]

    response = await http_client.fetch(
        f"{base_url}/api/keys/{key_id}/invalidate",
        method="POST",
        body=form_body(confirm="yes"),
        headers=mallory.headers,
        raise_error=False,
    )

    assert response.code == 404
    assert (await queries.get_api_key(db, key_id=key_id)).usable


@pytest.mark.gen_test
async def test_making_a_key_needs_the_xsrf_token(http_client, base_url, login):
    alice = await login()

    response = await http_client.fetch(
        f"{base_url}/api/keys",
        method="POST",
        body="label=x",
        headers={"Cookie": alice.cookie},
        raise_error=False,
    )

    assert response.code == 403


@pytest.mark.gen_test
async def test_max_keys_caps_usable_keys(http_client, base_url, login, app):
    app.settings["hostd_config"] = dataclasses.replace(app.settings["hostd_config"], max_keys=1)
    alice = await login()
    await make_key(http_client, base_url, alice)

    response = await http_client.fetch(
        f"{base_url}/api/keys",
        method="POST",
        body=form_body(label="second"),
        headers=alice.headers,
        raise_error=False,
    )

    assert response.code == 409
    assert "the most allowed here" in response.body.decode()


@pytest.mark.gen_test
async def test_the_api_ignores_the_browser_session(http_client, base_url, login, db):
    alice = await login()

    response = await upload(http_client, base_url, cookie=alice.cookie)

    assert response.code == 200
    assert [u.user_id for u in await queries.all_uploads(db)] == [None]


@pytest.mark.parametrize("token_in", ["header", "form"], ids=["page-script", "no-javascript"])
@pytest.mark.gen_test
async def test_a_signed_in_browser_upload_is_registered_to_the_account(
    http_client, base_url, login, db, token_in
):
    alice = await login()
    fields = {"_xsrf": XSRF} if token_in == "form" else {}
    body, headers = multipart_body(fields, [("file", "mine.txt", b"from the browser")])
    if token_in == "header":
        headers["X-XSRFToken"] = XSRF

    response = await http_client.fetch(
        f"{base_url}/upload?api=1",
        method="POST",
        body=body,
        headers={**headers, "Cookie": alice.cookie},
    )

    assert response.body.startswith(b"OK ")
    assert [u.user_id for u in await queries.all_uploads(db)] == [alice.user.id]


@pytest.mark.parametrize(
    ("fields", "extra_headers"),
    [({}, {}), ({"_xsrf": "2|forged|token|1"}, {}), ({}, {"X-XSRFToken": "forged"})],
    ids=["none", "wrong-field", "wrong-header"],
)
@pytest.mark.gen_test
async def test_a_signed_in_browser_upload_without_the_token_is_refused(
    http_client, base_url, login, db, config, fields, extra_headers
):
    alice = await login()
    body, headers = multipart_body(fields, [("file", "mine.txt", b"cross-site")])

    response = await http_client.fetch(
        f"{base_url}/upload?api=1",
        method="POST",
        body=body,
        headers={**headers, **extra_headers, "Cookie": alice.cookie},
        raise_error=False,
    )

    assert response.code == 403
    assert b"xsrf" in response.body
    assert await queries.all_uploads(db) == []
    assert temp_files(config) == [] and blob_files(config) == []


@pytest.mark.gen_test
async def test_same_bytes_from_two_accounts_one_blob_two_registrations(
    http_client, base_url, login, db, config
):
    alice, bob = await login(), await login()
    alice_key, _ = await make_key(http_client, base_url, alice)
    bob_key, _ = await make_key(http_client, base_url, bob)

    a = await upload(http_client, base_url, b"shared", token=alice_key)
    b = await upload(http_client, base_url, b"shared", token=bob_key)

    assert json.loads(a.body)["hash"] == json.loads(b.body)["hash"]
    assert len(blob_files(config)) == 1
    assert [u.user_id for u in await queries.all_uploads(db)] == [alice.user.id, bob.user.id]


@pytest.mark.gen_test
async def test_without_anonymous_uploads_a_keyless_upload_is_told_how_to_get_a_key(
    http_client, base_url, app
):
    app.settings["hostd_config"] = dataclasses.replace(
        app.settings["hostd_config"], allow_anonymous=False
    )

    api = await upload(http_client, base_url)
    body, headers = multipart_body(files=[("file", "a.txt", b"x")])
    plain = await http_client.fetch(
        f"{base_url}/upload?api=1", method="POST", body=body, headers=headers, raise_error=False
    )

    assert api.code == 401 and plain.code == 401
    assert "generate an API key on the /api page" in json.loads(api.body)["error"]
    assert plain.body.startswith(b"ERROR uploads need an account")
    index = (await http_client.fetch(f"{base_url}/")).body.decode()
    docs = (await http_client.fetch(f"{base_url}/api")).body.decode()
    assert "uploads are anonymous" not in index
    assert "takes uploads from accounts only" in index
    assert f"curl -H 'Authorization: Bearer api_key' -F file=@image.png {base_url}" in index
    assert "does not accept anonymous uploads" in docs


@pytest.mark.gen_test
async def test_keys_never_reach_the_log(http_client, base_url, login, caplog, access_log):
    alice = await login()
    token, _ = await make_key(http_client, base_url, alice)

    await upload(http_client, base_url, token=token)
    await upload(http_client, base_url, token=token[:-2] + "xx")

    logged = caplog.text + access_log.text
    assert "200 POST /api/upload (127.0.0.1)" in logged
    assert "401 POST /api/upload (127.0.0.1)" in logged
    assert token not in logged
    assert token.split("_", 2)[2] not in logged


# -- ShareX ----------------------------------------------------------------------------


def fill_sharex_template(template: str, answer: dict) -> str:
    """What ShareX does with "{json:urls.ext}": look the dotted path up in the JSON answer,
    for each such part of the template."""

    def look_up(match: re.Match) -> str:
        value = answer
        for part in match.group(1).split("."):
            value = value[part]
        return value

    filled = re.sub(r"\{json:([\w.]+)\}", look_up, template)
    assert filled != template, template
    return filled


async def upload_as_sharex(client, sxcu: dict, data: bytes):
    """Send a file the way ShareX does with this custom uploader, and fetch its link."""
    assert sxcu["RequestMethod"] == "POST" and sxcu["Body"] == "MultipartFormData"
    body, headers = multipart_body(files=[(sxcu["FileFormName"], "Screenshot.png", data)])
    response = await client.fetch(
        sxcu["RequestURL"],
        method="POST",
        body=body,
        headers={**headers, **sxcu.get("Headers", {})},
        raise_error=False,
    )
    answer = json.loads(response.body)
    if response.code != 200:
        return response.code, fill_sharex_template(sxcu["ErrorMessage"], answer)
    link = fill_sharex_template(sxcu["URL"], answer)
    return response.code, (await client.fetch(link)).body


@pytest.mark.gen_test
async def test_the_sharex_uploader_uploads_anonymously_and_links_the_file(
    http_client, base_url, db
):
    response = await http_client.fetch(f"{base_url}/api/sharex.sxcu")
    sxcu = json.loads(response.body)

    status, fetched = await upload_as_sharex(http_client, sxcu, b"\x89PNG\r\n\x1a\n shot")

    port = base_url.rsplit(":", 1)[1]
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="127.0.0.1_{port}.sxcu"'
    )
    assert sxcu["RequestURL"] == f"{base_url}/api/upload"
    assert "Headers" not in sxcu
    assert sxcu["Name"] == f"hostd (127.0.0.1:{port}, anonymous)"
    assert "ImageUploader" in sxcu["DestinationType"]
    assert status == 200 and fetched == b"\x89PNG\r\n\x1a\n shot"
    assert [u.user_id for u in await queries.all_uploads(db)] == [None]


@pytest.mark.gen_test
async def test_the_sharex_uploader_shows_a_thumbnail_of_each_image(http_client, base_url):
    sxcu = json.loads((await http_client.fetch(f"{base_url}/api/sharex.sxcu")).body)
    body, headers = multipart_body(files=[("file", "Screenshot.png", png_of_one_colour(64, 48))])
    answer = json.loads(
        (
            await http_client.fetch(sxcu["RequestURL"], method="POST", body=body, headers=headers)
        ).body
    )

    thumbnail = await http_client.fetch(fill_sharex_template(sxcu["ThumbnailURL"], answer))

    assert thumbnail.headers["Content-Type"] == "image/webp"
    assert thumbnail.body.startswith(b"RIFF")


@pytest.mark.gen_test
async def test_without_anonymous_uploads_there_is_no_anonymous_sharex_uploader(
    http_client, base_url, app
):
    app.settings["hostd_config"] = dataclasses.replace(
        app.settings["hostd_config"], allow_anonymous=False
    )

    uploader = await http_client.fetch(f"{base_url}/api/sharex.sxcu", raise_error=False)
    page = (await http_client.fetch(f"{base_url}/api")).body.decode()

    assert uploader.code == 404
    assert "generate an API key on the API page" in uploader.body.decode()
    assert 'href="/api/sharex.sxcu"' not in page
    assert "offers no uploader without a key" in page


@pytest.mark.gen_test
async def test_a_new_key_comes_with_a_sharex_uploader_that_uses_it(
    http_client, base_url, login, db
):
    alice = await login()
    token, body = await make_key(http_client, base_url, alice)
    (href,) = re.findall(r'href="data:application/json;charset=utf-8,([^"]+)"', body)
    sxcu = json.loads(urllib.parse.unquote(html.unescape(href)))

    status, fetched = await upload_as_sharex(http_client, sxcu, b"alice's screenshot")
    await queries.invalidate_api_key(db, key_id=token.split("_")[1])
    refused = await upload_as_sharex(http_client, sxcu, b"after invalidation")

    assert sxcu["Headers"] == {"Authorization": f"Bearer {token}"}
    assert sxcu["Name"].endswith(", your key)")  # not the anonymous one's name
    assert status == 200 and fetched == b"alice's screenshot"
    assert [u.user_id for u in await queries.all_uploads(db)] == [alice.user.id]
    assert refused == (401, "the API key is not valid (unknown or invalidated)")


@pytest.mark.gen_test
async def test_the_api_page_shows_the_screenshot_tools_with_this_instances_url(
    http_client, base_url
):
    body = (await http_client.fetch(f"{base_url}/api")).body.decode()

    assert 'href="/api/sharex.sxcu"' in body
    assert f"-F 'file=@-;filename=screenshot.png' {base_url}/api/upload" in body


@pytest.mark.parametrize(
    ("length", "status", "error"),
    [
        (b"9" * 5000, 413, "the file is larger than the limit of 8388608 bytes"),
        (b"99999999999999999999", 413, "the file is larger than the limit of 8388608 bytes"),
        (b"\xb2", 400, "the Content-Length header is not a number of bytes"),  # "²" in latin-1
        (b"+5", 400, "the Content-Length header is not a number of bytes"),
    ],
)
@pytest.mark.gen_test
async def test_an_odd_content_length_is_refused_before_the_body(
    http_server, http_port, length, status, error
):
    head = (
        b"POST /api/upload HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: " + length + b"\r\n\r\n"
    )

    answer = await raw_exchange(http_port, head, 0)

    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split(b" ")[1] == str(status).encode()
    assert json.loads(rest.partition(b"\r\n\r\n")[2]) == {"status": False, "error": error}


@pytest.mark.parametrize("method", ["GET", "HEAD", "PATCH", "DELETE"])
@pytest.mark.gen_test
async def test_the_upload_url_answers_only_post_and_put_and_says_so(http_client, base_url, method):
    """(A PUT is the file as the body: tests/test_upload_put.py.)"""
    response = await http_client.fetch(
        f"{base_url}/api/upload",
        method=method,
        body=b"x" if method == "PATCH" else None,
        raise_error=False,
    )

    assert response.code == 405
    assert response.headers["Allow"] == "POST, PUT, OPTIONS"
    if method != "HEAD":
        assert json.loads(response.body) == {
            "status": False,
            "error": "Method Not Allowed: POST a multipart form with the file in a field named"
            " 'file' (curl -F file=@FILE), or PUT the file itself as the body (curl -T FILE)",
        }


def raw_form(parts: list[tuple[list[str], bytes]], boundary: str = "b") -> tuple[bytes, dict]:
    """A multipart body from (header lines, content) parts, exactly as given."""
    out = bytearray()
    for header_lines, content in parts:
        out += f"--{boundary}\r\n".encode()
        out += "".join(f"{line}\r\n" for line in header_lines).encode() + b"\r\n"
        out += content + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


FILE_PART = 'Content-Disposition: form-data; name="file"; filename="a.txt"'


def text_part(name: str, value: bytes) -> tuple[list[str], bytes]:
    return [f'Content-Disposition: form-data; name="{name}"'], value


# Each limit the README states: a form just within it, one just past it, and the refusal.
FORM_LIMITS = {
    "a text field of 1,024 bytes": (
        lambda n: raw_form([text_part("note", b"x" * n), ([FILE_PART], b"ok")]),
        1024,
        "form field 'note' is over 1024 bytes",
    ),
    "16 parts in all": (
        lambda n: raw_form(
            [text_part(f"f{i}", b"x") for i in range(n - 1)] + [([FILE_PART], b"ok")]
        ),
        16,
        "the form has more than 16 parts, its limit",
    ),
    "8 header lines in a part": (
        lambda n: raw_form([([FILE_PART] + [f"X-Extra-{i}: x" for i in range(n - 1)], b"ok")]),
        8,
        "a part of the form has more than 8 header lines, the limit of a part",
    ),
    "a header line of 4,096 bytes": (
        lambda n: raw_form([([FILE_PART, "X-Long: " + "x" * (n - 8)], b"ok")]),
        4096,
        "a header line in the form is longer than 4096 bytes, the limit of a line",
    ),
    "a boundary of 200 characters": (
        lambda n: raw_form([([FILE_PART], b"ok")], boundary="b" * n),
        200,
        "the multipart/form-data boundary is longer than 200 characters, its limit",
    ),
}


@pytest.mark.parametrize("limit", FORM_LIMITS)
@pytest.mark.gen_test
async def test_the_form_limits_hold_as_the_readme_states_them(http_client, base_url, limit):
    make_form, most, refusal = FORM_LIMITS[limit]

    answers = []
    for size in (most, most + 1):
        body, headers = make_form(size)
        answers.append(
            await http_client.fetch(
                f"{base_url}/api/upload",
                method="POST",
                body=body,
                headers=headers,
                raise_error=False,
            )
        )

    within, past = answers
    assert within.code == 200
    assert past.code == 400
    assert json.loads(past.body) == {"status": False, "error": refusal}
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    assert limit in readme


@pytest.mark.gen_test
async def test_a_body_64_kib_past_the_file_limit_is_a_413_whichever_parts_carry_it(
    http_client, base_url, config
):
    junk_header = 'Content-Disposition: form-data; name="junk"; filename="junk.bin"'
    junk = b"x" * (config.max_upload_bytes + 64 * 1024)
    body, headers = raw_form([([FILE_PART], b"ok"), ([junk_header], junk)])

    response = await http_client.fetch(
        f"{base_url}/api/upload", method="POST", body=body, headers=headers, raise_error=False
    )

    assert response.code == 413
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    assert "a body more than 64 KiB larger than the file limit is a 413" in readme
