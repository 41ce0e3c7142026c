"""Browser tests: the real `hostd serve` in a subprocess, driven by Debian's chromium.

These tests use no pytest-tornado fixture: Playwright's sync API runs its own event loop,
and the server under test is a separate process, exactly as a user's browser sees it.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers import stop
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Page,
    Playwright,
    expect,
    sync_playwright,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
MISSING_CHROMIUM = (
    f"BROWSER TESTS NOT RUN: {CHROMIUM} is missing; apt-get install chromium "
    "(set HOSTD_REQUIRE_BROWSER=1 to make this a failure)"
)
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
MAX_UPLOAD_BYTES = 1024 * 1024  # small, so the over-the-limit test is quick
PASSWORD = "correct horse battery"
START_TIMEOUT = 30.0


# --- chromium ----------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _require_chromium() -> None:
    """Runs first, so nothing else starts when the browser is missing."""
    if CHROMIUM.exists():
        return
    if os.environ.get("HOSTD_REQUIRE_BROWSER") == "1":
        pytest.fail(
            f"chromium is required: apt-get install chromium ({CHROMIUM} is missing and "
            "HOSTD_REQUIRE_BROWSER=1)",
            pytrace=False,
        )
    pytest.skip(MISSING_CHROMIUM)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    if not any(MISSING_CHROMIUM in str(getattr(r, "longrepr", "")) for r in skipped):
        return
    bar = "!" * 78
    terminalreporter.write_line("")
    for line in (bar, MISSING_CHROMIUM, bar):
        terminalreporter.write_line(line, red=True, bold=True)


# Package scope, not session: while the sync API is alive, asyncio believes a loop is running
# in this thread, which breaks every pytest-tornado test that runs after the browser tests.
@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
    )
    yield browser
    browser.close()


# --- the server --------------------------------------------------------------------------


@dataclass
class LiveServer:
    """A running `hostd serve` and the admin commands against its data dir."""

    base_url: str
    data_dir: Path
    config_path: Path
    proc: subprocess.Popen[str]
    log: list[str] = field(default_factory=list)

    @property
    def blobs_dir(self) -> Path:
        return self.data_dir / "blobs"

    def blob_files(self) -> set[Path]:
        return {p for p in self.blobs_dir.rglob("*") if p.is_file()}

    def cli(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        """`python -m hostd <args> --config ... --data-dir ...`; a non-zero exit fails."""
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "hostd",
                *args,
                "--config",
                str(self.config_path),
                "--data-dir",
                str(self.data_dir),
            ],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, f"hostd {' '.join(args)} failed:\n{result.stderr}"
        return result

    def add_user(self, name: str | None = None, password: str = PASSWORD) -> str:
        name = name or f"u-{uuid.uuid4().hex[:10]}"
        self.cli("user", "add", name, "--password-stdin", stdin=password + "\n")
        return name

    def log_since(self, mark: int) -> list[str]:
        return self.log[mark:]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def live_server(
    tmp_path_factory: pytest.TempPathFactory, _require_chromium: None
) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("live")
    config_path = root / "hostd.toml"
    # Two uploads at once from one address: the page must queue the rest, not lose them.
    config_path.write_text(
        f"[limits]\nmax_upload_bytes = {MAX_UPLOAD_BYTES}\nuploads_in_flight_per_address = 2\n"
    )
    data_dir = root / "data"
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hostd",
            "serve",
            "--config",
            str(config_path),
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
        ],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server = LiveServer(f"http://127.0.0.1:{port}", data_dir, config_path, proc)
    listening = threading.Event()

    def drain() -> None:
        # Always read the log, or a full pipe would stall the server.
        assert proc.stdout is not None
        for line in proc.stdout:
            server.log.append(line.rstrip("\n"))
            if "listening on" in line:
                listening.set()
        listening.set()  # the process ended: stop waiting

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    if not listening.wait(START_TIMEOUT) or proc.poll() is not None:
        proc.kill()
        proc.wait()
        reader.join(timeout=5)
        proc.stdout.close()
        pytest.fail("hostd serve did not start:\n" + "\n".join(server.log), pytrace=False)
    yield server
    stop(proc)
    reader.join(timeout=5)
    assert proc.stdout is not None
    proc.stdout.close()
    assert proc.returncode == 0, "hostd serve did not stop cleanly:\n" + "\n".join(server.log)


@pytest.fixture(autouse=True)
def _no_server_tracebacks(live_server: LiveServer) -> Iterator[None]:
    """A test fails when the server logged an uncaught exception while it ran."""
    mark = len(live_server.log)
    yield
    lines = live_server.log_since(mark)
    bad = [i for i, line in enumerate(lines) if "Traceback" in line or "Uncaught" in line]
    assert not bad, "the server logged an error:\n" + "\n".join(lines[bad[0] :])


# --- pages -------------------------------------------------------------------------------


@dataclass
class BrowserErrors:
    """Console errors, uncaught exceptions and CSP violations seen by the page.

    A test that expects one (a 404 page logs its failed load) says so with allow()."""

    errors: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def allow(self, pattern: str) -> None:
        self.allowed.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(p.search(e) for p in self.allowed)]


# Reports CSP violations from every document the page loads (init scripts and bindings are
# not subject to the page's CSP).
CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", (e) => {
  window.__hostdCspViolation(
    `CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || "inline"} ` +
    `at ${e.sourceFile}:${e.lineNumber}`);
});
"""


