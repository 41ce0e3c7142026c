"""In chromium: big files go over tus (tus-js-client, /api/tus/) and survive a cut.

The upload page sends files of `data-resumable-from` bytes or more as tus uploads in parts
of `data-resumable-part-bytes`; the DOM is the same as for other uploads (see
test_browser_upload.py). These tests need a server with a bigger limit than the shared
one, so they run their own `hostd serve`.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import fetch
from playwright.sync_api import Page, Route, expect

from hostd.hashes import public_hash_candidates

pytestmark = pytest.mark.browser

PART = 16 * 1024 * 1024  # the page's data-resumable-part-bytes
PASSWORD = "correct horse battery"


@dataclass
class BigServer:
    root: Path
    port: int
    proc: subprocess.Popen[str] | None = None
    log: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hostd", "serve", "--config", "hostd.toml"]
            + ["--data-dir", "data", "--port", str(self.port)],
            cwd=self.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        listening = threading.Event()
        proc = self.proc

        def drain() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.log.append(line.rstrip("\n"))
                if "listening on" in line:
                    listening.set()
            listening.set()

        self.reader = threading.Thread(target=drain, daemon=True)
        self.reader.start()
        assert listening.wait(30) and proc.poll() is None, "\n".join(self.log)

    def stop(self) -> None:
        assert self.proc is not None and self.reader is not None
        self.proc.send_signal(signal.SIGTERM)
        status = self.proc.wait(30)
        self.reader.join(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self.proc = None
        assert status == 0, "\n".join(self.log)


@pytest.fixture
def big_server(tmp_path: Path) -> Iterator[BigServer]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (tmp_path / "hostd.toml").write_text(
        "[server]\nshutdown_grace_seconds = 0\n[limits]\nmax_upload_bytes = 67108864\n"
    )
    server = BigServer(tmp_path, port)
    server.start()
    yield server
    if server.proc is not None:
        server.stop()
    assert not any("Traceback" in line for line in server.log), "\n".join(server.log)


def big_file(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    block = hashlib.sha256(os.urandom(16)).digest() * 32768  # 1 MiB, unique to this run
    data = (block * (size // len(block) + 1))[:size]
    path = tmp_path / "big-video.bin"
    path.write_bytes(data)
    return path, data


def finished_hash_url(page: Page) -> str:
    item = page.locator("#upload-list li.upload-item").filter(has_text="big-video.bin")
    expect(item.locator(".upload-result input.url-field")).to_have_count(4, timeout=60_000)
    expect(item.locator(".upload-percent")).to_have_text("100%")
    expect(item.locator(".upload-error")).to_have_count(0)
    return item.locator('input.url-field[data-kind="hash"]').input_value()


def test_a_big_file_cut_mid_way_resumes_and_gets_its_hash(
    page: Page, big_server, tmp_path, browser_errors
):
    browser_errors.allow(r"ERR_CONNECTION_RESET .*/api/tus/")
    path, data = big_file(tmp_path, 2 * PART + 3 * 1024 * 1024)
    patches: list[str] = []
    cut: list[str] = []

    def second_part_breaks_once(route: Route) -> None:
        request = route.request
        if request.method == "PATCH":
            offset = request.headers.get("upload-offset", "")
            patches.append(offset)
            if offset == str(PART) and not cut:
                cut.append(offset)
                route.abort("connectionreset")  # the network drops under the second part
                return
        route.continue_()

    page.route("**/api/tus/**", second_part_breaks_once)
    page.goto(f"{big_server.base_url}/")
    expect(page.locator("#upload-form")).to_have_attribute("data-resumable-from", str(8 << 20))

    page.set_input_files("#upload-file", str(path))

    hash_url = finished_hash_url(page)
    expected = public_hash_candidates(hashlib.sha256(data).hexdigest())[0]
    assert hash_url == f"{big_server.base_url}/{expected}"
    # The cut part was sent again from where the server stood, not from the start.
    assert cut == [str(PART)]
    assert patches == ["0", str(PART), str(PART), str(2 * PART)]
    status, body = fetch(hash_url)
    assert status == 200 and hashlib.sha256(body).digest() == hashlib.sha256(data).digest()


def test_a_big_upload_resumes_after_the_server_restarts(
    page: Page, big_server, tmp_path, browser_errors
):
    browser_errors.allow(r"ERR_CONNECTION_REFUSED .*/api/tus/")
    path, data = big_file(tmp_path, PART + 5 * 1024 * 1024)
    held: list[Route] = []
    patches: list[str] = []
    second_part = threading.Event()

    def hold_the_second_part(route: Route) -> None:
        request = route.request
        if request.method == "PATCH":
            patches.append(request.headers.get("upload-offset", ""))
        if (
            request.method == "PATCH"
            and not held
            and request.headers.get("upload-offset") == str(PART)
        ):
            held.append(route)
            second_part.set()
            return
        route.continue_()

    page.route("**/api/tus/**", hold_the_second_part)
    page.goto(f"{big_server.base_url}/")
    page.set_input_files("#upload-file", str(path))
    while not second_part.is_set():
        page.wait_for_timeout(50)  # Playwright's sync API serves routes only while waiting

    big_server.stop()  # the first part is stored; the server goes away under the second
    held[0].continue_()  # ... which now finds nobody listening
    big_server.start()

    hash_url = finished_hash_url(page)
    expected = public_hash_candidates(hashlib.sha256(data).hexdigest())[0]
    assert hash_url == f"{big_server.base_url}/{expected}"
    assert patches == ["0", str(PART), str(PART)]  # resumed after the restart, not restarted
    status, body = fetch(hash_url)
    assert status == 200 and hashlib.sha256(body).digest() == hashlib.sha256(data).digest()


def test_a_signed_in_big_upload_is_listed_as_theirs(page: Page, big_server, tmp_path):
    name = "tus-" + os.urandom(4).hex()
    subprocess.run(
        [sys.executable, "-m", "hostd", "user", "add", name, "--password-stdin"]
        + ["--config", "hostd.toml", "--data-dir", "data"],
        cwd=big_server.root,
        input=PASSWORD + "\n",
        text=True,
        check=True,
        capture_output=True,
    )
    page.goto(f"{big_server.base_url}/login")
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("banner")).to_contain_text(f"Signed in as {name}")
    path, _ = big_file(tmp_path, PART // 2 + 1)
    page.goto(f"{big_server.base_url}/")

    page.set_input_files("#upload-file", str(path))

    item = page.locator("#upload-list li.upload-item").filter(has_text="big-video.bin")
    expect(item.locator(".upload-result input.url-field")).to_have_count(4, timeout=60_000)
    page.goto(f"{big_server.base_url}/files")
    expect(page.locator("#file-rows")).to_contain_text("big-video.bin")
