"""A signed-in user's files: the list, its htmx fragments, deleting, thumbnails."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os

import pytest
from conftest import XSRF, form_body
from helpers import (
    Fifos,
    blob_files,
    grey_jpeg,
    multipart_body,
    png_of_one_colour,
    raw_exchange,
    text_of,
    webp_of_one_colour,
)
from PIL import Image

from hostd import db as queries
from hostd.thumbs import MAX_JOBS

MiB = 1024 * 1024

# Each test with an app runs on both stores (conftest.pytest_generate_tests).
STORAGE_BACKENDS = ("local", "s3")


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


async def upload_as(client, base_url, signed_in, data: bytes, name: str = "a.bin"):
    """Upload from the signed-in browser (session + xsrf), as the upload page does."""
    body, headers = multipart_body(files=[("file", name, data)])
    response = await client.fetch(
        f"{base_url}/upload?api=1",
        method="POST",
        body=body,
        headers={**headers, **signed_in.headers},
    )
    return response.body.decode().split()[1]


async def anonymous_upload(client, base_url, data: bytes) -> str:
    body, headers = multipart_body(files=[("file", "anon.bin", data)])
    response = await client.fetch(
        f"{base_url}/api/upload", method="POST", body=body, headers=headers
    )
    return json.loads(response.body)["hash"]


async def upload_ids(db, user_id):
    return [u.id for u in await queries.all_uploads(db) if u.user_id == user_id]


@pytest.mark.gen_test
async def test_files_needs_a_sign_in(http_client, base_url):
    response = await http_client.fetch(
        f"{base_url}/files", follow_redirects=False, raise_error=False
    )

    assert response.code == 302
    assert response.headers["Location"] == "/login?next=%2Ffiles"


@pytest.mark.gen_test
async def test_files_lists_only_my_uploads_newest_first(http_client, base_url, login):
    alice, bob = await login(), await login()
    await upload_as(http_client, base_url, alice, b"first", "first.txt")
    await upload_as(http_client, base_url, alice, b"second", "second.txt")
    await upload_as(http_client, base_url, bob, b"bobs", "bobs.txt")

    response = await http_client.fetch(f"{base_url}/files", headers=alice.headers)

    body = response.body.decode()
    assert body.index("second.txt") < body.index("first.txt")
    assert "bobs.txt" not in body
    assert "2 files" in body
    assert response.headers["Vary"] == "HX-Request"


@pytest.mark.gen_test
async def test_files_fragment_for_htmx(http_client, base_url, login):
    alice = await login()
    await upload_as(http_client, base_url, alice, b"x", "x.txt")

    response = await http_client.fetch(
        f"{base_url}/files", headers={**alice.headers, "HX-Request": "true"}
    )
    restore = await http_client.fetch(
        f"{base_url}/files",
        headers={**alice.headers, "HX-Request": "true", "HX-History-Restore-Request": "true"},
    )

    assert response.body.decode().lstrip().startswith('<section id="file-list"')
    assert b"<html" in restore.body


@pytest.mark.gen_test(timeout=30)
async def test_files_are_paginated(http_client, base_url, login):
    alice = await login()
    for i in range(23):
        await upload_as(http_client, base_url, alice, f"file {i}".encode(), f"f{i:02}.txt")

    first = (await http_client.fetch(f"{base_url}/files", headers=alice.headers)).body.decode()
    second = (
        await http_client.fetch(f"{base_url}/files?page=2", headers=alice.headers)
    ).body.decode()

    assert "f22.txt" in first and "f03.txt" in first and "f02.txt" not in first
    assert 'rel="next" href="/files?page=2"' in first
    assert "f02.txt" in second and "f00.txt" in second and "f22.txt" not in second
    assert 'rel="prev" href="/files?page=1"' in second
    beyond = (
        await http_client.fetch(f"{base_url}/files?page=9", headers=alice.headers)
    ).body.decode()
    assert "There is no page 9: you have 2 pages of files." in beyond
    assert "You have no files yet" not in beyond


async def delete_from_the_list(client, base_url, signed_in, upload_id: int, page: int):
    """The list's Delete button: htmx's DELETE, with the page it was on."""
    return await client.fetch(
        f"{base_url}/files/{upload_id}?page={page}",
        method="DELETE",
        headers={**signed_in.headers, "HX-Request": "true"},
    )


@pytest.mark.gen_test
async def test_a_delete_from_the_list_answers_the_list_again_counts_and_all(
    http_client, base_url, login, db
):
    alice = await login()
    for i in range(21):
        await upload_as(http_client, base_url, alice, f"file {i}".encode(), f"f{i:02}.txt")
    newest = max(await upload_ids(db, alice.user.id))
    before = text_of((await http_client.fetch(f"{base_url}/files", headers=alice.headers)).body)

    after = text_of((await delete_from_the_list(http_client, base_url, alice, newest, 1)).body)

    assert "21 files, page 1 of 2" in before and "Using 137 bytes" in before
    assert "20 files" in after and "page 1 of" not in after and "Using 130 bytes" in after
    assert "f20.txt" not in after
    assert "f00.txt" in after  # the next file moves up from page 2


@pytest.mark.gen_test
async def test_a_delete_that_empties_the_last_page_shows_the_one_before(
    http_client, base_url, login, db
):
    alice = await login()
    for i in range(21):
        await upload_as(http_client, base_url, alice, f"file {i}".encode(), f"f{i:02}.txt")
    oldest = min(await upload_ids(db, alice.user.id))

    after = text_of((await delete_from_the_list(http_client, base_url, alice, oldest, 2)).body)

    assert "20 files" in after and "There is no page" not in after
    assert "f20.txt" in after and "f01.txt" in after and "f00.txt" not in after


@pytest.mark.gen_test
async def test_an_accounts_pages_are_kept_by_no_cache(http_client, base_url, login):
    """After signing out, Back must ask again, not show the account's files and keys."""
    alice = await login()
    await upload_as(http_client, base_url, alice, b"private")

    for path in ("/files", "/api", "/"):
        page = await http_client.fetch(f"{base_url}{path}", headers=alice.headers)
        assert page.headers["Cache-Control"] == "no-store", path
    anonymous = await http_client.fetch(f"{base_url}/")
    assert "Cache-Control" not in anonymous.headers


