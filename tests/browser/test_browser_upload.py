"""In chromium: the upload page (pick, drop, the size limit) and /files.

The page's DOM contract: `#upload-form[data-max-bytes]`, `#upload-limit`, `#upload-file`
(labelled, multiple); one `li.upload-item` per file in `#upload-list` (not a live region) with
`.upload-state[role=status]` (start and end only), `progress.upload-progress` (named after the
file), `.upload-percent`, `.upload-speed`, then either `.upload-result`
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

    item.get_by_role("button", name="Copy the deletion link of deletable.txt").click()

    expect(item.get_by_role("button", name="Copy the deletion link")).to_have_text("Copied")
    # The button keeps its name (which link); the change is said by the page's status region.
    expect(page.get_by_role("status").filter(has_text="Copied")).to_have_id("live-status")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == link.get_attribute("href") and "/delete/" in copied


def test_copy_without_a_clipboard_selects_the_url(page: Page, live_server):
    """Over plain HTTP (not localhost) a page has no navigator.clipboard: Copy then selects
    the URL, for Ctrl+C."""
    page.add_init_script("Object.defineProperty(navigator, 'clipboard', {value: undefined})")
    item = pick(page, live_server.base_url, "copy.txt")
    field = item.locator("input.url-field[data-kind=ext]")
    expect(field).to_have_count(1)

    button = item.get_by_role("button", name="Copy the ext URL of copy.txt")
    button.click()

    expect(button).to_have_text("Selected: press Ctrl+C")
    expect(page.locator("#live-status")).to_have_text("Selected: press Ctrl+C to copy")
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
    expect(item_named(page, "too-big.bin").locator("progress")).to_be_hidden()  # no empty bar
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


def test_only_the_start_and_end_of_each_upload_are_announced(page: Page, live_server):
    base = live_server.base_url
    page.goto(f"{base}/")
    expect(page.locator("#upload-list")).not_to_have_attribute("aria-live", re.compile(""))

    page.set_input_files(
        "#upload-file",
        files=[
            file_payload("first.txt", "text/plain", uuid.uuid4().bytes),
            file_payload("second.txt", "text/plain", uuid.uuid4().bytes),
        ],
    )

    for name in ("first.txt", "second.txt"):
        item = item_named(page, name)
        expect(item.get_by_role("status")).to_have_text(f"Uploaded {name}")
        expect(item.get_by_role("progressbar")).to_have_accessible_name(f"Upload of {name}")
    # The meter's ticks sit in no live region: not read out at every step.
    live = page.locator("#upload-list [aria-live], #upload-list [role=status]")
    assert all("%" not in text and "/s" not in text for text in live.all_inner_texts())
    assert page.evaluate(
        "[...document.querySelectorAll('.upload-meter')].every(m => !m.closest('[aria-live]'))"
    )


def test_an_empty_file_shows_no_empty_progress_bar(page: Page, live_server):
    page.goto(f"{live_server.base_url}/")

    page.set_input_files("#upload-file", files=[file_payload("nothing.txt", "text/plain", b"")])

    item = item_named(page, "nothing.txt")
    expect(item.locator(".upload-error")).to_contain_text("empty")
    expect(item.locator("progress")).to_be_hidden()
    expect(item.locator(".upload-percent")).to_be_hidden()


def test_the_speed_after_a_busy_retry_counts_only_the_attempt_that_went(
    page: Page, live_server, browser_errors
):
    """A 429 with Retry-After: 1, then the upload: its speed leaves out the second waited."""
    browser_errors.allow(r"status of 429")
    refused: list[str] = []

    def busy_once(route):
        if refused:
            route.continue_()
            return
        refused.append(route.request.url)
        route.fulfill(status=429, headers={"Retry-After": "1"}, body="busy")

    page.route("**/upload", busy_once)
    data = os.urandom(256 * 1024)
    page.goto(f"{live_server.base_url}/")

    page.set_input_files(
        "#upload-file", files=[file_payload("retried.bin", "application/octet-stream", data)]
    )

    item = item_named(page, "retried.bin")
    expect(item.locator(".upload-speed")).to_contain_text("trying again in 1 s")
    expect(item.locator(".upload-result input.url-field")).to_have_count(4)
    assert refused
    speed = SPEED.search(item.locator(".upload-speed").inner_text())
    assert speed, item.locator(".upload-speed").inner_text()
    shown = float(speed.group(1).replace(",", "")) * UNITS[speed.group(2)]
    assert shown > len(data) / 0.5, f"{speed.group(0)}: the wait was counted"


def test_only_the_focused_control_shows_a_focus_ring(page: Page, live_server):
    page.goto(f"{live_server.base_url}/")
    choose = page.locator("label.file-label")
    limit = page.locator("#upload-limit")

    page.get_by_label("Keep").focus()
    expect(choose).to_have_css("outline-style", "none")  # the select has it, not this

    page.keyboard.press("Tab")
    expect(page.locator("#upload-file")).to_be_focused()
    expect(choose).to_have_css("outline-style", "solid")  # the hidden input's, shown here
    expect(limit).to_have_css("text-decoration-line", "none")


def relative_luminance(rgb: str) -> float:
    channels = [int(c) / 255 for c in re.findall(r"\d+", rgb)[:3]]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    high, low = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_field_and_drop_zone_edges_contrast_3_to_1(browser, live_server, scheme):
    """WCAG 1.4.11: a control's edge is 3:1 against what is around it."""
    context = browser.new_context(color_scheme=scheme)
    page = context.new_page()
    page.goto(f"{live_server.base_url}/login")
    style = "(e, p) => getComputedStyle(e)[p]"
    page_bg = page.locator("body").evaluate(style, "backgroundColor")
    field = page.get_by_label("Name", exact=True).evaluate(style, "borderTopColor")
    page.goto(f"{live_server.base_url}/")
    zone = page.locator(".drop-zone")
    zone_edge, zone_bg = (
        zone.evaluate(style, "borderTopColor"),
        zone.evaluate(style, "backgroundColor"),
    )
    select = page.get_by_label("Keep")
    select_edge, select_bg = (
        select.evaluate(style, "borderTopColor"),
        select.evaluate(style, "backgroundColor"),
    )
    context.close()

    assert contrast(field, page_bg) >= 3, (field, page_bg)
    assert contrast(zone_edge, page_bg) >= 3 and contrast(zone_edge, zone_bg) >= 3
    assert contrast(select_edge, zone_bg) >= 3 and contrast(select_edge, select_bg) >= 3


