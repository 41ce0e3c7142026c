"""/metrics and /healthz over real HTTP: what a scrape says after real uploads, downloads and
sign-ins (parsed with prometheus-client's own parser), who may scrape, and the health check
failing when the database file or the blob root is gone."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
from conftest import XSRF, form_body
from helpers import fetch, multipart_body, start, wait_for_line
from prometheus_client.parser import text_string_to_metric_families

from hostd import db as queries
from hostd import metrics
from hostd.app import make_app


@pytest.fixture
def config(config):
    return dataclasses.replace(config, metrics_enabled=True)


async def scrape(client, base_url, **options):
    response = await client.fetch(f"{base_url}/metrics", raise_error=False, **options)
    assert response.code == 200, response.body
    assert response.headers["Content-Type"] == metrics.CONTENT_TYPE
    return Samples(response.body.decode())


class Samples:
    """A scrape, parsed: samples[name, {label: value}] is the value, 0 when absent."""

    def __init__(self, text):
        self.values = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                self.values[key] = sample.value

    def __getitem__(self, key):
        name, labels = key if isinstance(key, tuple) else (key, {})
        return self.values.get((name, frozenset(labels.items())), 0)

    def names(self):
        return {name for name, _ in self.values}

    def labels_of(self, name, label):
        return {dict(labels)[label] for n, labels in self.values if n == name}


async def upload(client, base_url, data, **headers):
    body, form_headers = multipart_body(files=[("file", "a.bin", data)])
    response = await client.fetch(
        f"{base_url}/api/upload",
        method="POST",
        body=body,
        headers={**form_headers, **headers},
        raise_error=False,
    )
    return json.loads(response.body)


async def sign_in(client, base_url, name, password):
    return await client.fetch(
        f"{base_url}/login",
        method="POST",
        body=form_body(name=name, password=password),
        headers={"Cookie": f"_xsrf={XSRF}"},
        follow_redirects=False,
        raise_error=False,
    )


# -- /metrics --


@pytest.mark.gen_test
async def test_requests_are_counted_by_handler_and_status_never_by_path(http_client, base_url):
    before = await scrape(http_client, base_url)
    answer = await upload(http_client, base_url, b"counted by handler")
    await http_client.fetch(answer["urls"]["hash"])
    await http_client.fetch(answer["urls"]["full"])
    await http_client.fetch(f"{base_url}/AAAAAAAAAAAA", raise_error=False)

    after = await scrape(http_client, base_url)

    served = {"handler": "DownloadHandler", "method": "GET", "status": "200"}
    assert after["hostd_requests_total", served] - before["hostd_requests_total", served] == 2
    unknown = {"handler": "DownloadHandler", "method": "GET", "status": "404"}
    assert after["hostd_requests_total", unknown] == before["hostd_requests_total", unknown] + 1
    stored = {"handler": "ApiUploadHandler", "method": "POST", "status": "200"}
    assert after["hostd_requests_total", stored] == 1
    assert after["hostd_request_duration_seconds_count", {"handler": "DownloadHandler"}] >= 3
    # Labels name handlers, never a hash or a file name.
    text = " ".join(str(key) for key in after.values)
    assert answer["hash"] not in text
    assert "a.bin" not in text
    assert "MetricsHandler" in after.labels_of("hostd_requests_total", "handler")


@pytest.mark.gen_test
async def test_a_method_nobody_knows_is_counted_as_other(http_client, base_url):
    await http_client.fetch(
        f"{base_url}/", method="BREW", allow_nonstandard_methods=True, raise_error=False
    )

    after = await scrape(http_client, base_url)

    refused = {"handler": "IndexHandler", "method": "other", "status": "405"}
    assert after["hostd_requests_total", refused] == 1
    assert after.labels_of("hostd_requests_total", "method") == {"other"}


@pytest.mark.gen_test
async def test_uploads_are_counted_by_kind_with_their_bytes(http_client, base_url):
    before = await scrape(http_client, base_url)
    await upload(http_client, base_url, b"x" * 1000)
    await upload(http_client, base_url, b"x" * 1000)  # the same bytes again: still an upload
    await upload(http_client, base_url, b"y" * 5000)
    refused = await upload(http_client, base_url, b"")  # an empty file: a 400, not an upload

    after = await scrape(http_client, base_url)

    multipart = {"kind": "multipart"}
    assert refused["status"] is False
    assert after["hostd_upload_size_bytes_count", multipart] == 3
    assert after["hostd_upload_size_bytes_sum", multipart] == 7000
    assert after["hostd_upload_size_bytes_bucket", {**multipart, "le": "4096.0"}] == 2
    for kind in ("put", "tus"):  # there from the start, at 0
        assert ("hostd_upload_size_bytes_count", frozenset({("kind", kind)})) in after.values
        assert before["hostd_upload_size_bytes_count", {"kind": kind}] == 0


@pytest.mark.gen_test
async def test_a_put_upload_is_counted_as_kind_put(http_client, base_url):
    response = await http_client.fetch(
        f"{base_url}/api/upload/raw.bin", method="PUT", body=b"z" * 3000
    )

    after = await scrape(http_client, base_url)

    assert response.code == 200
    assert after["hostd_upload_size_bytes_count", {"kind": "put"}] == 1
    assert after["hostd_upload_size_bytes_sum", {"kind": "put"}] == 3000
    assert after["hostd_upload_size_bytes_count", {"kind": "multipart"}] == 0


@pytest.mark.gen_test
async def test_stored_files_and_bytes_come_from_the_database_every_30_s(
    http_client, base_url, clock
):
    await upload(http_client, base_url, b"a" * 100)
    first = await scrape(http_client, base_url)
    await upload(http_client, base_url, b"a" * 100)
    await upload(http_client, base_url, b"b" * 50)

    cached = await scrape(http_client, base_url)
    clock.advance(metrics.STORED_EVERY_SECONDS)
    counted = await scrape(http_client, base_url)

    assert (first["hostd_stored_files"], first["hostd_stored_bytes"]) == (1, 100)
    assert (cached["hostd_stored_files"], cached["hostd_uploads"]) == (1, 1)
    assert counted["hostd_stored_files"] == 2
    assert counted["hostd_stored_bytes"] == 150
    assert counted["hostd_uploads"] == 3


@pytest.mark.postgresql_only
@pytest.mark.gen_test(timeout=30)
async def test_a_scrape_while_the_database_is_down_keeps_the_stored_totals_it_had(
    http_client, base_url, clock, postgres, database_url, caplog
):
    await upload(http_client, base_url, b"a" * 100)
    await scrape(http_client, base_url)
    postgres.refuse_connections(database_url)
    try:
        clock.advance(metrics.STORED_EVERY_SECONDS)
        caplog.clear()
        during = await scrape(http_client, base_url)
        again = await scrape(http_client, base_url)
    finally:
        postgres.refuse_connections(database_url, refuse=False)

    assert (during["hostd_stored_files"], during["hostd_stored_bytes"]) == (1, 100)
    assert during["hostd_uploads"] == 1
    assert again["hostd_stored_files"] == 1
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("metrics:")]
    assert len(logged) == 1  # one line, and not one per scrape: not asked again for 30 s
    assert logged[0].startswith("metrics: stored totals not read from the database: ")
    assert "\n" not in logged[0]


@pytest.mark.gen_test
async def test_argon2_verifications_and_key_cache_hits(http_client, base_url, login, db, auth):
    await login("frank", password="right password")
    minted = await auth.mint_key()
    user = await login("keyholder")
    await queries.insert_api_key(
        db, user_id=user.user.id, key_id=minted.key_id, secret_hash=minted.secret_hash, label=""
    )
    before = await scrape(http_client, base_url)

    await sign_in(http_client, base_url, "frank", "wrong")
    await sign_in(http_client, base_url, "frank", "right password")
    for _ in range(3):
        await upload(http_client, base_url, b"keyed", Authorization=f"Bearer {minted.token}")
    after = await scrape(http_client, base_url)

    def grew(name, labels=None):
        labels = labels or {}
        return after[name, labels] - before[name, labels]

    assert grew("hostd_argon2_verifications_total", {"kind": "password"}) == 2
    assert grew("hostd_argon2_verifications_total", {"kind": "key"}) == 1
    assert grew("hostd_api_key_cache_hits_total") == 2


@pytest.mark.gen_test
async def test_rate_limit_refusals_are_counted_by_limit(http_client, base_url, login):
    await login("gina", password="right password")

    for _ in range(7):  # 5 free failures, then waits
        await sign_in(http_client, base_url, "gina", "guess")
    after = await scrape(http_client, base_url)

    assert after["hostd_rate_limited_total", {"limit": "sign_in"}] == 2
    assert after["hostd_connections_open"] >= 1  # the scrape's own
    assert after.labels_of("hostd_rate_limited_total", "limit") == {
        "sign_in",
        "registrations_per_hour",
        "invalid_keys_per_hour",
        "uploads_in_flight_per_address",
        "downloads_in_flight_per_address",
        "connections_per_address",
        "uploads_per_minute",
        "upload_bytes_per_hour",
    }


class TestRefusalsByLimit:
    @pytest.fixture
    def config(self, config):
        return dataclasses.replace(config, uploads_per_minute=1, invalid_keys_per_hour=1)

    @pytest.mark.gen_test
    async def test_an_upload_over_the_rate_is_counted_under_its_setting(
        self, http_client, base_url
    ):
        first = await upload(http_client, base_url, b"one")
        second = await upload(http_client, base_url, b"two")

        after = await scrape(http_client, base_url)

        assert (first["status"], second["status"]) == (True, False)
        assert after["hostd_rate_limited_total", {"limit": "uploads_per_minute"}] == 1
        assert after["hostd_upload_size_bytes_count", {"kind": "multipart"}] == 1
        too_many = {"handler": "ApiUploadHandler", "method": "POST", "status": "429"}
        assert after["hostd_requests_total", too_many] == 1

    @pytest.mark.gen_test
    async def test_a_key_refused_for_the_invalid_ones_before_it_is_counted(
        self, http_client, base_url
    ):
        bad = {"Authorization": "Bearer hk_0123456789abcdef_" + "A" * 43}
        answers = [await upload(http_client, base_url, b"x", **bad) for _ in range(2)]

        after = await scrape(http_client, base_url)

        assert [a["status"] for a in answers] == [False, False]
        assert after["hostd_rate_limited_total", {"limit": "invalid_keys_per_hour"}] == 1


@pytest.mark.gen_test
async def test_the_database_writers_commits_and_writes(http_client, base_url):
    before = await scrape(http_client, base_url)
    for n in range(3):
        await upload(http_client, base_url, b"w%d" % n)

    after = await scrape(http_client, base_url)

    commits = after["hostd_db_commits_total"] - before["hostd_db_commits_total"]
    writes = after["hostd_db_writes_total"] - before["hostd_db_writes_total"]
    assert commits >= 1
    assert writes >= 3
    assert writes >= commits
    assert "process_resident_memory_bytes" in after.names()


@pytest.mark.gen_test
async def test_each_app_has_its_own_registry(app, config, db, store, auth):
    other = make_app(config, db, store, auth)

    assert other.settings["hostd_metrics"].registry is not app.settings["hostd_metrics"].registry


def test_hostd_serve_reads_the_metrics_section_of_hostd_toml(tmp_path, free_port):
    (tmp_path / "hostd.toml").write_text(
        f'[server]\nport = {free_port}\n[storage]\ndata_dir = "d"\n'
        '[metrics]\nenabled = true\nallow = ["127.0.0.1"]\n'
    )
    proc = start(["serve"], tmp_path)
    try:
        wait_for_line(proc, "listening on")
        health = fetch(f"http://127.0.0.1:{free_port}/healthz")
        status, body = fetch(f"http://127.0.0.1:{free_port}/metrics")
    finally:
        proc.terminate()
        proc.communicate(timeout=30)

    assert health == (200, b"ok\n")
    assert status == 200
    scraped = Samples(body.decode())
    healthz = {"handler": "HealthHandler", "method": "GET", "status": "200"}
    assert scraped["hostd_requests_total", healthz] == 1
    assert scraped["hostd_stored_files"] == 0
    assert scraped["process_resident_memory_bytes"] > 0


class TestWhoMayScrape:
    @pytest.fixture
    def config(self, config):
        # Only 127.0.0.1 itself; requests from 127.0.0.2 reach the server over loopback too.
        return dataclasses.replace(config, metrics_allow=("127.0.0.1",))

    @pytest.mark.gen_test
    async def test_an_address_not_in_metrics_allow_gets_a_403(self, http_client, base_url):
        response = await http_client.fetch(
            f"{base_url}/metrics", network_interface="127.0.0.2", raise_error=False
        )

        assert response.code == 403
        assert "metrics.allow" in response.body.decode()
        assert "hostd_requests" not in response.body.decode()

    @pytest.mark.gen_test
    async def test_a_listed_address_may(self, http_client, base_url):
        await scrape(http_client, base_url, network_interface="127.0.0.1")


class TestBehindAProxy:
    @pytest.fixture
    def config(self, config):
        return dataclasses.replace(
            config, trust_proxy=True, metrics_allow=("127.0.0.0/8", "10.1.0.0/16")
        )

    @pytest.mark.gen_test
    async def test_the_client_behind_the_proxy_is_who_counts(self, http_client, base_url):
        outside = await http_client.fetch(
            f"{base_url}/metrics", headers={"X-Real-IP": "203.0.113.9"}, raise_error=False
        )
        await scrape(http_client, base_url, headers={"X-Real-IP": "10.1.2.3"})

        assert outside.code == 403


class TestMetricsOff:
    @pytest.fixture
    def config(self, config):
        return dataclasses.replace(config, metrics_enabled=False)

    @pytest.mark.gen_test
    async def test_metrics_are_off_by_default_and_then_a_404(self, http_client, base_url, app):
        response = await http_client.fetch(f"{base_url}/metrics", raise_error=False)

        assert response.code == 404
        assert app.settings["hostd_metrics"] is None
        assert app.settings["log_function"].observer is None


# -- /healthz --


@pytest.mark.gen_test
async def test_healthz_is_ok_without_auth(http_client, base_url, access_log):
    response = await http_client.fetch(f"{base_url}/healthz")
    head = await http_client.fetch(f"{base_url}/healthz", method="HEAD")

    assert response.body == b"ok\n"
    assert (head.code, head.body) == (200, b"")
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert "200 GET /healthz" in access_log.text


@pytest.mark.sqlite_only  # moves SQLite's file
@pytest.mark.gen_test
async def test_healthz_is_503_when_the_database_file_is_gone(http_client, base_url, config):
    moved = config.data_dir / "moved.sqlite3"
    os.rename(config.db_path, moved)
    try:
        response = await http_client.fetch(f"{base_url}/healthz", raise_error=False)
    finally:
        os.rename(moved, config.db_path)
    again = await http_client.fetch(f"{base_url}/healthz", raise_error=False)

    assert response.code == 503
    assert response.body == b"database: failed (OperationalError)\n"
    assert again.code == 200


@pytest.mark.postgresql_only
@pytest.mark.gen_test(timeout=30)
async def test_healthz_is_503_when_postgresql_does_not_answer(
    http_client, base_url, postgres, database_url
):
    postgres.refuse_connections(database_url)
    try:
        response = await http_client.fetch(f"{base_url}/healthz", raise_error=False)
    finally:
        postgres.refuse_connections(database_url, refuse=False)
    again = await http_client.fetch(f"{base_url}/healthz", raise_error=False)

    assert response.code == 503
    assert response.body.startswith(b"database: failed (")
    assert again.code == 200


@pytest.mark.gen_test
async def test_healthz_is_503_when_the_blob_root_is_gone(http_client, base_url, config):
    moved = config.data_dir / "moved-blobs"
    os.rename(config.blobs_dir, moved)
    try:
        response = await http_client.fetch(f"{base_url}/healthz", raise_error=False)
    finally:
        os.rename(moved, config.blobs_dir)

    assert response.code == 503
    assert response.body == b"storage: failed (FileNotFoundError)\n"
    assert str(config.data_dir) not in response.body.decode()  # paths go to the log only


@pytest.mark.gen_test
async def test_a_tus_upload_is_counted_once_as_tus(http_client, base_url):
    tus = {"Tus-Resumable": "1.0.0"}
    created = await http_client.fetch(
        f"{base_url}/api/tus/",
        method="POST",
        headers={**tus, "Upload-Length": "3000"},
        body=b"",
    )
    for offset in (0, 1000, 2000):
        await http_client.fetch(
            created.headers["Location"],
            method="PATCH",
            headers={
                **tus,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
            },
            body=b"t" * 1000,
        )

    after = await scrape(http_client, base_url)

    assert after["hostd_upload_size_bytes_count", {"kind": "tus"}] == 1
    assert after["hostd_upload_size_bytes_sum", {"kind": "tus"}] == 3000
