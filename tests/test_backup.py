"""`hostd backup` while the server runs, `hostd restore` into a new data dir: every file is
served again byte for byte."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest
from helpers import damage_table, fetch, hostd, multipart_body, start, wait_for_line


def upload(base_url: str, data: bytes) -> str:
    body, headers = multipart_body(files=[("file", "f.bin", data)])
    request = urllib.request.Request(f"{base_url}/api/upload", data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["hash"]


def serving(data_dir: Path, port: int, cwd: Path) -> subprocess.Popen[str]:
    server = start(["serve", "--data-dir", str(data_dir), "--port", str(port)], cwd)
    wait_for_line(server, "listening on")
    return server


def stop(server: subprocess.Popen[str]) -> None:
    server.send_signal(signal.SIGTERM)
    server.communicate(timeout=30)


def test_a_backup_taken_while_serving_restores_every_file_byte_for_byte(tmp_path, free_port):
    data_dir, copy = tmp_path / "data", tmp_path / "backup"
    base_url = f"http://127.0.0.1:{free_port}"
    contents = [os.urandom(n) for n in (1, 4096, 3 * 1024 * 1024 + 5)] + [b"twice", b"twice"]
    server = serving(data_dir, free_port, tmp_path)
    try:
        files = {upload(base_url, data): data for data in contents}
        first = hostd("backup", str(copy), "--data-dir", str(data_dir), cwd=tmp_path)
        later = upload(base_url, b"uploaded after the first backup")
        second = hostd("backup", str(copy), "--data-dir", str(data_dir), cwd=tmp_path)
    finally:
        stop(server)
    files[later] = b"uploaded after the first backup"

    assert first.returncode == 0, first.stderr
    assert "backed up the database and 4 new file(s)" in first.stderr
    assert second.returncode == 0, second.stderr
    assert "1 new file(s)" in second.stderr and "4 were there already" in second.stderr

    shutil.rmtree(data_dir)
    restored = hostd("restore", str(copy), "--data-dir", str(data_dir), cwd=tmp_path)
    assert restored.returncode == 0, restored.stderr
    server = serving(data_dir, free_port, tmp_path)
    try:
        for hash, data in files.items():
            assert fetch(f"{base_url}/{hash}") == (200, data)
    finally:
        stop(server)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_backup_and_a_restore_keep_the_database_its_owners_alone(tmp_path, free_port):
    data_dir, copy, restored = tmp_path / "data", tmp_path / "backup", tmp_path / "restored"
    server = serving(data_dir, free_port, tmp_path)
    try:
        sha256 = hashlib.sha256(b"in every copy").hexdigest()
        upload(f"http://127.0.0.1:{free_port}", b"in every copy")
    finally:
        stop(server)
    umask = os.umask(0o022)  # the usual one, which makes new files 0644
    try:
        backup = hostd("backup", str(copy), "--data-dir", str(data_dir), cwd=tmp_path)
        copied = mode(copy / "hostd.sqlite3")
        (copy / "hostd.sqlite3").chmod(0o644)  # as a backup made before this was kept so
        (data_dir / "hostd.sqlite3").chmod(0o644)  # as an admin's cp leaves it
        restore = hostd("restore", str(copy), "--data-dir", str(restored), cwd=tmp_path)
        stop(serving(data_dir, free_port, tmp_path))
    finally:
        os.umask(umask)

    assert backup.returncode == 0 and restore.returncode == 0
    blob = Path("blobs", sha256[:2], sha256[2:4], sha256)
    assert copied == 0o600
    assert (mode(copy / blob), mode(restored / blob)) == (0o640, 0o640)
    assert mode(restored / "hostd.sqlite3") == 0o600
    assert mode(data_dir / "hostd.sqlite3") == 0o600  # taken back at the server's start


def test_a_backup_leaves_out_damaged_bytes_says_so_and_takes_them_once_mended(tmp_path, free_port):
    data_dir, copy = tmp_path / "data", tmp_path / "backup"
    base_url = f"http://127.0.0.1:{free_port}"
    whole, flipped = os.urandom(100_000), os.urandom(100_000)
    server = serving(data_dir, free_port, tmp_path)
    try:
        upload(base_url, whole)
        upload(base_url, flipped)
    finally:
        stop(server)
    sha256 = hashlib.sha256(flipped).hexdigest()
    (stored,) = (data_dir / "blobs").rglob(sha256)
    stored.write_bytes(flipped[:500] + bytes([flipped[500] ^ 1]) + flipped[501:])

    damaged = hostd("backup", str(copy), "--data-dir", str(data_dir), cwd=tmp_path)
    copied = sorted(path.name for path in (copy / "blobs").rglob("*") if path.is_file())
    stored.write_bytes(flipped)  # mended, from wherever the admin had it
    mended = hostd("backup", str(copy), "--data-dir", str(data_dir), cwd=tmp_path)

    assert damaged.returncode == 1
    assert f"damaged {sha256}: its bytes are not the ones uploaded; not copied" in damaged.stderr
    assert "1 file(s) have damaged bytes and are not in the backup" in damaged.stderr
    assert copied == [hashlib.sha256(whole).hexdigest()], "damaged bytes kept as good"
    assert mended.returncode == 0, mended.stderr
    assert "1 new file(s)" in mended.stderr
    assert (copy / "blobs" / sha256[:2] / sha256[2:4] / sha256).read_bytes() == flipped


def test_restore_refuses_a_data_dir_in_use_and_what_is_no_backup(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "hostd.sqlite3").write_bytes(b"someone's database")
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "hostd.sqlite3").write_bytes(b"")

    into_used = hostd("restore", "backup", "--data-dir", "data", cwd=tmp_path)
    from_nothing = hostd("restore", "elsewhere", "--data-dir", "new", cwd=tmp_path)

    assert into_used.returncode == 1
    assert "data is not empty; restore into an empty data dir" in into_used.stderr
    assert (tmp_path / "data" / "hostd.sqlite3").read_bytes() == b"someone's database"
    assert from_nothing.returncode == 1
    assert "elsewhere holds no hostd.sqlite3: not a hostd backup" in from_nothing.stderr
    assert not (tmp_path / "new").exists()


def test_a_destination_that_cannot_be_made_is_one_line_naming_it(tmp_path):
    made = hostd("db", "migrate", "--data-dir", "data", cwd=tmp_path)
    (tmp_path / "a-file").write_text("not a folder")

    onto_a_file = hostd("backup", "a-file", "--data-dir", "data", cwd=tmp_path)
    below_a_file = hostd("backup", "a-file/backup", "--data-dir", "data", cwd=tmp_path)

    assert made.returncode == 0, made.stderr
    assert (onto_a_file.returncode, onto_a_file.stderr) == (
        1,
        "hostd: cannot write the backup: a-file: Not a directory\n",
    )
    assert (below_a_file.returncode, below_a_file.stderr) == (
        1,
        "hostd: cannot write the backup: a-file/backup: Not a directory\n",
    )


def test_restore_into_a_data_dir_that_cannot_be_made_is_one_line_naming_it(tmp_path):
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "hostd.sqlite3").write_bytes(b"")
    (tmp_path / "a-file").write_text("not a folder")

    restored = hostd("restore", "backup", "--data-dir", "a-file/data", cwd=tmp_path)

    assert (restored.returncode, restored.stderr) == (
        1,
        "hostd: cannot restore: a-file/data: Not a directory\n",
    )


def test_serve_does_not_start_on_a_damaged_database_and_says_what_to_do(tmp_path, free_port):
    # Writes into a damaged b-tree spread the damage; each request would fail on its own.
    made = hostd("ban", "add", "a" * 64, "--data-dir", "data", cwd=tmp_path)
    damage_table(tmp_path / "data" / "hostd.sqlite3", "bans")

    served = hostd(
        "serve", "--data-dir", "data", "--port", str(free_port), cwd=tmp_path, timeout=30
    )

    assert made.returncode == 0, made.stderr
    assert served.returncode == 1
    line = served.stderr.splitlines()[-1]
    assert line.startswith(
        "hostd: cannot open the database: data/hostd.sqlite3: damaged, quick_check: Page "
    )
    assert line.endswith(
        "; restore the data dir from a backup (hostd restore), or move the file away to"
        " start with an empty database"
    )
    assert "Traceback" not in served.stderr


def test_a_backup_of_a_damaged_database_exits_1_and_keeps_the_good_copy_it_had(tmp_path):
    made = hostd("ban", "add", "a" * 64, "--data-dir", "data", cwd=tmp_path)
    good = hostd("backup", "backup", "--data-dir", "data", cwd=tmp_path)
    good_copy = (tmp_path / "backup" / "hostd.sqlite3").read_bytes()
    damage_table(tmp_path / "data" / "hostd.sqlite3", "bans")

    damaged = hostd("backup", "backup", "--data-dir", "data", cwd=tmp_path)
    first = hostd("backup", "first", "--data-dir", "data", cwd=tmp_path)

    assert made.returncode == 0 and good.returncode == 0, made.stderr + good.stderr
    assert damaged.returncode == 1
    assert damaged.stderr.startswith("hostd: the database is damaged (quick_check: Page ")
    assert damaged.stderr.endswith(
        "): this backup is not good, backup/hostd.sqlite3, from an earlier backup, is kept;"
        " restore the data dir from a good backup (hostd restore)\n"
    )
    assert damaged.stderr.count("\n") == 1
    assert (tmp_path / "backup" / "hostd.sqlite3").read_bytes() == good_copy
    assert sorted(p.name for p in (tmp_path / "backup").iterdir()) == ["hostd.sqlite3"]
    assert first.returncode == 1 and "this backup is not good, nothing kept;" in first.stderr
    assert list((tmp_path / "first").iterdir()) == []


def test_restore_refuses_a_damaged_backup_and_makes_nothing(tmp_path):
    hostd("ban", "add", "a" * 64, "--data-dir", "data", cwd=tmp_path)
    hostd("backup", "backup", "--data-dir", "data", cwd=tmp_path)
    damage_table(tmp_path / "backup" / "hostd.sqlite3", "bans")

    restored = hostd("restore", "backup", "--data-dir", "new", cwd=tmp_path)

    assert restored.returncode == 1
    assert restored.stderr.startswith("hostd: backup/hostd.sqlite3 is damaged (quick_check: ")
    assert restored.stderr.endswith("): not a good backup; nothing was restored\n")
    assert restored.stderr.count("\n") == 1
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("existed", [False, True], ids=["new-dir", "empty-dir"])
def test_a_restore_that_runs_out_of_space_says_so_in_a_line_and_leaves_nothing(
    small_disk, tmp_path, existed
):
    hostd("ban", "add", "a" * 64, "--data-dir", "data", cwd=tmp_path)
    hostd("backup", "backup", "--data-dir", "data", cwd=tmp_path)
    for _ in range(3):  # 24 MiB of files for a 20 MiB disk
        data = os.urandom(8 * 1024 * 1024)
        sha256 = hashlib.sha256(data).hexdigest()
        blob = tmp_path / "backup" / "blobs" / sha256[:2] / sha256[2:4] / sha256
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
    data_dir = small_disk.path / "data"
    if existed:
        data_dir.mkdir()

    full = hostd("restore", "backup", "--data-dir", str(data_dir), cwd=tmp_path)
    left = sorted(data_dir.rglob("*")) if data_dir.exists() else None
    blob.unlink()  # 16 MiB now fits
    again = hostd("restore", "backup", "--data-dir", str(data_dir), cwd=tmp_path)

    assert (full.returncode, full.stderr) == (
        1,
        f"hostd: cannot restore into {data_dir}: No space left on device after the database"
        " and 2 of 3 files; what it wrote is removed\n",
    )
    assert left == ([] if existed else None)
    assert again.returncode == 0, again.stderr
    assert "restored the database and 2 file(s)" in again.stderr
