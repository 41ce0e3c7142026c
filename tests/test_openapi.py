"""The OpenAPI document: it matches the routes the app registers, it is served as JSON,
and a live server answers as it says (schemathesis), leaving nothing behind a refusal."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
import tornado.testing
from helpers import (
    bearer_upload,
    blob_files,
    hostd,
    partial_files,
    png_of_one_colour,
    temp_files,
)
from tornado import httputil

from hostd import db as queries
from hostd import openapi, resumable, retention
from hostd.config import Config
from hostd.db import Database
from hostd.formdata import MAX_FILENAME_BYTES
from hostd.handlers.base import implemented_methods
from hostd.handlers.pages import ApiNotFoundHandler
from hostd.hashes import public_hash_candidates

METHODS = ("get", "post", "put", "delete", "patch", "head", "options")


# -- the document and the routes -------------------------------------------------------------


def operations(path_item: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {method: op for method, op in path_item.items() if method in METHODS}


def example_url(template: str, path_item: dict[str, Any]) -> str:
    """The path with each parameter replaced by its documented example."""
    examples = {
        parameter["name"]: parameter["example"]
        for operation in operations(path_item).values()
        for parameter in operation.get("parameters", [])
        if parameter["in"] == "path"
    }
    return re.sub(r"\{(\w+)\}", lambda match: examples[match.group(1)], template)


def route(app: Any, method: str, path: str) -> Any:
    """The rule Tornado dispatches this request to (its rules are tried in order), or None."""
    request = httputil.HTTPServerRequest(
        start_line=httputil.RequestStartLine(method, path, "HTTP/1.1"),
        headers=httputil.HTTPHeaders({"Host": "hostd.test"}),
    )
    for rule in app.wildcard_router.rules:
        if rule.matcher.match(request) is not None:
            return rule
    return None


def described_methods(path_item: dict[str, Any]) -> set[str]:
    """What the document says a path answers; HEAD and OPTIONS go without saying (every
    GET answers HEAD, every path OPTIONS), so they are left out of the comparison."""
    return {method.upper() for method in operations(path_item)} - {"HEAD", "OPTIONS"}


def routed_methods(handler: type) -> set[str]:
    """The methods the handler both has and lets through (a subclass may narrow what it
    inherits, as SUPPORTED_METHODS)."""
    answered = set(implemented_methods(handler)) & set(handler.SUPPORTED_METHODS)
    return answered - {"HEAD", "OPTIONS"}


def test_the_document_is_valid_openapi_3_1():
    document = openapi.document()

    loaded = schemathesis.openapi.from_dict(document)

    loaded.validate()  # against the OpenAPI 3.1 meta-schema
    assert document["openapi"] == "3.1.0"
    assert len(list(loaded.get_all_operations())) == sum(
        len(operations(item)) for item in document["paths"].values()
    )


def test_every_described_path_is_routed_with_the_same_methods(app):
    for template, path_item in openapi.document()["paths"].items():
        url = example_url(template, path_item)

        routed = {
            method
            for method in map(str.upper, METHODS)
            if (rule := route(app, method, url)) is not None
            and method in routed_methods(rule.target)
        }

        described = described_methods(path_item)
        assert described == routed, f"{template} ({url}): described {described}, routed {routed}"


def test_every_registered_route_is_described(app):
    paths = openapi.document()["paths"]
    described = {
        id(route(app, method, example_url(template, item)))
        for template, item in paths.items()
        for method in described_methods(item)
    }

    for rule in app.wildcard_router.rules:
        if rule.target is ApiNotFoundHandler:
            continue  # the rest of /api/: a 404 in JSON, no operation
        assert id(rule) in described, f"route {rule.matcher.regex.pattern} is not described"


def test_the_path_examples_fit_their_own_parameters():
    """The routing tests above use them: an example that its schema refuses would prove
    nothing about the paths schemathesis generates."""
    document = openapi.document()
    for template, path_item in document["paths"].items():
        for operation in operations(path_item).values():
            for parameter in operation.get("parameters", []):
                schema = parameter["schema"]
                if "$ref" in schema:
                    schema = document["components"]["schemas"][schema["$ref"].split("/")[-1]]
                if "example" in parameter and "pattern" in schema:
                    assert re.search(schema["pattern"], parameter["example"]), template


TAKEN_EXPIRIES = [
    "",
    "24",
    "1000000",
    "2030-01-31T12:00:00Z",
    "2030-01-31T13:00:00+01:00",
    "2030-01-31 12:00Z",
    "Thu, 31 Jan 2030 12:00:00 GMT",
    "Thursday, 31-Jan-30 12:00:00 GMT",
    "Thu Jan 31 12:00:00 2030",
    "Thu, 31 Jan 2030 13:00:00 +0100",
    "1896091200000",
]
REFUSED_EXPIRIES = ["0", "1.5", "1000001", "123456789", "soon", "2030-01-31T12:00:00", "24h"]


def expires_schemas(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The schema of every Expires header and expires field the document describes."""
    found = []
    for path_item in document["paths"].values():
        for operation in operations(path_item).values():
            found += [
                p["schema"] for p in operation.get("parameters", []) if p["name"] == "Expires"
            ]
            for content in operation.get("requestBody", {}).get("content", {}).values():
                field = content["schema"].get("properties", {}).get("expires")
                found += [field] if field else []
    return found