def test_result_urls_show_their_end_on_a_phone(page: Page, live_server):
    page.set_viewport_size({"width": 390, "height": 844})
    item = pick(page, live_server.base_url, "a-rather-long-name-for-a-phone.txt")

    fields = item.locator("input.url-field")
    expect(fields).to_have_count(4)

    full = item.locator("input.url-field[data-kind=full]")
    page.wait_for_function(
        "f => f.scrollWidth > f.clientWidth && f.scrollLeft + f.clientWidth >= f.scrollWidth - 1",
        arg=full.element_handle(),
    )


def test_with_the_script_several_files_are_asked_for(page: Page, live_server):
    page.goto(f"{live_server.base_url}/")

    expect(page.locator("label.file-label")).to_have_text("Choose files")
    expect(page.locator(".drop-hint")).to_be_visible()
    expect(page).to_have_title("Upload · hostd")


def test_a_touch_screen_is_not_told_to_drop_or_paste(browser, live_server):
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True
    )
    page = context.new_page()
    page.goto(f"{live_server.base_url}/")

    expect(page.locator(".drop-hint")).to_be_hidden()
    expect(page.locator("label.file-label")).to_be_visible()
    context.close()


def upload_signed_in(page: Page, base_url: str, name: str) -> None:
    """A file registered to the page's account, through /upload as the page would send it."""
    token = json.loads(page.locator("body").get_attribute("hx-headers") or "{}")["X-XSRFToken"]
    file = {"name": name, "mimeType": "text/plain", "buffer": uuid.uuid4().bytes}
    response = page.request.post(
        f"{base_url}/upload?api=1", headers={"X-XSRFToken": token}, multipart={"file": file}
    )
    assert response.ok, response.text()


