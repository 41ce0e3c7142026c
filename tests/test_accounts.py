"""Accounts in the browser: register, sign in, sessions, sign out, throttling, xsrf."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from conftest import XSRF, form_body

from hostd import db as queries
from hostd.auth import session_token_hash


async def submit(client, url, cookie=f"_xsrf={XSRF}", **fields):
    return await client.fetch(
        url,
        method="POST",
        body=form_body(**fields),
        headers={"Cookie": cookie},
        follow_redirects=False,
        raise_error=False,
    )


def session_cookie(response) -> str:
    cookies = response.headers.get_list("Set-Cookie")
    (session,) = [c for c in cookies if c.startswith("hostd_session=")]
    return session


@pytest.mark.gen_test
async def test_register_creates_the_account_and_signs_in(http_client, base_url, db):
    response = await submit(
        http_client,
        f"{base_url}/register",
        name="alice",
        password="s3cret-pass",
        confirm="s3cret-pass",
    )

    assert response.code == 303
    cookie = session_cookie(response)
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    user = await queries.get_user(db, name="ALICE")
    assert user is not None and user.name == "alice"
    assert user.password_hash.startswith("$argon2id$")
    assert "s3cret-pass" not in user.password_hash


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "bob", "password": "short", "confirm": "short"}, "at least 8 characters"),
        ({"name": "bob", "password": "long enough", "confirm": "different!"}, "differ"),
        ({"name": "../bob", "password": "long enough", "confirm": "long enough"}, "A name is"),
    ],
)
@pytest.mark.gen_test
async def test_register_explains_what_is_wrong(http_client, base_url, fields, message):
    response = await submit(http_client, f"{base_url}/register", **fields)

    assert response.code == 400
    assert message in response.body.decode()


@pytest.mark.gen_test
async def test_register_refuses_a_taken_name_in_any_case(http_client, base_url, login):
    await login("carol")

    response = await submit(
        http_client,
        f"{base_url}/register",
        name="Carol",
        password="long enough",
        confirm="long enough",
    )

    assert response.code == 400
    assert "That name is taken." in response.body.decode()


@pytest.mark.gen_test
async def test_closed_registration_points_to_the_cli(http_client, base_url, app):
    app.settings["hostd_config"] = dataclasses.replace(
        app.settings["hostd_config"], registration="closed"
    )

    response = await http_client.fetch(f"{base_url}/register", raise_error=False)

    assert response.code == 403
    assert "hostd user add" in response.body.decode()


@pytest.mark.gen_test
async def test_sign_in_with_the_right_password_starts_a_session(http_client, base_url, login, db):
    await login("dave", password="right password")

    response = await submit(
        http_client, f"{base_url}/login", name="dave", password="right password", next="/api"
    )
    cookie = session_cookie(response).split(";")[0]
    page = await http_client.fetch(f"{base_url}/api", headers={"Cookie": cookie})

    assert response.code == 303
    assert response.headers["Location"] == "/api"
    assert "Signed in as <strong>dave</strong>" in page.body.decode()


@pytest.mark.parametrize(
    "target",
    ["//evil.example", "https://evil.example/", "/\\evil.example", "/\t/evil.example", "/\n/x"],
)
@pytest.mark.gen_test
async def test_sign_in_never_redirects_off_site(http_client, base_url, login, target):
    await login("erin", password="right password")

    response = await submit(
        http_client, f"{base_url}/login", name="erin", password="right password", next=target
    )

    assert response.headers["Location"] == "/"


@pytest.mark.parametrize(("name", "password"), [("frank", "wrong password"), ("nobody", "x")])
@pytest.mark.gen_test
async def test_a_wrong_name_or_password_gets_one_message(
    http_client, base_url, login, name, password
):
    await login("frank", password="right password")

    response = await submit(http_client, f"{base_url}/login", name=name, password=password)

    assert response.code == 401
    assert "Wrong name or password." in response.body.decode()
    assert "hostd_session=" not in "".join(response.headers.get_list("Set-Cookie"))


@pytest.mark.gen_test
async def test_repeated_failures_are_slowed_down_with_a_clear_message(http_client, base_url, login):
    await login("gina", password="right password")
    for _ in range(6):
        await submit(http_client, f"{base_url}/login", name="gina", password="guess")

    response = await submit(
        http_client, f"{base_url}/login", name="gina", password="right password"
    )

    assert response.code == 429
    assert "Too many failed sign-ins. Try again in" in response.body.decode()
    assert int(response.headers["Retry-After"]) >= 1


@pytest.mark.gen_test
async def test_failures_sent_in_parallel_are_counted_too(http_client, base_url, login):
    await login("hana", password="right password")

    url = f"{base_url}/login"
    answers = await asyncio.gather(
        *(submit(http_client, url, name="hana", password="guess") for _ in range(20))
    )

    codes = [response.code for response in answers]
    assert codes.count(401) <= 5  # as one at a time: 5 free, then the wait
    assert codes.count(429) == 20 - codes.count(401)


@pytest.mark.gen_test
async def test_sign_out_ends_the_session_on_the_server(http_client, base_url, login, db):
    alice = await login()

    response = await http_client.fetch(
        f"{base_url}/logout",
        method="POST",
        body=form_body(),
        headers={"Cookie": alice.cookie},
        follow_redirects=False,
        raise_error=False,
    )
    # The old cookie, replayed after sign-out, no longer signs anyone in.
    page = await http_client.fetch(f"{base_url}/api", headers={"Cookie": alice.cookie})

    assert response.code == 303
    assert await queries.get_session_user(db, token_hash=session_token_hash(alice.token)) is None
    assert "Signed in as" not in page.body.decode()


@pytest.mark.gen_test
async def test_a_form_post_without_the_xsrf_token_is_refused(http_client, base_url, login):
    alice = await login()

    response = await http_client.fetch(
        f"{base_url}/logout",
        method="POST",
        body="",
        headers={"Cookie": alice.cookie.replace(f"; _xsrf={XSRF}", "")},
        raise_error=False,
    )

    assert response.code == 403


@pytest.mark.gen_test
async def test_sessions_are_stored_only_as_hashes(http_client, base_url, login, db, config):
    alice = await login()

    raw = config.db_path.read_bytes() + (config.data_dir / "hostd.sqlite3-wal").read_bytes()

    assert alice.token.encode() not in raw
    assert session_token_hash(alice.token).encode() in raw


class TestBehindHttps:
    """With an https public URL, every cookie hostd sets is Secure."""

    @pytest.fixture
    def config(self, config):
        return dataclasses.replace(config, public_url="https://files.example.org")

    @pytest.mark.gen_test
    async def test_session_and_xsrf_cookies_are_secure(self, http_client, base_url, login):
        await login("ivan", password="right password")
        page = await http_client.fetch(f"{base_url}/login")
        signed_in = await submit(
            http_client, f"{base_url}/login", name="ivan", password="right password"
        )

        (xsrf,) = [c for c in page.headers.get_list("Set-Cookie") if c.startswith("_xsrf=")]
        session = session_cookie(signed_in)
        for cookie in (xsrf, session):
            flags = [part.strip().lower() for part in cookie.split(";")]
            assert "secure" in flags and "httponly" in flags and "samesite=lax" in flags
