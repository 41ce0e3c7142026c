"""Deleting uploads: each upload's deletion link (GET asks, POST deletes, then 410), and
DELETE /api/files/<hash> with the owner's key; shared bytes stay while an upload needs them."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import urllib.parse

import pytest
from conftest import form_body
from helpers import blob_files, multipart_body, text_of

from hostd import db as queries
from hostd import uploads

TOKEN = re.compile(r"/delete/([A-Za-z0-9_-]+)$")

# Each test with an app runs on both stores (conftest.pytest_generate_tests).
STORAGE_BACKENDS = ("local", "s3")


async def api_upload(client, base_url, data: bytes, name: str = "note.txt", key=None) -> dict:
    """POST /api/upload (with a Bearer key when given); the JSON answer, with the
    X-Delete-Url header beside it as "header"."""
    body, headers = multipart_body(files=[("file", name, data)])
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    response = await client.fetch(
        f"{base_url}/api/upload", method="POST", body=body, headers=headers
    )
    return {**json.loads(response.body), "header": response.headers.get("X-Delete-Url")}


async def make_key(db, auth, user) -> str:
    minted = await auth.mint_key()
    await queries.insert_api_key(
        db, user_id=user.id, key_id=minted.key_id, secret_hash=minted.secret_hash, label="t"
    )
    return minted.token


async def fetch(client, url: str, method: str = "GET", **kwargs):
    if method in ("POST", "PUT", "PATCH"):
        kwargs.setdefault("body", b"")
    return await client.fetch(
        url, method=method, raise_error=False, follow_redirects=False, **kwargs
    )


async def api_delete(client, base_url, hash: str, key: str | None = None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = await fetch(client, f"{base_url}/api/files/{hash}", method="DELETE", headers=headers)
    return response.code, json.loads(response.body)


def without_nonces(page: bytes) -> str:
    """A page without what changes on every answer (CSP nonces, a new xsrf token)."""
    return re.sub(r'(nonce="|"X-XSRFToken": ")[^"]+"', "", page.decode())


# -- the link in every upload answer --------------------------------------------------


@pytest.mark.gen_test
async def test_the_json_answer_carries_a_delete_url_beside_the_seeds_fields(
    http_client, base_url, db, config
):
    answer = await api_upload(http_client, base_url, b"keep or delete", "a.txt")

    token = TOKEN.search(answer["delete_url"]).group(1)
    assert answer["header"] == answer["delete_url"]
    assert answer["delete_url"] == f"{base_url}/delete/{token}"
    assert set(answer) == {"hash", "status", "urls", "expires_at", "delete_url", "header"}
    assert answer["status"] is True
    assert answer["urls"] == {
        "base": f"{base_url}/",
        "full": f"{base_url}/{answer['hash']}/a.txt",
        "ext": f"{base_url}/{answer['hash']}.txt",
        "hash": f"{base_url}/{answer['hash']}",
    }
    assert len(token) >= 22  # at least 128 random bits of URL-safe base64 (it is 256)
    # Stored only as its SHA-256: the token itself is nowhere in the database's files.
    link = await queries.get_delete_link(db, token_hash=hashlib.sha256(token.encode()).hexdigest())
    assert link is not None and link.file is not None
    assert link.file.blob.hash == answer["hash"]
    stored = b"".join(p.read_bytes() for p in config.data_dir.glob("hostd.sqlite3*"))
    assert token.encode() not in stored


@pytest.mark.parametrize(
    ("query", "extra"),
    [("?api=1", {}), ("", {}), ("", {"HX-Request": "true"})],
    ids=["plain text", "html page", "htmx fragment"],
)
@pytest.mark.gen_test
async def test_every_answer_of_upload_carries_x_delete_url(http_client, base_url, query, extra):
    body, headers = multipart_body(files=[("file", "page.txt", f"bytes {query}{extra}".encode())])

    response = await http_client.fetch(
        f"{base_url}/upload{query}", method="POST", body=body, headers={**headers, **extra}
    )

    delete_url = response.headers["X-Delete-Url"]
    assert TOKEN.search(delete_url)
    if query == "?api=1":
        assert re.fullmatch(r"OK [A-Za-z0-9_-]{12}\n", response.body.decode())
    else:
        assert f'href="{delete_url}"' in response.body.decode()
    confirm = await fetch(http_client, delete_url)
    assert confirm.code == 200 and b"page.txt" in confirm.body


@pytest.mark.gen_test
async def test_each_upload_gets_its_own_link(http_client, base_url):
    first = await api_upload(http_client, base_url, b"same bytes")
    second = await api_upload(http_client, base_url, b"same bytes")

    assert first["hash"] == second["hash"]
    assert first["delete_url"] != second["delete_url"]


# -- GET asks, POST deletes -----------------------------------------------------------------


@pytest.mark.gen_test
async def test_opening_the_link_deletes_nothing_and_shows_what_it_would_delete(
    http_client, base_url
):
    answer = await api_upload(http_client, base_url, b"previewed in a chat", "chat.txt")
    url = answer["delete_url"]

    opened = [await fetch(http_client, url, method) for method in ("GET", "HEAD", "GET")]

    page = opened[0].body.decode()
    assert [r.code for r in opened] == [200, 200, 200]
    assert "Delete this file?" in page and "chat.txt" in page and answer["hash"] in page
    assert f'<form method="post" action="{urllib.parse.urlsplit(url).path}">' in page
    assert opened[0].headers["Cache-Control"] == "no-store"
    assert opened[0].headers["Referrer-Policy"] == "no-referrer"
    assert (await fetch(http_client, answer["urls"]["hash"])).body == b"previewed in a chat"


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
@pytest.mark.gen_test
async def test_no_other_method_deletes(http_client, base_url, method):
    answer = await api_upload(http_client, base_url, b"only post deletes")

    response = await fetch(http_client, answer["delete_url"], method)

    assert response.code == 405
    assert response.headers["Allow"] == "GET, HEAD, POST, DELETE, OPTIONS"
    assert (await fetch(http_client, answer["urls"]["hash"])).code == 200


@pytest.mark.gen_test
async def test_a_delete_on_the_link_deletes_and_answers_the_apis_json(
    http_client, base_url, config
):
    answer = await api_upload(http_client, base_url, b"curl -X DELETE me")
    url = answer["delete_url"]

    deleted = await fetch(http_client, url, "DELETE")  # linx's and Zipline's habit
    again = await fetch(http_client, url, "DELETE")
    made_up = await fetch(http_client, f"{base_url}/delete/{'x' * 43}", "DELETE")
    cut_short = await fetch(http_client, url[:-1], "DELETE")

    assert deleted.code == 200
    assert deleted.headers["Content-Type"] == "application/json; charset=utf-8"
    assert json.loads(deleted.body) == {"status": True, "deleted": 1}
    assert (await fetch(http_client, answer["urls"]["hash"])).code == 404
    assert blob_files(config) == []
    for refused, code, says in [
        (again, 410, "deleted already"),
        (made_up, 404, "not valid"),
        (cut_short, 400, "not a deletion link"),
    ]:
        assert refused.code == code
        assert json.loads(refused.body)["status"] is False
        assert says in json.loads(refused.body)["error"]


@pytest.mark.gen_test
async def test_a_post_asking_for_json_gets_json_and_a_browser_still_gets_the_page(
    http_client, base_url
):
    by_script = await api_upload(http_client, base_url, b"a script deletes")
    by_browser = await api_upload(http_client, base_url, b"a browser deletes")
    browser_accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"

    script = await fetch(
        http_client, by_script["delete_url"], "POST", headers={"Accept": "application/json"}
    )
    again = await fetch(
        http_client, by_script["delete_url"], "POST", headers={"Accept": "application/json"}
    )
    browser = await fetch(
        http_client, by_browser["delete_url"], "POST", headers={"Accept": browser_accept}
    )

    assert (script.code, json.loads(script.body)) == (200, {"status": True, "deleted": 1})
    assert again.code == 410 and json.loads(again.body)["status"] is False
    assert browser.code == 200 and browser.headers["Content-Type"].startswith("text/html")
    assert (await fetch(http_client, by_browser["urls"]["hash"])).code == 404


@pytest.mark.gen_test
async def test_a_post_deletes_the_upload_and_its_bytes_then_the_link_is_gone(
    http_client, base_url, config
):
    answer = await api_upload(http_client, base_url, b"delete me", "me.txt")
    url = answer["delete_url"]

    deleted = await fetch(http_client, url, "POST")  # as curl -X POST: no cookie, no xsrf

    assert deleted.code == 200
    assert "Deleted" in deleted.body.decode() and "me.txt" in deleted.body.decode()
    assert (await fetch(http_client, answer["urls"]["hash"])).code == 404
    assert (await fetch(http_client, answer["urls"]["full"])).code == 404
    assert blob_files(config) == []
    for method in ("GET", "POST"):
        again = await fetch(http_client, url, method)
        assert again.code == 410
        assert "deleted already" in again.body.decode()


@pytest.mark.gen_test
async def test_a_post_from_a_signed_in_browser_needs_no_xsrf_token(http_client, base_url, login):
    alice = await login()
    answer = await api_upload(http_client, base_url, b"from the page's button")

    response = await fetch(
        http_client, answer["delete_url"], "POST", headers={"Cookie": alice.cookie}
    )

    assert response.code == 200
    assert (await fetch(http_client, answer["urls"]["hash"])).code == 404


@pytest.mark.gen_test
async def test_bytes_another_upload_shares_stay_until_the_last_upload_goes(
    http_client, base_url, config
):
    first = await api_upload(http_client, base_url, b"shared bytes", "one.txt")
    second = await api_upload(http_client, base_url, b"shared bytes", "two.txt")

    by_first = await fetch(http_client, first["delete_url"], "POST")
    still = await fetch(http_client, first["urls"]["hash"])
    stored_meanwhile = len(blob_files(config))
    by_second = await fetch(http_client, second["delete_url"], "POST")

    assert by_first.code == 200
    assert "Someone else uploaded the same bytes" in by_first.body.decode()
    assert (still.code, still.body) == (200, b"shared bytes")
    assert stored_meanwhile == 1
    assert by_second.code == 200 and "answer 404" in by_second.body.decode()
    assert (await fetch(http_client, first["urls"]["hash"])).code == 404
    assert blob_files(config) == []


@pytest.mark.gen_test
async def test_a_link_deletes_only_its_own_upload(http_client, base_url, db):
    mine = await api_upload(http_client, base_url, b"mine")
    theirs = await api_upload(http_client, base_url, b"theirs")

    await fetch(http_client, theirs["delete_url"], "POST")

    assert (await fetch(http_client, mine["urls"]["hash"])).code == 200
    assert (await fetch(http_client, theirs["urls"]["hash"])).code == 404
    assert len(await queries.all_uploads(db)) == 1


@pytest.mark.gen_test
async def test_a_tampered_token_is_a_404_that_says_nothing_about_the_file(
    http_client, base_url, db
):
    answer = await api_upload(http_client, base_url, b"tamper with my link")
    url = answer["delete_url"]
    flipped = url[:-1] + ("A" if url[-1] != "A" else "B")
    made_up = f"{base_url}/delete/{'x' * 43}"

    answers = [await fetch(http_client, u, m) for u in (flipped, made_up) for m in ("GET", "POST")]

    assert [a.code for a in answers] == [404, 404, 404, 404]
    assert "This deletion link is not valid" in answers[0].body.decode()
    # The same page for a token next to a real one as for one next to nothing at all.
    assert len({without_nonces(a.body) for a in answers}) == 1
    assert len(await queries.all_uploads(db)) == 1
    assert (await fetch(http_client, answer["urls"]["hash"])).code == 200


@pytest.mark.parametrize(
    "token",
    ["x" * 10_000, "short", "x" * 44, "x" * 42 + "!", "x" * 42 + "%C3%A9", "", "x" * 43 + "%00"],
    ids=["huge", "short", "one too long", "punctuation", "non-ascii", "empty", "nul"],
)
@pytest.mark.gen_test
async def test_what_cannot_be_a_token_is_a_clear_400_and_deletes_nothing(
    http_client, base_url, db, token
):
    await api_upload(http_client, base_url, b"untouched")

    answers = [await fetch(http_client, f"{base_url}/delete/{token}", m) for m in ("GET", "POST")]

    assert [a.code for a in answers] == [400, 400]
    assert "This is not a deletion link" in answers[1].body.decode()
    assert len(await queries.all_uploads(db)) == 1


@pytest.mark.gen_test
async def test_a_link_answers_410_after_its_owner_deleted_the_upload_on_files(
    http_client, base_url, login, db, auth
):
    alice = await login()
    key = await make_key(db, auth, alice.user)
    answer = await api_upload(http_client, base_url, b"alice's file", key=key)
    (upload,) = await queries.all_uploads(db)

    await http_client.fetch(
        f"{base_url}/files/{upload.id}/delete",
        method="POST",
        body=form_body(confirm="yes"),
        headers={"Cookie": alice.cookie},
        follow_redirects=False,
        raise_error=False,
    )

    assert (await fetch(http_client, answer["delete_url"])).code == 410


@pytest.mark.gen_test
async def test_a_link_answers_410_after_an_admin_took_the_file_down(
    http_client, base_url, db, store, app
):
    answer = await api_upload(http_client, base_url, b"reported")
    blob = await queries.get_blob(db, answer["hash"])

    await uploads.take_down(db, store, app.settings["hostd_thumbs"], sha256=blob.sha256)

    assert (await fetch(http_client, answer["delete_url"], "POST")).code == 410


@pytest.mark.gen_test
async def test_two_posts_at_once_delete_once(http_client, base_url, db, config):
    answer = await api_upload(http_client, base_url, b"clicked twice")

    answers = await asyncio.gather(
        *(fetch(http_client, answer["delete_url"], "POST") for _ in range(2))
    )

    assert sorted(a.code for a in answers) == [200, 410]
    assert await queries.all_uploads(db) == []
    assert blob_files(config) == []


@pytest.mark.gen_test
async def test_deletion_tokens_never_reach_the_log(http_client, base_url, caplog, access_log):
    caplog.set_level("INFO")
    answer = await api_upload(http_client, base_url, b"logged")
    token = TOKEN.search(answer["delete_url"]).group(1)

    for method in ("GET", "POST", "GET"):
        await fetch(http_client, answer["delete_url"], method)
    await fetch(http_client, answer["delete_url"][:-1], "POST")

    await fetch(http_client, answer["delete_url"] + "/", "GET")  # a slash too many: a 404

    logged = caplog.text + access_log.text
    assert logged.count("/delete/<token>") == 4
    assert f"404 GET /delete/{token[:6]}..." in logged
    assert token not in logged and token[:-1] not in logged


@pytest.mark.gen_test
async def test_the_link_of_an_expired_upload_says_it_expired(http_client, base_url, wall_clock):
    body, headers = multipart_body(files=[("file", "brief.txt", b"an hour")])
    response = await http_client.fetch(
        f"{base_url}/api/upload", method="POST", body=body, headers={**headers, "Expires": "1"}
    )
    link = json.loads(response.body)["delete_url"]

    wall_clock.advance(3601)
    opened = await fetch(http_client, link)

    assert opened.code == 410
    assert "This upload has expired" in text_of(opened.body)


# -- DELETE /api/files/<hash> -----------------------------------------------------------------


@pytest.mark.gen_test
async def test_the_owner_deletes_their_uploads_of_a_hash_with_their_key(
    http_client, base_url, login, db, auth, config
):
    alice = await login()
    key = await make_key(db, auth, alice.user)
    first = await api_upload(http_client, base_url, b"twice mine", key=key)
    await api_upload(http_client, base_url, b"twice mine", "again.txt", key=key)

    status, answer = await api_delete(http_client, base_url, first["hash"], key)

    assert (status, answer) == (200, {"status": True, "deleted": 2})
    assert (await fetch(http_client, first["urls"]["hash"])).code == 404
    assert await queries.all_uploads(db) == []
    assert blob_files(config) == []
    assert (await fetch(http_client, first["delete_url"], "POST")).code == 410
    assert await api_delete(http_client, base_url, first["hash"], key) == (
        404,
        {"status": False, "error": "you have no upload with this hash"},
    )


@pytest.mark.gen_test
async def test_deleting_by_hash_keeps_what_another_account_uploaded_of_it(
    http_client, base_url, login, db, auth
):
    alice, bob = await login(), await login()
    alice_key, bob_key = await make_key(db, auth, alice.user), await make_key(db, auth, bob.user)
    alices = await api_upload(http_client, base_url, b"both of us", key=alice_key)
    await api_upload(http_client, base_url, b"both of us", key=bob_key)

    status, _ = await api_delete(http_client, base_url, alices["hash"], alice_key)

    assert status == 200
    assert [u.user_id for u in await queries.all_uploads(db)] == [bob.user.id]
    assert (await fetch(http_client, alices["urls"]["hash"])).code == 200


@pytest.mark.parametrize("whose", ["another account's", "anonymous", "unknown"])
@pytest.mark.gen_test
async def test_a_hash_that_is_not_the_keys_is_a_404_and_stays(
    http_client, base_url, login, db, auth, whose
):
    alice, bob = await login(), await login()
    alice_key = await make_key(db, auth, alice.user)
    owner_key = await make_key(db, auth, bob.user) if whose == "another account's" else None
    answer = await api_upload(http_client, base_url, b"not alice's", key=owner_key)
    hash = answer["hash"] if whose != "unknown" else "AAAAAAAAAAAA"

    status, body = await api_delete(http_client, base_url, hash, alice_key)

    assert (status, body) == (404, {"status": False, "error": "you have no upload with this hash"})
    assert len(await queries.all_uploads(db)) == 1
    assert (await fetch(http_client, answer["urls"]["hash"])).code == 200


@pytest.mark.parametrize(
    ("authorization", "error"),
    [
        (None, "this needs an API key: send 'Authorization: Bearer <API key>'"),
        ("Bearer hk_0123456789abcdef_" + "A" * 43, "the API key is not valid"),
        ("Basic dXNlcjpwYXNz", "the Authorization header must be 'Bearer <API key>'"),
    ],
    ids=["no key", "unknown key", "not bearer"],
)
@pytest.mark.gen_test
async def test_without_a_usable_key_it_is_a_401_and_nothing_goes(
    http_client, base_url, login, db, auth, authorization, error
):
    alice = await login()
    answer = await api_upload(
        http_client, base_url, b"alice's", key=await make_key(db, auth, alice.user)
    )
    headers = {"Authorization": authorization} if authorization else {}

    response = await fetch(
        http_client,
        f"{base_url}/api/files/{answer['hash']}",
        "DELETE",
        headers={**headers, "Cookie": alice.cookie},  # a session is no key
    )

    assert response.code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="hostd"'
    assert json.loads(response.body)["error"].startswith(error)
    assert len(await queries.all_uploads(db)) == 1


@pytest.mark.parametrize(
    "hash",
    ["short", "A" * 17, "AAAAAAAAAAA%21", "A" * 10_000, "%C3%A9" * 12],
    ids=["short", "one too long", "punctuation", "huge", "non-ascii"],
)
@pytest.mark.gen_test
async def test_an_odd_hash_is_a_clear_400(http_client, base_url, login, db, auth, hash):
    alice = await login()
    key = await make_key(db, auth, alice.user)
    await api_upload(http_client, base_url, b"stays", key=key)

    status, body = await api_delete(http_client, base_url, hash, key)

    assert status == 400
    assert body == {
        "status": False,
        "error": "a hash is 12 to 16 characters of A-Z, a-z, 0-9, '-' and '_'",
    }
    assert len(await queries.all_uploads(db)) == 1


@pytest.mark.gen_test
async def test_other_methods_on_api_files_are_405(http_client, base_url):
    response = await fetch(http_client, f"{base_url}/api/files/AAAAAAAAAAAA")

    assert response.code == 405
    assert response.headers["Allow"] == "DELETE, OPTIONS"


# -- ShareX and the docs ------------------------------------------------------------------


@pytest.mark.gen_test
async def test_the_sharex_uploader_keeps_each_uploads_deletion_link(http_client, base_url):
    sxcu = json.loads((await http_client.fetch(f"{base_url}/api/sharex.sxcu")).body)
    answer = await api_upload(http_client, base_url, b"a screenshot", "Screenshot.png")

    # ShareX fills "{json:delete_url}" from the upload's JSON answer.
    assert sxcu["DeletionURL"] == "{json:delete_url}"
    assert (await fetch(http_client, answer["delete_url"], "POST")).code == 200


@pytest.mark.gen_test
async def test_the_api_page_documents_deleting(http_client, base_url):
    page = (await http_client.fetch(f"{base_url}/api")).body.decode()

    assert '"delete_url": "' in page
    assert "X-Delete-Url" in page
    assert f"curl -X POST {base_url}/delete/" in page
    assert f"curl -X DELETE -H 'Authorization: Bearer api_key' {base_url}/api/files/hash" in page
    assert "DeletionURL" in page