@pytest.mark.gen_test
async def test_a_delete_after_signing_out_says_to_sign_in(http_client, base_url, login, db):
    alice = await login()
    await upload_as(http_client, base_url, alice, b"kept")
    (upload_id,) = await upload_ids(db, alice.user.id)

    response = await http_client.fetch(
        f"{base_url}/files/{upload_id}?page=1",
        method="DELETE",
        # The session is gone (signed out in another tab); the xsrf cookie is still there.
        headers={"Cookie": f"_xsrf={XSRF}", "X-XSRFToken": XSRF, "HX-Request": "true"},
        raise_error=False,
    )

    assert response.code == 403
    assert "You are signed out" in text_of(response.body)
    assert await upload_ids(db, alice.user.id) == [upload_id]


@pytest.mark.gen_test
async def test_file_names_are_escaped(http_client, base_url, login):
    alice = await login()
    await upload_as(http_client, base_url, alice, b"x", "<img src=x onerror=alert(1)>.txt")

    body = (await http_client.fetch(f"{base_url}/files", headers=alice.headers)).body.decode()

    assert "<img src=x onerror" not in body
    assert "&lt;img src=x onerror=alert(1)&gt;.txt" in body


@pytest.mark.gen_test
async def test_deleting_the_only_registration_removes_the_blob(
    http_client, base_url, login, db, config
):
    alice = await login()
    h = await upload_as(http_client, base_url, alice, b"only mine")
    (upload_id,) = await upload_ids(db, alice.user.id)

    response = await http_client.fetch(
        f"{base_url}/files/{upload_id}",
        method="DELETE",
        headers={**alice.headers, "HX-Request": "true"},
    )
    served = await http_client.fetch(f"{base_url}/{h}", raise_error=False)

    assert response.code == 200 and "You have no files yet" in text_of(response.body)
    assert await upload_ids(db, alice.user.id) == []
    assert blob_files(config) == []
    assert served.code == 404


