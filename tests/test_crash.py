"""Crashes: a real SIGKILL at the worst moments never leaves a row without its bytes, and
`hostd gc` removes the bytes a crash leaves without a row."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import hostd, multipart_body, start, wait_for_line

from hostd import db as queries
from hostd.db import Database

# Runs hostd's own upload and delete paths in a process that SIGKILLs itself at the named
# step: the moment after the bytes are placed and before the row is written, or after a
# deletion's commit and before its bytes are removed.
KILLED_AT = """
import asyncio, os, signal, sys
from pathlib import Path
from hostd import db, uploads
from hostd.app import thumbnails_of
from hostd.config import Config
from hostd.db import Database
from hostd.storage import store_from

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

async def main(data_dir, step):
    config = Config(data_dir=Path(data_dir))
    config.data_dir.mkdir(parents=True, exist_ok=True)
    database = await Database.open(config.db_path)
    store = store_from(config)
    user = await db.get_user(database, name="alice") or await db.insert_user(
        database, name="alice", password_hash="unused"
    )
    writer = store.writer()
    writer.write(step.encode() + b": the bytes of a crash")
    written = await writer.commit()
    if step == "before-the-row":
        uploads.db.register_upload = die  # placed, then killed before the row is written
    _, upload = await uploads.register(
        database, store, written, content_type="text/plain", original_name="a.txt",
        user_id=user.id, api_key_id=None,
    )
    uploads.remove_bytes = die  # the deletion commits, then the process dies
    await uploads.delete(database, store, thumbnails_of(config), upload_id=upload.id,
                         user_id=user.id)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def killed_at(data_dir: Path, step: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_AT, str(data_dir), step], capture_output=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()


def stored_files(data_dir: Path) -> set[str]:
    return {p.name for p in (data_dir / "blobs").rglob("*") if p.is_file()}


def rows_and_bytes(data_dir: Path) -> tuple[set[str], set[str]]:
    """(SHA-256 of every blob row, of every stored file), read after the crash."""

    async def rows() -> set[str]:
        database = await Database.open(data_dir / "hostd.sqlite3")
        try:
            return set(await queries.blob_times(database))
        finally:
            await database.close()

    # A loop of its own, not asyncio.run(): that would unset the thread's current loop, which
    # pytest-tornado set, and leave it for the garbage collector to find unclosed.
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(rows()), stored_files(data_dir)
    finally:
        loop.close()


def gc(data_dir: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return hostd("gc", "--data-dir", str(data_dir), "--grace", "0", cwd=cwd)


@pytest.mark.parametrize("step", ["before-the-row", "after-the-delete-commits"])
def test_a_kill_leaves_bytes_without_a_row_never_a_row_without_bytes(tmp_path, step):
    data_dir = tmp_path / "data"

    killed_at(data_dir, step)

    rows, files = rows_and_bytes(data_dir)
    assert rows <= files, "a row without its bytes"
    left = files - rows
    assert len(left) == 1, "the crash was meant to leave one file without a row"
    result = gc(data_dir, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "removed",
        f"{left.pop()}:",
        "no",
        "upload",
        "pointed",
        "at",
        "it",
    ]
    assert stored_files(data_dir) == rows


def uploader(base_url: str, stop: threading.Event, number: int, answers: list[int]) -> None:
    """Uploads distinct files until told to stop or the server is gone."""
    count = 0
    while not stop.is_set():
        count += 1
        body, headers = multipart_body(files=[("file", "f.bin", f"{number}-{count}".encode())])
        request = urllib.request.Request(f"{base_url}/api/upload", data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                answers.append(response.status)
        except (urllib.error.URLError, ConnectionError, OSError):
            return


def test_a_server_killed_under_load_keeps_every_row_with_its_bytes(tmp_path, free_port):
    data_dir = tmp_path / "data"
    base_url = f"http://127.0.0.1:{free_port}"
    for round in range(3):
        server = start(["serve", "--data-dir", str(data_dir), "--port", str(free_port)], tmp_path)
        wait_for_line(server, "listening on")
        stop, answers = threading.Event(), []
        threads = [
            threading.Thread(target=uploader, args=(base_url, stop, n, answers)) for n in range(16)
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while len(answers) < 100 * (round + 1) and time.monotonic() < deadline:
            time.sleep(0.01)  # until well under way
        server.send_signal(signal.SIGKILL)
        server.communicate(timeout=30)
        stop.set()
        for thread in threads:
            thread.join(30)

        rows, files = rows_and_bytes(data_dir)
        assert rows <= files, f"round {round}: rows without their bytes"
        assert len(rows) >= len(answers), "an upload was answered but not recorded"

    result = gc(data_dir, tmp_path)
    assert result.returncode == 0, result.stderr
    assert stored_files(data_dir) == rows
