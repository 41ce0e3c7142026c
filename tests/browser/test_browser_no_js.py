"""In chromium with JavaScript off: the plain forms upload, and destructive ones ask first."""

from __future__ import annotations

import re
import uuid

import pytest
from helpers import bearer_upload, fetch
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.browser


def test_a_signed_in_upload_without_javascript_is_registered(
    no_js_page: Page, live_server, sign_in
):
    page, base = no_js_page, live_server.base_url
    sign_in(page)
    data = f"no javascript here {uuid.uuid4()}".encode()
    name = f"plain-{uuid.uuid4().hex[:8]}.txt"

    page.goto(f"{base}/")
    assert page.locator("#upload-file").get_attribute("multiple") is None  # one per post
    page.locator("#upload-file").set_input_files(
        {"name": name, "mimeType": "text/plain", "buffer": data}
    )
    page.get_by_role("button", name="Upload", exact=True).click()

    expect(page.get_by_role("heading", level=1)).to_contain_text(f"Uploaded {name}")
    ext_url = page.locator("input.url-field[data-kind='ext']").input_value()
    assert fetch(ext_url) == (200, data)
    page.goto(f"{base}/files")
    expect(page.locator("table")).to_contain_text(name)


def test_delete_without_javascript_asks_first(no_js_page: Page, live_server, sign_in):
    page, base = no_js_page, live_server.base_url
    sign_in(page)
    name = f"doomed-{uuid.uuid4().hex[:8]}.txt"
    page.goto(f"{base}/")
    page.locator("#upload-file").set_input_files(
        {"name": name, "mimeType": "text/plain", "buffer": uuid.uuid4().bytes}
    )
    page.get_by_role("button", name="Upload", exact=True).click()
    page.goto(f"{base}/files")

    page.get_by_role("button", name=f"Delete {name}").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Delete this file?")
    page.goto(f"{base}/files")
    expect(page.locator("table")).to_contain_text(name)  # asking did not delete it
    page.get_by_role("button", name=f"Delete {name}").click()
    page.get_by_role("button", name="Delete", exact=True).click()

    expect(page).to_have_url(f"{base}/files")
    expect(page.locator("main")).not_to_contain_text(name)


def test_invalidate_without_javascript_asks_first(no_js_page: Page, live_server, sign_in):
    page, base = no_js_page, live_server.base_url
    sign_in(page)
    page.goto(f"{base}/api")
    page.get_by_role("button", name="Generate a new key").click()
    key = page.locator("#new-key-value").inner_text().strip()
    key_id = key.split("_")[1]
    expect(page).to_have_url(f"{base}/api")  # redirected: a reload cannot post again
    page.reload()
    expect(page.locator("#new-key-value")).to_have_count(0)
    expect(page.locator("#key-rows tr")).to_have_count(1)

    page.locator(f"tr#key-{key_id}").get_by_role("button", name=re.compile("Invalidate")).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Invalidate")
    still, _ = bearer_upload(base, key, uuid.uuid4().bytes)
    page.get_by_role("button", name="Invalidate", exact=True).click()

    expect(page).to_have_url(f"{base}/api")
    expect(page.locator(f"tr#key-{key_id}")).to_contain_text("invalidated")
    after, _ = bearer_upload(base, key, uuid.uuid4().bytes)
    assert (still, after) == (200, 401)


LONG_NAME = "averylongfilenamewithoutanybreak" * 7 + ".txt"  # 228 of 255 bytes, no hyphen


def test_a_long_file_name_wraps_on_a_phone_and_copy_buttons_stay_hidden(
    no_js_page: Page, live_server, sign_in
):
    page, base = no_js_page, live_server.base_url
    sign_in(page)
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{base}/")
    expect(page.locator(".drop-hint")).to_be_hidden()  # nothing to drop or paste into
    expect(page.locator("label.file-label")).to_have_text("Choose a file")
    page.locator("#upload-file").set_input_files(
        {"name": LONG_NAME, "mimeType": "text/plain", "buffer": uuid.uuid4().bytes}
    )
    page.get_by_role("button", name="Upload", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(LONG_NAME)
    pages = {"result": page.evaluate("document.documentElement.scrollWidth")}
    # Copy needs the script; without it a Copy button would do nothing.
    expect(page.locator("button.copy-button")).to_have_count(5)
    for button in page.locator("button.copy-button").all():
        expect(button).to_be_hidden()
    delete_url = page.locator(".delete-link a").get_attribute("href")
    assert delete_url

    page.goto(delete_url)
    expect(page.locator("main")).to_contain_text(LONG_NAME)
    pages["deletion link"] = page.evaluate("document.documentElement.scrollWidth")
    page.goto(f"{base}/files")
    pages["files"] = page.evaluate("document.documentElement.scrollWidth")
    page.get_by_role("button", name=f"Delete {LONG_NAME}").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Delete this file?")
    expect(page.locator(".file-facts")).to_contain_text(LONG_NAME)  # which file it is
    pages["files confirm"] = page.evaluate("document.documentElement.scrollWidth")

    assert all(width <= 390 for width in pages.values()), pages
