"""Several hostd instances behind one nginx, sharing one database and one blob store.

Three `hostd serve` processes with contrib/nginx.conf's upstream pointed at all three (round
robin), as README's "Scaling out" describes: on PostgreSQL with the bytes in S3 (a real
SeaweedFS), and on one SQLite file and data dir. Whatever one instance learns (a key
invalidated, a file deleted, a failed sign-in, a key to show once) must hold on the others
on their next request: on SQLite at once, on PostgreSQL once its notification has arrived
(README: well under a second; the tests allow one). The tests act on one instance directly
where they need to know which one acts, and check the others directly and through nginx.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.cookiejar
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import s3_settings
from helpers import accepts, cpus_of_threads, free_ports, hostd, multipart_body, stop, wait_until
from nginxsite import (
    INSTALL_HINT,
    contrib_site,
    find_nginx,
    listening_on,
    nginx_argv,
    nginx_conf,
    render_nginx,
    upstream_to,
)
from pgserver import PostgresServer
from seaweed import ACCESS_KEY, SECRET_KEY, SeaweedFS

INSTANCES = 3
NOTIFY_SECONDS = 1.0
PASSWORD = "correct horse battery"
KEY = re.compile(r"hk_([0-9a-f]{16})_[A-Za-z0-9_-]{43}")


# -- the cluster ----------------------------------------------------------------------------


@dataclass
class Cluster:
    root: Path
    config: Path
    data_dir: Path
    ports: list[int]
    nginx_port: int
    kind: str  # "postgresql+s3" or "sqlite"
    procs: list[subprocess.Popen[bytes] | None] = field(default_factory=list)

    def soon(self, check: Callable[[], bool]) -> bool:
        """Whether `check` holds: at once on SQLite; within NOTIFY_SECONDS on PostgreSQL,
        where other instances learn of a change by a notification."""
        deadline = time.monotonic() + (NOTIFY_SECONDS if self.kind != "sqlite" else 0)
        while not check():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.nginx_port}"

    def instance(self, index: int) -> str:
        return f"http://127.0.0.1:{self.ports[index]}"

    @property
    def instances(self) -> list[str]:
        return [self.instance(i) for i in range(len(self.ports)) if self.procs[i] is not None]

    def start(self, index: int) -> None:
        log = self.root / f"hostd-{index}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hostd", "serve", "--config", str(self.config)]
                + ["--port", str(self.ports[index])],
                cwd=self.root,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until(lambda: accepts(self.ports[index]), proc, [log], f"hostd instance {index}")
        self.procs[index] = proc

    def kill(self, index: int) -> None:
        proc = self.procs[index]
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.procs[index] = None

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        done = hostd(*args, "--config", str(self.config), cwd=self.root, stdin=stdin)
        assert done.returncode == 0, done.stderr
        return done


@pytest.fixture(scope="module", params=["postgresql+s3", "sqlite"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    binary = find_nginx()
    if binary is None:
        pytest.fail(f"nginx is not installed: `{INSTALL_HINT}`", pytrace=False)
    root = tmp_path_factory.mktemp("instances")
    *ports, nginx_port = free_ports(INSTANCES + 1)
    cluster = Cluster(
        root,
        root / "hostd.toml",
        root / "data",
        ports,
        nginx_port,
        request.param,
        [None] * INSTANCES,
    )
    settings = (
        '[server]\nhost = "127.0.0.1"\ntrust_proxy = true\ncookie_secret = "one for all"\n'
        f'[storage]\ndata_dir = "{cluster.data_dir}"\n'
    )
    patch = pytest.MonkeyPatch()
    if cluster.kind == "postgresql+s3":
        postgres: PostgresServer = request.getfixturevalue("postgres")
        weed: SeaweedFS = request.getfixturevalue("seaweedfs")
        s3 = s3_settings(weed)
        settings += (
            f'backend = "s3"\n[storage.s3]\nendpoint = "{s3["s3_endpoint"]}"\n'
            f'bucket = "{s3["s3_bucket"]}"\nprefix = "{s3["s3_prefix"]}"\npath_style = true\n'
            f'[database]\nurl = "{postgres.new_database()}"\n'
        )
        # The instances and the admin commands take the keys from the environment.
        patch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        patch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    request.addfinalizer(patch.undo)
    cluster.config.write_text(settings)
    cluster.cli("user", "add", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    for index in range(INSTANCES):
        cluster.start(index)
    prefix = root / "nginx"
    prefix.mkdir()
    site = contrib_site()
    conf = render_nginx(
        [
            upstream_to(site.upstream, ports),
            listening_on(site.tls, nginx_port, cluster.data_dir / "blobs"),
        ]
    )
    (prefix / "nginx.conf").write_text(nginx_conf(binary, prefix, conf))
    with (prefix / "stderr.log").open("wb") as out:
        nginx = subprocess.Popen(nginx_argv(binary, prefix), stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: accepts(nginx_port), nginx, [prefix / "error.log"], "nginx")
        yield cluster
    finally:
        stop(nginx)
        for proc in cluster.procs:
            if proc is not None:
                stop(proc)


# -- clients --------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> dict:
        return json.loads(self.body)


class NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def request(
    url: str,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
    opener: urllib.request.OpenerDirector | None = None,
) -> Answer:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    opener = opener or urllib.request.build_opener(NoRedirects)
    try:
        with opener.open(req, timeout=30) as response:
            return Answer(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Answer(exc.code, dict(exc.headers), exc.read())


class Browser:
    """A browser without JavaScript: one cookie jar for whichever instance it talks to."""

    def __init__(self) -> None:
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), NoRedirects
        )

    def get(self, url: str) -> Answer:
        return request(url, opener=self.opener)

    def post(self, url: str, **fields: str) -> Answer:
        if not any(c.name == "_xsrf" for c in self.jar):  # a form page sets it
            self.get("/".join(url.split("/", 3)[:3]) + "/login")
        xsrf = next(c.value for c in self.jar if c.name == "_xsrf")
        body = urllib.parse.urlencode({"_xsrf": xsrf, **fields}).encode()
        return request(url, data=body, opener=self.opener)

    def sign_in(self, base: str, name: str = "alice", password: str = PASSWORD) -> Answer:
        return self.post(f"{base}/login", name=name, password=password)


def upload(base: str, data: bytes, key: str | None = None) -> Answer:
    body, headers = multipart_body(files=[("file", "data.bin", data)])
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return request(f"{base}/api/upload", data=body, headers=headers)


def unique(tag: str) -> bytes:
    return f"{tag} {time.time_ns()}\n".encode()


def make_key(browser: Browser, base: str, label: str) -> tuple[str, str]:
    """A key made with the plain form on `base`, revealed by following the redirect through
    `base`; (the key, its id)."""
    posted = browser.post(f"{base}/api/keys", label=label)
    assert posted.status == 303, posted.text
    shown = browser.get(f"{base}/api")
    (key,) = {m.group(0) for m in KEY.finditer(shown.text)}
    key_id = key.split("_")[1]
    assert f"/api/keys/{key_id}/invalidate" in shown.text
    return key, key_id


# -- the tests ------------------------------------------------------------------------------


def test_an_upload_through_nginx_is_served_by_every_instance(cluster):
    data = unique("shared bytes")

    answer = upload(cluster.url, data)

    assert answer.status == 200, answer.text
    public = answer.json()["hash"]
    for base in [*cluster.instances, cluster.url]:
        served = request(f"{base}/{public}")
        assert (served.status, served.body) == (200, data), base


def test_a_key_shown_through_the_no_javascript_redirect_is_shown_once_across_instances(
    cluster,
):
    browser = Browser()
    assert browser.sign_in(cluster.instance(0)).status == 303

    posted = browser.post(f"{cluster.instance(0)}/api/keys", label="made on 0")
    shown = browser.get(f"{cluster.instance(1)}/api")  # the redirect reached another one
    again = [browser.get(f"{base}/api") for base in cluster.instances]

    assert posted.status == 303 and posted.headers["Location"] == "/api"
    (key,) = {m.group(0) for m in KEY.finditer(shown.text)}
    assert "it will not be shown again" in shown.text
    for page in again:
        assert key not in page.text and "it will not be shown again" not in page.text
    assert upload(cluster.instance(2), unique("by key"), key).status == 200


def test_a_key_invalidated_on_one_instance_is_refused_by_the_others_at_once(cluster):
    browser = Browser()
    browser.sign_in(cluster.instance(0))
    key, key_id = make_key(browser, cluster.instance(0), "soon gone")
    for base in cluster.instances:  # every instance has verified (and cached) the key
        assert upload(base, unique("before"), key).status == 200

    done = browser.post(f"{cluster.instance(1)}/api/keys/{key_id}/invalidate", confirm="yes")

    assert done.status in (200, 303), done.text
    for base in cluster.instances:
        assert cluster.soon(lambda base=base: upload(base, unique("after"), key).status == 401)


def test_a_file_removed_by_the_cli_is_gone_from_every_instance_at_once(cluster):
    data = unique("to take down")
    public = upload(cluster.url, data).json()["hash"]
    for base in cluster.instances:  # every instance has served (and cached) it
        assert request(f"{base}/{public}").status == 200

    cluster.cli("file", "rm", public)

    for base in [*cluster.instances, cluster.url]:
        assert cluster.soon(lambda base=base: request(f"{base}/{public}").status == 404), base


def test_a_file_deleted_from_the_files_page_on_one_instance_is_gone_from_all(cluster):
    browser = Browser()
    browser.sign_in(cluster.instance(0))
    key, _ = make_key(browser, cluster.instance(0), "for files")
    data = unique("mine to delete")
    public = upload(cluster.instance(0), data, key).json()["hash"]
    for base in cluster.instances:
        assert request(f"{base}/{public}").status == 200
    listing = browser.get(f"{cluster.instance(0)}/files").text
    (upload_id,) = re.findall(r"/files/([0-9]+)/delete", listing)[:1]

    deleted = browser.post(f"{cluster.instance(2)}/files/{upload_id}/delete", confirm="yes")

    assert deleted.status == 303, deleted.text
    for base in cluster.instances:
        assert cluster.soon(lambda base=base: request(f"{base}/{public}").status == 404), base


def test_wrong_passwords_spread_over_the_instances_are_counted_together(cluster):
    name = f"bob-{cluster.kind.replace('+', '-')}"
    cluster.cli("user", "add", name, "--password-stdin", stdin=PASSWORD + "\n")
    statuses = []
    for attempt in range(10):
        browser = Browser()
        base = cluster.instance(attempt % INSTANCES)
        statuses.append(browser.sign_in(base, name, "not the password").status)

    # The rule (README): 5 failures per account and address are free, then a wait.
    assert statuses[:5] == [401] * 5
    assert statuses[5:] == [429] * 5
    assert Browser().sign_in(cluster.instance(2), name).status == 429


def test_killing_one_instance_loses_no_completed_upload(cluster):
    answered: list[tuple[bytes, Answer]] = []
    stop_uploading = threading.Event()

    def keep_uploading() -> None:
        while not stop_uploading.is_set():
            data = unique("steady")
            answered.append((data, upload(cluster.url, data)))

    uploader = threading.Thread(target=keep_uploading)
    uploader.start()
    try:
        time.sleep(0.5)
        cluster.kill(1)
        time.sleep(1.0)
    finally:
        stop_uploading.set()
        uploader.join()
    try:
        after = upload(cluster.url, unique("after the kill"))

        assert after.status == 200
        completed = [(data, a.json()["hash"]) for data, a in answered if a.status == 200]
        assert len(completed) > 10
        for data, public in completed:
            served = request(f"{cluster.url}/{public}")
            assert (served.status, served.body) == (200, data)
            assert hashlib.sha256(served.body).digest() == hashlib.sha256(data).digest()
    finally:
        with contextlib.suppress(AssertionError):
            cluster.start(1)


# -- hostd serve --instances ----------------------------------------------------------------


def children_of(pid: int) -> set[int]:
    found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {int(child) for child in found}


def serving_instances(postgres, tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path, int]:
    """`hostd serve --instances 2` on a database of its own, once both listen: the
    supervisor, its log and its port."""
    (port,) = free_ports(1)
    config = tmp_path / "hostd.toml"
    config.write_text(
        f'[server]\nport = {port}\ncookie_secret = "instances"\n'
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[database]\nurl = "{postgres.new_database()}"\n'
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        parent = subprocess.Popen(
            [sys.executable, "-m", "hostd", "serve", "--config", str(config), "--instances", "2"],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: log.read_text().count("listening on") == 2, parent, [log], "hostd")
    except BaseException:
        parent.kill()
        parent.wait(timeout=30)
        raise
    return parent, log, port


def test_serve_instances_runs_that_many_processes_on_one_port(postgres, tmp_path):
    parent, log, port = serving_instances(postgres, tmp_path)
    try:
        first = children_of(parent.pid)
        homes = [cpus_of_threads(pid)[pid] for pid in first]
        data = unique("to any instance")
        public = upload(f"http://127.0.0.1:{port}", data).json()["hash"]
        os.kill(min(first), signal.SIGKILL)  # one instance dies; the other goes on serving
        served = request(f"http://127.0.0.1:{port}/{public}")
        wait_until(lambda: log.read_text().count("listening on") == 3, parent, [log], "again")
        second = children_of(parent.pid)
    finally:
        parent.send_signal(signal.SIGTERM)
        status = parent.wait(timeout=60)

    assert len(first) == 2
    cpus = sorted(os.sched_getaffinity(0))  # instance k's IOLoop on CPU (port + k) mod n
    assert sorted(homes, key=min) == sorted(
        ({cpus[(port + k) % len(cpus)]} for k in (0, 1)), key=min
    )
    assert (served.status, served.body) == (200, data)
    assert len(second) == 2 and min(first) not in second and max(first) in second
    assert status == 0
    assert "all instances stopped" in log.read_text()


def test_serve_instances_on_sqlite_refuses_with_a_reason(tmp_path):
    done = hostd("serve", "--data-dir", str(tmp_path / "data"), "--instances", "2", cwd=tmp_path)

    assert done.returncode == 2
    assert "--instances needs database.url = postgresql://" in done.stderr


def test_instances_stop_when_their_supervisor_is_killed(postgres, tmp_path):
    # Left serving, they would keep the port from the next `hostd serve --instances`.
    parent, log, port = serving_instances(postgres, tmp_path)
    try:
        instances = children_of(parent.pid)
    finally:
        parent.kill()
        parent.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in instances):
        assert time.monotonic() < deadline, "instances still running"
        time.sleep(0.1)

    assert len(instances) == 2
    assert log.read_text().count("stopped") >= 2  # each stopped as on SIGTERM, gracefully


def test_serve_instances_stops_all_when_an_instance_cannot_start(
    postgres, seaweedfs, tmp_path, monkeypatch
):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    (port,) = free_ports(1)
    (tmp_path / "hostd.toml").write_text(
        f'[server]\nport = {port}\ncookie_secret = "instances"\n'
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\nbackend = "s3"\n'
        f'[storage.s3]\nendpoint = "{seaweedfs.endpoint}"\nbucket = "no-such-bucket"\n'
        f'path_style = true\n[database]\nurl = "{postgres.new_database()}"\n'
    )

    done = hostd("serve", "--instances", "2", cwd=tmp_path, timeout=60)

    assert done.returncode == 1
    assert "hostd: cannot start: " in done.stderr and "no-such-bucket" in done.stderr
    assert "starting it again" not in done.stderr
