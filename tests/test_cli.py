"""The command line as an admin uses it: `hostd serve` and `python -m hostd`."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from helpers import multipart_body


def start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hostd", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if needle in line:
            return line
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"never saw {needle!r}")


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
    (data / "tmp").mkdir(parents=True)
    (data / "tmp" / "upload-abc123").write_bytes(b"half")
    proc = start(["serve", "--data-dir", str(data), "--port", str(free_port)], tmp_path)
    try:
        wait_for_line(proc, "listening on")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)

    assert list((data / "tmp").iterdir()) == []
