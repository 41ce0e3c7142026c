"""End-to-end throughput of a real hostd server: `make bench`.

Starts `python -m hostd serve` on a free port with a throw-away data dir (and a config that
allows a 1 GiB upload), then measures what a user of a small VPS cares about:

* 4 KiB uploads/s at concurrency 16 (each a distinct random file, so each is a new blob:
  multipart parsing, hashing, fsync, rename and an SQLite insert every time);
* one 1 GiB upload streamed in 1 MiB pieces: MB/s, and the server's peak RSS, to show that
  the body is streamed to disk rather than held in memory;
* 4 KiB downloads/s at concurrency 64, of the files uploaded before;
* one 1 GiB download: MB/s.

The client is deliberately lean, because on a 2-core box it competes with the server for
CPU: asyncio on raw non-blocking sockets, HTTP/1.1 keep-alive, request bytes built before
the clock starts, and a minimal response parser (status line, headers, Content-Length
body). Each phase also records, over its timed part only, the CPU seconds of the server
(utime + stime from /proc: all its threads, and its IOLoop thread alone), of the client,
and of the rest of the machine, so the table shows which side was the bottleneck: a thread
whose CPU seconds are close to the wall time kept one core busy, and "other" CPU means the
box was not quiet.

`--quick` is a smoke run (64 MiB instead of 1 GiB, 1 s runs); `--json FILE` also writes the
figures as JSON; `--check` exits 1 when a figure misses its aim; `--server-profile FILE`
runs the server under cProfile. Another upload row (say "Bearer uploads/s") is one call:
`bench.upload_rate({"Authorization": "Bearer ..."}, label="Bearer uploads/s")`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import importlib.metadata
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
GiB = 1024 * MiB
MB = 1_000_000
BOUNDARY = "hostd-bench-boundary-7d1f0c"
PIECE_BYTES = 1 * MiB
RECV_BYTES = 1 * MiB
SMALL_BYTES = 4 * 1024
RSS_SAMPLE_SECONDS = 0.05
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
START_TIMEOUT_SECONDS = 20.0


class BenchError(Exception):
    """The server answered something other than what the measurement expects."""


# --- the server under test -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """`python -m hostd serve` in a temp dir; stop() kills it and removes the dir."""

    def __init__(self, max_upload_bytes: int, profile: Path | None = None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="hostd-bench-"))
        self.port = free_port()
        config = self.config = self.tmp / "hostd.toml"
        # The bench's clients stand for many users, though all come from 127.0.0.1.
        config.write_text(
            f"[limits]\nmax_upload_bytes = {max_upload_bytes}\n"
            "uploads_in_flight_per_address = 1000\n",
            encoding="utf-8",
        )
        self.log_path = self.tmp / "server.log"
        self._log = self.log_path.open("wb")
        # Under cProfile the figures are slower; the profile says where the time goes.
        profiler = ["-m", "cProfile", "-o", str(profile.resolve())] if profile else []
        self.proc = subprocess.Popen(
            [
                sys.executable,
                *profiler,
                "-m",
                "hostd",
                "serve",
                "--config",
                str(config),
                "--data-dir",
                str(self.tmp / "data"),
                "--port",
                str(self.port),
                "--host",
                "127.0.0.1",
            ],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.proc.pid

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"the server exited with {self.proc.returncode}:\n{self.log()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            time.sleep(0.05)
        raise BenchError(f"the server did not answer within {START_TIMEOUT_SECONDS} s")

    def cpu_seconds(self, *, loop_only: bool = False) -> float:
        """utime + stime so far: of the whole process (all threads), or with `loop_only` of
        its main thread, which runs the IOLoop (the others: SQLite, fsync, Argon2)."""
        where = f"/proc/{self.pid}/task/{self.pid}/stat" if loop_only else f"/proc/{self.pid}/stat"
        stat = Path(where).read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        # fields[0] is the state (field 3 of proc(5)); utime and stime are fields 14 and 15.
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def status_mib(self, key: str) -> float:
        """A `kB` line of /proc/<pid>/status (VmRSS, VmHWM), in MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        raise BenchError(f"no {key} in /proc/{self.pid}/status")

    def reset_peak_rss(self) -> bool:
        """Reset VmHWM to the current RSS (proc(5): `echo 5 > clear_refs`), so that a later
        VmHWM covers only what came after; False when the kernel does not allow it."""
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def cli(self, *args: str, stdin: str = "") -> str:
        """Run `hostd <args>` against this server's config and data dir, as an admin would;
        its stdout."""
        done = subprocess.run(
            [sys.executable, "-m", "hostd", *args, "--config", str(self.config)]
            + ["--data-dir", str(self.tmp / "data")],
            cwd=ROOT,
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"hostd {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def log(self, last_lines: int = 30) -> str:
        self._log.flush()
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-last_lines:])

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            self._log.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