@pytest.mark.gen_test
async def test_a_blob_someone_else_uploaded_too_stays(http_client, base_url, login, db, config):
    alice = await login()
    h = await upload_as(http_client, base_url, alice, b"shared bytes")
    await anonymous_upload(http_client, base_url, b"shared bytes")
    (upload_id,) = await upload_ids(db, alice.user.id)

    await http_client.fetch(f"{base_url}/files/{upload_id}", method="DELETE", headers=alice.headers)
    served = await http_client.fetch(f"{base_url}/{h}")

    assert served.body == b"shared bytes"
    assert len(blob_files(config)) == 1


@pytest.mark.gen_test
async def test_nobody_deletes_someone_elses_upload(http_client, base_url, login, db):
    alice, mallory = await login(), await login()
    await upload_as(http_client, base_url, alice, b"alice's")
    (upload_id,) = await upload_ids(db, alice.user.id)

    response = await http_client.fetch(
        f"{base_url}/files/{upload_id}", method="DELETE", headers=mallory.headers, raise_error=False
    )

    assert response.code == 404
    assert await upload_ids(db, alice.user.id) == [upload_id]


@pytest.mark.gen_test
async def test_deleting_without_javascript_asks_first(http_client, base_url, login, db):
    alice = await login()
    await upload_as(http_client, base_url, alice, b"no js")
    (upload_id,) = await upload_ids(db, alice.user.id)

    asked = await http_client.fetch(
        f"{base_url}/files/{upload_id}/delete",
        method="POST",
        body=form_body(),
        headers={"Cookie": alice.cookie},
    )
    kept = await upload_ids(db, alice.user.id)
    done = await http_client.fetch(
        f"{base_url}/files/{upload_id}/delete",
        method="POST",
        body=form_body(confirm="yes"),
        headers={"Cookie": alice.cookie},
        follow_redirects=False,
        raise_error=False,
    )

    assert "Delete this file?" in asked.body.decode()
    assert kept == [upload_id]
    assert done.code == 303 and done.headers["Location"] == "/files"
    assert await upload_ids(db, alice.user.id) == []


@pytest.mark.gen_test
async def test_delete_needs_the_xsrf_token(http_client, base_url, login, db):
    alice = await login()
    await upload_as(http_client, base_url, alice, b"guarded")
    (upload_id,) = await upload_ids(db, alice.user.id)

    response = await http_client.fetch(
        f"{base_url}/files/{upload_id}",
        method="DELETE",
        headers={"Cookie": alice.cookie},
        raise_error=False,
    )

    assert response.code == 403
    assert "This form is out of date or came from another site" in text_of(response.body)
    assert await upload_ids(db, alice.user.id) == [upload_id]


@pytest.mark.parametrize(("size", "expected"), [((1200, 600), (320, 160)), ((40, 30), (40, 30))])
@pytest.mark.gen_test
async def test_thumbnails_shrink_but_never_enlarge(http_client, base_url, config, size, expected):
    h = await anonymous_upload(http_client, base_url, png(*size))

    response = await http_client.fetch(f"{base_url}/thumbs/{h}.webp")
    again = await http_client.fetch(f"{base_url}/thumbs/{h}.webp")

    assert response.headers["Content-Type"] == "image/webp"
    assert Image.open(io.BytesIO(response.body)).size == expected
    assert again.body == response.body
    assert len(list((config.data_dir / "thumbs").rglob("*.webp"))) == 1  # made once, cached


