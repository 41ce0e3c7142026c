"""In chromium: the upload page (pick, drop, the size limit) and /files.

The page's DOM contract: `#upload-form[data-max-bytes]`, `#upload-limit`, `#upload-file`
(labelled, multiple); one `li.upload-item` per file in `#upload-list` with
`progress.upload-progress`, `.upload-percent`, `.upload-speed`, then either `.upload-result`
(four read-only `input.url-field[data-kind]`, `button.copy-button`s, an `img/video/audio
.preview`) or `.upload-error[role=alert]`. /files: `#file-rows tr[id^=file-]` rows with
`.file-name`, `img.thumb` and `button.delete-file` (hx-delete + hx-confirm).
"""

from __future__ import annotations

import io
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest
from helpers import fetch, multipart_body
from PIL import Image, PngImagePlugin
from playwright.sync_api import Dialog, Locator, Page, expect

pytestmark = pytest.mark.browser

MAX_UPLOAD_BYTES = 1024 * 1024  # as the live_server's hostd.toml sets it
URL_KINDS = {"hash", "ext", "full", "base"}
UNITS = {"bytes": 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "kB": 1000, "MB": 1000**2}
SPEED = re.compile(r"([\d.,]+)\s*(" + "|".join(UNITS) + r")/s")


def make_png(width: int = 8, height: int = 6) -> bytes:
    """A small PNG whose bytes no other test produces (a unique text chunk)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("test-id", uuid.uuid4().hex)
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 90)).save(out, "PNG", pnginfo=info)
    return out.getvalue()


def file_payload(name: str, mime: str, data: bytes) -> dict:
    return {"name": name, "mimeType": mime, "buffer": data}


def item_named(page: Page, filename: str) -> Locator:
    return page.locator("#upload-list li.upload-item").filter(has_text=filename)


def finished_urls(item: Locator, base_url: str, *, size: int, started: float) -> dict[str, str]:
    """Wait for the item to succeed; check its meter and URL fields; return kind -> URL.

    `size` is the file's size and `started` the time.monotonic() before it was chosen: the
    speed shown cannot be less than size / (the whole time the test waited), whichever way
    it is averaged, give or take a factor for rounding and instantaneous rates."""
    fields = item.locator(".upload-result input.url-field")
    expect(fields).to_have_count(4)  # finished: the meter below shows its final state
    waited = time.monotonic() - started
    expect(item.locator(".upload-error")).to_have_count(0)
    expect(item.locator(".upload-percent")).to_have_text("100%")
    progress = item.locator("progress.upload-progress")
    expect(progress).to_have_attribute("max", "100")
    expect(progress).to_have_js_property("value", 100)
    expect(item.locator(".upload-speed")).to_have_text(SPEED)
    speed_text = item.locator(".upload-speed").inner_text()
    speed = SPEED.search(speed_text)
    assert speed, f"no speed in {speed_text!r}"
    shown = float(speed.group(1).replace(",", "")) * UNITS[speed.group(2)]
    assert shown >= size / waited / 4, f"{speed_text!r} for {size} bytes in {waited:.2f} s"
    expect(item.locator(".upload-result .url-row button.copy-button")).to_have_count(4)
    found = fields.evaluate_all(
        "els => els.map(e => ({kind: e.dataset.kind, url: e.value, readOnly: e.readOnly}))"
    )
    assert {f["kind"] for f in found} == URL_KINDS, found
    assert all(f["readOnly"] for f in found), found
    urls = {f["kind"]: f["url"] for f in found}
    assert urls["base"] == f"{base_url}/"
    assert urls["hash"].startswith(f"{base_url}/") and urls["ext"].startswith(urls["hash"])
    assert urls["full"].startswith(urls["hash"] + "/")
    return urls


def pick(page: Page, base_url: str, name: str) -> Locator:
    """Open the upload page, pick one small text file of unique bytes; its list item."""
    page.goto(f"{base_url}/")
    page.set_input_files(
        "#upload-file", files=[file_payload(name, "text/plain", uuid.uuid4().bytes)]
    )
    return item_named(page, name)


def image_loaded(page: Page, image: Locator) -> None:
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
    )


def test_the_page_states_its_limit(page: Page, live_server):
    page.goto(f"{live_server.base_url}/")
    expect(page.locator("#upload-form")).to_have_attribute("data-max-bytes", str(MAX_UPLOAD_BYTES))
    expect(page.locator("#upload-limit")).to_contain_text("1.0 MiB")
    picker = page.locator("#upload-file")
    expect(picker).to_have_accessible_name(re.compile(r"\w"))
    expect(picker).to_have_js_property("multiple", True)


def test_picked_files_upload_with_progress_urls_and_preview(page: Page, live_server, screenshot):
    base = live_server.base_url
    png = make_png()
    text = f"picked in chromium {uuid.uuid4()}\n".encode()
    page.goto(f"{base}/")
    started = time.monotonic()
    page.set_input_files(
        "#upload-file",
        files=[
            file_payload("pixel.png", "image/png", png),
            file_payload("note.txt", "text/plain", text),
        ],
    )

    expect(page.locator("#upload-list li.upload-item")).to_have_count(2)
    png_item, text_item = item_named(page, "pixel.png"), item_named(page, "note.txt")
    png_urls = finished_urls(png_item, base, size=len(png), started=started)
    text_urls = finished_urls(text_item, base, size=len(text), started=started)

    assert png_urls["full"].endswith("/pixel.png") and png_urls["ext"].endswith(".png")
    assert text_urls["full"].endswith("/note.txt")
    preview = png_item.locator("img.preview")
    expect(preview).to_have_js_property("naturalWidth", 8)  # it loaded, under the page's CSP
    expect(text_item.locator("img.preview, video.preview, audio.preview")).to_have_count(0)
    screenshot(page, "index-uploaded")

    assert fetch(png_urls["hash"]) == (200, png)
    assert fetch(text_urls["hash"]) == (200, text)


def test_more_files_than_the_server_takes_at_once_all_upload_in_turn(page: Page, live_server):
    """The live server takes two uploads at a time from one address; five files dropped
    at once go two by two, none refused."""
    base = live_server.base_url
    files = {f"turn-{i}.txt": f"in turn {i} {uuid.uuid4()}\n".encode() for i in range(5)}
    page.goto(f"{base}/")
    started = time.monotonic()
    page.set_input_files(
        "#upload-file",
        files=[file_payload(name, "text/plain", data) for name, data in files.items()],
    )

    for name, data in files.items():
        urls = finished_urls(item_named(page, name), base, size=len(data), started=started)
        assert fetch(urls["hash"]) == (200, data)
    expect(page.locator("#upload-list .upload-error")).to_have_count(0)


def test_the_keep_choice_goes_with_the_upload(page: Page, live_server):
    base = live_server.base_url
    page.goto(f"{base}/")
    page.get_by_label("Keep").select_option("1")
    page.set_input_files(
        "#upload-file", files=[file_payload("brief.txt", "text/plain", uuid.uuid4().bytes)]
    )

    item = item_named(page, "brief.txt")
    expect(item.locator(".upload-expiry")).to_contain_text("Expires")
    shown = item.locator(".upload-expiry time").get_attribute("datetime")
    left = time.mktime(time.strptime(shown[:19], "%Y-%m-%dT%H:%M:%S")) - time.mktime(time.gmtime())
    assert 3500 < left <= 3600, shown


def test_the_deletion_link_is_copied_to_the_clipboard(page: Page, live_server):
    base = live_server.base_url
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    item = pick(page, base, "deletable.txt")
    link = item.locator(".delete-link a")
    expect(link).to_have_count(1)

    item.get_by_role("button", name="Copy the deletion link").click()

    expect(item.get_by_role("button", name="Copy the deletion link")).to_have_text("Copied")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == link.get_attribute("href") and "/delete/" in copied


def test_copy_without_a_clipboard_selects_the_url(page: Page, live_server):
    """Over plain HTTP (not localhost) a page has no navigator.clipboard: Copy then selects
    the URL, for Ctrl+C."""
    page.add_init_script("Object.defineProperty(navigator, 'clipboard', {value: undefined})")
    item = pick(page, live_server.base_url, "copy.txt")
    field = item.locator("input.url-field[data-kind=ext]")
    expect(field).to_have_count(1)

    button = item.locator("button.copy-button[aria-label='Copy the ext URL']")
    button.click()

    expect(button).to_have_text("Selected: press Ctrl+C")
    selected = field.evaluate("e => e.value.substring(e.selectionStart, e.selectionEnd)")
    assert selected == field.input_value() and selected.startswith(live_server.base_url)
    expect(field).to_be_focused()


def test_a_dropped_file_uploads(page: Page, live_server):
    base = live_server.base_url
    content = f"dropped in chromium {uuid.uuid4()}\n"
    page.goto(f"{base}/")
    transfer = page.evaluate_handle(
        """(text) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([text], "dropped.txt", {type: "text/plain"}));
            return transfer;
        }""",
        content,
    )
    started = time.monotonic()
    for event in ("dragenter", "dragover", "drop"):
        page.dispatch_event("body", event, {"dataTransfer": transfer})

    item = item_named(page, "dropped.txt")
    urls = finished_urls(item, base, size=len(content.encode()), started=started)
    assert urls["full"].endswith("/dropped.txt")
    assert fetch(urls["hash"]) == (200, content.encode())
    expect(page.locator("body")).not_to_have_class(re.compile(r"\bdragging\b"))


def test_a_file_over_the_limit_is_refused_without_sending_it(page: Page, live_server):
    page.goto(f"{live_server.base_url}/")
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url))
    blobs_before = live_server.blob_files()

    page.set_input_files(
        "#upload-file",
        files=[
            file_payload("too-big.bin", "application/octet-stream", b"\0" * (MAX_UPLOAD_BYTES + 1))
        ],
    )

    error = item_named(page, "too-big.bin").locator(".upload-error")
    expect(error).to_be_visible()
    expect(error).to_have_attribute("role", "alert")
    expect(error).to_contain_text("over the limit")
    expect(page.locator(".upload-result")).to_have_count(0)
    uploads = [url for url in sent if urllib.parse.urlsplit(url).path.endswith("/upload")]
    assert uploads == []
    assert live_server.blob_files() == blobs_before


def test_a_file_of_exactly_the_limit_uploads(page: Page, live_server):
    data = os.urandom(MAX_UPLOAD_BYTES)
    page.goto(f"{live_server.base_url}/")
    started = time.monotonic()
    page.set_input_files(
        "#upload-file", files=[file_payload("just-fits.bin", "application/octet-stream", data)]
    )
    item = item_named(page, "just-fits.bin")
    urls = finished_urls(item, live_server.base_url, size=len(data), started=started)
    assert fetch(urls["hash"]) == (200, data)


def test_signed_in_uploads_are_listed_newest_first_and_can_be_deleted(
    page: Page, live_server, sign_in, screenshot
):
    base = live_server.base_url
    sign_in(page)
    suffix = uuid.uuid4().hex[:8]
    text_name, png_name = f"older-{suffix}.txt", f"newer-{suffix}.png"
    text, png = f"mine {suffix}\n".encode(), make_png()

    page.goto(f"{base}/")
    started = time.monotonic()
    page.set_input_files("#upload-file", files=[file_payload(text_name, "text/plain", text)])
    finished_urls(item_named(page, text_name), base, size=len(text), started=started)
    started = time.monotonic()
    page.set_input_files("#upload-file", files=[file_payload(png_name, "image/png", png)])
    png_urls = finished_urls(item_named(page, png_name), base, size=len(png), started=started)

    page.goto(f"{base}/files")
    rows = page.locator("#file-rows tr[id^=file-]")
    expect(rows).to_have_count(2)  # a new account: only these two
    newest, older = rows.nth(0), rows.nth(1)
    expect(newest.locator(".file-name")).to_have_text(png_name)
    expect(older.locator(".file-name")).to_have_text(text_name)
    image_loaded(page, newest.locator("img.thumb"))
    expect(older.locator("img.thumb")).to_have_count(0)
    screenshot(page, "files")

    row_id = newest.get_attribute("id")
    page.evaluate("window.__noReload = true")  # gone if the page navigates
    dialogs: list[str] = []

    def accept(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    expect(page.locator(".file-count")).to_have_text("2 files")
    with page.expect_request(lambda r: r.method == "DELETE") as deleting:
        newest.locator("button.delete-file").click()
    expect(page.locator(f"#{row_id}")).to_have_count(0)
    expect(rows).to_have_count(1)
    expect(rows.nth(0).locator(".file-name")).to_have_text(text_name)
    expect(page.locator(".file-count")).to_have_text("1 file")  # the list came back whole
    assert "xsrf" not in deleting.value.url  # the token goes in a header, not into logs
    assert page.evaluate("window.__noReload") is True
    assert page.url == f"{base}/files"
    assert dialogs and png_name in dialogs[0]

    status, _ = fetch(png_urls["hash"])
    assert status == 404  # it was the only upload of those bytes


def test_an_uploaded_script_cannot_run_in_our_pages(page: Page, live_server, browser_errors):
    browser_errors.allow(r"CSP violation: script-src")
    browser_errors.allow(r"violates the following Content Security Policy directive")
    body, headers = multipart_body(files=[("file", "evil.js", b"window.__uploadedRan = true;")])
    request = urllib.request.Request(
        f"{live_server.base_url}/api/upload", data=body, headers=headers
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        script_url = json.loads(response.read())["urls"]["ext"]
    page.goto(f"{live_server.base_url}/")

    # As if some HTML injection had put <script src="/<hash>.js"> into one of our pages.
    outcome = page.evaluate(
        """url => new Promise(done => {
            const script = document.createElement("script");
            script.src = url;
            script.onload = () => done("loaded");
            script.onerror = () => done("blocked");
            document.head.append(script);
        })""",
        script_url,
    )

    assert outcome == "blocked"
    assert page.evaluate("window.__uploadedRan") is None
    assert any("script-src" in e and script_url in e for e in browser_errors.errors)
