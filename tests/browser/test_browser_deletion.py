"""In chromium: an upload's deletion link, from the result on the upload page to the 410."""

from __future__ import annotations

import uuid

import pytest
from helpers import fetch
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.browser


def upload_on_the_page(page: Page, base: str, name: str, data: bytes) -> str:
    """Upload through the upload page; the finished item's deletion link."""
    page.goto(f"{base}/")
    page.set_input_files(
        "#upload-file", files=[{"name": name, "mimeType": "text/plain", "buffer": data}]
    )
    link = page.locator("#upload-list li.upload-item .delete-link a")
    expect(link).to_have_count(1)
    return link.get_attribute("href") or ""


def test_the_deletion_link_asks_first_then_deletes_then_says_gone(
    page: Page, live_server, browser_errors, screenshot
):
    browser_errors.allow(r"status of 410")  # chromium logs the page's own status
    base = live_server.base_url
    name = f"doomed-{uuid.uuid4().hex[:8]}.txt"
    data = f"delete me from the browser {uuid.uuid4()}".encode()
    delete_url = upload_on_the_page(page, base, name, data)
    hash_url = page.locator("#upload-list input.url-field[data-kind='hash']").input_value()

    page.locator("#upload-list .delete-link a").click()

    expect(page.get_by_role("heading", level=1)).to_have_text("Delete this file?")
    expect(page.locator("main")).to_contain_text(name)
    assert page.url == delete_url
    assert fetch(hash_url) == (200, data)  # opening the link deleted nothing
    screenshot(page, "delete-link-confirm")

    page.get_by_role("button", name="Delete", exact=True).click()

    expect(page.get_by_role("heading", level=1)).to_have_text("Deleted")
    expect(page.locator("main")).to_contain_text("Its links answer 404 from now on.")
    assert fetch(hash_url)[0] == 404
    screenshot(page, "delete-link-deleted")

    response = page.goto(delete_url)
    assert response is not None and response.status == 410
    expect(page.get_by_role("heading", level=1)).to_contain_text("410")
    expect(page.locator("main")).to_contain_text("deleted already")


def test_the_deletion_link_works_without_javascript(no_js_page: Page, live_server):
    page, base = no_js_page, live_server.base_url
    name = f"plain-{uuid.uuid4().hex[:8]}.txt"
    page.goto(f"{base}/")
    page.locator("#upload-file").set_input_files(
        {"name": name, "mimeType": "text/plain", "buffer": uuid.uuid4().bytes}
    )
    page.get_by_role("button", name="Upload", exact=True).click()
    hash_url = page.locator("input.url-field[data-kind='hash']").input_value()

    page.locator(".delete-link a").click()
    page.get_by_role("button", name="Delete", exact=True).click()

    expect(page.get_by_role("heading", level=1)).to_have_text("Deleted")
    assert fetch(hash_url)[0] == 404
