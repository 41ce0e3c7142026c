"""`hostd upload` (hostd/client.py) in its own process against the live test server."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import pty
import signal
import stat
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import blob_files, temp_files

from hostd import db as queries
from hostd.client import Journal, Sending
from hostd.hashes import public_hash_candidates
from hostd.retention import iso_time

LIMIT = 8 * 1024 * 1024  # the config fixture's max_upload_bytes


@pytest.fixture(autouse=True)
def serving(http_server):
    """The server listens (base_url alone only reserves its port)."""
    return http_server


@pytest.fixture(autouse=True)
def journal(tmp_path, monkeypatch) -> Path:
    """Where `hostd upload` remembers unfinished uploads: below this test's own
    XDG_STATE_HOME, which its processes inherit."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state" / "hostd" / "unfinished-uploads.json"


@dataclasses.dataclass
class Run:
    code: int
    stdout: str
    stderr: str


async def start_upload(
    *args: str, env: dict[str, str] | None = None, stderr: int | None = None, piped: bool = False
):
    """`python -m hostd upload ARGS` started, with HOSTD_URL and HOSTD_KEY only as `env`
    gives them; `stderr` an fd to write it to (a terminal) instead of a pipe; with `piped`,
    its stdin a pipe to write to."""
    clean = {k: v for k, v in os.environ.items() if k not in ("HOSTD_URL", "HOSTD_KEY")}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hostd", "upload", *args,
        env={**clean, **(env or {})},
        stdin=asyncio.subprocess.PIPE if piped else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE if stderr is None else stderr,
    )  # fmt: skip


async def hostd_upload(
    *args: str,
    env: dict[str, str] | None = None,
    stderr: int | None = None,
    stdin: bytes | None = None,
):
    """`python -m hostd upload ARGS` run to its end (see start_upload), `stdin` piped in."""
    proc = await start_upload(*args, env=env, stderr=stderr, piped=stdin is not None)
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout=60)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), (err or b"").decode())


class Relay:
    """A TCP relay on loopback between the client and the server: counts the bytes the
    client sends, and, given `cut_after`, breaks the connection that carries that many (once)."""

    def __init__(self, target_port: int, cut_after: int | None = None) -> None:
        self.target_port = target_port
        self.cut_after = cut_after
        self.sent = 0  # client to server, over all connections
        self.cuts = 0
        self.cut = asyncio.Event()  # set at the cut
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.relay, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def relay(self, client_in, client_out) -> None:
        server_in, server_out = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(source, sink, upstream: bool) -> None:
            try:
                while data := await source.read(65536):
                    if upstream:
                        self.sent += len(data)
                        if self.cut_after is not None and self.sent >= self.cut_after:
                            self.cut_after, self.cuts = None, self.cuts + 1
                            self.cut.set()
                            client_out.transport.abort()  # a reset, as a dropped network gives
                            server_out.transport.abort()
                            return
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(client_in, server_out, True), pipe(server_in, client_out, False))


def public_hash(data: bytes) -> str:
    return public_hash_candidates(hashlib.sha256(data).hexdigest())[0]


def files(tmp_path: Path, **contents: bytes) -> list[str]:
    paths = []
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    return paths


def sized(tmp_path: Path, name: str, size: int) -> Path:
    path = tmp_path / name
    with path.open("wb") as out:
        out.truncate(0)
        block = hashlib.sha256(name.encode()).digest() * 2048  # 64 KiB, the same for a name
        while size > 0:
            out.write(block[: min(size, len(block))])
            size -= min(size, len(block))
    return path