def test_the_expiry_schema_takes_every_form_the_server_takes():
    """Hours, Unix milliseconds, ISO 8601 with a zone, HTTP dates and `date -R`'s (README,
    Expiry): a generated or validating client must be able to send each of them."""
    schemas = expires_schemas(openapi.document())
    now = 1_767_225_600  # 2026-01-01T00:00:00Z

    assert len(schemas) >= 5  # /api/upload, /upload, /, and both PUTs: header and field
    for value in TAKEN_EXPIRIES:
        retention.parse_expires(value, now=now)  # the server takes it
        for schema in schemas:
            assert re.search(schema["pattern"], value), f"{value!r} does not fit {schema}"
    for value in REFUSED_EXPIRIES:
        with pytest.raises(retention.ExpiryError):
            retention.parse_expires(value, now=now)
        for schema in schemas:
            assert not re.search(schema["pattern"], value), f"{value!r} fits {schema}"


def test_every_operation_lists_the_431_any_url_answers():
    for template, path_item in openapi.document()["paths"].items():
        for method, operation in operations(path_item).items():
            assert "431" in operation["responses"], f"{method.upper()} {template}"


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/api/tus/", {"Tus-Version", "Tus-Extension", "Tus-Max-Size", "Tus-Checksum-Algorithm"}),
        ("/api/upload", {"Allow"}),
    ],
)
@pytest.mark.gen_test
async def test_the_options_clients_ask_before_uploading_are_described(
    http_client, base_url, path, headers
):
    described = openapi.document()["paths"][path]["options"]["responses"]["204"]["headers"]

    response = await http_client.fetch(f"{base_url}{path}", method="OPTIONS")

    assert response.code == 204
    assert headers <= set(described)
    assert set(described) <= set(response.headers)


@pytest.mark.gen_test
async def test_the_document_is_served_as_json_and_revalidated(http_client, base_url):
    response = await http_client.fetch(f"{base_url}/api/openapi.json")

    again = await http_client.fetch(
        f"{base_url}/api/openapi.json",
        headers={"If-None-Match": response.headers["ETag"]},
        raise_error=False,
    )

    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert json.loads(response.body) == openapi.document()
    assert again.code == 304 and again.body == b""


@pytest.mark.gen_test
async def test_the_documents_server_is_the_public_url_with_its_path(http_client, base_url, app):
    root = json.loads((await http_client.fetch(f"{base_url}/api/openapi.json")).body)
    app.settings["hostd_config"] = dataclasses.replace(
        app.settings["hostd_config"], public_url="https://example.org/files"
    )

    under = json.loads((await http_client.fetch(f"{base_url}/api/openapi.json")).body)

    assert root["servers"] == [{"url": "/"}]
    assert under["servers"] == [{"url": "https://example.org/files/"}]  # as the answers' URLs


@pytest.mark.gen_test
async def test_the_api_page_links_the_document(http_client, base_url):
    response = await http_client.fetch(f"{base_url}/api")

    assert '<a href="/api/openapi.json">OpenAPI 3.1 document</a>' in response.body.decode()


# -- schemathesis against a live server --------------------------------------------------------

# The bound: examples per operation (about 40 operations), derandomized so that every run
# sends the same requests: about 15 s on the idle 2-core development machine (measured up to
# 2.5 min while other test runs loaded it).
MAX_EXAMPLES = 8


@dataclass
class LiveServer:
    """`hostd serve` in its own process, with an account and a real API key; the test reads
    its database through a connection of its own, on a loop of its own."""

    base_url: str
    key: str
    config: Config
    log: Path
    loop: asyncio.AbstractEventLoop
    database: Database

    def leftovers(self) -> tuple[Any, ...]:
        """What a refused request must not change: rows (uploads, blobs, accounts, unfinished
        tus uploads) and files (blobs, temp files, the tus uploads' partial files)."""
        stats = self.loop.run_until_complete(queries.get_stats(self.database, now=int(time.time())))
        blobs = sorted(path.name for path in blob_files(self.config))
        temps = sorted(temp_files(self.config))
        return stats.uploads, stats.blobs, stats.users, blobs, temps, *self.unfinished()

    def unfinished(self) -> tuple[list[str], list[str]]:
        """The unfinished tus uploads' rows and their partial files."""
        rows = self.loop.run_until_complete(queries.unfinished_resumable_ids(self.database))
        return sorted(rows), partial_files(self.config)