@pytest.mark.parametrize(("mode", "format"), [("I;16", "PNG"), ("I;16B", "TIFF")])
@pytest.mark.gen_test
async def test_a_16_bit_grey_image_gets_its_thumbnail_in_its_own_greys(
    http_client, base_url, mode, format
):
    """A scan or a microscope's picture: Pillow's reduce() takes no 16-bit grey."""
    image = Image.new(mode, (2000, 1500), 0)
    image.paste(Image.new(mode, (1000, 1500), 40000), (0, 0))  # 40000 / 256: grey 156
    out = io.BytesIO()
    image.save(out, format)
    h = await anonymous_upload(http_client, base_url, out.getvalue())

    response = await http_client.fetch(f"{base_url}/thumbs/{h}.webp", follow_redirects=False)

    thumb = Image.open(io.BytesIO(response.body)).convert("L")
    assert response.code == 200 and thumb.size == (320, 240)
    assert abs(thumb.getpixel((40, 120)) - 156) <= 2 and thumb.getpixel((280, 120)) <= 2


@pytest.mark.gen_test
async def test_an_unreadable_image_gets_a_placeholder(http_client, base_url):
    h = await anonymous_upload(http_client, base_url, b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)

    response = await http_client.fetch(
        f"{base_url}/thumbs/{h}.webp", follow_redirects=False, raise_error=False
    )

    assert response.code == 302
    assert "/static/thumb-unavailable.svg" in response.headers["Location"]


@pytest.mark.gen_test
async def test_no_thumbnail_for_what_is_not_an_image(http_client, base_url):
    h = await anonymous_upload(http_client, base_url, b"plain text")

    response = await http_client.fetch(f"{base_url}/thumbs/{h}.webp", raise_error=False)

    assert response.code == 404


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(lambda: png_of_one_colour(8000, 8000), id="8000x8000 RGBA PNG, 256 MB"),
        pytest.param(lambda: webp_of_one_colour(2600, 2600), id="2600x2600 WebP, 108 MB"),
        pytest.param(
            lambda: grey_jpeg(8000, 7000, scans="progressive"), id="progressive JPEG, 112 MB"
        ),
        pytest.param(
            lambda: grey_jpeg(6000, 6000, scans="per colour"),
            id="JPEG with a scan per colour, 216 MB",
        ),
    ],
)
@pytest.mark.gen_test
async def test_an_image_too_big_to_decode_gets_the_placeholder(http_client, base_url, image):
    h = await anonymous_upload(http_client, base_url, image())

    response = await http_client.fetch(
        f"{base_url}/thumbs/{h}.webp", follow_redirects=False, raise_error=False
    )

    assert response.code == 302
    assert "/static/thumb-unavailable.svg" in response.headers["Location"]


@pytest.mark.gen_test
async def test_a_huge_jpeg_gets_its_thumbnail_decoded_at_an_eighth(http_client, base_url):
    h = await anonymous_upload(http_client, base_url, grey_jpeg(12000, 12000))  # 144 MB decoded

    response = await http_client.fetch(f"{base_url}/thumbs/{h}.webp")

    assert response.headers["Content-Type"] == "image/webp"
    assert Image.open(io.BytesIO(response.body)).size == (320, 320)


@pytest.mark.gen_test
async def test_thumbnails_follow_the_exif_orientation(http_client, base_url):
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned; show it rotated 90 degrees
    out = io.BytesIO()
    Image.new("RGB", (1200, 600), (200, 30, 30)).save(out, "JPEG", exif=exif)
    h = await anonymous_upload(http_client, base_url, out.getvalue())

    response = await http_client.fetch(f"{base_url}/thumbs/{h}.webp")

    assert Image.open(io.BytesIO(response.body)).size == (160, 320)


def stuck_thumbnails(app, tmp_path, count: int) -> tuple[Fifos, list[asyncio.Future]]:
    """`count` thumbnails the server's thumbnailer is making, of images that are FIFOs: their
    decoding waits until the FIFOs are released (then each reads as an empty, unreadable
    file)."""
    fifos = Fifos([tmp_path / f"stuck-{i}" for i in range(count)])
    thumbs = app.settings["hostd_thumbs"]
    jobs = [
        asyncio.ensure_future(thumbs.get(hashlib.sha256(path.name.encode()).hexdigest(), path))
        for path in fifos.paths
    ]
    return fifos, jobs