# -- uploading --------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_each_file_is_uploaded_and_its_url_printed_one_a_line(base_url, tmp_path, db):
    png = b"\x89PNG\r\n\x1a\nsecond"
    paths = files(tmp_path, **{"a.txt": b"first", "b.png": png, "c d é%2F.txt": b"3"})

    run = await hostd_upload(*paths, "--url", base_url)

    assert run.code == 0, run.stderr
    assert run.stdout.splitlines() == [
        f"{base_url}/{public_hash(b'first')}.txt",
        f"{base_url}/{public_hash(png)}.png",
        f"{base_url}/{public_hash(b'3')}.txt",
    ]
    assert [line.split()[0] for line in run.stderr.splitlines()] == ["delete:"] * 3  # no bar
    names = sorted(u.original_name for u in await queries.all_uploads(db))
    assert names == ["a.txt", "b.png", "c d é%2F.txt"]


@pytest.mark.gen_test(timeout=60)
async def test_each_files_deletion_link_goes_to_stderr_in_the_order_of_the_urls(
    base_url, tmp_path, db, http_client
):
    """The link is shown once (the server keeps only its hash), and is an anonymous
    upload's only way to be deleted."""
    paths = files(tmp_path, **{"a.txt": b"kept", "b.txt": b"deleted"})

    run = await hostd_upload(*paths, "--url", base_url)
    first, second = (line.removeprefix("delete: ") for line in run.stderr.splitlines())
    deleted = await http_client.fetch(second, method="POST", body=b"")

    assert run.code == 0
    assert first.startswith(f"{base_url}/delete/") and second.startswith(f"{base_url}/delete/")
    assert deleted.code == 200
    assert [u.original_name for u in await queries.all_uploads(db)] == ["a.txt"]


@pytest.mark.gen_test(timeout=60)
async def test_json_prints_each_answer_of_the_api(base_url, tmp_path):
    (path,) = files(tmp_path, **{"a.txt": b"as json"})

    run = await hostd_upload(path, "--url", base_url, "--json")

    answer = json.loads(run.stdout)
    assert answer["status"] is True and answer["hash"] == public_hash(b"as json")
    assert answer["delete_url"].startswith(f"{base_url}/delete/")
    assert run.stderr == ""  # the link is in the answer


@pytest.mark.gen_test(timeout=60)
async def test_the_url_comes_from_HOSTD_URL(base_url, tmp_path):
    (path,) = files(tmp_path, **{"a.txt": b"by env"})

    run = await hostd_upload(path, env={"HOSTD_URL": base_url + "/"})

    assert (run.code, run.stdout) == (0, f"{base_url}/{public_hash(b'by env')}.txt\n")


@pytest.mark.parametrize("how", ["option", "environment"])
@pytest.mark.gen_test(timeout=60)
async def test_a_key_registers_the_uploads_to_its_account(
    base_url, tmp_path, db, login, make_api_key, how
):
    alice = await login()
    key = await make_api_key(alice.user)
    paths = files(tmp_path, **{"a.txt": b"alice 1", "b.txt": b"alice 2"})

    if how == "option":
        run = await hostd_upload(*paths, "--url", base_url, "--key", key)
    else:
        run = await hostd_upload(*paths, env={"HOSTD_URL": base_url, "HOSTD_KEY": key})

    assert run.code == 0, run.stderr
    uploads = await queries.all_uploads(db)
    assert [u.user_id for u in uploads] == [alice.user.id, alice.user.id]


@pytest.mark.gen_test(timeout=60)
async def test_expires_asks_the_server_to_expire_the_uploads(base_url, tmp_path, wall_clock):
    (path,) = files(tmp_path, **{"a.txt": b"for five hours"})

    run = await hostd_upload(path, "--url", base_url, "--json", "--expires", "5")
    bad = await hostd_upload(path, path, "--url", base_url, "--expires", "someday")

    assert json.loads(run.stdout)["expires_at"] == iso_time(int(wall_clock()) + 5 * 3600)
    assert bad.code == 2  # the command's mistake, said once for all its files
    assert bad.stderr.startswith("hostd upload: --expires someday: must be a whole number of hours")
    assert bad.stderr.count("\n") == 1


