"""Accounts in the browser: register, sign in, sessions, sign out, throttling, xsrf."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from conftest import XSRF, GatedHasher, form_body
from helpers import text_of

from hostd import db as queries
from hostd.auth import Auth, session_token_hash


async def submit(client, url, cookie=f"_xsrf={XSRF}", address="127.0.0.1", **fields):
    """Post a form from `address`: any 127.x.y.z reaches the server over loopback as itself."""
    return await client.fetch(
        url,
        method="POST",
        body=form_body(**fields),
        headers={"Cookie": cookie},
        follow_redirects=False,
        raise_error=False,
        network_interface=address,
    )


async def register(client, base_url, name, password="long enough", address="127.0.0.1"):
    return await submit(
        client,
        f"{base_url}/register",
        address=address,
        name=name,
        password=password,
        confirm=password,
    )


async def sign_in(client, base_url, name, password, address="127.0.0.1"):
    return await submit(client, f"{base_url}/login", address=address, name=name, password=password)


async def until(condition, within=5.0):
    """Wait (polling) until condition() holds; False if it never did `within` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


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
    assert "Signed in as dave" in text_of(page.body)


@pytest.mark.parametrize("path", ["/login", "/register"])
@pytest.mark.gen_test
async def test_the_account_forms_say_who_is_signed_in_instead(http_client, base_url, login, path):
    alice = await login("alice")

    page = await http_client.fetch(f"{base_url}{path}", headers=alice.headers)

    text = text_of(page.body)
    assert "You are signed in as alice ." in text and "your account" in text
    assert 'name="password"' not in page.body.decode()


@pytest.mark.gen_test
async def test_the_header_names_the_account_link_as_such(http_client, base_url, login):
    alice = await login("alice")

    page = await http_client.fetch(f"{base_url}/files", headers=alice.headers)

    assert 'href="/account" aria-label="Your account (alice)"><strong>alice</strong>' in (
        page.body.decode()
    )


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


@pytest.mark.sqlite_only  # reads SQLite's own files
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


class TestBehindAnHttpsProxy:
    """With trust_proxy and no public URL, the proxy's X-Forwarded-Proto says https."""

    @pytest.fixture
    def config(self, config):
        return dataclasses.replace(config, trust_proxy=True)

    @pytest.mark.gen_test
    async def test_the_xsrf_cookie_is_secure_over_https_only(self, http_client, base_url):
        flags = {}
        for proto in ("https", "http"):
            page = await http_client.fetch(
                f"{base_url}/login", headers={"X-Forwarded-Proto": proto}
            )
            (xsrf,) = [c for c in page.headers.get_list("Set-Cookie") if c.startswith("_xsrf=")]
            flags[proto] = [part.strip().lower() for part in xsrf.split(";")]

        assert "secure" in flags["https"] and "httponly" in flags["https"]
        assert "secure" not in flags["http"]


# -- registration floods (issue 8, item 2) --


@pytest.mark.gen_test
async def test_one_address_makes_at_most_five_accounts_an_hour(http_client, base_url, clock):
    made = [(await register(http_client, base_url, f"flood{i}")).code for i in range(5)]

    refused = await register(http_client, base_url, "flood5")
    elsewhere = await register(http_client, base_url, "neighbour", address="127.0.0.2")
    clock.advance(3600)
    later = await register(http_client, base_url, "flood6")

    assert made == [303] * 5
    assert refused.code == 429
    assert 3500 <= int(refused.headers["Retry-After"]) <= 3600
    assert "Too many new accounts from your address. Try again in 60 minutes." in (
        refused.body.decode()
    )
    assert elsewhere.code == 303
    assert later.code == 303


@pytest.mark.gen_test
async def test_a_refused_registration_does_not_use_up_the_hour(http_client, base_url, login):
    await login("taken")

    refusals = [
        (await register(http_client, base_url, "taken")).code,
        (await register(http_client, base_url, "x", password="short")).code,
    ] * 3
    made = [(await register(http_client, base_url, f"fine{i}")).code for i in range(5)]

    assert refusals == [400, 400] * 3
    assert made == [303] * 5


