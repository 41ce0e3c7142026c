"""Pages: the API page says all the original said, with this instance's real URLs."""

from __future__ import annotations

import re

import pytest
from helpers import assert_refused, multipart_body, text_of

# On SQLite only: pages and their rendering (the other suites run on both databases).
pytestmark = pytest.mark.sqlite_only


@pytest.mark.gen_test
async def test_api_page_says_everything_the_original_says(http_client, base_url):
    response = await http_client.fetch(f"{base_url}/api")

    text = text_of(response.body)
    for sentence in [
        "To start using the API you need an API key.",
        "API keys don't expire, however previously issued API keys can be made unusable by "
        "invalidating them.",
        f"HTTP POST to {base_url}/api/upload with the file to be uploaded in the file field.",
        f"The regular URL {base_url}/upload can also be used, but files uploaded via this URL "
        "can't be registered to your account as this requires a valid browser session.",
        "cURL example",
        f"$ curl -F file=@image.png {base_url}/api/upload",
        "Returns the following JSON, which should be self-explanatory:",
        f'"base": "{base_url}/"',
        f'"full": "{base_url}/hash/image.png"',
        f'"ext": "{base_url}/hash.png"',
        f'"hash": "{base_url}/hash"',
        "To register files to your account, the API key must be specified as the bearer token:",
        f"$ curl -H 'Authorization: Bearer api_key' -F file=@image.png {base_url}/api/upload",
        "(Replace api_key with a generated API key)",
        "By using the regular URL and adding api=1 you will get machine-readable responses in "
        "the form: response result where response is either ERROR or OK , and result is the "
        "file hash in the case of OK , or an error message in the case of ERROR .",
        "The hash can be used to construct URLs in which the paths begin with /hash where hash "
        "is the hash received.",
        "Any file extension can be appended to the hash, and for convenience the original "
        "filename (or whatever filename you prefer) can be appended after an additional slash "
        "after the hash. See JSON response above for examples on how to construct URLs.",
    ]:
        assert sentence in text


@pytest.mark.gen_test
async def test_api_page_uses_the_configured_public_url(http_client, base_url, app):
    import dataclasses

    app.settings["hostd_config"] = dataclasses.replace(
        app.settings["hostd_config"], public_url="https://files.example.org"
    )

    response = await http_client.fetch(f"{base_url}/api")

    assert "curl -F file=@image.png https://files.example.org/api/upload" in text_of(response.body)
    assert base_url not in response.body.decode()


# The stylesheet and the two scripts of every page; the upload page also loads tus-js-client.
@pytest.mark.parametrize(("path", "tags"), [("/", 4), ("/api", 3)])
@pytest.mark.gen_test
async def test_pages_carry_a_strict_content_security_policy(http_client, base_url, path, tags):
    response = await http_client.fetch(f"{base_url}{path}")

    again = await http_client.fetch(f"{base_url}{path}")

    csp = response.headers["Content-Security-Policy"]
    (nonce,) = re.findall(r"script-src 'nonce-([\w-]+)';", csp)
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert f"style-src 'nonce-{nonce}';" in csp
    body = response.body.decode()
    assert re.search(rf'<script src="/static/htmx-2\.0\.11\.min\.js\?v=\w+" nonce="{nonce}"', body)
    assert '<link rel="stylesheet" href="/static/hostd.css?v=' in body
    assert body.count(f'nonce="{nonce}"') == tags
    assert nonce not in again.headers["Content-Security-Policy"]  # fresh for every answer


@pytest.mark.gen_test
async def test_upload_page_states_the_size_limit(http_client, base_url):
    response = await http_client.fetch(f"{base_url}/")

    assert "8.0 MiB" in text_of(response.body)


@pytest.mark.gen_test
async def test_an_unexpected_error_shows_the_styled_500_page_without_details(
    http_client, base_url, db
):
    await db.close()  # the database is gone: every query now raises

    response = await http_client.fetch(f"{base_url}/AAAAAAAAAAAA", raise_error=False)

    body = response.body.decode()
    assert response.code == 500
    assert "<h1>500 Internal Server Error</h1>" in body
    assert 'href="/static/hostd.css' in body
    assert "Traceback" not in body and "aiosqlite" not in body
    (nonce,) = re.findall(r"'nonce-([\w-]+)'", response.headers["Content-Security-Policy"])[:1]
    assert f'nonce="{nonce}"' in body  # the error page's own tags match its own policy