def accept_dialogs(page: Page) -> None:
    page.on("dialog", lambda dialog: dialog.accept())


def test_after_a_delete_focus_moves_to_the_next_file_and_the_deletion_is_said(
    page: Page, live_server, sign_in
):
    base = live_server.base_url
    sign_in(page)
    page.goto(f"{base}/files")
    for name in ("oldest.txt", "middle.txt", "newest.txt"):
        upload_signed_in(page, base, name)
    page.goto(f"{base}/files")
    accept_dialogs(page)

    page.get_by_role("button", name="Delete middle.txt").click()

    expect(page.locator("#file-rows tr")).to_have_count(2)
    expect(page.get_by_role("button", name="Delete oldest.txt")).to_be_focused()
    expect(page.locator("#live-status")).to_have_text("Deleted middle.txt")

    page.get_by_role("button", name="Delete oldest.txt").click()
    expect(page.get_by_role("button", name="Delete newest.txt")).to_be_focused()  # the last
    page.get_by_role("button", name="Delete newest.txt").click()

    expect(page.locator("#file-rows tr")).to_have_count(0)
    expect(page.get_by_role("heading", name="My files")).to_be_focused()
    expect(page.locator("#live-status")).to_have_text("Deleted newest.txt")


def test_a_file_deleted_in_another_tab_leaves_the_list_with_a_word_why(
    page: Page, live_server, sign_in
):
    base = live_server.base_url
    sign_in(page)
    page.goto(f"{base}/files")
    upload_signed_in(page, base, "twice.txt")
    upload_signed_in(page, base, "stays.txt")
    page.goto(f"{base}/files")
    other_tab = page.context.new_page()
    other_tab.goto(f"{base}/files")
    accept_dialogs(other_tab)
    other_tab.get_by_role("button", name="Delete twice.txt").click()
    expect(other_tab.locator("#file-rows tr")).to_have_count(1)
    accept_dialogs(page)

    page.get_by_role("button", name="Delete twice.txt").click()

    expect(page.locator("#file-rows tr")).to_have_count(1)
    expect(page.locator("#file-list")).not_to_contain_text("twice.txt")
    expect(page.locator("#live-status")).to_have_text(re.compile("already deleted"))
    expect(page.locator("#request-error")).to_be_hidden()


def test_deleting_the_only_file_of_page_2_puts_page_1_in_the_address(
    page: Page, live_server, sign_in
):
    base = live_server.base_url
    sign_in(page)
    page.goto(f"{base}/files")
    for i in range(21):  # 20 a page
        upload_signed_in(page, base, f"p{i:02}.txt")
    page.goto(f"{base}/files?page=2")
    accept_dialogs(page)

    page.get_by_role("button", name="Delete p00.txt").click()

    expect(page.locator(".file-count")).to_have_text("20 files")
    expect(page).to_have_url(f"{base}/files")


def test_on_a_phone_each_file_cell_is_labelled_and_its_links_are_big_enough(
    page: Page, live_server, sign_in
):
    base = live_server.base_url
    sign_in(page)
    page.goto(f"{base}/files")
    upload_signed_in(page, base, "small.txt")
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{base}/files")

    row = page.locator("#file-rows tr").first
    labels = row.locator("td[data-label]").evaluate_all(
        "tds => tds.map(td => getComputedStyle(td, '::before').content)"
    )
    assert labels == ['"Name"', '"Size"', '"Type"', '"Uploaded"', '"Links"'], labels
    for kind in ("hash", "ext", "full"):
        link = row.get_by_role("link", name=f"{kind} URL of small.txt")
        box = link.bounding_box()
        assert box and box["width"] >= 24 and box["height"] >= 24, (kind, box)
    for link in page.locator(".site-footer a, .site-header nav a").all():
        box = link.bounding_box()
        assert box and box["width"] >= 24 and box["height"] >= 24, (link.inner_text(), box)