@pytest.mark.gen_test(timeout=60)
async def test_a_big_file_is_streamed_and_stored_byte_for_byte(base_url, tmp_path, store, config):
    big = sized(tmp_path, "big.bin", 6 * 1024 * 1024 + 7)

    run = await hostd_upload(str(big), "--url", base_url)

    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    assert run.stdout == f"{base_url}/{public_hash_candidates(digest)[0]}.bin\n"
    assert store.path(digest).read_bytes() == big.read_bytes()
    assert temp_files(config) == []


async def on_a_terminal(*args: str, stdin: bytes | None = None) -> tuple[Run, list[str]]:
    """hostd upload run with stderr on a terminal: the run, and the lines as they were left
    there (a progress bar as last drawn)."""
    terminal, screen = pty.openpty()
    try:
        run = await hostd_upload(*args, stderr=screen, stdin=stdin)
        os.close(screen)
        shown = b""
        while True:
            try:
                more = os.read(terminal, 65536)
            except OSError:  # EIO: the other end is closed and all was read
                break
            if not more:
                break
            shown += more
    finally:
        os.close(terminal)
    return run, [line.split("\r")[-1] for line in shown.decode().split("\r\n")[:-1]]


@pytest.mark.gen_test(timeout=60)
async def test_on_a_terminal_stderr_shows_a_progress_bar(base_url, tmp_path):
    big = sized(tmp_path, "big.bin", 3 * 1024 * 1024)

    run, (bar, deletion) = await on_a_terminal(str(big), "--url", base_url)

    assert run.code == 0
    assert run.stdout.startswith(base_url)  # the URL alone on stdout
    assert bar.startswith("big.bin [#") and bar.endswith("] 100% 3072 of 3072 KiB")
    assert deletion.startswith(f"delete: {base_url}/delete/")


@pytest.mark.gen_test(timeout=60)
async def test_on_a_terminal_standard_input_shows_what_has_gone(base_url, tmp_path):
    run, (sent, _) = await on_a_terminal("-", "--url", base_url, stdin=b"p" * (2 * 1024 * 1024))

    assert run.code == 0
    assert sent == "stdin 2048 KiB sent"


# -- standard input ---------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_standard_input_is_sent_as_it_is_read_under_the_name_given(
    base_url, tmp_path, db, store
):
    data = b"".join(b"build step %d ok\n" % n for n in range(300_000))  # 5.6 MiB of text

    run = await hostd_upload("-", "--name", "build.log", "--url", base_url, stdin=data)

    assert run.code == 0, run.stderr
    assert run.stdout == f"{base_url}/{public_hash(data)}.log\n"
    assert [u.original_name for u in await queries.all_uploads(db)] == ["build.log"]
    async with store.local_copy(hashlib.sha256(data).hexdigest()) as stored:
        assert stored.read_bytes() == data


@pytest.mark.gen_test(timeout=60)
async def test_standard_input_without_a_name_goes_with_the_other_files(base_url, tmp_path, db):
    (path,) = files(tmp_path, **{"a.txt": b"a file"})

    run = await hostd_upload(path, "-", "--url", base_url, "--json", stdin=b"from a pipe")

    assert run.code == 0, run.stderr
    first, second = map(json.loads, run.stdout.splitlines())
    assert first["hash"] == public_hash(b"a file")
    assert second["hash"] == public_hash(b"from a pipe")
    assert second["urls"]["full"] == f"{base_url}/{second['hash']}/file"
    assert sorted(u.original_name for u in await queries.all_uploads(db)) == ["a.txt", "file"]


