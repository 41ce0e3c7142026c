"""PUT /api/upload/<filename> driven by the real curl binary (`curl -T`): the answers, keys,
limits and expiry of POST /api/upload, with the body as the file.

(The endpoint lives in hostd/handlers/upload.py; its tests have a file of their own.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import blob_files, temp_files

from hostd import db as queries
from hostd.hashes import public_hash_candidates
from hostd.limits import Limits
from hostd.retention import http_date

STORAGE_BACKENDS = ("local", "s3")  # the body goes into whichever blob store there is
LIMIT = 8 * 1024 * 1024  # the config fixture's max_upload_bytes
HOUR = 3600


@pytest.fixture(autouse=True)
def serving(http_server):
    """The server listens (base_url alone only reserves its port)."""
    return http_server


@dataclasses.dataclass
class Curl:
    code: int  # the HTTP status curl saw (0: none)
    answer: dict
    trace: str  # curl -v's stderr: what went over the wire, headers only

    def header(self, name: str) -> str | None:
        """A header of the (last) answer, by name in any case."""
        found = None
        for line in self.trace.splitlines():
            key, _, value = line.removeprefix("< ").partition(":")
            if line.startswith("< ") and key.lower() == name.lower():
                found = value.strip()
        return found

    @property
    def continued(self) -> bool:
        """Whether the server asked for the body with "100 Continue"."""
        return "< HTTP/1.1 100 " in self.trace


async def curl(*args: str, stdin: bytes | None = None) -> Curl:
    """The real curl, as a user types it, in its own process (the server runs on this loop)."""
    assert shutil.which("curl"), "the curl tests need curl (apt-get install curl; .ci/run does)"
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-v", "--write-out", "\n%{http_code}", *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate(stdin)
    body, _, code = out.decode().rpartition("\n")
    return Curl(int(code or 0), json.loads(body) if body.strip() else {}, err.decode())


def random_file(tmp_path: Path, size: int, name: str = "big.bin") -> Path:
    path = tmp_path / name
    with path.open("wb") as out:
        while size > 0:
            piece = os.urandom(min(size, 1024 * 1024))
            out.write(piece)
            size -= len(piece)
    return path


def public_hash(data: bytes) -> str:
    return public_hash_candidates(hashlib.sha256(data).hexdigest())[0]


# -- the answers ----------------------------------------------------------------------


@pytest.mark.gen_test
async def test_curl_T_answers_the_json_of_post_api_upload(base_url, tmp_path, db):
    photo = tmp_path / "photo.txt"
    photo.write_bytes(b"GIF89a" + b"\0" * 10)  # a GIF, whatever its name says

    put = await curl("-T", str(photo), f"{base_url}/api/upload/photo.txt")

    assert put.code == 200
    assert put.answer["status"] is True
    assert put.answer["hash"] == public_hash(photo.read_bytes())
    assert put.answer["urls"] == {
        "base": f"{base_url}/",
        "full": f"{base_url}/{put.answer['hash']}/photo.txt",
        "ext": f"{base_url}/{put.answer['hash']}.txt",
        "hash": f"{base_url}/{put.answer['hash']}",
    }
    assert put.answer["expires_at"] is None
    assert put.answer["delete_url"].startswith(f"{base_url}/delete/")
    assert put.header("X-Delete-Url") == put.answer["delete_url"]
    blob = await queries.get_blob(db, put.answer["hash"])
    assert blob is not None and blob.content_type == "image/gif"
    assert [u.original_name for u in await queries.all_uploads(db)] == ["photo.txt"]


@pytest.mark.gen_test(timeout=60)
async def test_a_large_file_is_streamed_after_100_continue_and_stored_byte_for_byte(
    base_url, tmp_path, config, store
):
    big = random_file(tmp_path, 6 * 1024 * 1024 + 123)

    put = await curl("-T", str(big), f"{base_url}/api/upload/big.bin")

    assert put.code == 200
    assert "> Expect: 100-continue" in put.trace
    assert put.continued  # the server asked for the body
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    assert put.answer["hash"] == public_hash_candidates(digest)[0]
    async with store.local_copy(digest) as stored:  # read back through the store
        assert stored.read_bytes() == big.read_bytes()
    assert temp_files(config) == []


@pytest.mark.gen_test
async def test_a_body_from_a_pipe_arrives_chunked_and_is_stored(base_url, db):
    data = b"from a pipe\n" * 1000

    put = await curl("-T", "-", f"{base_url}/api/upload/log.txt", stdin=data)

    assert put.code == 200
    assert "> Transfer-Encoding: chunked" in put.trace
    assert put.answer["hash"] == public_hash(data)


@pytest.mark.parametrize(
    ("source", "url"),
    [("file", "/api/upload"), ("pipe", "/api/upload/"), ("pipe", "/api/upload")],
    ids=["file-no-slash", "pipe-slash", "pipe-no-slash"],
)
@pytest.mark.gen_test
async def test_a_put_with_no_name_is_stored_as_file(base_url, tmp_path, db, source, url):
    """curl adds the file's name only to a URL that ends in '/', and never for stdin: such a
    PUT is stored under the name a form part without one gets."""
    data = b"%PDF-1.7\n" + b"no name\n" * 100
    (tmp_path / "report.pdf").write_bytes(data)

    if source == "file":
        put = await curl("-T", str(tmp_path / "report.pdf"), f"{base_url}{url}")
    else:
        put = await curl("-T", "-", f"{base_url}{url}", stdin=data)

    assert put.code == 200, put.answer
    h = public_hash(data)
    assert put.answer["urls"] == {
        "base": f"{base_url}/",
        "full": f"{base_url}/{h}/file",
        "ext": f"{base_url}/{h}.pdf",
        "hash": f"{base_url}/{h}",
    }
    assert [u.original_name for u in await queries.all_uploads(db)] == ["file"]


@pytest.mark.parametrize(
    ("path", "stored"),
    [
        ("%C3%A9t%C3%A9%20photo.txt", "été photo.txt"),
        ("a+b.txt", "a+b.txt"),
        ("..txt", "..txt"),
    ],
    ids=["utf-8-and-space", "plus-is-a-plus", "dots"],
)
@pytest.mark.gen_test
async def test_the_filename_is_the_url_decoded_last_path_segment(
    base_url, tmp_path, db, path, stored
):
    (tmp_path / "f").write_bytes(b"named " + path.encode())

    put = await curl("-T", str(tmp_path / "f"), f"{base_url}/api/upload/{path}")

    assert put.code == 200
    assert [u.original_name for u in await queries.all_uploads(db)] == [stored]


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("a%2Fb.txt", "the filename must not contain path parts ('/', '\\', '..')"),
        ("%2E%2E", "the filename must not contain path parts ('/', '\\', '..')"),
        ("bad%FF.txt", "the filename is not valid UTF-8"),
        ("line%0Abreak.txt", "the filename contains control characters"),
        ("x" * 256, "the filename is longer than 255 bytes"),
    ],
    ids=["encoded-slash", "dot-dot", "invalid-utf-8", "control", "too-long"],
)
@pytest.mark.gen_test
async def test_a_hostile_filename_is_a_400_in_json_before_the_body(
    base_url, tmp_path, config, path, error
):
    big = random_file(tmp_path, 2 * 1024 * 1024)

    put = await curl("--path-as-is", "-T", str(big), f"{base_url}/api/upload/{path}")

    assert (put.code, put.answer) == (400, {"status": False, "error": error})
    assert not put.continued
    assert temp_files(config) == [] and blob_files(config) == []


@pytest.mark.parametrize("source", ["file", "pipe"])
@pytest.mark.gen_test
async def test_an_empty_body_is_a_400(base_url, tmp_path, config, source):
    """As an empty file in a form is; from a pipe, the body is chunked and ends at once."""
    (tmp_path / "empty").write_bytes(b"")
    url = f"{base_url}/api/upload/empty.txt"

    if source == "file":
        put = await curl("-T", str(tmp_path / "empty"), url)
    else:
        put = await curl("-T", "-", url, stdin=b"")
        assert "> Transfer-Encoding: chunked" in put.trace

    assert (put.code, put.answer) == (400, {"status": False, "error": "the file is empty"})
    assert temp_files(config) == [] and blob_files(config) == []


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
@pytest.mark.gen_test
async def test_the_put_url_answers_only_put_and_says_so(base_url, method):
    other = await curl("-X", method, "-d", "x", f"{base_url}/api/upload/a.txt")

    assert other.code == 405
    assert other.header("Allow") == "PUT, OPTIONS"
    assert other.answer["error"].startswith(
        "Method Not Allowed: this URL takes the file itself as a PUT body (curl -T FILE URL)"
    )


@pytest.mark.parametrize("path", ["/api/upload/a/b.txt", "/api/files/a/b", "/api/tus/a/b"])
@pytest.mark.gen_test
async def test_an_unknown_url_under_api_is_a_404_in_json(base_url, path):
    put = await curl("-T", "-", f"{base_url}{path}", stdin=b"x")

    assert put.code == 404
    assert put.header("Content-Type") == "application/json; charset=utf-8"
    assert put.answer["status"] is False
    assert put.answer["error"].startswith("There is nothing at this address. Upload a file with")


# -- keys -------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_a_bearer_key_registers_the_upload_to_its_account(
    base_url, tmp_path, db, login, make_api_key
):
    alice = await login()
    key = await make_api_key(alice.user)
    (tmp_path / "notes.txt").write_bytes(b"alice's notes")

    put = await curl(
        "-H", f"Authorization: Bearer {key}", "-T", str(tmp_path / "notes.txt"),
        f"{base_url}/api/upload/notes.txt",
    )  # fmt: skip

    assert put.code == 200
    (upload,) = await queries.all_uploads(db)
    assert upload.user_id == alice.user.id and upload.api_key_id is not None


@pytest.mark.parametrize("header", ["Bearer nonsense", "Basic dXNlcjpwYXNz"])
@pytest.mark.gen_test
async def test_a_bad_key_is_a_401_before_the_body_and_nothing_is_stored(
    base_url, tmp_path, db, config, header
):
    big = random_file(tmp_path, 2 * 1024 * 1024)

    put = await curl("-H", f"Authorization: {header}", "-T", str(big), f"{base_url}/api/upload/a")

    assert put.code == 401
    assert put.answer["status"] is False
    assert put.header("WWW-Authenticate") == 'Bearer realm="hostd"'
    assert not put.continued
    assert await queries.all_uploads(db) == []
    assert temp_files(config) == [] and blob_files(config) == []


@pytest.mark.gen_test
async def test_without_anonymous_uploads_a_keyless_put_is_a_401_that_says_how(
    base_url, tmp_path, app, make_api_key
):
    app.settings["hostd_config"] = dataclasses.replace(
        app.settings["hostd_config"], allow_anonymous=False
    )
    key = await make_api_key()
    (tmp_path / "a.txt").write_bytes(b"a")

    anonymous = await curl("-T", str(tmp_path / "a.txt"), f"{base_url}/api/upload/a.txt")
    keyed = await curl(
        "-H", f"Authorization: Bearer {key}", "-T", str(tmp_path / "a.txt"),
        f"{base_url}/api/upload/a.txt",
    )  # fmt: skip

    assert anonymous.code == 401
    assert "generate an API key on the /api page" in anonymous.answer["error"]
    assert keyed.code == 200


# -- limits -----------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_a_file_over_the_limit_is_a_413_before_the_body_and_leaves_nothing(
    base_url, tmp_path, db, config
):
    big = random_file(tmp_path, LIMIT + 1)

    put = await curl("-T", str(big), f"{base_url}/api/upload/big.bin")

    assert put.code == 413
    assert put.answer == {
        "status": False,
        "error": f"the file is larger than the limit of {LIMIT} bytes",
    }
    assert not put.continued
    assert await queries.all_uploads(db) == []
    assert temp_files(config) == [] and blob_files(config) == []


@pytest.mark.gen_test
async def test_a_file_of_exactly_the_limit_is_accepted(base_url, tmp_path):
    exact = random_file(tmp_path, LIMIT)

    put = await curl("-T", str(exact), f"{base_url}/api/upload/exact.bin")

    assert put.code == 200


@pytest.mark.gen_test(timeout=60)
async def test_a_piped_body_growing_past_the_limit_is_a_413_midway_and_leaves_nothing(
    base_url, db, config
):
    put = await curl("-T", "-", f"{base_url}/api/upload/endless", stdin=b"z" * (LIMIT + 65536))

    assert put.code == 413
    assert put.answer["error"] == f"the file is larger than the limit of {LIMIT} bytes"
    assert await queries.all_uploads(db) == []
    assert temp_files(config) == [] and blob_files(config) == []


@pytest.mark.gen_test
async def test_the_anonymous_limit_counts_the_body_exactly(base_url, tmp_path, app, clock):
    # No multipart framing: a body one byte over the anonymous limit is refused up front.
    changed = dataclasses.replace(app.settings["hostd_config"], anonymous_max_upload_bytes=1000)
    app.settings["hostd_config"] = changed
    app.settings["hostd_limits"] = Limits(changed, clock=clock)
    (tmp_path / "fits").write_bytes(b"f" * 1000)
    (tmp_path / "over").write_bytes(b"o" * 1001)

    fits = await curl("-T", str(tmp_path / "fits"), f"{base_url}/api/upload/fits")
    over = await curl("-H", "Expect: 100-continue", "-T", str(tmp_path / "over"),
                      f"{base_url}/api/upload/over")  # fmt: skip

    assert fits.code == 200
    assert over.code == 413
    assert over.answer["error"].startswith("anonymous uploads may be at most 1000 bytes")
    assert not over.continued


@pytest.mark.gen_test
async def test_a_file_over_the_accounts_quota_is_a_413_before_the_body(
    base_url, tmp_path, app, clock, db, make_api_key
):
    changed = dataclasses.replace(app.settings["hostd_config"], quota_bytes=1000)
    app.settings["hostd_config"] = changed
    app.settings["hostd_limits"] = Limits(changed, clock=clock)
    key = await make_api_key()
    (tmp_path / "over").write_bytes(b"q" * 1001)

    put = await curl("-H", f"Authorization: Bearer {key}", "-T", str(tmp_path / "over"),
                     f"{base_url}/api/upload/over")  # fmt: skip

    assert put.code == 413
    assert put.answer["error"].startswith("this upload (1001 bytes) does not fit in your account")
    assert not put.continued
    assert await queries.all_uploads(db) == []


@pytest.mark.gen_test
async def test_past_the_per_minute_budget_a_put_is_a_429_with_retry_after(
    base_url, tmp_path, app, clock
):
    changed = dataclasses.replace(app.settings["hostd_config"], uploads_per_minute=2)
    app.settings["hostd_config"] = changed
    app.settings["hostd_limits"] = Limits(changed, clock=clock)
    (tmp_path / "a").write_bytes(b"a")

    answers = [await curl("-T", str(tmp_path / "a"), f"{base_url}/api/upload/a") for _ in range(3)]

    assert [a.code for a in answers] == [200, 200, 429]
    assert answers[2].answer["error"].startswith("too many uploads: at most 2 a minute")
    assert answers[2].header("Retry-After") is not None


# -- expiry -----------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_an_expires_header_sets_when_the_upload_expires(base_url, tmp_path, wall_clock):
    (tmp_path / "soon.txt").write_bytes(b"gone in five hours")

    put = await curl(
        "-H", "Expires: 5", "-T", str(tmp_path / "soon.txt"), f"{base_url}/api/upload/soon.txt"
    )

    assert put.code == 200
    assert put.header("X-Expires") == http_date(int(wall_clock()) + 5 * HOUR)
    assert put.answer["expires_at"] is not None


@pytest.mark.gen_test
async def test_a_bad_expires_header_is_a_400_and_nothing_is_stored(base_url, tmp_path, config):
    (tmp_path / "a.txt").write_bytes(b"a")

    put = await curl(
        "-H", "Expires: tomorrow", "-T", str(tmp_path / "a.txt"), f"{base_url}/api/upload/a.txt"
    )

    assert put.code == 400
    assert put.answer["error"].startswith("the Expires header must be a whole number of hours")
    assert blob_files(config) == []


@pytest.mark.gen_test
async def test_the_api_page_shows_curl_T_with_this_instances_url(http_client, base_url):
    page = (await http_client.fetch(f"{base_url}/api")).body.decode()

    assert f"$ curl -T image.png {base_url}/api/upload/image.png" in page
    assert f"$ make 2&gt;&amp;1 | curl -T - {base_url}/api/upload/" in page
    assert f"hostd upload --url {base_url} --key api_key image.png" in page