def wait_for_log(log: Path, needle: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if needle in log.read_text():
            return
        if server.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"the server never said {needle!r}:\n{log.read_text()}")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("live")
    data = root / "data"
    added = hostd(
        "user",
        "add",
        "fuzzer",
        "--password-stdin",
        "--data-dir",
        str(data),
        cwd=root,
        stdin="correct horse battery\n",
    )
    assert added.returncode == 0, added.stderr
    made = hostd("key", "create", "fuzzer", "--data-dir", str(data), cwd=root)
    assert made.returncode == 0, made.stderr
    sock, port = tornado.testing.bind_unused_port()
    sock.close()
    log = root / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "hostd", "serve", "--data-dir", str(data), "--port", str(port)],
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_log(log, "listening on", server)
        base_url = f"http://127.0.0.1:{port}"
        status, answer = bearer_upload(base_url, made.stdout.strip(), STORED)
        assert status == 200 and answer["hash"] == STORED_HASH, answer
        # Not asyncio.run(): see conftest's note on loops.
        loop = asyncio.new_event_loop()
        database = loop.run_until_complete(Database.open(data / "hostd.sqlite3"))
        loop.run_until_complete(begin_unfinished(database, data))
        try:
            yield LiveServer(
                base_url=base_url,
                key=made.stdout.strip(),
                config=Config(data_dir=data, cookie_secret="unused"),
                log=log,
                loop=loop,
                database=database,
            )
        finally:
            loop.run_until_complete(database.close())
            loop.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


# A file the live server holds from the start, so that half the generated hashes find a
# file (answers 200, 206, 304, a thumbnail) rather than all of them a 404.
STORED = png_of_one_colour(8, 8, tag="schemathesis")
STORED_HASH = public_hash_candidates(hashlib.sha256(STORED).hexdigest())[0]

# An unfinished anonymous tus upload the live server holds from the start (its URL is its
# only key), so that half the generated ids find an upload to ask about, add to, or drop.
UNFINISHED_ID = "schemathesis-unfinished-tus-0001"
UNFINISHED_BYTES = 4096


async def begin_unfinished(database: Database, data: Path) -> None:
    """As a creation by POST /api/tus/ records it (the server mints ids; this one is known
    when the document's examples are set up, at import)."""
    now = int(time.time())
    await queries.insert_resumable(
        database,
        id=UNFINISHED_ID,
        user_id=None,
        api_key_id=None,
        address="127.0.0.1",
        length_bytes=UNFINISHED_BYTES,
        metadata="",
        filename="unfinished.bin",
        expires="",
        created_at=now,
        expires_at=now + 3600,
        most=1,
    )
    await resumable.Partials(data / "partials").create(UNFINISHED_ID)


