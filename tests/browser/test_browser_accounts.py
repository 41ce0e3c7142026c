"""In chromium: registering, signing in and out, API keys, the 404 page, the skip link."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from helpers import bearer_upload
from playwright.sync_api import Dialog, Page, expect

pytestmark = pytest.mark.browser

PASSWORD = "a long enough password"


def test_register_sign_out_and_sign_in_again(page: Page, live_server, screenshot):
    name = f"reg-{uuid.uuid4().hex[:8]}"
    banner = page.get_by_role("banner")

    page.goto(f"{live_server.base_url}/register")
    screenshot(page, "register")
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password again", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Register").click()

    expect(page).to_have_url(f"{live_server.base_url}/")
    expect(banner).to_contain_text(f"Signed in as {name}")
    screenshot(page, "index-signed-in")
    page.goto(f"{live_server.base_url}/api")
    expect(banner).to_contain_text(f"Signed in as {name}")
    screenshot(page, "api-signed-in")

    banner.get_by_role("button", name="Sign out").click()
    expect(banner.get_by_role("link", name="Sign in")).to_be_visible()
    expect(banner).not_to_contain_text("Signed in as")

    page.goto(f"{live_server.base_url}/login")
    screenshot(page, "login")
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(banner).to_contain_text(f"Signed in as {name}")


def test_a_user_changes_their_password_from_the_account_page(page: Page, live_server, screenshot):
    base = live_server.base_url
    name = live_server.add_user(password=PASSWORD)
    banner = page.get_by_role("banner")
    page.goto(f"{base}/login")
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()

    banner.get_by_role("link", name=name).click()
    expect(page).to_have_url(f"{base}/account")
    screenshot(page, "account")
    page.get_by_label("Current password").fill(PASSWORD)
    page.get_by_label("New password (at least 8 characters)").fill("another long password")
    page.get_by_label("New password again").fill("another long password")
    page.get_by_role("button", name="Change password").click()

    expect(page.get_by_role("status").filter(has_text="password")).to_contain_text(
        "Your password is changed."
    )
    expect(banner).to_contain_text(f"Signed in as {name}")  # this browser stays in
    banner.get_by_role("button", name="Sign out").click()
    page.goto(f"{base}/login")
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Password", exact=True).fill("another long password")
    page.get_by_role("button", name="Sign in").click()
    expect(banner).to_contain_text(f"Signed in as {name}")


def test_a_wrong_password_is_refused_on_the_page(page: Page, live_server, browser_errors):
    browser_errors.allow(r"status of 401")  # the refusal is a 401 page
    name = live_server.add_user()
    page.goto(f"{live_server.base_url}/login")
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Password", exact=True).fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong name or password.")
    expect(page.get_by_role("banner")).not_to_contain_text("Signed in as")


def test_api_key_is_shown_once_works_and_can_be_invalidated(
    page: Page, live_server, sign_in, screenshot
):
    base = live_server.base_url
    sign_in(page)
    page.goto(f"{base}/api")
    page.get_by_label("Label (optional)").fill("browser test")
    page.get_by_role("button", name="Generate a new key").click()

    new_key = page.locator("#new-key-value")
    expect(new_key).to_have_text(re.compile(r"^hk_[0-9a-f]{16}_\S+$"))
    expect(page.locator("#api-keys")).to_contain_text("it will not be shown again")
    key = new_key.inner_text().strip()
    key_id = key.split("_")[1]

    status, answer = bearer_upload(base, key, uuid.uuid4().bytes)
    assert status == 200, answer
    assert answer["status"] is True and answer["urls"]["hash"].endswith(answer["hash"])

    page.reload()
    expect(page.locator("#new-key-value")).to_have_count(0)
    assert key not in page.content()
    row = page.locator(f"tr#key-{key_id}")
    expect(row).to_contain_text("usable")
    expect(row).to_contain_text("browser test")
    expect(row.locator("td").nth(3)).not_to_have_text("never")  # last used: just now
    screenshot(page, "api-keys")
    page.set_viewport_size({"width": 360, "height": 800})
    button = row.get_by_role("button", name="Invalidate").bounding_box()
    assert button and button["x"] >= 0 and button["x"] + button["width"] <= 360, button
    labels = row.locator("td").evaluate_all(
        "tds => tds.map(td => getComputedStyle(td, '::before').content)"
    )
    assert labels[:5] == ['"Key id"', '"Label"', '"Created"', '"Last used"', '"State"'], labels
    page.set_viewport_size({"width": 1280, "height": 800})

    # htmx swaps the row in place: no navigation, so this marker survives.
    page.evaluate("window.__noReload = true")
    dialogs: list[str] = []

    def accept(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    row.get_by_role("button", name="Invalidate").click()
    expect(row).to_contain_text("invalidated")
    expect(row.get_by_role("button", name="Invalidate")).to_have_count(0)
    assert page.url == f"{base}/api"
    assert page.evaluate("window.__noReload") is True
    assert dialogs and "browser test" in dialogs[0]

    status, answer = bearer_upload(base, key, uuid.uuid4().bytes)
    assert status == 401, answer
    assert answer["status"] is False


def test_the_sharex_uploader_offered_with_a_new_key_downloads_and_uploads(
    page: Page, live_server, sign_in
):
    base = live_server.base_url
    sign_in(page)
    page.goto(f"{base}/api")
    page.get_by_role("button", name="Generate a new key").click()
    key = page.locator("#new-key-value").inner_text().strip()

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download a ShareX uploader with this key").click()
    download = download_info.value
    sxcu = json.loads(download.path().read_text(encoding="utf-8"))

    port = base.rsplit(":", 1)[1]
    key_id = key.split("_")[1]  # hk_<key id>_<secret>
    assert download.suggested_filename == f"127.0.0.1_{port}_hk_{key_id}.sxcu"
    assert sxcu["RequestURL"] == f"{base}/api/upload"
    assert sxcu["Headers"] == {"Authorization": f"Bearer {key}"}
    status, answer = bearer_upload(base, sxcu["Headers"]["Authorization"][7:], b"shot")
    assert status == 200 and answer["status"] is True


def test_an_unknown_address_shows_the_styled_404_page(
    page: Page, live_server, browser_errors, screenshot
):
    browser_errors.allow(r"status of 404")  # chromium logs the page's own failed load
    response = page.goto(f"{live_server.base_url}/no/such/page")
    assert response is not None and response.status == 404
    expect(page.get_by_role("heading", level=1)).to_contain_text("404")
    expect(page.locator("main")).to_contain_text("There is nothing at this address.")
    # Styled: the stylesheet loaded and applies (hostd.css sets body's margin to 0).
    expect(page.locator("body")).to_have_css("margin", "0px")
    expect(page.get_by_role("link", name="Back to the upload page")).to_be_visible()
    screenshot(page, "not-found")


def test_tab_from_the_top_of_the_upload_page_reaches_the_skip_link_first(page: Page, live_server):
    page.goto(f"{live_server.base_url}/")
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    expect(skip).to_be_in_viewport()  # it is off-screen until focused
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{live_server.base_url}/#main")


def test_a_refused_key_form_shows_its_message_in_place(
    page: Page, live_server, sign_in, browser_errors
):
    browser_errors.allow(r"status of 400")
    sign_in(page)
    page.goto(f"{live_server.base_url}/api")
    page.evaluate("window.__noReload = true")
    label = page.get_by_label("Label (optional)")
    label.evaluate("input => input.removeAttribute('maxlength')")  # as an old page might
    label.fill("x" * 150)

    page.get_by_role("button", name="Generate a new key").click()

    expect(page.locator("#api-keys [role=alert]")).to_have_text(
        "A label has at most 100 characters."
    )
    expect(page.locator("#new-key-value")).to_have_count(0)
    assert page.evaluate("window.__noReload") is True  # swapped in by htmx, not a new page


def test_a_delete_the_server_refuses_says_why(page: Page, live_server, sign_in, browser_errors):
    browser_errors.allow(r"status of 403")
    browser_errors.allow(r"Response Status Error Code 403")  # htmx logs it too
    base = live_server.base_url
    sign_in(page)
    page.goto(f"{base}/")
    page.set_input_files(
        "#upload-file",
        files=[{"name": "kept.txt", "mimeType": "text/plain", "buffer": uuid.uuid4().bytes}],
    )
    expect(page.locator("input.url-field")).to_have_count(4)
    page.goto(f"{base}/files")
    other_tab = page.context.new_page()
    other_tab.goto(f"{base}/files")
    other_tab.get_by_role("button", name="Sign out").click()
    expect(other_tab.get_by_role("banner")).to_contain_text("Sign in")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete kept.txt").click()

    expect(page.locator("#request-error")).to_contain_text("You are signed out")
    expect(page.locator("#file-rows tr")).to_have_count(1)


def test_a_new_key_gets_focus_and_an_invalidated_one_is_announced(page: Page, live_server, sign_in):
    sign_in(page)
    page.goto(f"{live_server.base_url}/api")
    page.get_by_label("Label (optional)").fill("first")
    page.get_by_role("button", name="Generate a new key").click()
    expect(page.locator(".new-key")).to_be_focused()  # read out, with its key
    page.get_by_label("Label (optional)").fill("second")
    page.get_by_role("button", name="Generate a new key").click()
    expect(page.locator(".new-key")).to_contain_text("Copy it now")
    page.on("dialog", lambda dialog: dialog.accept())

    page.get_by_role("button", name="Invalidate key second").click()  # newest first

    expect(page.locator("#live-status")).to_have_text("Key second invalidated")
    expect(page.get_by_role("button", name="Invalidate key first")).to_be_focused()
    page.get_by_role("button", name="Invalidate key first").click()
    expect(page.locator("#live-status")).to_have_text("Key first invalidated")
    expect(page.get_by_role("heading", name="Your API keys")).to_be_focused()


def test_signing_out_everywhere_lands_on_sign_in_saying_so(page: Page, live_server, sign_in):
    name = sign_in(page)
    page.goto(f"{live_server.base_url}/login")
    expect(page.locator("main")).to_contain_text(f"You are signed in as {name}.")
    expect(page.get_by_label("Password", exact=True)).to_have_count(0)
    page.goto(f"{live_server.base_url}/account")

    page.get_by_role("button", name="Sign out everywhere").click()

    expect(page).to_have_url(re.compile(r"/login\?done=everywhere$"))
    expect(page.get_by_role("status").filter(has_text="Signed out")).to_have_text(
        "Signed out on every device."
    )
    expect(page.get_by_label("Password", exact=True)).to_be_visible()