@pytest.mark.gen_test(timeout=60)
async def test_standard_input_over_the_limit_is_refused_and_nothing_kept(
    base_url, tmp_path, db, config
):
    run = await hostd_upload("-", "--url", base_url, stdin=b"x" * (LIMIT + 1))

    assert run.code == 1
    assert run.stderr == (
        f"hostd upload: -: the file is larger than the limit of {LIMIT} bytes (HTTP 413)\n"
    )
    assert await queries.all_uploads(db) == []
    assert temp_files(config) == [] and blob_files(config) == []


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["-", "-"], "'-' (standard input) can be given once"),
        (["a.txt", "--name", "b.txt"], "--name names '-' (standard input), which is not given"),
    ],
    ids=["twice", "name-without-it"],
)
@pytest.mark.gen_test(timeout=60)
async def test_standard_input_is_one_file_and_alone_has_a_name(base_url, tmp_path, db, args, error):
    files(tmp_path, **{"a.txt": b"a"})
    args = [str(tmp_path / a) if a == "a.txt" else a for a in args]

    run = await hostd_upload(*args, "--url", base_url, stdin=b"piped")

    assert (run.code, run.stderr) == (2, f"hostd upload: {error}\n")
    assert await queries.all_uploads(db) == []


# -- failures ---------------------------------------------------------------------------


@pytest.mark.sqlite_only
@pytest.mark.gen_test(timeout=60)
async def test_a_503_is_sent_again_after_the_servers_retry_after(
    base_url, tmp_path, db, sqlite_lock, access_log
):
    """The database busy (here: locked by another program for a while), the server's
    restart: nothing was stored, and a moment later the same PUT goes through."""
    (path,) = files(tmp_path, **{"a.txt": b"sent twice"})
    sqlite_lock.take()

    proc = await start_upload(path, "--url", base_url)
    while "503 PUT /api/upload/a.txt" not in access_log.text:  # the busy timeout, 5 s
        assert proc.returncode is None, "the client gave up after the 503"
        await asyncio.sleep(0.1)
    sqlite_lock.give_back()
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)

    assert proc.returncode == 0, err
    assert out.decode() == f"{base_url}/{public_hash(b'sent twice')}.txt\n"
    assert len(await queries.all_uploads(db)) == 1
    assert "200 PUT /api/upload/a.txt" in access_log.text


@pytest.mark.gen_test(timeout=60)
async def test_a_429_is_sent_again_after_the_servers_retry_after(
    base_url, tmp_path, db, limit, clock, access_log
):
    """A rate limit that lifts within PUT_WAIT_SECONDS (30 s) is waited out."""
    first, second = files(tmp_path, **{"a.txt": b"spends the budget", "b.txt": b"waits"})
    limit(uploads_per_minute=1)
    assert (await hostd_upload(first, "--url", base_url)).code == 0
    clock.advance(59)  # the next upload is 1 s away

    proc = await start_upload(second, "--url", base_url)
    while "429 PUT /api/upload/b.txt" not in access_log.text:
        assert proc.returncode is None, "the client gave up after the 429"
        await asyncio.sleep(0.05)
    clock.advance(1)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)

    assert proc.returncode == 0, err
    assert out.decode() == f"{base_url}/{public_hash(b'waits')}.txt\n"
    assert "200 PUT /api/upload/b.txt" in access_log.text
    assert len(await queries.all_uploads(db)) == 2


@pytest.mark.gen_test(timeout=60)
async def test_a_429_that_asks_for_longer_than_30_s_fails_the_file_at_once(
    base_url, tmp_path, db, limit, access_log
):
    first, second = files(tmp_path, **{"a.txt": b"spends the budget", "b.txt": b"refused"})
    limit(uploads_per_minute=1)  # the next upload is 60 s away

    run = await hostd_upload(first, second, "--url", base_url)

    assert run.code == 1
    assert run.stdout == f"{base_url}/{public_hash(b'spends the budget')}.txt\n"
    assert f"hostd upload: {second}: too many uploads: at most 1 a minute" in run.stderr
    assert run.stderr.endswith("try again in 60 s (HTTP 429)\n")
    assert access_log.text.count("429 PUT /api/upload/b.txt") == 1
    assert len(await queries.all_uploads(db)) == 1