# The document as the app builds it (test_the_document_is_served_as_json_and_revalidated
# shows that it is what the server sends).
schema = schemathesis.openapi.from_dict(
    openapi.document(),
    config=schemathesis.Config.from_dict(
        {
            "dictionaries": {
                "stored": {"values": [STORED_HASH]},
                "unfinished": {"values": [UNFINISHED_ID]},
            },
            "parameters": {
                "path.hash": {"dictionary": "stored", "probability": 0.5},
                "path.id": {"dictionary": "unfinished", "probability": 0.5},
            },
            "operations": [
                {
                    # In a multipart form every field is bytes: a "number" or an "object"
                    # where the document says string arrives as text, often a valid one (a
                    # file may be any bytes); and a PUT's body is the file, any bytes, so
                    # nothing but an empty one (a 400) is "invalid". Such requests are still
                    # sent, and must still get no 5xx and leave nothing behind; they need
                    # not be refused.
                    # A valid upload may also be over the instance's limits (413), which
                    # the document cannot know.
                    "include-operation-id": [
                        "upload",
                        "uploadAtRoot",
                        "uploadForm",
                        "uploadPut",
                        "uploadPutUnnamed",
                    ],
                    "checks": {
                        "negative_data_rejection": {"enabled": False},
                        "positive_data_acceptance": {
                            "expected-statuses": ["2xx", 401, 403, 413, 429]
                        },
                    },
                },
                {
                    # A range past the end of the file is a 416, a right answer to a request
                    # that only the file's size makes wrong.
                    "include-operation-id": [
                        verb + name
                        for verb in ("download", "head")
                        for name in ("Hash", "Extension", "Filename")
                    ],
                    "checks": {
                        "positive_data_acceptance": {"expected-statuses": ["2xx", "3xx", 404, 416]}
                    },
                },
                {
                    # tus refuses a request without Tus-Resumable: 1.0.0, or with another
                    # version, with 412 Precondition Failed (tus 1.0.0, "Tus-Resumable"),
                    # before it looks at anything else; schemathesis expects 400-ish codes.
                    # A valid first part may also be longer than its Upload-Length (413): a
                    # rule across a header and the body.
                    "include-operation-id": [
                        "tusCreate",
                        "tusOffset",
                        "tusState",
                        "tusPatch",
                        "tusTerminate",
                    ],
                    "checks": {
                        "negative_data_rejection": {
                            "expected-statuses": [400, 401, 403, 404, 409, 412, 413, 415, 429]
                        },
                        "missing_required_header": {"expected-statuses": [400, 404, 412]},
                        "positive_data_acceptance": {
                            "expected-statuses": ["2xx", 401, 403, 404, 409, 413, 429]
                        },
                    },
                },
                {
                    # Pages for a signed-in user send a visitor without a session to the
                    # sign-in page (302) rather than refusing them.
                    "include-operation-id": ["myFiles", "confirmInvalidateKey", "accountPage"],
                    "checks": {
                        "negative_data_rejection": {
                            "expected-statuses": [302, 400, 401, 403, 404, 422]
                        }
                    },
                },
            ],
        }
    ),
)


# A tus part is raw bytes, sent as they are.
schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")


def real_time_ahead(expires: Any) -> bool:
    """Whether a generated expiry the pattern allows is also a real time that lies ahead,
    not too far (a time in the past, or the 31st of February, is a right 400)."""
    if not isinstance(expires, str):
        return True
    try:
        retention.parse_expires(expires, now=int(time.time()))
    except retention.ExpiryError:
        return False
    return True


@schema.hook
def filter_case(context: Any, case: Any) -> bool:
    """Rules OpenAPI cannot state: an upload may ask for its expiry once (a field, a header
    or the URL's ?expires=, one of them), and a time it asks for must be real and lie ahead;
    a PUT's filename is limited in bytes of UTF-8, where maxLength counts characters."""
    field = isinstance(case.body, dict) and case.body.get("expires")
    header = case.headers.get("Expires") if case.headers else None
    in_url = case.query.get("expires") if case.query else None
    if sum(1 for asked in (field, header, in_url) if asked) > 1:
        return False
    if not all(real_time_ahead(asked) for asked in (field, header, in_url)):
        return False
    if case.operation.definition.raw.get("operationId") != "uploadPut":
        return True
    filename = (case.path_parameters or {}).get("filename")
    return not (isinstance(filename, str) and len(filename.encode()) > MAX_FILENAME_BYTES)


def needs_key(operation: Any) -> bool:
    return any("apiKey" in way for way in operation.definition.raw.get("security", []))


@schema.parametrize()
@hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    derandomize=True,
    database=None,
)
def test_the_live_server_answers_as_documented(case, live):
    """Any 5xx, any answer the document does not allow, or anything stored by a request that
    was refused fails."""
    before = live.leftovers()

    headers = {"Authorization": f"Bearer {live.key}"} if needs_key(case.operation) else {}

    response = case.call_and_validate(base_url=live.base_url, headers=headers, timeout=10)

    if 400 <= response.status_code < 500:
        assert live.leftovers() == before, f"a {response.status_code} left something behind"


def test_the_live_run_left_no_errors_and_no_unnamed_bytes(live):
    """After the run above: no handler failed in the server's log, and the store holds no
    bytes that no row names (gc would remove none), no row without its bytes, no
    half-written upload, and a partial file for each unfinished tus upload, and no other."""
    found = hostd(
        "gc",
        "--dry-run",
        "--grace",
        "0",
        "--json",
        "--data-dir",
        str(live.config.data_dir),
        cwd=live.log.parent,
    )

    assert json.loads(found.stdout) == {
        "dry_run": True,
        "removed": [],
        "young": 0,
        "missing": [],
        "damaged": [],
        "hashes": {},
    }, found.stderr
    assert temp_files(live.config) == []
    rows, partials = live.unfinished()
    assert rows == partials, "unfinished tus uploads and their partial files differ"
    log = live.log.read_text()
    assert " ERROR " not in log and "Traceback" not in log, log