class TestWhenThePasswordLaneIsFull:
    """An Argon2 lane held shut (GatedHasher) with room for `request.param` jobs."""

    @pytest.fixture
    def auth(self, request):
        hasher = GatedHasher()
        auth = Auth(password_hasher=hasher, key_hasher=hasher, max_waiting_passwords=request.param)
        yield auth
        hasher.gate.set()
        auth.close()

    @pytest.mark.parametrize("auth", [4], indirect=True)
    @pytest.mark.gen_test
    async def test_a_registration_flood_leaves_room_for_sign_ins(
        self, http_client, base_url, login, auth
    ):
        await login("owner", password="right password")
        await sign_in(http_client, base_url, "nobody", "x")  # makes the dummy hash now
        auth.passwords.gate.clear()

        first = asyncio.ensure_future(register(http_client, base_url, "flood0", "password 0"))
        assert await until(lambda: auth.passwords.jobs[-1] == "hash password 0")
        flood = [
            asyncio.ensure_future(register(http_client, base_url, f"flood{i}", f"password {i}"))
            for i in range(1, 4)
        ]
        # New accounts may hold half the lane (two places): the others are refused at once.
        await until(lambda: sum(f.done() for f in flood) == 2, within=2)
        owner = asyncio.ensure_future(
            sign_in(http_client, base_url, "owner", "right password", address="127.0.0.2")
        )
        await until(lambda: owner.done(), within=0.3)  # a 503 would come back at once
        auth.passwords.gate.set()
        codes = [(await f).code for f in [first, *flood]]

        assert (await owner).code == 303
        assert sorted(codes) == [303, 303, 503, 503]

    @pytest.mark.parametrize("auth", [1], indirect=True)
    @pytest.mark.gen_test
    async def test_busy_answers_do_not_count_as_failed_sign_ins(
        self, http_client, base_url, login, auth
    ):
        await login("owner", password="right password")
        auth.passwords.gate.clear()
        other = asyncio.ensure_future(sign_in(http_client, base_url, "nobody", "x", "127.0.0.3"))
        assert await until(lambda: len(auth.passwords.jobs) == 2)  # the owner's hash, then this

        busy = [
            await sign_in(http_client, base_url, "owner", "right password", "127.0.0.2")
            for _ in range(7)
        ]
        auth.passwords.gate.set()
        await other
        after = await sign_in(http_client, base_url, "owner", "right password", "127.0.0.2")

        assert [r.code for r in busy] == [503] * 7
        assert busy[0].headers["Retry-After"] == "5"
        assert "The server is busy" in busy[0].body.decode()
        assert after.code == 303

    @pytest.mark.parametrize("auth", [1], indirect=True)
    @pytest.mark.gen_test
    async def test_a_busy_answer_does_not_use_up_the_hour_of_registrations(
        self, http_client, base_url, login, auth
    ):
        auth.passwords.gate.clear()
        other = asyncio.ensure_future(sign_in(http_client, base_url, "nobody", "x", "127.0.0.3"))
        assert await until(lambda: auth.passwords.jobs)

        busy = [(await register(http_client, base_url, f"new{i}")).code for i in range(6)]
        auth.passwords.gate.set()
        await other
        made = [(await register(http_client, base_url, f"new{i}")).code for i in range(5)]

        assert busy == [503] * 6
        assert made == [303] * 5


# -- sign-in throttling that cannot lock an owner out (issue 8, item 8) --


@pytest.mark.gen_test
async def test_guessing_at_each_retry_after_does_not_lock_the_owner_out(
    http_client, base_url, login, wall_clock
):
    await login("olga", password="right password")
    attacker, owner = [], []

    for _ in range(16):  # what kept an account locked for 63 s before
        response = await sign_in(http_client, base_url, "olga", "guess")
        attacker.append(response.code)
        if response.code == 429:  # the account looks locked: its owner signs in meanwhile
            answer = await sign_in(http_client, base_url, "olga", "right password", "127.0.0.2")
            owner.append(answer.code)
            wall_clock.advance(int(response.headers["Retry-After"]))

    assert owner == [303] * attacker.count(429)
    assert attacker[:6] == [401] * 5 + [429]  # the guesser is still held: 5 free, then waits
    assert attacker.count(401) <= 5 + attacker.count(429)


@pytest.mark.gen_test
async def test_guesses_from_many_addresses_hold_the_account_except_where_its_owner_was(
    http_client, base_url, login
):
    await login("pia", password="right password")
    known = await sign_in(http_client, base_url, "pia", "right password", "127.0.0.2")

    guesses = [
        (await sign_in(http_client, base_url, "pia", "guess", f"127.0.1.{i}")).code
        for i in range(1, 21)
        for _ in range(5)
    ]
    stranger = await sign_in(http_client, base_url, "pia", "right password", "127.0.0.3")
    owner = await sign_in(http_client, base_url, "pia", "right password", "127.0.0.2")

    assert known.code == 303
    assert guesses == [401] * 100  # five from each of twenty addresses
    assert stranger.code == 429
    assert owner.code == 303


# -- passwords exactly as typed (issue 8, item 12) --


@pytest.mark.parametrize(
    ("password", "near_miss"),
    [
        ("  correct horse  ", "correct horse"),
        ("\x1fabcdefg", " abcdefg"),
        ("tab\there, newline\nthere", "tab here, newline there"),
        ("x" * 1025, "x" * 1024),
        ("é" * 4096, "é" * 4095),
    ],
    ids=["spaces", "control", "tab-newline", "1025", "4096-non-ascii"],
)
@pytest.mark.gen_test
async def test_a_password_is_compared_exactly_as_typed(http_client, base_url, password, near_miss):
    made = await register(http_client, base_url, "quinn", password)

    exact = await sign_in(http_client, base_url, "quinn", password)
    altered = await sign_in(http_client, base_url, "quinn", near_miss)

    assert made.code == 303
    assert exact.code == 303
    assert altered.code == 401