@pytest.mark.gen_test(timeout=60)
async def test_a_refused_file_is_named_with_the_servers_message_and_the_rest_still_go(
    base_url, tmp_path, db, config
):
    small = files(tmp_path, **{"small.txt": b"fits"})[0]
    big = sized(tmp_path, "big.bin", LIMIT + 1)

    run = await hostd_upload(str(big), small, "--url", base_url)

    assert run.code == 1
    refused, deletion = run.stderr.splitlines()
    assert refused == (
        f"hostd upload: {big}: the file is larger than the limit of {LIMIT} bytes (HTTP 413)"
    )
    assert deletion.startswith(f"delete: {base_url}/delete/")  # small.txt's
    assert run.stdout == f"{base_url}/{public_hash(b'fits')}.txt\n"
    assert [u.original_name for u in await queries.all_uploads(db)] == ["small.txt"]
    assert temp_files(config) == []


@pytest.mark.gen_test(timeout=60)
async def test_a_file_refused_from_its_size_is_never_sent(base_url, http_port, tmp_path):
    big = sized(tmp_path, "big.bin", LIMIT + 1)
    relay = Relay(http_port)
    url = await relay.start()

    try:
        run = await hostd_upload(str(big), "--url", url)
    finally:
        relay.close()

    assert run.code == 1 and "(HTTP 413)" in run.stderr
    assert relay.sent < 4096  # the request head alone: the client waited for 100-continue


@pytest.mark.gen_test(timeout=60)
async def test_a_bad_key_exits_1_with_the_servers_message_at_the_first_file(
    base_url, tmp_path, db, config
):
    # Every file would be refused alike, and each try of a wrong key counts against the
    # address's invalid keys: one is enough.
    path, other = files(tmp_path, **{"a.txt": b"a", "b.txt": b"b"})

    run = await hostd_upload(path, other, "--url", base_url, "--key", "hk_nonsense")

    assert run.code == 1
    assert run.stderr == (
        f"hostd upload: {path}: the API key is not valid (unknown or invalidated) (HTTP 401)\n"
    )
    assert run.stdout == ""
    assert blob_files(config) == []


@pytest.mark.gen_test(timeout=60)
async def test_without_anonymous_uploads_no_key_is_told_how_to_get_one(base_url, tmp_path, app):
    app.settings["hostd_config"] = dataclasses.replace(
        app.settings["hostd_config"], allow_anonymous=False
    )
    (path,) = files(tmp_path, **{"a.txt": b"a"})

    run = await hostd_upload(path, "--url", base_url)

    assert run.code == 1
    assert "uploads need an account here" in run.stderr and "(HTTP 401)" in run.stderr


@pytest.mark.gen_test(timeout=60)
async def test_a_server_that_is_not_there_is_one_clear_line_and_exit_1(tmp_path, free_port):
    paths = files(tmp_path, **{"a.txt": b"a", "b.txt": b"b"})

    run = await hostd_upload(*paths, "--url", f"http://127.0.0.1:{free_port}")

    assert run.code == 1
    assert run.stderr == (
        f"hostd upload: {paths[0]}: http://127.0.0.1:{free_port}: "
        "connection refused (is hostd running there?)\n"
    )


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("missing", "no such file"),
        ("directory", "is a directory (give its files: hostd upload dir/*)"),
        ("fifo", "not a regular file (send a pipe as standard input: - )"),
    ],
)
@pytest.mark.gen_test(timeout=60)
async def test_a_file_that_cannot_be_sent_stops_everything_before_sending(
    base_url, tmp_path, db, kind, problem
):
    (path,) = files(tmp_path, **{"a.txt": b"a"})
    bad = tmp_path / kind
    if kind == "directory":
        bad.mkdir()
    elif kind == "fifo":
        os.mkfifo(bad)

    run = await hostd_upload(path, str(bad), "--url", base_url)

    assert run.code == 2
    assert run.stderr == f"hostd upload: {bad}: {problem}\n"
    assert await queries.all_uploads(db) == []