# --- a minimal HTTP/1.1 client -----------------------------------------------------------


class Conn:
    """One keep-alive connection on a raw non-blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray()

    @classmethod
    async def open(cls, port: int) -> Conn:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        return cls(sock)

    def close(self) -> None:
        self.sock.close()

    async def send(self, data: bytes | memoryview) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def _fill(self) -> None:
        chunk = await self.loop.sock_recv(self.sock, 256 * 1024)
        if not chunk:
            raise BenchError("the server closed the connection")
        self.buf += chunk

    async def read_head(self) -> tuple[int, int]:
        """Read a response's status line and headers: (status, Content-Length)."""
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            await self._fill()
        head = bytes(self.buf[:end])
        del self.buf[: end + 4]
        status_line, _, headers = head.partition(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        length = 0
        for line in headers.split(b"\r\n"):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                raise BenchError(f"unexpected Transfer-Encoding: {value.strip()!r}")
        return status, length

    async def salvage(self) -> str:
        """What the server answered on a connection it cut off, for the error message."""
        with contextlib.suppress(OSError, BenchError, TimeoutError):
            async with asyncio.timeout(2):
                status, length = await self.read_head()
                return f"answer {status}: {(await self.read_body(length))[:300]!r}"
        return "no answer read"

    async def read_body(self, length: int) -> bytes:
        while len(self.buf) < length:
            await self._fill()
        body = bytes(self.buf[:length])
        del self.buf[:length]
        return body

    async def drain_body(self, length: int, scratch: memoryview) -> int:
        """Receive a body into `scratch`, over and over, keeping none of it; returns the count."""
        taken = min(length, len(self.buf))
        del self.buf[:taken]
        remaining = length - taken
        while remaining > 0:
            n = await self.loop.sock_recv_into(self.sock, scratch[: min(len(scratch), remaining)])
            if n == 0:
                raise BenchError(f"the server closed the connection with {remaining} bytes to go")
            remaining -= n
        return length


def public_hash(digest: bytes) -> str:
    """hostd's public hash: URL-safe base64 of the SHA-256 digest, first 12 characters."""
    return base64.urlsafe_b64encode(digest).decode("ascii")[:12]


def request_head(method: str, path: str, port: int, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def part_head(filename: str) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


PART_TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()


def upload_head(port: int, body_length: int, headers: dict[str, str]) -> bytes:
    return request_head(
        "POST",
        "/api/upload",
        port,
        {
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
            "Content-Length": str(body_length),
            **headers,
        },
    )


def upload_answer(status: int, body: bytes) -> str:
    """The hash of a /api/upload answer, or BenchError."""
    try:
        answer = json.loads(body)
        if status == 200 and answer.get("status") is True and isinstance(answer["hash"], str):
            return str(answer["hash"])
    except (ValueError, KeyError, AttributeError):
        pass
    raise BenchError(f"upload answered {status}: {body[:300]!r}")


# --- measurements ----------------------------------------------------------------------


def client_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle (nor waiting for I/O), from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(n) for n in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return sum(fields[:3] + fields[5:8]) / CLOCK_TICKS


def aim_met(figure: float, aim: str) -> bool | None:
    if aim.startswith(">="):
        return figure >= float(aim[2:].split()[0])
    if aim.startswith("<"):
        return figure < float(aim[1:].split()[0])
    return None


@dataclass
class Row:
    """One line of the table, with the CPU each side spent during the measurement."""

    name: str
    figure: float
    unit: str
    aim: str = ""
    ok: bool | None = None
    wall_s: float | None = None
    server_cpu_s: float | None = None
    server_loop_cpu_s: float | None = None
    client_cpu_s: float | None = None
    other_cpu_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ok is None:
            self.ok = aim_met(self.figure, self.aim)


class Window:
    """The timed part of a phase: wall time and both sides' CPU seconds between start() and
    stop(), so that building requests and opening connections are not counted."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.wall = self.server_cpu = self.server_loop_cpu = self.client_cpu = 0.0
        self.other_cpu = 0.0

    def start(self) -> None:
        self._server0, self._client0 = self.server.cpu_seconds(), client_cpu_seconds()
        self._loop0 = self.server.cpu_seconds(loop_only=True)
        self._busy0 = machine_busy_seconds()
        self._t0 = time.perf_counter()

    def stop(self) -> float:
        """Stop the clock; returns the wall time."""
        self.wall = time.perf_counter() - self._t0
        self.server_cpu = self.server.cpu_seconds() - self._server0
        self.server_loop_cpu = self.server.cpu_seconds(loop_only=True) - self._loop0
        self.client_cpu = client_cpu_seconds() - self._client0
        busy = machine_busy_seconds() - self._busy0
        self.other_cpu = max(0.0, busy - self.server_cpu - self.client_cpu)
        return self.wall


Phase = Callable[[Window], Coroutine[Any, Any, float]]


async def run_workers(count: int, worker: Callable[[int], Coroutine[Any, Any, None]]) -> None:
    """Run `count` workers; the first failure cancels the others and is raised."""
    async with asyncio.TaskGroup() as group:
        for index in range(count):
            group.create_task(worker(index))


class Bench:
    """The measurements against one running server; each adds its Row(s) to `rows`."""

    def __init__(self, server: Server, *, quick: bool) -> None:
        self.server = server
        self.port = server.port
        self.seconds = 1.0 if quick else 5.0
        self.big_bytes = 64 * MiB if quick else 1 * GiB
        self.big_label = "64 MiB" if quick else "1 GiB"
        self.max_uploads = 3000
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.small_hashes: list[str] = []
        self.big_hash: str | None = None

    def run(self) -> None:
        self.anonymous_and_bearer_upload_rates()
        self.big_upload()
        self.download_rate()
        self.big_download()

    def measured(self, name: str, unit: str, aim: str, phase: Phase) -> Row:
        """Run one phase in a fresh event loop and add its Row."""
        window = Window(self.server)
        figure = asyncio.run(phase(window))
        row = Row(
            name,
            figure,
            unit,
            aim,
            wall_s=window.wall,
            server_cpu_s=window.server_cpu,
            server_loop_cpu_s=window.server_loop_cpu,
            client_cpu_s=window.client_cpu,
            other_cpu_s=window.other_cpu,
        )
        self.rows.append(row)
        return row

    async def sample_rss(self, samples: list[float]) -> None:
        """Append the server's VmRSS every RSS_SAMPLE_SECONDS until cancelled."""
        while True:
            samples.append(self.server.status_mib("VmRSS"))
            await asyncio.sleep(RSS_SAMPLE_SECONDS)

    # -- 4 KiB uploads

    def upload_rate(
        self, headers: dict[str, str], label: str = "4 KiB uploads/s", concurrency: int = 16
    ) -> float:
        """Uploads/s of distinct random 4 KiB files at concurrency 16 for `seconds` (or
        `max_uploads`), sending `headers` with each, e.g. {"Authorization": "Bearer ..."}.
        Every answer must be 200 with the hash of what was sent; the hashes are kept for
        download_rate()."""
        return self.measured(
            label, "/s", "", lambda w: self._upload_rate(w, headers, concurrency)
        ).figure

    async def _upload_rate(
        self, window: Window, headers: dict[str, str], concurrency: int
    ) -> float:
        requests: list[bytes] = []
        expected: list[str] = []
        for number in range(self.max_uploads):
            payload = os.urandom(SMALL_BYTES)
            body = part_head(f"small-{number}.bin") + payload + PART_TAIL
            requests.append(upload_head(self.port, len(body), headers) + body)
            expected.append(public_hash(hashlib.sha256(payload).digest()))
        conns = [await Conn.open(self.port) for _ in range(concurrency)]
        next_index = itertools.count()
        done: list[str] = []

        async def worker(slot: int) -> None:
            conn = conns[slot]
            while time.perf_counter() < deadline:
                index = next(next_index)
                if index >= len(requests):
                    return
                await conn.send(requests[index])
                status, length = await conn.read_head()
                got = upload_answer(status, await conn.read_body(length))
                if got != expected[index]:
                    raise BenchError(f"upload {index}: hash {got}, expected {expected[index]}")
                done.append(got)

        try:
            window.start()
            deadline = time.perf_counter() + self.seconds
            await run_workers(len(conns), worker)
            elapsed = window.stop()
        finally:
            for conn in conns:
                conn.close()
        self.small_hashes.extend(done)
        return len(done) / elapsed

    def anonymous_and_bearer_upload_rates(self, rounds: int = 2) -> None:
        """4 KiB uploads/s without a key and with one made by `hostd key create`, taken in
        turns, because fsync times drift more between runs than a cached key check costs.
        The key's Argon2 verification runs once, on its first use."""
        self.server.cli("user", "add", "bench", "--password-stdin", stdin="bench-password\n")
        key = self.server.cli("key", "create", "bench", "--label", "bench").strip()
        anonymous = bearer = 0.0
        for number in range(rounds):
            again = ", again" if number else ""
            anonymous += self.upload_rate({}, label=f"4 KiB uploads/s{again}")
            bearer += self.upload_rate(
                {"Authorization": f"Bearer {key}"}, label=f"Bearer uploads/s{again}"
            )
        self.notes.append(
            f"Bearer uploads/s is {100 * bearer / anonymous:.0f}% of anonymous uploads/s"
            f" (the sums of {rounds} turns each: same sizes, same concurrency)."
        )

    # -- the big upload

    def big_file_pieces(self, block: bytes) -> Iterator[bytes]:
        """The big file as pieces of one random block (the last may be shorter)."""
        remaining = self.big_bytes
        while remaining > 0:
            piece = block if remaining >= len(block) else block[:remaining]
            remaining -= len(piece)
            yield piece

    def big_upload(self) -> None:
        """MB/s of one big upload, and the server's peak RSS while it is received."""
        block = os.urandom(PIECE_BYTES)
        # The digest of what will be sent, from the same generator, before the clock starts:
        # hashing while sending would take a core from the server.
        digest = hashlib.sha256()
        for piece in self.big_file_pieces(block):
            digest.update(piece)
        expected = public_hash(digest.digest())
        # VmHWM so far covers start-up and the phases before; reset it (when the kernel lets
        # us) so that the figure after the upload is the upload's own.
        hwm_before = self.server.status_mib("VmHWM")
        was_reset = self.server.reset_peak_rss()
        timings: dict[str, float] = {}
        samples: list[float] = []
        name = f"{self.big_label} upload"
        row = self.measured(
            name, "MB/s", ">= 300", lambda w: self._big_upload(w, block, samples, timings)
        )
        row.extra = timings
        if self.big_hash != expected:
            raise BenchError(f"{name}: the server's hash is {self.big_hash}, sent {expected}")
        hwm_after = self.server.status_mib("VmHWM")
        during = f"in {name}" if was_reset else "in whole run"
        self.rows += [
            Row(f"server peak RSS up to {name} (VmHWM)", hwm_before, "MiB", "< 100"),
            Row(f"server peak RSS {during} (VmHWM)", hwm_after, "MiB", "< 100"),
            Row(
                f"server max RSS sampled in {name}",
                max(samples, default=0.0),
                "MiB",
                "< 100",
                extra={"samples": len(samples), "interval_s": RSS_SAMPLE_SECONDS},
            ),
        ]
        self.notes.append(
            f"{name}: last byte sent after {row.extra['seconds_to_last_byte']:.2f} s, answer "
            f"after {row.wall_s or 0:.2f} s (the gap: the server's fsync, rename and insert); "
            f"hash {self.big_hash} verified."
        )
        if not was_reset:
            self.notes.append("VmHWM could not be reset: the peak after the upload is the run's.")

    async def _big_upload(
        self, window: Window, block: bytes, samples: list[float], timings: dict[str, float]
    ) -> float:
        head = part_head("big.bin")
        length = len(head) + self.big_bytes + len(PART_TAIL)
        conn = await Conn.open(self.port)
        sampler = asyncio.create_task(self.sample_rss(samples))
        try:
            window.start()
            started = time.perf_counter()
            try:
                await conn.send(upload_head(self.port, length, {}) + head)
                for piece in self.big_file_pieces(block):
                    await conn.send(piece)
                await conn.send(PART_TAIL)
            except OSError as exc:
                answer = await conn.salvage()
                raise BenchError(f"{self.big_label} upload cut off: {exc} ({answer})") from exc
            sent = time.perf_counter()
            status, body_length = await conn.read_head()
            self.big_hash = upload_answer(status, await conn.read_body(body_length))
            elapsed = window.stop()
        finally:
            sampler.cancel()
            conn.close()
        timings["seconds_to_last_byte"] = sent - started
        return (length / MB) / elapsed

    # -- 4 KiB downloads

    def download_rate(self, label: str = "4 KiB downloads/s", concurrency: int = 64) -> float:
        """Downloads/s of the 4 KiB files at `concurrency`, for `seconds`."""
        return self.measured(
            label, "/s", ">= 2000", lambda w: self._download_rate(w, concurrency)
        ).figure

    async def _download_rate(self, window: Window, concurrency: int) -> float:
        if not self.small_hashes:
            raise BenchError("no small files to download")
        requests = [request_head("GET", f"/{h}", self.port, {}) for h in self.small_hashes]
        conns = [await Conn.open(self.port) for _ in range(concurrency)]
        counter = itertools.count()
        done = 0

        async def worker(slot: int) -> None:
            nonlocal done
            conn = conns[slot]
            while time.perf_counter() < deadline:
                index = next(counter) % len(requests)
                await conn.send(requests[index])
                status, length = await conn.read_head()
                body = await conn.read_body(length)
                if status != 200 or len(body) != SMALL_BYTES:
                    raise BenchError(f"GET {self.small_hashes[index]}: {status}, {len(body)} B")
                done += 1

        try:
            window.start()
            deadline = time.perf_counter() + self.seconds
            await run_workers(len(conns), worker)
            elapsed = window.stop()
        finally:
            for conn in conns:
                conn.close()
        return done / elapsed

    # -- the big download

    def big_download(self) -> float:
        """MB/s of downloading the big file, received into one reused buffer."""
        samples: list[float] = []
        name = f"{self.big_label} download"
        row = self.measured(name, "MB/s", ">= 300", lambda w: self._big_download(w, samples))
        self.rows.append(
            Row(f"server max RSS sampled in {name}", max(samples, default=0.0), "MiB", "< 100")
        )
        return row.figure

    async def _big_download(self, window: Window, samples: list[float]) -> float:
        if self.big_hash is None:
            raise BenchError("no big file to download")
        conn = await Conn.open(self.port)
        scratch = memoryview(bytearray(RECV_BYTES))
        sampler = asyncio.create_task(self.sample_rss(samples))
        try:
            window.start()
            await conn.send(request_head("GET", f"/{self.big_hash}", self.port, {}))
            status, length = await conn.read_head()
            if status != 200 or length != self.big_bytes:
                raise BenchError(f"GET {self.big_hash}: {status}, Content-Length {length}")
            received = await conn.drain_body(length, scratch)
            elapsed = window.stop()
        finally:
            sampler.cancel()
            conn.close()
        return (received / MB) / elapsed


# --- output ----------------------------------------------------------------------------


def fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def cpu(seconds: float | None, wall: float | None) -> str:
    """CPU seconds, and as a share of one core over the wall time."""
    if seconds is None or not wall:
        return ""
    return f"{seconds:.2f} ({100 * seconds / wall:.0f}%)"


def table(rows: list[Row]) -> str:
    header = [
        "measurement",
        "figure",
        "unit",
        "aim",
        "met",
        "wall s",
        "server CPU s",
        "  IOLoop thread",
        "client CPU s",
        "other CPU s",
    ]
    lines = [header]
    for row in rows:
        digits = 0 if row.figure >= 1000 else 1
        lines.append(
            [
                row.name,
                f"{row.figure:,.{digits}f}",
                row.unit,
                row.aim,
                {True: "yes", False: "NO", None: ""}[row.ok],
                fmt(row.wall_s),
                cpu(row.server_cpu_s, row.wall_s),
                cpu(row.server_loop_cpu_s, row.wall_s),
                cpu(row.client_cpu_s, row.wall_s),
                cpu(row.other_cpu_s, row.wall_s),
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    left = {0, 2, 3, 4}
    out = []
    for number, line in enumerate(lines):
        cells = [
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
        if number == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def environment() -> dict[str, Any]:
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "tornado": importlib.metadata.version("tornado"),
        "nproc": len(os.sched_getaffinity(0)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run: 64 MiB, 1 s phases")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")
    parser.add_argument(
        "--check", action="store_true", help="exit with status 1 when a figure misses its aim"
    )
    parser.add_argument(
        "--server-profile",
        type=Path,
        metavar="FILE",
        help="run the server under cProfile, writing its stats here (figures will be lower)",
    )
    args = parser.parse_args(argv)

    env = environment()
    print(f"Python {env['python']}, Tornado {env['tornado']}, nproc {env['nproc']}")
    server = Server(max_upload_bytes=2 * GiB, profile=args.server_profile)
    bench = Bench(server, quick=args.quick)
    try:
        server.wait_ready()
        print(f"hostd pid {server.pid} on 127.0.0.1:{server.port}, data in {server.tmp}")
        bench.run()
    except (BenchError, OSError) as exc:
        print(f"bench failed: {exc!r}", file=sys.stderr)
        print(f"server log (last lines):\n{server.log()}", file=sys.stderr)
        if bench.rows:
            print(table(bench.rows), file=sys.stderr)
        return 1
    finally:
        server.stop()

    print()
    print(table(bench.rows))
    print()
    for note in bench.notes:
        print(note)
    print(
        "CPU: utime+stime in the timed part of each phase, and as a share of one core. The"
        " server's IOLoop\nthread is its main thread (the others run SQLite, fsync, Argon2)."
        " Other: the rest of the machine\n(kernel threads, other processes); when it is high,"
        " the figures were taken on a busy box."
    )
    if args.json:
        report = {**env, "quick": args.quick, "rows": [asdict(row) for row in bench.rows]}
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    busy = [
        row.name
        for row in bench.rows
        if row.other_cpu_s is not None and row.wall_s and row.other_cpu_s > 0.25 * row.wall_s
    ]
    if busy:
        print(f"warning: something else used over 25% of a core during: {', '.join(busy)}")
    missed = [row.name for row in bench.rows if row.ok is False]
    if missed:
        print(f"missed aims: {', '.join(missed)}")
    if args.server_profile:
        print(f"server profile: .venv/bin/python -m pstats {args.server_profile}")
    return 1 if missed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