@pytest.fixture
def browser_errors() -> BrowserErrors:
    return BrowserErrors()


@pytest.fixture
def page(browser: Browser, browser_errors: BrowserErrors) -> Iterator[Page]:
    """A fresh context (no cookies) at desktop size; fails the test on any console error,
    uncaught JavaScript exception or CSP violation."""
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(10_000)
    errors = browser_errors.errors

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            location = message.location
            errors.append(f"console error: {message.text} ({location.get('url', '')})")

    context.expose_binding("__hostdCspViolation", lambda _source, text: errors.append(text))
    context.add_init_script(CSP_LISTENER)
    page = context.new_page()
    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"uncaught exception: {exc}"))
    yield page
    context.close()
    unexpected = browser_errors.unexpected()
    assert not unexpected, "the browser reported errors:\n" + "\n".join(unexpected)


@pytest.fixture
def no_js_page(browser: Browser) -> Iterator[Page]:
    """A fresh context with JavaScript switched off: what the plain forms must work in."""
    context = browser.new_context(viewport=DESKTOP, java_script_enabled=False)
    context.set_default_timeout(10_000)
    yield context.new_page()
    context.close()


def take_screenshots(page: Page, name: str) -> None:
    """Full-page PNGs of the current page at desktop and phone width, in
    test-artifacts/screenshots/<name>-desktop.png and <name>-phone.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    before = page.viewport_size or DESKTOP
    try:
        page.set_viewport_size(DESKTOP)
        page.screenshot(path=SCREENSHOTS / f"{name}-desktop.png", full_page=True)
        page.set_viewport_size(PHONE)
        page.screenshot(path=SCREENSHOTS / f"{name}-phone.png", full_page=True)
        # Reflow (WCAG 1.4.10): at phone width nothing makes the whole page scroll sideways.
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{name}: the page is {width}px wide at phone width"
    finally:
        page.set_viewport_size(before)


@pytest.fixture
def screenshot() -> Callable[[Page, str], None]:
    """`screenshot(page, name)`; a fixture, as test modules cannot import conftest."""
    return take_screenshots


@pytest.fixture
def sign_in(live_server: LiveServer) -> Callable[[Page], str]:
    """`sign_in(page)`: a new account made with `hostd user add`, signed in through /login.
    Returns the account's name."""

    def sign_in(page: Page) -> str:
        name = live_server.add_user()
        page.goto(f"{live_server.base_url}/login")
        page.get_by_label("Name", exact=True).fill(name)
        page.get_by_label("Password", exact=True).fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("banner")).to_contain_text(f"Signed in as {name}")
        return name

    return sign_in
