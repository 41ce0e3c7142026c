"""The thumbnail decompression-bomb attack, measured against a real `hostd serve`.

Uploads six 8000x8000 RGBA PNGs of one colour (~260 KiB each, 256 MB each decoded)
anonymously (with --largest: six 3500x3500 ones, the largest the default budget decodes),
then asks for their six thumbnails at once, without signing in, while a client uploads 2 MiB
files one after another. Prints the server's RSS and peak RSS (VmRSS, VmHWM from /proc) and
the 2 MiB upload times, quiet and during the attack.

    .venv/bin/python bench/thumbnail_bombs.py [--uploads 20] [--largest]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers import multipart_body, png_of_one_colour  # noqa: E402

MB = 1_000_000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def memory(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return tuple(int(fields[k].split()[0]) * 1024 / MB for k in ("VmRSS", "VmHWM"))  # type: ignore[return-value]


def request(
    port: int, method: str, path: str, body: bytes = b"", headers=None
) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        connection.request(method, path, body=body or None, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def upload(port: int, data: bytes) -> tuple[str, float]:
    body, headers = multipart_body(files=[("file", "f.bin", data)])
    started = time.perf_counter()
    status, answer = request(port, "POST", "/api/upload", body, headers)
    took = time.perf_counter() - started
    assert status == 200, (status, answer)
    return json.loads(answer)["hash"], took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uploads", type=int, default=20, help="2 MiB uploads in each phase")
    parser.add_argument(
        "--largest",
        action="store_true",
        help="3500x3500 RGBA PNGs instead: the largest the default budget decodes",
    )
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hostd", "serve", "--data-dir", f"{tmp}/d", "--port", str(port)],
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(200):
                try:
                    request(port, "GET", "/")
                    break
                except OSError:
                    time.sleep(0.05)
            size = 3500 if args.largest else 8000
            bombs = [upload(port, png_of_one_colour(size, size, tag=str(i)))[0] for i in range(6)]
            quiet = [upload(port, os.urandom(2 * 1024 * 1024))[1] for _ in range(args.uploads)]
            rss_before, _ = memory(proc.pid)
            peak_rss = [rss_before]
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(0.01):
                    peak_rss.append(memory(proc.pid)[0])

            threading.Thread(target=sample, daemon=True).start()
            started = time.perf_counter()
            with ThreadPoolExecutor(6) as pool:
                thumbs = [pool.submit(request, port, "GET", f"/thumbs/{h}.webp") for h in bombs]
                during = []
                while not all(t.done() for t in thumbs) or len(during) < args.uploads:
                    during.append(upload(port, os.urandom(2 * 1024 * 1024))[1])
                statuses = [t.result()[0] for t in thumbs]
            attack_seconds = time.perf_counter() - started
            stop.set()
            rss_after, hwm = memory(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)

    def ms(values: list[float]) -> str:
        p90 = statistics.quantiles(values, n=10)[-1]
        return (
            f"median {statistics.median(values) * 1000:.0f} ms, p90 {p90 * 1000:.0f} ms, "
            f"max {max(values) * 1000:.0f} ms (n={len(values)})"
        )

    print(f"thumbnail answers: {statuses} in {attack_seconds:.2f} s")
    print(f"RSS before {rss_before:.0f} MB, sampled peak {max(peak_rss):.0f} MB, ", end="")
    print(f"after {rss_after:.0f} MB; VmHWM {hwm:.0f} MB")
    print(f"2 MiB upload, quiet:  {ms(quiet)}")
    print(f"2 MiB upload, attack: {ms(during)}")


if __name__ == "__main__":
    main()