@pytest.mark.parametrize(
    "url", ["ftp://example.org", "http://127.0.0.1:8101x", "http://127.0.0.1:99999", "http://[::1"]
)
@pytest.mark.gen_test(timeout=60)
async def test_a_url_that_is_not_an_http_servers_is_refused_in_one_line(tmp_path, url):
    (path,) = files(tmp_path, **{"a.txt": b"a"})

    run = await hostd_upload(path, "--url", url)

    assert run.code == 2
    assert run.stderr == (
        f"hostd upload: the server URL must be http(s)://host[:port][/path], not {url!r}\n"
    )


@pytest.mark.parametrize("suffix", ["/api/upload", "/api/upload/"])
@pytest.mark.gen_test(timeout=60)
async def test_the_upload_endpoint_as_url_stands_for_its_server(base_url, tmp_path, suffix):
    """As a ShareX config's RequestURL has it."""
    (path,) = files(tmp_path, **{"a.txt": b"pasted"})

    run = await hostd_upload(path, "--url", base_url + suffix)

    assert (run.code, run.stderr.split()[0]) == (0, "delete:")
    assert run.stdout == f"{base_url}/{public_hash(b'pasted')}.txt\n"


@pytest.mark.gen_test(timeout=60)
async def test_a_url_with_no_hostd_at_it_asks_for_the_servers_base_url_once(base_url, tmp_path):
    paths = files(tmp_path, **{"a.txt": b"a", "b.txt": b"b"})

    run = await hostd_upload(*paths, "--url", f"{base_url}/files")

    assert run.code == 1
    assert run.stderr == (
        f"hostd upload: {paths[0]}: nothing at {base_url}/files/api/upload: give --url the"
        " server's base URL, e.g. http://host:port (HTTP 404)\n"
    )  # and b.txt is not tried


async def redirecting(location: str):
    """A server on loopback that answers every request with a 301 to `location` ({path}: the
    request's), as a front that sends http to https does; the server, and its URL."""

    async def answer(reader, writer) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ")[1].decode()
        writer.write(
            f"HTTP/1.1 301 Moved Permanently\r\nLocation: {location.replace('{path}', path)}\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.mark.parametrize(
    ("location", "error"),
    [
        (
            "https://files.example.org{path}",
            "the server redirects to https://files.example.org; use that as --url (HTTP 301)",
        ),
        (
            "/login",
            "the server redirects to {url}/login: give --url the server's base URL,"
            " e.g. https://host:port (HTTP 301)",
        ),
    ],
    ids=["to-https", "elsewhere"],
)
@pytest.mark.parametrize("size", [100, 3 * 1024 * 1024], ids=["put", "tus"])
@pytest.mark.gen_test(timeout=60)
async def test_a_redirect_says_where_it_points_once(tmp_path, location, error, size):
    paths = [str(sized(tmp_path, "a.bin", size)), str(sized(tmp_path, "b.bin", size))]
    server, url = await redirecting(location)

    try:
        run = await hostd_upload(*paths, "--url", url, "--resumable-above", "1000000")
    finally:
        server.close()

    assert run.code == 1
    assert run.stderr == f"hostd upload: {paths[0]}: {error.replace('{url}', url)}\n"


# -- big files: tus ---------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_a_big_file_goes_by_tus_with_the_answer_of_the_api(
    base_url, tmp_path, db, store, access_log, login, make_api_key
):
    alice = await login()
    key = await make_api_key(alice.user)
    big = sized(tmp_path, "big.bin", 3 * 1024 * 1024)

    run = await hostd_upload(str(big), "--url", base_url, "--key", key, "--resumable-above", "1000")

    assert run.code == 0, run.stderr
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    assert run.stdout == f"{base_url}/{public_hash_candidates(digest)[0]}.bin\n"
    assert store.path(digest).read_bytes() == big.read_bytes()
    (upload,) = await queries.all_uploads(db)
    assert (upload.original_name, upload.user_id) == ("big.bin", alice.user.id)
    assert "PATCH /api/tus/" in access_log.text and "PUT /api/upload" not in access_log.text