async def plain_request(port: int, method: str, path: str, body: bytes = b"", headers=None):
    """(status, headers, body) over a plain socket: Tornado's client resolves names on
    asyncio's default pool, which these tests fill on purpose."""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    for name, value in {**(headers or {}), "Content-Length": str(len(body))}.items():
        head += f"{name}: {value}\r\n"
    answer = await asyncio.wait_for(
        raw_exchange(port, head.encode() + b"\r\n", len(body), body or b"-"), timeout=10
    )
    top, _, content = answer.partition(b"\r\n\r\n")
    status, *lines = top.decode().split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines)
    return int(status.split()[1]), fields, content


@pytest.mark.gen_test(timeout=30)
async def test_uploads_do_not_wait_behind_thumbnails(app, http_server, http_port, tmp_path):
    # As many thumbnails stuck in decoding as asyncio's default pool, which upload writes
    # use, has threads.
    fifos, jobs = stuck_thumbnails(app, tmp_path, min(32, (os.cpu_count() or 1) + 4))
    body, headers = multipart_body(files=[("file", "during.bin", os.urandom(2 * MiB))])

    with fifos:
        status, _, _ = await plain_request(http_port, "POST", "/api/upload", body, headers)
    outcomes = await asyncio.gather(*jobs)

    assert status == 200
    assert outcomes == [None] * len(jobs)  # the stuck ones read as empty: no thumbnail


@pytest.mark.gen_test(timeout=30)
async def test_past_the_thumbnail_queue_the_answer_is_a_503_with_retry_after(
    http_client, base_url, app, http_port, tmp_path
):
    h = await anonymous_upload(http_client, base_url, png(30, 20))
    fifos, jobs = stuck_thumbnails(app, tmp_path, MAX_JOBS)

    with fifos:
        status, headers, body = await plain_request(http_port, "GET", f"/thumbs/{h}.webp")
    await asyncio.gather(*jobs)
    after = await http_client.fetch(f"{base_url}/thumbs/{h}.webp")

    assert status == 503
    assert headers["Retry-After"] == "5"
    assert headers["Cache-Control"] == "no-store"
    assert headers["Content-Type"] == "image/svg+xml"  # an <img> shows the placeholder
    assert body.startswith(b"<svg")
    assert after.code == 200 and after.headers["Content-Type"] == "image/webp"


@pytest.mark.gen_test
async def test_upload_page_fragment_answers_with_the_urls_and_a_preview(http_client, base_url):
    body, headers = multipart_body(files=[("file", "red.png", png(8, 8))])

    response = await http_client.fetch(
        f"{base_url}/upload", method="POST", body=body, headers={**headers, "HX-Request": "true"}
    )

    html = response.body.decode()
    assert html.lstrip().startswith('<div class="upload-result"')
    assert html.count('class="url-field"') == 4
    assert 'class="preview"' in html and "<img" in html


@pytest.mark.gen_test
async def test_upload_page_fragment_answers_errors_in_place(http_client, base_url):
    body, headers = multipart_body(files=[("file", "empty.txt", b"")])

    response = await http_client.fetch(
        f"{base_url}/upload",
        method="POST",
        body=body,
        headers={**headers, "HX-Request": "true"},
        raise_error=False,
    )

    assert response.code == 400
    assert (
        response.body.decode().strip()
        == '<p class="upload-error" role="alert">the file is empty</p>'
    )


@pytest.mark.parametrize(
    "page",
    [
        "99999999999999999999",  # past SQLite's integers
        "9" * 5000,  # past int()'s digit limit
        "%C2%B2",  # "²": str.isdigit() says yes, int() says no
        "0",
        "-1",
        "two",
        "1000001",
    ],
)
@pytest.mark.gen_test
async def test_a_page_number_that_is_not_one_is_a_400(http_client, base_url, login, page):
    alice = await login()

    response = await http_client.fetch(
        f"{base_url}/files?page={page}", headers=alice.headers, raise_error=False
    )

    assert response.code == 400
    assert "A page number is a whole number from 1 to 1,000,000." in response.body.decode()


