"""The command line as an admin uses it: `hostd serve` and `python -m hostd`."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import io
import itertools
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import argon2
import pytest
from helpers import (
    damage_table,
    hostd,
    multipart_body,
    run_cli,
    start,
    store_upload,
    wait_for_line,
)
from PIL import Image

from hostd import db as queries
from hostd.config import Config
from hostd.db import Database, latest_version
from hostd.db import copy as db_copy
from hostd.hashes import public_hash_candidates
from hostd.storage import store_from


def test_serve_logs_its_url_then_one_line_per_request(tmp_path, free_port):
    proc = start(["serve", "--data-dir", str(tmp_path / "d"), "--port", str(free_port)], tmp_path)
    try:
        line = wait_for_line(proc, "listening on")
        body, headers = multipart_body(files=[("file", "a.txt", b"from the cli test")])
        request = urllib.request.Request(
            f"http://127.0.0.1:{free_port}/upload?api=1", data=body, headers=headers
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = response.read().decode()
        access = wait_for_line(proc, "POST /upload")
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=10)

    assert f"http://127.0.0.1:{free_port}/" in line
    assert answer.startswith("OK ")
    assert "200 POST /upload?api=1 (127.0.0.1)" in access
    assert proc.returncode == 0
    assert (tmp_path / "d" / "hostd.sqlite3").exists()


def test_serve_starts_with_no_standard_input(tmp_path, free_port):
    proc = start(
        ["serve", "--data-dir", str(tmp_path / "d"), "--port", str(free_port)],
        tmp_path,
        preexec=lambda: os.close(0),  # as a daemon may be started
    )
    try:
        line = wait_for_line(proc, "listening on")
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=10)

    assert f":{free_port}/" in line, output
    assert proc.returncode == 0, output


def test_serve_reads_hostd_toml_from_the_working_directory(tmp_path, free_port):
    (tmp_path / "hostd.toml").write_text(
        f'[server]\nport = {free_port}\n[storage]\ndata_dir = "store"\n'
    )
    proc = start(["serve"], tmp_path)
    try:
        line = wait_for_line(proc, "listening on")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)

    assert f":{free_port}/" in line
    assert (tmp_path / "store" / "hostd.sqlite3").exists()


def test_a_config_mistake_stops_the_start_and_names_the_key(tmp_path):
    config = tmp_path / "broken.toml"
    config.write_text("[limits]\nmax_upload_byte = 5\n")

    result = subprocess.run(
        [sys.executable, "-m", "hostd", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )

    assert result.returncode == 2
    assert "unknown key limits.max_upload_byte" in result.stderr


def test_a_missing_config_file_is_an_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "hostd", "serve", "--config", "nope.toml"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )

    assert result.returncode == 2
    assert "nope.toml: no such file" in result.stderr


def test_half_written_uploads_from_a_crash_are_removed_at_start(tmp_path, free_port):
    data = tmp_path / "d"
    crashed = data / "tmp" / "4242-deadbeef"  # a process's temp folder, its lock long free
    crashed.mkdir(parents=True)
    (crashed / ".lock").touch()
    (crashed / "upload-abc123").write_bytes(b"half")
    (data / "tmp" / "upload-older-layout").write_bytes(b"half")
    proc = start(["serve", "--data-dir", str(data), "--port", str(free_port)], tmp_path)
    try:
        wait_for_line(proc, "removed 2 half-written upload(s)")
        wait_for_line(proc, "listening on")
        assert not crashed.exists()
        assert not (data / "tmp" / "upload-older-layout").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)

    assert list((data / "tmp").iterdir()) == []  # its own folder goes at exit


def test_admin_creates_a_user_and_a_key_that_uploads_until_invalidated(tmp_path, free_port):
    data = ["--data-dir", str(tmp_path / "d")]
    added = hostd(
        "user", "add", "alice", "--password-stdin", *data, cwd=tmp_path, stdin="pw-long-enough\n"
    )
    created = hostd("key", "create", "alice", "--label", "cron job", *data, cwd=tmp_path)
    token = created.stdout.strip()
    proc = start(["serve", *data, "--port", str(free_port)], tmp_path)
    try:
        wait_for_line(proc, "listening on")
        before = keyed_upload(free_port, token)
        listed = hostd("key", "list", "alice", *data, cwd=tmp_path)
        key_id = token.split("_")[1]
        invalidated = hostd("key", "invalidate", key_id, *data, cwd=tmp_path)
        after = keyed_upload(free_port, token)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    users = hostd("user", "list", *data, cwd=tmp_path)

    assert added.returncode == 0 and created.returncode == 0
    assert created.stdout == token + "\n"  # the key alone on stdout, for scripts
    assert token.startswith("hk_")
    assert before == 200
    assert key_id in listed.stdout and "cron job" in listed.stdout and "usable" in listed.stdout
    assert invalidated.returncode == 0
    assert after == 401
    assert "alice" in users.stdout


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process, in MiB."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status)
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}


def test_argon2_memory_is_taken_only_when_needed_and_given_back(tmp_path, free_port):
    # Production parameters: a key check takes 19 MiB, a password hash 64 MiB.
    data = ["--data-dir", str(tmp_path / "d")]
    hostd("user", "add", "alice", "--password-stdin", *data, cwd=tmp_path, stdin="pw-long-enough\n")
    token = hostd("key", "create", "alice", *data, cwd=tmp_path).stdout.strip()
    proc = start(["serve", *data, "--port", str(free_port)], tmp_path)
    try:
        wait_for_line(proc, "listening on")
        at_start = memory_mib(proc.pid)
        statuses = [keyed_upload(free_port, t) for t in (token, token[:-2] + "xx", token)]
        after = memory_mib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)

    assert statuses == [200, 401, 200]
    assert at_start["VmHWM"] < 64, "no Argon2 hashing at start"
    assert after["VmHWM"] - at_start["VmRSS"] > 15, "the key checks did use Argon2's memory"
    assert after["VmRSS"] - at_start["VmRSS"] < 8, "and gave it back"


def keyed_upload(port: int, token: str) -> int:
    body, headers = multipart_body(files=[("file", "a.txt", token.encode()[-8:])])
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/upload",
        data=body,
        headers={**headers, "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_database_that_cannot_be_opened_stops_the_start_with_one_line(tmp_path, free_port):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "hostd.sqlite3").write_bytes(b"not a database, a disk's garbage " * 300)
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    (tmp_path / "pg.toml").write_text(
        f'[database]\nurl = "postgresql://hostd:s3cret@127.0.0.1:{port}/hostd"\n'
    )

    damaged = hostd(
        "serve", "--data-dir", str(tmp_path / "d"), "--port", str(free_port), cwd=tmp_path
    )
    admin = hostd("stats", "--data-dir", str(tmp_path / "d"), cwd=tmp_path)
    unreachable = hostd(
        "serve", "--config", str(tmp_path / "pg.toml"), "--port", str(free_port), cwd=tmp_path
    )

    for done in (damaged, admin):
        assert done.returncode == 1
        assert done.stderr.startswith(
            "hostd: cannot open the database: "
            f"{tmp_path / 'd' / 'hostd.sqlite3'}: file is not a database; restore"
        ), done.stderr
        assert "Traceback" not in done.stderr
    assert unreachable.returncode == 1
    assert unreachable.stderr.splitlines()[-1].startswith(
        "hostd: cannot open the database: PostgreSQL at 127.0.0.1/hostd: "
    ), unreachable.stderr
    assert "Traceback" not in unreachable.stderr and "s3cret" not in unreachable.stderr


def test_an_address_in_use_or_a_data_dir_that_cannot_be_made_stops_the_start(tmp_path, free_port):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        in_use = hostd(
            "serve",
            "--data-dir",
            str(tmp_path / "d"),
            "--port",
            str(port),
            cwd=tmp_path,
            timeout=30,
        )
    (tmp_path / "a-file").write_text("not a folder")
    no_dir = hostd(
        "serve",
        "--data-dir",
        str(tmp_path / "a-file" / "d"),
        "--port",
        str(free_port),
        cwd=tmp_path,
        timeout=30,
    )

    assert in_use.returncode == 1
    assert in_use.stderr.splitlines()[-1] == (
        f"hostd: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    assert not (tmp_path / "d").exists(), "nothing opened before the address was had"
    assert no_dir.returncode == 2
    assert no_dir.stderr.splitlines()[-1] == (
        "hostd: configuration error: storage.data_dir: cannot create"
        f" {tmp_path / 'a-file' / 'd'}: Not a directory"
    )
    assert "Traceback" not in in_use.stderr + no_dir.stderr


def test_user_commands_explain_their_failures(tmp_path):
    data = ["--data-dir", str(tmp_path / "d")]

    short = hostd("user", "add", "bob", "--password-stdin", *data, cwd=tmp_path, stdin="short\n")
    hostd("user", "add", "bob", "--password-stdin", *data, cwd=tmp_path, stdin="long enough\n")
    again = hostd(
        "user", "add", "BOB", "--password-stdin", *data, cwd=tmp_path, stdin="long enough\n"
    )
    missing = hostd("key", "create", "nobody", *data, cwd=tmp_path)
    passwd = hostd(
        "user", "passwd", "bob", "--password-stdin", *data, cwd=tmp_path, stdin="newer pass\n"
    )
    no_key = hostd("key", "invalidate", "0123456789abcdef", *data, cwd=tmp_path)
    no_terminal = [
        hostd("user", action, name, *data, cwd=tmp_path, stdin="piped, not typed\n")
        for action, name in (("add", "gina"), ("passwd", "bob"))
    ]

    assert short.returncode == 1 and "at least 8 characters" in short.stderr
    for refused in no_terminal:
        assert refused.returncode == 1 and refused.stderr == (
            "hostd: no terminal to ask for the password: give it on standard input with"
            " --password-stdin\n"
        )
    assert again.returncode == 1 and "is taken" in again.stderr
    assert missing.returncode == 1 and "there is no user 'nobody'" in missing.stderr
    assert passwd.returncode == 0 and "sessions have ended" in passwd.stderr
    assert no_key.returncode == 1 and "there is no key" in no_key.stderr


def stored_password_hash(data_dir: Path, name: str) -> str:
    with contextlib.closing(sqlite3.connect(data_dir / "hostd.sqlite3")) as conn:
        (password_hash,) = conn.execute(
            "SELECT password_hash FROM users WHERE name = ?", (name,)
        ).fetchone()
    return password_hash


def test_password_stdin_keeps_the_password_as_typed_but_its_final_newline(tmp_path):
    data = ["--data-dir", str(tmp_path / "d")]

    added = hostd(
        "user", "add", "bob", "--password-stdin", *data, cwd=tmp_path, stdin="  correct horse  \n"
    )
    first = stored_password_hash(tmp_path / "d", "bob")
    changed = hostd(
        "user", "passwd", "bob", "--password-stdin", *data, cwd=tmp_path, stdin="\x1fnew one \t\n"
    )
    second = stored_password_hash(tmp_path / "d", "bob")

    assert added.returncode == 0 and changed.returncode == 0
    assert argon2.PasswordHasher().verify(first, "  correct horse  ")
    assert argon2.PasswordHasher().verify(second, "\x1fnew one \t")


def test_password_stdin_that_is_not_utf8_is_refused_for_what_it_is(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "hostd", "user", "add", "bob", "--password-stdin"],
        input=b"\xff\xfe not utf-8\n",
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
    )

    assert result.returncode == 1
    assert b"the password on standard input is not UTF-8" in result.stderr


def test_key_create_keeps_to_accounts_max_keys(tmp_path):
    (tmp_path / "hostd.toml").write_text("[accounts]\nmax_keys = 2\n")
    hostd("user", "add", "kim", "--password-stdin", cwd=tmp_path, stdin="long enough\n")

    made = [hostd("key", "create", "kim", cwd=tmp_path) for _ in range(3)]

    assert [m.returncode for m in made] == [0, 0, 1]
    assert "holds 2 usable keys, the most accounts.max_keys allows" in made[2].stderr
    assert made[2].stdout == ""


def upload_png(port: int, data: bytes, token: str | None = None) -> dict:
    body, headers = multipart_body(files=[("file", "shot.png", data)])
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/upload", data=body, headers=headers
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_admin_takes_a_file_down_for_everyone_who_uploaded_it(tmp_path, free_port):
    data = ["--data-dir", str(tmp_path / "d")]
    hostd("user", "add", "alice", "--password-stdin", *data, cwd=tmp_path, stdin="long enough\n")
    token = hostd("key", "create", "alice", *data, cwd=tmp_path).stdout.strip()
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(out, "PNG")
    png = out.getvalue()
    sha = hashlib.sha256(png).hexdigest()
    proc = start(["serve", *data, "--port", str(free_port)], tmp_path)
    try:
        wait_for_line(proc, "listening on")
        anonymous = upload_png(free_port, png)
        upload_png(free_port, png, token)
        url = anonymous["urls"]["full"]
        h = anonymous["hash"]
        before = status_of(url), status_of(f"http://127.0.0.1:{free_port}/thumbs/{h}.webp")
        info = hostd("file", "info", url, *data, cwd=tmp_path)
        unknown = hostd("file", "rm", h, "AAAAAAAAAAAA", *data, cwd=tmp_path)
        still = status_of(url)
        removed = hostd("file", "rm", h, *data, cwd=tmp_path)
        after = (
            status_of(url),
            status_of(anonymous["urls"]["ext"]),
            status_of(f"http://127.0.0.1:{free_port}/thumbs/{h}.webp"),
        )
        on_disk = [p.name for p in (tmp_path / "d").rglob("*") if p.is_file() and h in p.name]
        on_disk += [p.name for p in (tmp_path / "d" / "blobs").rglob(sha)]
        on_disk += [p.name for p in (tmp_path / "d" / "thumbs").rglob("*.webp")]
        again = upload_png(free_port, png)
        back = status_of(url)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)

    assert before == (200, 200)
    assert f"hash      {h}" in info.stdout and f"sha256    {sha}" in info.stdout
    lines = info.stdout.splitlines()
    assert any("anonymous" in line and "shot.png" in line for line in lines)
    assert any("alice" in line and "shot.png" in line for line in lines)
    assert unknown.returncode == 1 and "there is no file 'AAAAAAAAAAAA'" in unknown.stderr
    assert still == 200  # one unknown hash, nothing taken down
    assert removed.returncode == 0 and f"removed {h}: 2 uploads" in removed.stderr
    assert after == (404, 404, 404)
    assert on_disk == []  # neither the bytes nor the thumbnail
    assert again["hash"] == h and back == 200  # the same bytes may come back later


def test_gc_lists_files_whose_bytes_are_gone_or_damaged_and_exits_1(tmp_path, free_port):
    data = ["--data-dir", str(tmp_path / "d")]
    files = [b"kept whole", b"lost behind hostd's back", b"cut short by a repair"]
    proc = start(["serve", *data, "--port", str(free_port)], tmp_path)
    try:
        wait_for_line(proc, "listening on")
        hashes = [upload_png(free_port, content)["hash"] for content in files]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    whole, lost, cut = (hashlib.sha256(content).hexdigest() for content in files)
    blobs = tmp_path / "d" / "blobs"
    next(blobs.rglob(lost)).unlink()
    os.truncate(next(blobs.rglob(cut)), 3)

    found = hostd("gc", *data, cwd=tmp_path)
    as_json = hostd("gc", "--json", *data, cwd=tmp_path)

    assert found.returncode == 1
    assert found.stdout.splitlines() == [
        f"missing {lost} ({hashes[1]}): its uploads are listed but its bytes are gone",
        f"damaged {cut} ({hashes[2]}): its bytes are not the ones its uploads stored",
    ]
    assert "1 file(s) have rows but no bytes; 1 file(s) have damaged bytes" in found.stderr
    answer = json.loads(as_json.stdout)
    assert (answer["missing"], answer["damaged"], answer["removed"]) == ([lost], [cut], [])
    assert next(blobs.rglob(cut)).stat().st_size == 3, "reported, not removed"
    kept = next(blobs.rglob(whole))
    kept.write_bytes(kept.read_bytes().upper())  # the same size, other bytes
    assert json.loads(hostd("gc", "--json", *data, cwd=tmp_path).stdout)["damaged"] == [cut]
    verified = hostd("gc", "--verify", "--json", *data, cwd=tmp_path)
    assert json.loads(verified.stdout)["damaged"] == sorted([cut, whole])


# -- hostd db: migrate, copy ---------------------------------------------------------------


def in_a_loop_of_its_own(make_coro):
    """Run a coroutine with asyncio.run on a thread of its own (see test_crash: asyncio.run
    on the main thread would unset the loop that pytest-tornado's tests use)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make_coro())).result(60)


def dump(target):
    """Every table's rows, sorted, of the database at target (a path or a URL)."""

    async def read():
        database = await Database.open(target, migrate=False)
        try:
            names = await database.read(db_copy.tables)
            return {
                name: sorted(
                    tuple(row)
                    for row in await database.read(
                        lambda tx, name=name: tx.fetchall(f"SELECT * FROM {name}")
                    )
                )
                for name in names
            }
        finally:
            await database.close()

    return in_a_loop_of_its_own(read)


def fill(path: Path) -> None:
    """A SQLite database with a row in every table: users, keys, sessions, blobs, uploads
    (one with a deletion link, one expiring), a ban, a quota."""

    async def make():
        database = await Database.open(path)
        try:
            alice = await queries.insert_user(database, name="Alice", password_hash="h1")
            bob = await queries.insert_user(database, name="bob", password_hash="h2")
            await queries.set_quota(database, user_id=bob.id, own=True, quota_bytes=10**6)
            key = await queries.insert_api_key(
                database, user_id=alice.id, key_id="k1", secret_hash="s", label="laptop"
            )
            await queries.insert_session(database, token_hash="t" * 64, user_id=bob.id)
            for n, owner in enumerate((alice.id, bob.id, None)):
                await queries.register_upload(
                    database,
                    sha256=f"{n}" * 64,
                    size_bytes=100 + n,
                    content_type="text/plain",
                    original_name=f"f{n}.txt",
                    user_id=owner,
                    api_key_id=key.id if owner == alice.id else None,
                    expires_at=None if n else 4_000_000_000,
                    delete_token_hash="d" * 64 if n == 1 else None,
                )
            await queries.insert_ban(database, sha256="9" * 64, reason="spam")
            await queries.record_setting(database, name=queries.COOKIE_SECRET, value="$argon2")
            await queries.insert_key_reveal(
                database, token_hash="r" * 64, user_id=bob.id, sealed_key="x", expires_at=5
            )
            await queries.insert_resumable(
                database,
                id="tus1",
                user_id=alice.id,
                api_key_id=key.id,
                address="192.0.2.1",
                length_bytes=10,
                metadata="filename ZS50eHQ=",
                filename="e.txt",
                expires="",
                created_at=1,
                expires_at=2,
                most=5,
            )
        finally:
            await database.close()

    in_a_loop_of_its_own(make)


def test_db_copy_moves_every_row_to_postgresql_and_back(tmp_path, postgres):
    fill(tmp_path / "a.sqlite3")
    pg = postgres.new_empty_database()

    there = hostd(
        "db", "copy", "--from", f"sqlite:///{tmp_path}/a.sqlite3", "--to", pg, cwd=tmp_path
    )
    back = hostd(
        "db", "copy", "--from", pg, "--to", f"sqlite:///{tmp_path}/b.sqlite3", cwd=tmp_path
    )

    assert there.returncode == 0, there.stderr
    assert "uploads: 3 row(s)" in there.stderr and "the counts match" in there.stderr
    assert back.returncode == 0, back.stderr
    original = dump(tmp_path / "a.sqlite3")
    assert set(original) >= {"users", "api_keys", "sessions", "blobs", "uploads", "bans"}
    assert all(original[name] for name in ("settings", "key_reveals", "resumable_uploads"))
    assert all(original[name] for name in ("users", "api_keys", "sessions", "uploads", "bans"))
    assert dump(pg) == original
    assert dump(tmp_path / "b.sqlite3") == original


def test_a_copy_goes_on_where_the_ids_left_off(tmp_path, postgres):
    fill(tmp_path / "a.sqlite3")
    pg = postgres.new_empty_database()
    hostd("db", "copy", "--from", f"sqlite:///{tmp_path}/a.sqlite3", "--to", pg, cwd=tmp_path)

    async def add_one():
        database = await Database.open(pg)
        try:
            return await queries.insert_user(database, name="carol", password_hash="h3")
        finally:
            await database.close()

    assert in_a_loop_of_its_own(add_one).id == 3


def test_db_copy_refuses_a_target_that_holds_rows(tmp_path, postgres):
    fill(tmp_path / "a.sqlite3")
    pg = postgres.new_empty_database()
    hostd("db", "copy", "--from", f"sqlite:///{tmp_path}/a.sqlite3", "--to", pg, cwd=tmp_path)
    before = dump(pg)

    again = hostd(
        "db", "copy", "--from", f"sqlite:///{tmp_path}/a.sqlite3", "--to", pg, cwd=tmp_path
    )
    into_sqlite = hostd(
        "db", "copy", "--from", pg, "--to", f"sqlite:///{tmp_path}/a.sqlite3", cwd=tmp_path
    )

    assert again.returncode == 1 and "the target is not empty" in again.stderr
    assert into_sqlite.returncode == 1 and "the target is not empty" in into_sqlite.stderr
    assert dump(pg) == before


def test_db_copy_refuses_what_is_not_a_database_url(tmp_path):
    missing = hostd(
        "db", "copy", "--from", f"sqlite:///{tmp_path}/none", "--to", "sqlite:///x", cwd=tmp_path
    )
    wrong = hostd("db", "copy", "--from", "mysql://x", "--to", "sqlite:///x", cwd=tmp_path)

    assert missing.returncode == 1 and "no such database" in missing.stderr
    assert wrong.returncode == 2 and "is not sqlite:///path or postgresql://" in wrong.stderr
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_db_migrate_brings_a_new_database_to_the_latest_version(tmp_path, kind, request):
    url = (
        request.getfixturevalue("postgres").new_empty_database()
        if kind == "postgresql"
        else f"sqlite:///{tmp_path}/new.sqlite3"
    )
    (tmp_path / "hostd.toml").write_text(f'[database]\nurl = "{url}"\n')

    first = hostd("db", "migrate", cwd=tmp_path)
    second = hostd("db", "migrate", cwd=tmp_path)

    assert first.returncode == 0, first.stderr
    assert f"the database is at version {latest_version()}" in first.stderr
    assert f"the database is at version {latest_version()}" in second.stderr


def test_backup_on_postgresql_says_what_to_use_instead(tmp_path, postgres):
    (tmp_path / "hostd.toml").write_text(f'[database]\nurl = "{postgres.new_database()}"\n')

    result = hostd("backup", str(tmp_path / "backup"), cwd=tmp_path)

    assert result.returncode == 1
    assert "hostd backup copies a SQLite database" in result.stderr
    assert "pg_dump" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_on_postgresql_keeps_uploads_in_the_database(tmp_path, free_port, postgres):
    url = postgres.new_database()
    (tmp_path / "hostd.toml").write_text(
        f'[server]\nport = {free_port}\n[database]\nurl = "{url}"\n'
    )
    proc = start(["serve"], tmp_path)
    try:
        wait_for_line(proc, "listening on")
        body, headers = multipart_body(files=[("file", "a.txt", b"kept in postgresql")])
        request = urllib.request.Request(
            f"http://127.0.0.1:{free_port}/upload?api=1", data=body, headers=headers
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = response.read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)

    assert answer.startswith("OK ")
    assert [row[2] for row in dump(url)["uploads"]] == ["a.txt"]
    assert not (tmp_path / "data" / "hostd.sqlite3").exists()


def test_a_hash_that_begins_with_a_dash_is_a_hash_not_an_option(tmp_path, free_port):
    # One hash in 64 begins with "-" (URL-safe base64): argparse took it for an option.
    data = ["--data-dir", str(tmp_path / "d")]
    dashed = next(
        content
        for content in (f"file {n}".encode() for n in itertools.count())
        if public_hash_candidates(hashlib.sha256(content).hexdigest())[0].startswith("-")
    )
    proc = start(["serve", *data, "--port", str(free_port)], tmp_path)
    try:
        wait_for_line(proc, "listening on")
        h = upload_png(free_port, dashed)["hash"]
        info = hostd("file", "info", h, *data, cwd=tmp_path)
        removed = hostd("file", "rm", h, *data, cwd=tmp_path)
        after = status_of(f"http://127.0.0.1:{free_port}/{h}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)

    assert h.startswith("-")
    assert info.returncode == 0 and f"hash      {h}" in info.stdout, info.stderr
    assert removed.returncode == 0 and f"removed {h}: 1 upload" in removed.stderr
    assert after == 404


# -- a failure is one line on stderr, never a traceback -----------------------------------


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data dir with a new, migrated database; the working directory holds no hostd.toml."""
    monkeypatch.chdir(tmp_path)

    async def make() -> None:
        await (await Database.open(tmp_path / "d" / "hostd.sqlite3")).close()

    (tmp_path / "d").mkdir()
    in_a_loop_of_its_own(make)
    return tmp_path / "d"


# Each would find nothing in a new database. (`user add` and `ban add` start one, as the
# first account must; `db migrate` and `serve` too.)
COMMANDS_ON_A_DATABASE = [
    ["stats"],
    ["gc"],
    ["prune"],
    ["backup", "copy"],
    ["storage", "migrate", "--to", "s3"],
    ["file", "info", "AAAAAAAAAAAA"],
    ["file", "rm", "AAAAAAAAAAAA"],
    ["ban", "list"],
    ["ban", "rm", "a" * 64],
    ["user", "list"],
    ["user", "passwd", "alice", "--password-stdin"],
    ["user", "disable", "alice"],
    ["user", "rm", "alice"],
    ["user", "quota", "alice", "5"],
    ["key", "list", "alice"],
    ["key", "create", "alice"],
    ["key", "invalidate", "0123456789abcdef"],
]


@pytest.mark.parametrize("made", [False, True], ids=["no-dir", "empty-dir"])
@pytest.mark.parametrize("command", COMMANDS_ON_A_DATABASE, ids=" ".join)
def test_a_data_dir_without_a_database_is_refused_and_nothing_is_made(
    tmp_path, monkeypatch, capsys, command, made
):
    monkeypatch.chdir(tmp_path)
    if made:
        (tmp_path / "typo").mkdir()

    status, out, err = run_cli(capsys, *command, "--data-dir", "typo")

    assert status == 1
    assert (
        err == "hostd: no hostd database at typo/hostd.sqlite3 (did you mean another --data-dir?)\n"
    )
    assert out == ""
    assert sorted(path.name for path in tmp_path.rglob("*")) == (["typo"] if made else [])


def test_the_commands_that_make_a_database_still_start_on_a_new_data_dir(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)

    banned = run_cli(capsys, "ban", "add", "a" * 64, "--data-dir", "new")
    migrated = run_cli(capsys, "db", "migrate", "--data-dir", "newer")

    assert banned[0] == 0 and "no upload of it was stored" in banned[2]
    assert migrated[0] == 0 and f"at version {latest_version()}" in migrated[2]
    assert (tmp_path / "new" / "hostd.sqlite3").exists()
    assert (tmp_path / "newer" / "hostd.sqlite3").exists()


class SlowLog(logging.Handler):
    """Holds up whichever thread logs: aiosqlite's worker logs each call it runs."""

    def emit(self, record: logging.LogRecord) -> None:
        time.sleep(0.1)


@pytest.fixture
def slow_aiosqlite_thread() -> Iterator[None]:
    logger = logging.getLogger("aiosqlite")
    handler, level = SlowLog(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_a_database_sqlite_cannot_open_at_all_leaves_no_thread_to_fail_after(
    tmp_path, monkeypatch, capsys, slow_aiosqlite_thread
):
    # aiosqlite's failed connect stops its thread without waiting for it: the thread, late
    # (here on purpose, under load by chance), posted to the loop asyncio.run() had closed,
    # and "RuntimeError: Event loop is closed" followed the line.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d" / "hostd.sqlite3").mkdir(parents=True)
    failed_threads = []
    monkeypatch.setattr(threading, "excepthook", failed_threads.append)
    before = set(threading.enumerate())

    status, _, err = run_cli(capsys, "stats", "--data-dir", "d")
    for thread in set(threading.enumerate()) - before:
        thread.join(10)

    assert status == 1
    assert err == "hostd: cannot open the database: d/hostd.sqlite3: unable to open database file\n"
    assert [str(failed.exc_value) for failed in failed_threads] == []


def test_gc_refuses_a_negative_grace(data_dir, capsys):
    status, _, err = run_cli(capsys, "gc", "--grace", "-5", "--data-dir", str(data_dir))

    assert status == 2
    assert err.splitlines()[-1] == (
        "hostd gc: error: argument --grace: must be 0 seconds or more, not -5"
    )


@pytest.mark.parametrize("to", ["s3", "local"])
def test_storage_migrate_without_a_storage_s3_section_says_what_is_missing(data_dir, capsys, to):
    status, _, err = run_cli(capsys, "storage", "migrate", "--to", to, "--data-dir", "d")

    assert status == 2
    assert err == (
        "hostd: configuration error: the S3 store needs a [storage.s3] section with at least"
        ' bucket = "..." (and endpoint, unless it is AWS; see hostd.toml)\n'
    )


@pytest.mark.parametrize("command", [["stats"], ["ban", "list"]], ids=" ".join)
def test_a_reader_that_stops_reading_ends_the_command_quietly(data_dir, command):
    # `hostd stats | head -1`: the pipe closes before hostd writes to it.
    proc = subprocess.Popen(
        [sys.executable, "-m", "hostd", *command, "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=data_dir.parent,
    )
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)

    assert proc.returncode == 141  # 128 + SIGPIPE, as a shell shows a tool SIGPIPE ended
    assert err == b""


def stored_in(data_dir: Path, data: bytes) -> str:
    """Store `data` as an anonymous upload in data_dir's database and blobs: its public hash."""

    async def store_it() -> str:
        config = Config(data_dir=data_dir, cookie_secret="test-secret")
        database = await Database.open_config(config)
        store = store_from(config)
        try:
            blob, _ = await store_upload(database, store, data)
        finally:
            store.close()
            await database.close()
        return str(blob.hash)

    return in_a_loop_of_its_own(store_it)


def test_file_info_and_rm_take_a_files_sha256_as_well_as_its_hash(data_dir, capsys):
    h = stored_in(data_dir, b"named by its digest")
    sha256 = hashlib.sha256(b"named by its digest").hexdigest()

    _, info, _ = run_cli(capsys, "file", "info", sha256, "--data-dir", str(data_dir))
    _, _, upper = run_cli(capsys, "file", "info", sha256.upper(), "--data-dir", str(data_dir))
    status, _, removed = run_cli(capsys, "file", "rm", sha256, "--data-dir", str(data_dir))

    assert f"hash      {h}" in info and f"sha256    {sha256}" in info
    assert "there is no file" not in upper
    assert status == 0 and f"removed {h}: 1 upload" in removed


def test_gc_names_a_missing_files_public_hash_too(data_dir, capsys):
    h = stored_in(data_dir, b"lost behind hostd's back")
    sha256 = hashlib.sha256(b"lost behind hostd's back").hexdigest()
    next(data_dir.rglob(sha256)).unlink()

    status, out, _ = run_cli(capsys, "gc", "--data-dir", str(data_dir))
    _, as_json, _ = run_cli(capsys, "gc", "--json", "--data-dir", str(data_dir))

    assert status == 1
    assert out.splitlines() == [
        f"missing {sha256} ({h}): its uploads are listed but its bytes are gone"
    ]
    assert json.loads(as_json)["hashes"] == {sha256: h}


@pytest.mark.parametrize(
    ("command", "table"), [(["stats"], "uploads"), (["ban", "list"], "bans")], ids=["stats", "ban"]
)
def test_a_damaged_database_is_one_line_saying_so_not_a_traceback(data_dir, capsys, command, table):
    stored_in(data_dir, b"an upload")
    run_cli(capsys, "ban", "add", "a" * 64, "--reason", "spam", "--data-dir", str(data_dir))
    damage_table(data_dir / "hostd.sqlite3", table)

    status, _, err = run_cli(capsys, *command, "--data-dir", str(data_dir))

    assert status == 1
    assert err == (
        "hostd: the database is damaged (database disk image is malformed): restore the data"
        " dir from a backup (hostd restore)\n"
    )


def test_on_a_full_disk_admin_commands_are_one_line_saying_so(
    small_disk, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    data_dir = small_disk.path / "d"
    run_cli(
        capsys,
        "user",
        "add",
        "bob",
        "--password-stdin",
        "--data-dir",
        str(data_dir),
        stdin=b"long enough\n",
    )
    h = stored_in(data_dir, b"to be taken down")
    small_disk.fill(leave=32 * 1024)  # room for SQLite's shared memory file, none for a write

    added = run_cli(
        capsys,
        "user",
        "add",
        "eve",
        "--password-stdin",
        "--data-dir",
        str(data_dir),
        stdin=b"long enough\n",
    )
    removed = run_cli(capsys, "file", "rm", h, "--data-dir", str(data_dir))
    small_disk.empty()
    again = run_cli(capsys, "file", "rm", h, "--data-dir", str(data_dir))

    full = "hostd: out of storage space (database or disk is full): free some, then run it again\n"
    assert added[::2] == (1, full)
    assert removed[::2] == (1, full)
    assert again[0] == 0 and f"removed {h}: 1 upload" in again[2]