@pytest.mark.gen_test(timeout=60)
async def test_a_dropped_connection_resumes_from_where_the_server_got_to(
    base_url, http_port, tmp_path, store, config
):
    size = 6 * 1024 * 1024
    big = sized(tmp_path, "big.bin", size)
    relay = Relay(http_port, cut_after=size // 2)  # mid-way through the (one) PATCH
    url = await relay.start()

    try:
        run = await hostd_upload(str(big), "--url", url, "--resumable-above", "1000")
    finally:
        relay.close()

    assert run.code == 0, run.stderr
    assert relay.cuts == 1
    assert relay.sent < size + size // 4  # the rest, not the whole file again
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    assert run.stdout == f"{url}/{public_hash_candidates(digest)[0]}.bin\n"
    assert store.path(digest).read_bytes() == big.read_bytes()


# -- a run killed midway: the journal of unfinished uploads ------------------------------

SIX_MIB = 6 * 1024 * 1024  # one PATCH


async def killed_midway(http_port: int, big: Path, *options: str) -> tuple[Relay, list[str]]:
    """`hostd upload BIG OPTIONS` (BIG of SIX_MIB) through a relay that breaks its connection
    half-way, killed (SIGKILL: a lost session, a closed laptop) at that moment, before it can
    try again; the relay, left open for the next run (the same server URL), and the
    arguments to run again."""
    relay = Relay(http_port, cut_after=SIX_MIB // 2)
    url = await relay.start()
    args = [str(big), "--url", url, "--resumable-above", "1000", *options]
    proc = await start_upload(*args)
    try:
        await asyncio.wait_for(relay.cut.wait(), timeout=30)
    finally:
        proc.kill()
        await proc.communicate()
    if proc.returncode != -signal.SIGKILL:
        relay.close()
        pytest.fail(f"the first run ended by itself ({proc.returncode}) before the cut")
    return relay, args


@pytest.mark.gen_test(timeout=60)
async def test_a_run_killed_midway_is_carried_on_by_the_next_one(
    http_port, tmp_path, store, db, journal, login, make_api_key
):
    alice = await login()
    key = await make_api_key(alice.user)
    big = sized(tmp_path, "big.bin", SIX_MIB)

    relay, args = await killed_midway(http_port, big, "--key", key)
    try:
        remembered = journal.read_text()
        assert stat.S_IMODE(journal.stat().st_mode) == 0o600
        before = relay.sent
        run = await hostd_upload(*args)
    finally:
        relay.close()

    assert run.code == 0, run.stderr
    assert relay.sent - before < SIX_MIB // 2 + SIX_MIB // 8  # the rest, not the whole file
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    assert run.stdout == f"{args[2]}/{public_hash_candidates(digest)[0]}.bin\n"
    assert store.path(digest).read_bytes() == big.read_bytes()
    (upload,) = await queries.all_uploads(db)
    assert upload.user_id == alice.user.id
    assert "/api/tus/" in remembered and key not in remembered  # where, and no secret
    assert stat.S_IMODE(os.stat(journal.parent).st_mode) == 0o700
    assert not journal.exists()  # done, so forgotten


@pytest.mark.gen_test(timeout=60)
async def test_a_file_changed_since_the_killed_run_is_sent_whole_and_the_old_part_ended(
    http_port, tmp_path, store, db, journal
):
    big = sized(tmp_path, "big.bin", SIX_MIB)

    relay, args = await killed_midway(http_port, big)
    try:
        assert len(await queries.unfinished_resumable_ids(db)) == 1
        big.write_bytes(big.read_bytes()[::-1])  # the same size, other bytes
        before = relay.sent
        run = await hostd_upload(*args)
    finally:
        relay.close()

    assert run.code == 0, run.stderr
    assert relay.sent - before > SIX_MIB  # all of it
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    assert run.stdout == f"{args[2]}/{public_hash_candidates(digest)[0]}.bin\n"
    assert store.path(digest).read_bytes() == big.read_bytes()
    assert await queries.unfinished_resumable_ids(db) == set()  # the first run's part too
    assert not journal.exists()


@pytest.mark.gen_test(timeout=60)
async def test_an_upload_the_server_no_longer_has_starts_again(
    http_port, tmp_path, store, journal, config, wall_clock
):
    big = sized(tmp_path, "big.bin", SIX_MIB)

    relay, args = await killed_midway(http_port, big)
    try:
        wall_clock.advance(config.resumable_hours * 3600 + 1)  # expired: HEAD answers 410
        before = relay.sent
        run = await hostd_upload(*args)
    finally:
        relay.close()

    assert run.code == 0, run.stderr
    assert relay.sent - before > SIX_MIB
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    assert store.path(digest).read_bytes() == big.read_bytes()
    assert not journal.exists()


def test_runs_in_parallel_keep_each_others_unfinished_uploads(journal):
    """`xargs -P2 hostd upload ...`: each run's journal writes keep the other's entries."""

    def run(name: str) -> None:
        mine = Journal(journal)
        for number in range(100):
            sending = Sending("server", f"/files/{name}{number}", f"{name}{number}")
            mine.remember(sending, f"/api/tus/{name}{number}")

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(run, ["a", "b"]))

    uploads = json.loads(journal.read_text())["uploads"]
    assert {entry["location"] for entry in uploads.values()} == {
        f"/api/tus/{name}{number}" for name in "ab" for number in range(100)
    }


@pytest.mark.gen_test(timeout=60)
async def test_by_tus_a_file_over_the_limit_is_refused_at_creation_with_the_servers_message(
    base_url, tmp_path, access_log, db
):
    big = sized(tmp_path, "big.bin", LIMIT + 1)

    run = await hostd_upload(str(big), "--url", base_url, "--resumable-above", "1000")

    assert run.code == 1
    assert run.stderr == (
        f"hostd upload: {big}: the file is larger than the limit of {LIMIT} bytes (HTTP 413)\n"
    )
    assert "PATCH" not in access_log.text
    assert await queries.all_uploads(db) == []


@pytest.mark.gen_test(timeout=60)
async def test_by_tus_expires_asks_the_same_as_by_put(base_url, tmp_path, wall_clock):
    big = sized(tmp_path, "big.bin", 2 * 1024 * 1024)

    run = await hostd_upload(
        str(big), "--url", base_url, "--json", "--expires", "5", "--resumable-above", "1000"
    )

    assert run.code == 0, run.stderr
    assert json.loads(run.stdout)["expires_at"] == iso_time(int(wall_clock()) + 5 * 3600)


# -- start-up ---------------------------------------------------------------------------

# Runs the `hostd` command's main() with the arguments given, then prints the modules loaded.
MODULES_AFTER = """
import json, sys
from hostd import cli
try:
    cli.main(sys.argv[1:])
finally:
    print(json.dumps(sorted(sys.modules)))
"""


@pytest.mark.parametrize("command", ["upload", "--help"])
@pytest.mark.gen_test(timeout=60)
async def test_hostd_upload_and_help_load_none_of_the_servers_modules(base_url, tmp_path, command):
    """They need none of Tornado, the handlers or the database, which took a second to import."""
    (path,) = files(tmp_path, **{"a.txt": b"lean"})
    args = ["upload", "--url", base_url, path] if command == "upload" else ["--help"]

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", MODULES_AFTER, *args, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)

    loaded = json.loads(out.splitlines()[-1])
    hostd = {name for name in loaded if name.startswith("hostd.")}
    assert hostd <= {"hostd.cli", "hostd.client", "hostd.hashes", "hostd.parsing"}
    assert not [name for name in loaded if name.startswith(("tornado", "asyncio", "jinja2"))]
    if command == "upload":
        assert out.splitlines()[0].decode() == f"{base_url}/{public_hash(b'lean')}.txt"