@pytest.mark.gen_test
async def test_an_account_made_on_the_command_line_signs_in_with_its_padded_password(
    http_client, base_url, login
):
    await login("rosa", password="  correct horse  ")  # as `hostd user add` stores it

    exact = await sign_in(http_client, base_url, "rosa", "  correct horse  ")
    stripped = await sign_in(http_client, base_url, "rosa", "correct horse")

    assert exact.code == 303
    assert stripped.code == 401


@pytest.mark.gen_test
async def test_a_too_long_password_is_refused_for_what_it_is(http_client, base_url):
    response = await register(http_client, base_url, "sam", "x" * 4097)

    assert response.code == 400
    assert "A password has at most 4,096 characters." in response.body.decode()


@pytest.mark.gen_test
async def test_a_password_that_is_not_utf8_is_refused_for_what_it_is(http_client, base_url):
    response = await http_client.fetch(
        f"{base_url}/register",
        method="POST",
        body=form_body(name="tom", confirm="x") + "&password=%FF%FEpassword",
        headers={"Cookie": f"_xsrf={XSRF}"},
        raise_error=False,
    )

    assert response.code == 400
    assert "not sent as UTF-8" in response.body.decode()


# -- /account: the password, sessions ----------------------------------------------------------


async def change_password(
    client, base_url, signed_in, current, new, confirm=None, address="127.0.0.1"
):
    return await submit(
        client,
        f"{base_url}/account",
        cookie=signed_in.cookie,
        address=address,
        action="change-password",
        current=current,
        new=new,
        confirm=new if confirm is None else confirm,
    )


@pytest.mark.gen_test
async def test_changing_the_password_keeps_this_browser_and_signs_out_every_other(
    http_client, base_url, login, another_session
):
    alice = await login("alice", password="correct horse")
    laptop = await another_session(alice)

    changed = await change_password(http_client, base_url, alice, "correct horse", "battery staple")
    again = f"{session_cookie(changed).split(';')[0]}; _xsrf={XSRF}"
    here = await http_client.fetch(f"{base_url}/files", headers={"Cookie": again})
    there = await http_client.fetch(
        f"{base_url}/files", headers={"Cookie": laptop}, follow_redirects=False, raise_error=False
    )

    assert changed.code == 303 and changed.headers["Location"] == "/account?done=password"
    assert here.code == 200
    assert there.code == 302 and there.headers["Location"].startswith("/login")
    assert (await sign_in(http_client, base_url, "alice", "correct horse")).code == 401
    assert (await sign_in(http_client, base_url, "alice", "battery staple")).code == 303


@pytest.mark.parametrize(
    ("current", "new", "confirm", "status", "message"),
    [
        ("wrong horse", "battery staple", None, 401, "The current password is wrong."),
        ("correct horse", "short", None, 400, "A password has at least 8 characters."),
        ("correct horse", "battery staple", "battery stable", 400, "The two passwords differ."),
    ],
)
@pytest.mark.gen_test
async def test_a_password_change_that_cannot_be_made_says_why_and_changes_nothing(
    http_client, base_url, login, current, new, confirm, status, message
):
    alice = await login("alice", password="correct horse")

    refused = await change_password(http_client, base_url, alice, current, new, confirm)

    assert refused.code == status and message in refused.body.decode()
    assert (await http_client.fetch(f"{base_url}/files", headers=alice.headers)).code == 200
    assert (await sign_in(http_client, base_url, "alice", "correct horse")).code == 303


@pytest.mark.gen_test
async def test_guessing_the_current_password_is_throttled_as_signing_in_is(
    http_client, base_url, login
):
    alice = await login("alice", password="correct horse")

    statuses = [
        (await change_password(http_client, base_url, alice, f"guess {i}", "battery staple")).code
        for i in range(7)
    ]

    assert statuses[:5] == [401] * 5 and 429 in statuses[5:]


@pytest.mark.gen_test
async def test_signing_out_everywhere_ends_every_session_of_the_account(
    http_client, base_url, login, another_session
):
    alice = await login("alice")
    laptop = await another_session(alice)
    bob = await login("bob")

    out = await submit(
        http_client, f"{base_url}/account", cookie=alice.cookie, action="sign-out-everywhere"
    )

    assert out.code == 303 and out.headers["Location"] == "/login?done=everywhere"
    landed = await http_client.fetch(f"{base_url}{out.headers['Location']}")
    assert "Signed out on every device." in text_of(landed.body)
    for cookie in (alice.cookie, laptop):
        gone = await http_client.fetch(
            f"{base_url}/files",
            headers={"Cookie": cookie},
            follow_redirects=False,
            raise_error=False,
        )
        assert gone.code == 302
    assert (await http_client.fetch(f"{base_url}/files", headers=bob.headers)).code == 200


@pytest.mark.gen_test
async def test_the_account_page_needs_a_sign_in_and_is_linked_from_every_page(
    http_client, base_url, login
):
    alice = await login("alice")

    anonymous = await http_client.fetch(
        f"{base_url}/account", follow_redirects=False, raise_error=False
    )
    page = (await http_client.fetch(f"{base_url}/", headers=alice.headers)).body.decode()

    assert anonymous.code == 302 and anonymous.headers["Location"] == "/login?next=%2Faccount"
    assert '<a href="/account"' in page
