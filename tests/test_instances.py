"""Several `hostd serve` processes on one data dir and database (issue 12): nothing that must
be shared lives in one process's memory. Each test runs two real servers, A and B, on SQLite
and on PostgreSQL (database.url in the hostd.toml they start with)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tornado.testing
from conftest import XSRF
from helpers import hostd, multipart_body, start, wait_for_line

KEY = re.compile(r"hk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}")
PASSWORD = "right password"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    cookies: dict[str, str]  # name -> value, from Set-Cookie
    body: str

    def json(self) -> dict:
        return json.loads(self.body)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def request(
    url: str,
    *,
    form: dict[str, str] | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    cookies: dict[str, str] | None = None,
    method: str | None = None,
) -> Answer:
    """One request as a browser without JavaScript (or a script) sends it; no redirects."""
    headers = dict(headers or {})
    if form is not None:
        body = urllib.parse.urlencode({"_xsrf": XSRF, **form}).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    jar = {"_xsrf": XSRF, **(cookies or {})}
    headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in jar.items())
    req = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        response = _opener.open(req, timeout=30)
    except urllib.error.HTTPError as exc:
        response = exc
    with response:
        set_cookies = response.headers.get_all("Set-Cookie") or []
        return Answer(
            response.status,
            dict(response.headers.items()),
            dict(c.split(";")[0].split("=", 1) for c in set_cookies),
            response.read().decode(errors="replace"),
        )


def upload(base: str, data: bytes, *, key: str | None = None, expires: str | None = None):
    fields = {"expires": expires} if expires else None
    body, headers = multipart_body(fields=fields, files=[("file", "shared.txt", data)])
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return request(f"{base}/api/upload", body=body, headers=headers)


@dataclass
class Servers:
    a: str
    b: str
    data: list[str]  # --data-dir DIR, for the CLI
    cwd: Path
    database_url: str | None  # None: the data dir's SQLite file

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return hostd(*args, *self.data, cwd=self.cwd, stdin=stdin)

    def once_heard(self, ask: Callable[[], Answer], heard: Callable[[Answer], bool]) -> Answer:
        """The answer to `ask` right after another process's change. On SQLite the first
        must be right (the counter is read before each use); on PostgreSQL a server hears
        of the change a few milliseconds after its commit (README: Storage), so ask again
        until it has (within a generous five seconds)."""
        answer = ask()
        deadline = time.monotonic() + 5.0
        while self.database_url is not None and not heard(answer):
            assert time.monotonic() < deadline, "not heard of within five seconds"
            time.sleep(0.005)
            answer = ask()
        return answer


def free_port() -> int:
    sock, port = tornado.testing.bind_unused_port()
    sock.close()
    return port


@pytest.fixture
def servers(tmp_path: Path, database_kind: str, database_url: str | None) -> Iterator[Servers]:
    """Two `hostd serve` processes on one data dir and database, started one after the
    other (the config fixture's hostd.toml in their working directory names a PostgreSQL
    database; on SQLite there is none)."""
    if database_url is not None:
        (tmp_path / "hostd.toml").write_text(f'[database]\nurl = "{database_url}"\n')
    data = ["--data-dir", str(tmp_path / "d")]
    procs = []
    try:
        bases = []
        for _ in range(2):
            port = free_port()
            procs.append(start(["serve", *data, "--port", str(port)], tmp_path))
            wait_for_line(procs[-1], "listening on")
            bases.append(f"http://127.0.0.1:{port}")
        # on PostgreSQL, no SQLite file beside the blobs: the servers use the database.url
        assert (database_url is None) == (tmp_path / "d" / "hostd.sqlite3").exists()
        yield Servers(bases[0], bases[1], data, tmp_path, database_url)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.communicate(timeout=30)


@pytest.fixture
def alice(servers: Servers) -> None:
    """An account made on the command line."""
    made = servers.cli("user", "add", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    assert made.returncode == 0, made.stderr


def sign_in(base: str, password: str = PASSWORD) -> Answer:
    return request(f"{base}/login", form={"name": "alice", "password": password})


def session_of(answer: Answer) -> dict[str, str]:
    assert answer.status == 303, answer.body
    return {"hostd_session": answer.cookies["hostd_session"]}


def test_wrong_passwords_spread_over_two_servers_are_throttled_as_one_count(servers, alice):
    codes = [sign_in(base, "guess").status for base in [servers.a, servers.b] * 3]

    # five free failures for one account from one address, wherever they land; then a wait
    assert codes == [401] * 5 + [429]


def test_a_key_made_without_javascript_on_one_server_is_shown_once_on_the_other(servers, alice):
    session = session_of(sign_in(servers.a))

    made = request(f"{servers.a}/api/keys", form={"label": "no js"}, cookies=session)
    reveal = {"hostd_new_key": made.cookies["hostd_new_key"]}
    shown = request(f"{servers.b}/api", cookies={**session, **reveal})
    again = [
        request(f"{base}/api", cookies={**session, **reveal}) for base in (servers.a, servers.b)
    ]

    assert made.status == 303 and made.headers["Location"] == "/api"
    (key,) = set(KEY.findall(shown.body))
    assert "it will not be shown again" in shown.body
    assert all(key not in answer.body for answer in again)
    assert upload(servers.a, b"with the shown key", key=key).status == 200


def test_a_key_invalidated_on_one_server_is_refused_by_the_other_at_once(servers, alice):
    key = servers.cli("key", "create", "alice").stdout.strip()
    session = session_of(sign_in(servers.a))
    key_id = KEY.fullmatch(key).group(0)[3:19]
    before = [upload(servers.b, b"while valid %d" % i, key=key).status for i in range(2)]

    invalidated = request(
        f"{servers.a}/api/keys/{key_id}/invalidate", form={"confirm": "yes"}, cookies=session
    )
    after = servers.once_heard(
        lambda: upload(servers.b, b"after", key=key), lambda answer: answer.status != 200
    )

    assert before == [200, 200]  # the second came from B's memory of the key
    assert invalidated.status == 303
    assert after.status == 401


def test_a_file_removed_elsewhere_is_gone_at_once_here(servers):
    by_cli = upload(servers.a, b"removed by hostd file rm").json()["hash"]
    by_b = upload(servers.a, b"deleted through server B").json()
    served = [request(f"{servers.a}/{h}").status for h in (by_cli, by_b["hash"])]  # remembered

    removed = servers.cli("file", "rm", by_cli)
    after_cli = servers.once_heard(
        lambda: request(f"{servers.a}/{by_cli}"), lambda answer: answer.status != 200
    )
    deleted = request(by_b["delete_url"].replace(servers.a, servers.b), method="POST", body=b"")
    after_b = servers.once_heard(
        lambda: request(f"{servers.a}/{by_b['hash']}"), lambda answer: answer.status != 200
    )

    assert served == [200, 200]
    assert removed.returncode == 0, removed.stderr
    assert after_cli.status == 404
    assert deleted.status == 200, deleted.body
    assert after_b.status == 404


def test_a_file_that_may_now_expire_is_no_longer_promised_forever_here(servers):
    kept = upload(servers.a, b"kept forever, then not").json()
    upload(servers.a, b"kept forever, then not", expires="1")
    forever = request(f"{servers.a}/{kept['hash']}").headers["Cache-Control"]  # remembered

    request(kept["delete_url"].replace(servers.a, servers.b), method="POST", body=b"")
    later = servers.once_heard(
        lambda: request(f"{servers.a}/{kept['hash']}"),
        lambda answer: "immutable" not in answer.headers.get("Cache-Control", ""),
    )

    assert "immutable" in forever
    assert later.status == 200  # the upload that expires in an hour keeps it
    max_age = re.fullmatch(r"public, max-age=([0-9]+)", later.headers["Cache-Control"])
    assert max_age is not None and 3500 < int(max_age.group(1)) <= 3600


def test_a_second_server_with_another_cookie_secret_refuses_to_start(servers, tmp_path):
    other = tmp_path / "other.toml"
    other.write_text(
        '[server]\ncookie_secret = "not the one the first server uses"\n'
        + (f'[database]\nurl = "{servers.database_url}"\n' if servers.database_url else "")
    )
    port = str(free_port())

    refused = hostd(
        "serve", "--config", str(other), *servers.data, "--port", port, cwd=tmp_path, timeout=30
    )
    replacing = start(
        ["serve", "--config", str(other), *servers.data, "--port", port, "--new-cookie-secret"],
        tmp_path,
    )
    try:
        wait_for_line(replacing, "listening on")
    finally:
        replacing.send_signal(signal.SIGTERM)
        replacing.communicate(timeout=30)

    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("hostd: configuration error: the cookie secret differs from the one")
    assert "--new-cookie-secret" in line