@pytest.mark.parametrize("upload_id", ["99999999999999999999", "9" * 5000])
@pytest.mark.gen_test
async def test_deleting_an_id_no_row_can_have_is_a_404(http_client, base_url, login, upload_id):
    alice = await login()

    with_htmx = await http_client.fetch(
        f"{base_url}/files/{upload_id}", method="DELETE", headers=alice.headers, raise_error=False
    )
    without = await http_client.fetch(
        f"{base_url}/files/{upload_id}/delete",
        method="POST",
        body=form_body(confirm="yes"),
        headers={"Cookie": alice.cookie},
        raise_error=False,
    )

    for response in (with_htmx, without):
        assert response.code == 404
        assert "You have no upload with this id." in response.body.decode()


@pytest.mark.gen_test
async def test_a_delete_of_a_file_already_deleted_answers_the_list_without_it(
    http_client, base_url, login, db
):
    """Deleted in another tab: the stale row's Delete gets the list, not an error."""
    alice = await login()
    await upload_as(http_client, base_url, alice, b"twice", "twice.txt")
    (upload_id,) = await upload_ids(db, alice.user.id)
    await delete_from_the_list(http_client, base_url, alice, upload_id, 1)

    again = await delete_from_the_list(http_client, base_url, alice, upload_id, 1)

    assert again.code == 200
    html = again.body.decode()
    assert "<html" not in html and "twice.txt" not in html
    assert "data-announce>That file was already deleted" in html


@pytest.mark.gen_test
async def test_a_delete_that_moves_to_another_page_says_so_in_the_address(
    http_client, base_url, login, db
):
    alice = await login()
    for i in range(21):
        await upload_as(http_client, base_url, alice, f"file {i}".encode(), f"f{i:02}.txt")
    oldest = min(await upload_ids(db, alice.user.id))
    newest = max(await upload_ids(db, alice.user.id))

    back_to_one = await delete_from_the_list(http_client, base_url, alice, oldest, 2)
    same_page = await delete_from_the_list(http_client, base_url, alice, newest, 1)

    assert back_to_one.headers["HX-Replace-Url"] == "/files"
    assert "HX-Replace-Url" not in same_page.headers


@pytest.mark.gen_test
async def test_each_rows_links_and_cells_say_which_file_and_column(http_client, base_url, login):
    alice = await login()
    await upload_as(http_client, base_url, alice, b"named", "cat.txt")

    html = (await http_client.fetch(f"{base_url}/files", headers=alice.headers)).body.decode()

    for kind in ("hash", "ext", "full"):
        assert f'aria-label="{kind} URL of cat.txt">{kind}</a>' in html
    for label in ("Name", "Size", "Type", "Uploaded", "Links"):
        assert f'data-label="{label}"' in html  # shown on a phone, where <thead> is hidden


@pytest.mark.gen_test
async def test_deleting_without_javascript_asks_about_the_named_file(
    http_client, base_url, login, db
):
    alice = await login()
    file_hash = await upload_as(http_client, base_url, alice, b"which one?", "holiday.jpg")
    (upload_id,) = await upload_ids(db, alice.user.id)

    asked = await http_client.fetch(
        f"{base_url}/files/{upload_id}/delete",
        method="POST",
        body=form_body(),
        headers={"Cookie": alice.cookie},
    )

    text = text_of(asked.body)
    assert "Delete this file?" in text
    assert "Name holiday.jpg" in text and f"Hash {file_hash}" in text and "Size 10 bytes" in text
    assert "<title>Delete holiday.jpg? · hostd</title>" in asked.body.decode()


@pytest.mark.gen_test
async def test_nobody_is_asked_about_someone_elses_upload(http_client, base_url, login, db):
    alice, bob = await login("alice"), await login("bob")
    await upload_as(http_client, base_url, alice, b"alice's", "secret-name.txt")
    (upload_id,) = await upload_ids(db, alice.user.id)

    asked = await http_client.fetch(
        f"{base_url}/files/{upload_id}/delete",
        method="POST",
        body=form_body(),
        headers={"Cookie": bob.cookie},
        raise_error=False,
    )

    assert asked.code == 404 and "secret-name.txt" not in asked.body.decode()