@pytest.mark.parametrize("path", ["/", "/login", "/register", "/api", "/api/sharex.sxcu"])
@pytest.mark.gen_test
async def test_head_answers_wherever_get_does(http_client, base_url, path):
    got = await http_client.fetch(f"{base_url}{path}")

    head = await http_client.fetch(f"{base_url}{path}", method="HEAD")

    assert head.code == 200
    assert head.body == b""
    assert head.headers["Content-Type"] == got.headers["Content-Type"]
    assert int(head.headers["Content-Length"]) > 0


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/", "GET, HEAD, POST, OPTIONS"),
        ("PUT", "/", "GET, HEAD, POST, OPTIONS"),
        ("PATCH", "/login", "GET, HEAD, POST, OPTIONS"),
        ("POST", "/api", "GET, HEAD, OPTIONS"),
        ("POST", "/api/sharex.sxcu", "GET, HEAD, OPTIONS"),
        ("GET", "/upload", "POST, OPTIONS"),
        ("PUT", "/files/1", "POST, DELETE, OPTIONS"),
    ],
)
@pytest.mark.gen_test
async def test_a_method_a_page_does_not_answer_is_a_405_with_allow(
    http_client, base_url, method, path, allow
):
    response = await http_client.fetch(
        f"{base_url}{path}",
        method=method,
        body=b"x" if method in ("POST", "PUT", "PATCH") else None,
        raise_error=False,
    )

    assert response.code == 405
    assert response.headers["Allow"] == allow
    assert "<h1>405 Method Not Allowed</h1>" in response.body.decode()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "TRACE"])
@pytest.mark.parametrize("path", ["/static/hostd.css", "/robots.txt", "/favicon.ico"])
@pytest.mark.gen_test
async def test_static_files_answer_other_methods_405_with_allow(
    http_client, base_url, path, method
):
    """As every other URL does: not a 403 for a missing xsrf token, nor a 405 without Allow
    (schemathesis found both)."""
    response = await http_client.fetch(
        f"{base_url}{path}",
        method=method,
        body=b"x" if method in ("POST", "PUT") else None,
        allow_nonstandard_methods=True,
        raise_error=False,
    )

    assert response.code == 405
    assert response.headers["Allow"] == "GET, HEAD, OPTIONS"


@pytest.mark.parametrize("path", ["/static/nope.js", "/favicon.ico", "/static/../hostd.toml"])
@pytest.mark.gen_test
async def test_a_static_file_that_is_not_there_gets_the_sites_404_page(http_client, base_url, path):
    response = await http_client.fetch(f"{base_url}{path}", raise_error=False)
    head = await http_client.fetch(f"{base_url}{path}", method="HEAD", raise_error=False)

    assert response.code in (403, 404) and head.code == response.code
    assert response.headers["Content-Type"].startswith("text/html")
    assert '<header class="site-header">' in response.body.decode()


@pytest.mark.gen_test
async def test_a_static_file_is_served_with_head_and_revalidation(http_client, base_url):
    first = await http_client.fetch(f"{base_url}/static/hostd.css")
    head = await http_client.fetch(f"{base_url}/static/hostd.css", method="HEAD")
    again = await http_client.fetch(
        f"{base_url}/static/hostd.css",
        headers={"If-None-Match": first.headers["Etag"]},
        raise_error=False,
    )

    assert first.code == 200 and b"{" in first.body  # CSS
    assert head.code == 200 and head.body == b""
    assert head.headers["Content-Length"] == first.headers["Content-Length"]
    assert again.code == 304


@pytest.mark.parametrize(
    ("path", "allow"),
    [
        ("/", "GET, HEAD, POST, OPTIONS"),
        ("/login", "GET, HEAD, POST, OPTIONS"),
        ("/upload", "POST, OPTIONS"),
        ("/static/hostd.css", "GET, HEAD, OPTIONS"),
    ],
)
@pytest.mark.gen_test
async def test_options_says_what_a_url_answers(http_client, base_url, path, allow):
    response = await http_client.fetch(f"{base_url}{path}", method="OPTIONS")

    assert response.code == 204
    assert response.headers["Allow"] == allow
    assert not any(name.startswith("Access-Control-") for name in response.headers)


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
@pytest.mark.gen_test
async def test_an_unknown_url_is_a_404_whatever_the_method(http_client, base_url, method):
    response = await http_client.fetch(
        f"{base_url}/no/such/page",
        method=method,
        body=b"x" if method in ("POST", "PUT", "PATCH") else None,
        raise_error=False,
    )

    assert response.code == 404


@pytest.mark.parametrize("method", ["POST", "PUT"])
@pytest.mark.gen_test
async def test_a_file_sent_to_an_unknown_url_is_told_where_uploads_go(
    http_client, base_url, method
):
    response = await http_client.fetch(
        f"{base_url}/notes.txt", method=method, body=b"my notes", raise_error=False
    )

    assert response.code == 404
    assert f"PUT /api/upload/&lt;its name&gt; (curl -T FILE {base_url}/api/upload/)" in (
        response.body.decode()
    )


