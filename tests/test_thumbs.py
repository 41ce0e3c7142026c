"""Thumbnails: what decoding one holds in memory, how requests share the one worker, and a
real server under a decompression-bomb attack."""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import (
    grey_jpeg,
    multipart_body,
    png_of_one_colour,
    start,
    wait_for_line,
    webp_of_one_colour,
)
from PIL import Image

from hostd.thumbs import Thumbnails, ThumbnailsBusy, thumbnail_of

MB = 1_000_000
RSS_AIM = 200 * MB


def test_a_server_that_makes_no_thumbnail_never_loads_pillow():
    """Pillow costs a process about 3 MiB of memory: a file host that shows no thumbnail
    should not pay it (the first thumbnail imports it, in its thread)."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, hostd.app; print(sorted(sys.modules).count('PIL'))"],
        capture_output=True,
        text=True,
        check=True,
    )

    assert loaded.stdout.strip() == "0"


@pytest.mark.parametrize(
    ("image", "decoded"),
    [
        pytest.param(png_of_one_colour(1000, 1000, alpha=False), 1000 * 1000 * 4, id="RGB PNG"),
        # 4 bytes a pixel, and the premultiplied copy Pillow resizes from
        pytest.param(png_of_one_colour(1000, 1000), 1000 * 1000 * 4 * 2, id="RGBA PNG"),
        # libwebp's canvas, the copy it hands over, Pillow's image, the resize copy
        pytest.param(webp_of_one_colour(1000, 1000), 1000 * 1000 * 16, id="WebP"),
        # decoded at 1/8 scale: 1500x1500, 1 byte a pixel
        pytest.param(grey_jpeg(12000, 12000), 1500 * 1500, id="12000x12000 JPEG"),
        # at 1/2 scale (1/3 is the most 640x640 allows), but libjpeg keeps 2 bytes of
        # coefficients a pixel at full size
        pytest.param(
            grey_jpeg(2400, 2400, scans="progressive"),
            1200 * 1200 + 2400 * 2400 * 2,
            id="progressive JPEG",
        ),
        pytest.param(
            grey_jpeg(2400, 2400, scans="per colour"),
            1200 * 1200 * 4 + 2400 * 2400 * 2 * 3,
            id="JPEG with a scan per colour",
        ),
    ],
)
def test_the_budget_counts_the_bytes_a_decode_holds(image, decoded):
    # The estimate may add what Pillow read to open the file, never more.
    within = thumbnail_of(io.BytesIO(image), max_decode_bytes=decoded + len(image))
    short = thumbnail_of(io.BytesIO(image), max_decode_bytes=decoded - 1)

    assert within is not None and max(within.size) == 320
    assert short is None


@pytest.mark.gen_test
async def test_requests_for_one_image_share_its_job_and_others_wait_in_a_bounded_queue(tmp_path):
    thumbs = Thumbnails(tmp_path / "thumbs", max_decode_bytes=100 * MB, max_jobs=1)
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    first.write_bytes(png_of_one_colour(640, 480, tag="first"))
    second.write_bytes(png_of_one_colour(480, 640, tag="second"))

    answers = await asyncio.gather(
        thumbs.get("a" * 64, first),
        thumbs.get("a" * 64, first),  # the same image: waits for the same job
        thumbs.get("b" * 64, second),  # another: the queue (of one) is full
        return_exceptions=True,
    )
    later = await thumbs.get("b" * 64, second)
    thumbs.close()

    assert answers[:2] == [thumbs.path("a" * 64)] * 2
    assert isinstance(answers[2], ThumbnailsBusy)
    assert later == thumbs.path("b" * 64)


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """One GET, redirects not followed; status 0 when the server went away."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    except (ConnectionError, http.client.HTTPException):
        return 0, {}, b""
    finally:
        connection.close()


def anonymous_upload(port: int, data: bytes) -> str:
    body, headers = multipart_body(files=[("file", "big.png", data)])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", "/api/upload", body=body, headers=headers)
        return json.loads(connection.getresponse().read())["hash"]
    finally:
        connection.close()


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak) of a process, in bytes."""
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM")}


class Watchdog(threading.Thread):
    """Kills the server if its RSS passes the aim, so that the code this test guards against
    (gigabytes for six bombs) fails the test rather than the machine."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.killed = False
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.005):
            try:
                rss = memory(self.pid)["VmRSS"]
            except (FileNotFoundError, ProcessLookupError):
                return
            self.peak = max(self.peak, rss)
            if rss > RSS_AIM:
                self.killed = True
                os.kill(self.pid, signal.SIGKILL)
                return


def test_six_concurrent_thumbnail_bombs_keep_the_server_under_200_mb(tmp_path, free_port):
    proc = start(["serve", "--data-dir", str(tmp_path / "d"), "--port", str(free_port)], tmp_path)
    try:
        wait_for_line(proc, "listening on")
        bombs = [
            anonymous_upload(free_port, png_of_one_colour(8000, 8000, tag=str(i))) for i in range(6)
        ]
        # The largest RGBA image the default budget takes (8 bytes a pixel: its pixels and
        # the premultiplied copy Pillow resizes from).
        largest = anonymous_upload(free_port, png_of_one_colour(3500, 3500, tag="largest"))
        watchdog = Watchdog(proc.pid)
        watchdog.start()
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda h: get(free_port, f"/thumbs/{h}.webp"), bombs))
        status, headers, body = get(free_port, f"/thumbs/{largest}.webp")
        peak = watchdog.peak if watchdog.killed else memory(proc.pid)["VmHWM"]
        watchdog.done.set()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)

    assert not watchdog.killed, f"RSS passed {RSS_AIM // MB} MB"
    assert peak < RSS_AIM
    for code, bomb_headers, _ in answers:
        assert code == 302
        assert "/static/thumb-unavailable.svg" in bomb_headers["Location"]
    assert status == 200 and headers["Content-Type"] == "image/webp"
    assert Image.open(io.BytesIO(body)).size == (320, 320)
