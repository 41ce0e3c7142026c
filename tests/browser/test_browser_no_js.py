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