@pytest.mark.parametrize(("method", "body"), [("PUT", b"png"), ("PATCH", None), ("DELETE", None)])
@pytest.mark.gen_test
async def test_another_method_on_the_upload_page_is_told_how_it_takes_a_file(
    http_client, base_url, method, body
):
    response = await http_client.fetch(
        f"{base_url}/", method=method, body=body, allow_nonstandard_methods=True, raise_error=False
    )

    assert_refused(
        response,
        "/",
        405,
        "This URL takes a file as a POST of a multipart form with the file in a field named"
        f" 'file' (curl -F file=@FILE {base_url}/). To send the file itself as the body,"
        f" PUT it to /api/upload/<its name> (curl -T FILE {base_url}/api/upload/).",
    )
    assert response.headers["Allow"] == "GET, HEAD, POST, OPTIONS"


@pytest.mark.parametrize("content_type", ["multipart/form-data", "multipart/form-data; boundary=x"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("path", ["/", "/login", "/api", "/files", "/no/such/page"])
@pytest.mark.gen_test
async def test_a_stray_content_type_without_a_body_does_not_matter(
    http_client, base_url, login, path, method, content_type
):
    alice = await login()

    response = await http_client.fetch(
        f"{base_url}{path}",
        method=method,
        headers={"Content-Type": content_type, "Cookie": alice.cookie},
        raise_error=False,
    )

    assert response.code == (404 if path == "/no/such/page" else 200)


@pytest.mark.gen_test
async def test_the_413_page_uses_the_status_name_of_rfc_9110(http_client, base_url, config):
    async def no_body(write):
        pass

    response = await http_client.fetch(
        f"{base_url}/upload",
        method="POST",
        body_producer=no_body,
        headers={
            "Content-Type": "multipart/form-data; boundary=b",
            "Content-Length": str(config.max_upload_bytes * 2),
        },
        expect_100_continue=True,
        raise_error=False,
    )

    assert response.code == 413
    assert "413 Content Too Large" in text_of(response.body)
    assert "Request Entity" not in response.body.decode()


@pytest.mark.gen_test
async def test_api_page_lists_what_a_refused_upload_answers(http_client, base_url):
    """The same list as the OpenAPI document's (the page says so)."""
    from hostd.openapi import document

    page = (await http_client.fetch(f"{base_url}/api")).body.decode()

    listed = re.findall(r"<dt><code>([0-9]{3})</code></dt>", page)
    documented = document()["paths"]["/api/upload"]["post"]["responses"]
    assert listed == sorted(set(documented) - {"200"})
    assert listed == ["400", "401", "408", "413", "429", "431", "451", "503", "507"]
    text = text_of(page.encode())
    assert "These bytes are banned from this server." in text
    assert "( limits.body_idle_seconds )" in text  # its `code` in <code>
    assert "header fields are over 64 KiB" in text
    assert "The database or the file storage cannot be reached or is busy" in text
    assert "the storage cannot be written" in text


@pytest.mark.gen_test
async def test_api_page_offers_every_form_of_expiry(http_client, base_url):
    text = text_of((await http_client.fetch(f"{base_url}/api")).body)

    assert "an HTTP date such as Thu, 31 Jan 2030 12:00:00 GMT ," in text
    assert "or Unix time in milliseconds as 0x0.st takes it ( 1896091200000 :" in text
    assert "-H 'Expires: Thu, 31 Jan 2030 12:00:00 GMT'" in text


@pytest.mark.gen_test
async def test_upload_page_is_titled_and_asks_for_one_file_without_the_script(
    http_client, base_url
):
    html = (await http_client.fetch(f"{base_url}/")).body.decode()

    assert "<title>Upload · hostd</title>" in html
    # The plain form posts one file (hostd.js makes it several, and says "files").
    assert re.search(r'<input id="upload-file" type="file" name="file"(?![^>]*multiple)', html)
    assert ">Choose a file</label>" in html
    assert 'class="drop-hint js-only"' in html  # dropping and pasting need the script


@pytest.mark.gen_test
async def test_each_result_control_names_its_file(http_client, base_url):
    body, headers = multipart_body(files=[("file", "cat.png", b"not really a png")])

    response = await http_client.fetch(
        f"{base_url}/upload", method="POST", body=body, headers={**headers, "HX-Request": "true"}
    )

    html = response.body.decode()
    for kind in ("hash", "ext", "full", "base"):
        assert f'>{kind}<span class="visually-hidden"> URL of cat.png</span></label>' in html
        assert f'aria-label="Copy the {kind} URL of cat.png"' in html
        assert f'aria-label="Open the {kind} URL of cat.png in a new tab"' in html
    assert 'aria-label="Copy the deletion link of cat.png"' in html
    # Copy needs the script: without it (no .js on <html>) hostd.css hides the buttons.
    assert html.count('class="copy-button js-only"') == 5
