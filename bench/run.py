"""hostd's throughput beside a bare-Tornado baseline and nginx, in one run: `make bench`.

Absolute figures on this shared 2-core machine swing by a third from run to run, so every
hostd figure is printed beside the one it is compared with, taken in the same run, and as a
ratio to it; the aims are on the ratios. For each place the data can live (`--data-on`:
tmpfs, disk or both), the bench starts, each with its own throw-away dir there:

* `python -m hostd serve`;
* bench/baseline.py: one bare Tornado process that streams a PUT body into a file (write,
  fsync, rename; no parsing, hashing or database) and serves files with StaticFileHandler;
* nginx running contrib/nginx.conf in front of hostd (only the upstream's address, the
  `listen` lines and the ssl_* lines changed, see nginx_site()), on every CPU but the one
  hostd's IOLoop is pinned to, as README's Deploying has it, plus a location that serves
  hostd's blob directory as plain static files; and, once hostd's config accepts
  `server.accel_redirect` and contrib/nginx.conf has an internal location for it, a second
  hostd on the same data dir with it set, behind a second copy of that server block.

Then it measures, against each of them as it applies:

* 4 KiB uploads/s at 16 connections, each a distinct random file (so each is a new blob),
  taken in turns (baseline PUT, hostd anonymous, hostd with a Bearer key, then the same
  backwards), because fsync times drift more between phases than the difference being
  measured, and every comparison below is taken in such turns too;
* the mean batch size of hostd's database writer (writes per commit), from its log;
* 4 KiB uploads/s of a second hostd whose database is PostgreSQL (a private server from
  Debian's binaries, its data beside hostd's, its default synchronous_commit on to match
  SQLite's synchronous=FULL), in turns with the SQLite one;
* 1 GiB uploads streamed in 1 MiB pieces, in turns (other bytes in each of hostd's): MB/s,
  and hostd's peak RSS while they are received (each right after writing and removing 2 GiB
  in /dev/shm: see warm_memory());
* 4 KiB downloads/s at 64 connections of the 1,000 files uploaded last, in process (in turns
  with the baseline's, twice over) and through nginx (in turns with hostd's own, again);
  and of all files uploaded, in process;
* one 1 GiB download: MB/s, in process and through nginx.

The client is deliberately lean, because on a 2-core box it competes with the servers for
CPU: asyncio on raw non-blocking sockets in this process (never the servers' processes),
HTTP/1.1 keep-alive, request bytes built before the clock starts, and a minimal response
parser (status line, headers, Content-Length body). Each phase also records, over its timed
part only, the CPU the servers spent (all their threads and processes, and hostd's or the
baseline's IOLoop thread alone), the client's, and the rest of the machine's, as a share of
one core: a thread near 100% kept a core busy, and a high "other" means the box was busy.

`--storage s3` also starts SeaweedFS (tests/seaweed.py, the test extra's `weed`) and runs the
4 KiB and 1 GiB upload and download rows again on a second hostd whose blobs live there,
each beside the local-store figure of the same run.

`--quick` is a smoke run (64 MiB instead of 1 GiB, 1 s phases); `--json FILE` also writes
the figures as JSON; `--check` exits 1 when a ratio misses its aim, or a row with an aim was
not measured; `--server-profile FILE` runs hostd under cProfile (one file per data place).
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
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hostd.config import ConfigError, load_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
# tests/nginxsite.py: contrib/nginx.conf, read and adapted (shared with the tests).
from nginxsite import (
    Directive,
    SiteError,
    contrib_site,
    find_nginx,
    listening_on,
    nginx_argv,
    nginx_conf,
    proxy_to,
    render_nginx,
    upstream_to,
)
from pgserver import PostgresServer, find_bin_dir  # the tests' own server

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
GiB = 1024 * MiB
MB = 1_000_000
BOUNDARY = "hostd-bench-boundary-7d1f0c"
PIECE_BYTES = 1 * MiB
RECV_BYTES = 1 * MiB
SMALL_BYTES = 4 * 1024
UPLOAD_CONCURRENCY = 16
DOWNLOAD_CONCURRENCY = 64
# Four turns of each upload row, not two: the rows nearest their aims (4 KiB uploads on the
# disk, a 1 GiB upload) swung by a quarter between runs of the same code with two.
UPLOAD_TURNS = 4
# Four of each small-download row too: the rows through nginx sat on either side of their
# 0.9x line from run to run with two (0.81x-1.08x), and in pairs of turns taken one after
# another hostd's own CPU per request moved by a quarter (255-344 us) with the box's load.
DOWNLOAD_TURNS = 4
# The small-download rows with an aim fetch the most recent this many files (a file host's
# downloads go mostly to a small, recent set; hostd keeps the rows and bytes of 4,096 small
# blobs in memory). A row without an aim fetches every small file, round and round: a scan
# that no cache of recently used entries helps.
DOWNLOAD_FILES = 1000
# How many big files' worth of memory is written and removed right before each big upload
# (warm_memory).
WARM_BIG_FILES = 2
RSS_SAMPLE_SECONDS = 0.05
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CPUS = sorted(os.sched_getaffinity(0))
START_TIMEOUT_SECONDS = 20.0
TMPFS_ROOT = Path("/dev/shm")
MEMORY_FILESYSTEMS = {"tmpfs", "ramfs"}
# The nginx location that serves hostd's blob directory as plain static files.
STATIC_PREFIX = "/_bench_static/"
# What `server.accel_redirect` is set to when contrib/nginx.conf has no internal location
# yet, only to ask hostd's config whether it knows the key.
ACCEL_PROBE = "/_hostd_blobs/"

# The hook for the database writer's counters: hostd logs a line containing
# "<writes> writes in <commits> commits", counted since it started, at least when it shuts
# down (the bench stops it with SIGTERM and reads its log). The last such line gives the
# "mean batch size" row; without one the row says n/a.
WRITER_COUNTERS = re.compile(r"(\d+) writes in (\d+) commits")


T = TypeVar("T")


class BenchError(Exception):
    """A server answered something other than what the measurement expects."""


# --- where the data lives ---------------------------------------------------------------


def warm_memory(size: int) -> int:
    """Write `size` bytes to a file in TMPFS_ROOT and remove it; how many (0: not done).

    On this kind of virtual machine the first write to memory the guest has not touched
    for a while runs at a fifth of the speed of later ones (seen with dd: a second GiB kept
    in tmpfs at 0.3-0.5 GB/s where the first went at 2.6), whether the memory becomes tmpfs
    or the page cache of a disk, and memory freed is soon given back to the host, so that a
    warm-up even a minute early is lost. The big upload rows would then measure whichever
    server came second as slower (its file on top of the other's). Touching the memory right
    before each big upload puts every server on the same, recycled, memory. Skipped when the
    machine has not twice `size` available."""
    available = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    if available < 2 * size or not TMPFS_ROOT.is_dir():
        return 0
    block = bytes(PIECE_BYTES)
    fd, name = tempfile.mkstemp(prefix="hostd-bench-warm-", dir=TMPFS_ROOT)
    try:
        for _ in range(size // len(block)):
            os.write(fd, block)
    finally:
        os.close(fd)
        os.unlink(name)
    return size


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding `path` (the longest mount point above it)."""
    where = str(path.resolve())
    best, kind = "", "unknown"
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mount, fstype, *_ = line.split()
        mount = mount.replace("\\040", " ")
        inside = where == mount or where.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, fstype
    return kind


def data_places(choice: str, disk_dir: Path | None) -> list[tuple[str, Path]]:
    """("tmpfs" | "disk", a directory to make the throw-away dirs in), as asked."""
    places: list[tuple[str, Path]] = []
    if choice in ("tmpfs", "both"):
        if filesystem_type(TMPFS_ROOT) not in MEMORY_FILESYSTEMS:
            raise BenchError(f"{TMPFS_ROOT} is not a tmpfs here")
        places.append(("tmpfs", TMPFS_ROOT))
    if choice in ("disk", "both"):
        candidates = [disk_dir] if disk_dir else [Path("/var/tmp"), Path(tempfile.gettempdir())]
        on_disk = [
            d
            for d in [*candidates, ROOT]
            if d.is_dir() and filesystem_type(d) not in MEMORY_FILESYSTEMS
        ]
        if not on_disk or (disk_dir and on_disk[0] != disk_dir):
            raise BenchError(f"no directory on a disk among {candidates}: give --disk-dir")
        places.append(("disk", on_disk[0]))
    return places


# --- the processes ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def proc_cpu_seconds(stat_path: str) -> float:
    """utime + stime from a /proc/.../stat file."""
    stat = Path(stat_path).read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is the state (field 3 of proc(5)); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (nginx's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


class Service:
    """One server process of the bench, its output in a log file; stop() ends it.

    `has_loop`: a Python server whose main thread runs the IOLoop (hostd, the baseline)."""

    has_loop = True

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        ports: list[int],
        cpus: set[int] | None = None,
    ) -> None:
        """`cpus`: the CPUs it and its children may run on, set before it starts, as
        systemd's CPUAffinity= does; None: any."""
        self.name = name
        self.ports = ports
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
        )
        self.pid = self.proc.pid
        self.pids = [self.pid]

    @property
    def port(self) -> int:
        return self.ports[0]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            if all(map(accepts, self.ports)):
                return
            time.sleep(0.05)
        raise BenchError(f"{self.name} did not answer within {START_TIMEOUT_SECONDS} s")

    def cpu_seconds(self, *, loop_only: bool = False) -> float:
        """utime + stime so far: of all its processes and threads, or with `loop_only` of
        its main thread, which runs the IOLoop (the others: SQLite, fsync, Argon2)."""
        if loop_only:
            return proc_cpu_seconds(f"/proc/{self.pid}/task/{self.pid}/stat")
        return sum(proc_cpu_seconds(f"/proc/{pid}/stat") for pid in self.pids)

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


class Hostd(Service):
    """`python -m hostd serve` on a free port, with a config and data dir under `tmp`."""

    def __init__(
        self,
        name: str,
        tmp: Path,
        data_dir: Path,
        *,
        accel_redirect: str | None = None,
        profile: Path | None = None,
        storage: str = "",
        database_url: str | None = None,
        cpu: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.config = tmp / f"{name}.toml"
        accel = f'accel_redirect = "{accel_redirect}"\n' if accel_redirect else ""
        # server.cpu: "auto" unless told, as on a fresh install.
        accel += f"cpu = {cpu}\n" if cpu is not None else ""
        database = f'[database]\nurl = "{database_url}"\n' if database_url else ""
        self.config.write_text(
            f"[server]\ntrust_proxy = true\n{accel}[limits]\nmax_upload_bytes = {2 * GiB}\n"
            # The bench's clients stand for many users, though all come from 127.0.0.1.
            f"uploads_in_flight_per_address = 1000\n{database}{storage}",
            encoding="utf-8",
        )
        port = free_port()
        # Under cProfile the figures are slower; the profile says where the time goes.
        profiler = ["-m", "cProfile", "-o", str(profile.resolve())] if profile else []
        argv = [sys.executable, *profiler, "-m", "hostd", "serve", *self.where()]
        argv += ["--port", str(port), "--host", "127.0.0.1"]
        super().__init__(name, argv, tmp / f"{name}.log", [port])

    def where(self) -> list[str]:
        return ["--config", str(self.config), "--data-dir", str(self.data_dir)]

    def cli(self, *args: str, stdin: str = "") -> str:
        """Run `hostd <args>` against this server's config and data dir, as an admin would;
        its stdout."""
        done = subprocess.run(
            [sys.executable, "-m", "hostd", *args, *self.where()],
            cwd=ROOT,
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"hostd {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def writer_batches(self) -> tuple[int, int] | None:
        """(writes, commits) from the last WRITER_COUNTERS line of the log, if there is one."""
        found = WRITER_COUNTERS.findall(self.log_path.read_text(errors="replace"))
        if not found:
            return None
        writes, commits = found[-1]
        return int(writes), int(commits)


class Baseline(Service):
    """bench/baseline.py on a free port, its data dir under `tmp`."""

    def __init__(self, tmp: Path) -> None:
        port = free_port()
        argv = [sys.executable, str(ROOT / "bench" / "baseline.py"), "--port", str(port)]
        argv += ["--data-dir", str(tmp / "baseline-data")]
        super().__init__("baseline", argv, tmp / "baseline.log", [port])


# --- nginx ----------------------------------------------------------------------------------


def internal_location() -> str | None:
    """The prefix of the `internal` location contrib/nginx.conf has for X-Accel-Redirect
    (what `server.accel_redirect` is set to), or None while it has none."""
    location = contrib_site().internal_location()
    return location.args[-1] if location else None


def accel_redirect_prefix() -> tuple[str, str]:
    """(the prefix to set `server.accel_redirect` to, ""), or ("", why the accel_redirect
    rows cannot be measured yet)."""
    prefix = internal_location()
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "hostd.toml"
        probe.write_text(f'[server]\naccel_redirect = "{prefix or ACCEL_PROBE}"\n')
        try:
            load_config(probe)
        except ConfigError:
            return "", "not built"
    if prefix is None:
        return "", "no internal location in contrib/nginx.conf"
    return prefix, ""


def nginx_site(hostd_port: int, port: int, blobs_dir: Path, accel: tuple[int, int] | None) -> str:
    """contrib/nginx.conf for the bench: its TLS server block in plain HTTP on `port`, in
    front of hostd on `hostd_port`, with STATIC_PREFIX serving `blobs_dir` as static files;
    with `accel` = (accel hostd's port, its nginx port), a second copy of the block in front
    of the hostd that sends X-Accel-Redirect. Internal locations are pointed at `blobs_dir`
    (the bench assumes they map the accel_redirect prefix onto <data_dir>/blobs/)."""
    try:
        site = contrib_site()
    except SiteError as exc:
        raise BenchError(str(exc)) from exc
    upstream = upstream_to(site.upstream, [hostd_port])
    plain = listening_on(site.tls, port, blobs_dir)
    assert plain.block is not None
    plain.block.append(
        Directive("location", [STATIC_PREFIX], [Directive("alias", [f"{blobs_dir}/"])])
    )
    parts = [upstream, plain]
    if accel:
        name = f"{upstream.args[0]}_accel"
        front = listening_on(site.tls, accel[1], blobs_dir)
        proxy_to(front, upstream.args[0], name)
        parts += [upstream_to(site.upstream, [accel[0]], name), front]
    return render_nginx(parts, depth=1)


class Nginx(Service):
    """nginx with a whole nginx.conf under `prefix`: Debian's stock http settings around
    the site from nginx_site(). Its CPU is the master's and the workers'."""

    has_loop = False

    def __init__(
        self, binary: str, prefix: Path, site: str, ports: list[int], cpus: set[int] | None = None
    ) -> None:
        prefix.mkdir()
        # The bench's client keeps each connection for a whole phase and does not reconnect.
        extra = "    keepalive_requests 1000000;"
        conf = nginx_conf(binary, prefix, site, http_extra=extra)
        (prefix / "nginx.conf").write_text(conf, encoding="utf-8")
        argv = nginx_argv(binary, prefix)
        super().__init__("nginx", argv, prefix / "stderr.log", ports, cpus)

    def wait_ready(self) -> None:
        super().wait_ready()
        self.pids = [self.pid, *children_of(self.pid)]


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


def put_head(port: int, name: str, body_length: int) -> bytes:
    """The baseline's upload: the bare file as the body of PUT /upload/<name>."""
    return request_head("PUT", f"/upload/{name}", port, {"Content-Length": str(body_length)})


def upload_answer(status: int, body: bytes) -> str:
    """The hash of a /api/upload answer, or BenchError."""
    try:
        answer = json.loads(body)
        if status == 200 and answer.get("status") is True and isinstance(answer["hash"], str):
            return str(answer["hash"])
    except (ValueError, KeyError, AttributeError):
        pass
    raise BenchError(f"upload answered {status}: {body[:300]!r}")


def put_answer(status: int, body: bytes, name: str) -> None:
    if status != 201 or body.strip() != name.encode():
        raise BenchError(f"baseline PUT {name} answered {status}: {body[:300]!r}")


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


class Window:
    """The timed part of a phase: wall time and CPU seconds between start() and stop(), so
    that building requests and opening connections are not counted. `servers` are the
    processes the requests go through (nginx and hostd, say)."""

    def __init__(self, servers: list[Service]) -> None:
        self.servers = servers
        self.wall = self.server_cpu = self.loop_cpu = self.client_cpu = self.other_cpu = 0.0

    def _server_seconds(self) -> tuple[float, float]:
        return (
            sum(s.cpu_seconds() for s in self.servers),
            sum(s.cpu_seconds(loop_only=True) for s in self.servers if s.has_loop),
        )

    def start(self) -> None:
        self._server0, self._loop0 = self._server_seconds()
        self._client0, self._busy0 = client_cpu_seconds(), machine_busy_seconds()
        self._t0 = time.perf_counter()

    def stop(self) -> float:
        """Stop the clock; returns the wall time."""
        self.wall = time.perf_counter() - self._t0
        server, loop = self._server_seconds()
        self.server_cpu, self.loop_cpu = server - self._server0, loop - self._loop0
        self.client_cpu = client_cpu_seconds() - self._client0
        busy = machine_busy_seconds() - self._busy0
        self.other_cpu = max(0.0, busy - self.server_cpu - self.client_cpu)
        return self.wall


@dataclass
class Measured:
    """A figure and the CPU spent on it; mean() combines turns of the same measurement."""

    figure: float
    wall_s: float
    server_cpu_s: float
    loop_cpu_s: float
    client_cpu_s: float
    other_cpu_s: float

    @classmethod
    def of(cls, figure: float, window: Window) -> Measured:
        w = window
        return cls(figure, w.wall, w.server_cpu, w.loop_cpu, w.client_cpu, w.other_cpu)

    @classmethod
    def mean(cls, turns: list[Measured]) -> Measured:
        def total(name: str) -> float:
            return float(sum(getattr(t, name) for t in turns))

        return cls(
            total("figure") / len(turns),
            total("wall_s"),
            total("server_cpu_s"),
            total("loop_cpu_s"),
            total("client_cpu_s"),
            total("other_cpu_s"),
        )


def aim_met(value: float, aim: str) -> bool:
    operator, number = aim.split()
    threshold = float(number.rstrip("x"))
    return {
        ">=": value >= threshold,
        ">": value > threshold,
        "<": value < threshold,
        "<=": value <= threshold,
    }[operator]


@dataclass
class Row:
    """One line of the table: a figure, what it is compared with, and the CPU spent on it.

    `aim` is on the ratio when it ends in "x" (">= 0.5x"), else on the figure ("< 64").
    A figure of None was not measured; `why_not` says why ("not built")."""

    where: str
    name: str
    figure: float | None
    unit: str
    vs: str = ""
    vs_figure: float | None = None
    aim: str = ""
    why_not: str = ""
    measured: Measured | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.figure is None or not self.vs_figure:
            return None
        return self.figure / self.vs_figure

    @property
    def ok(self) -> bool | None:
        """Whether the aim is met; None without an aim or a figure."""
        value = self.ratio if self.aim.endswith("x") else self.figure
        if not self.aim or value is None:
            return None
        return aim_met(value, self.aim)

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "ok": self.ok}


Phase = Callable[[Window], Coroutine[Any, Any, float]]


async def run_workers(count: int, worker: Callable[[int], Coroutine[Any, Any, None]]) -> None:
    """Run `count` workers; the first failure cancels the others and is raised."""
    async with asyncio.TaskGroup() as group:
        for index in range(count):
            group.create_task(worker(index))


async def sample_rss(service: Service, samples: list[float]) -> None:
    """Append the service's VmRSS every RSS_SAMPLE_SECONDS until cancelled."""
    while True:
        samples.append(service.status_mib("VmRSS"))
        await asyncio.sleep(RSS_SAMPLE_SECONDS)


async def upload_rate(
    window: Window,
    port: int,
    requests: list[bytes],
    check: Callable[[int, int, bytes], None],
    seconds: float,
) -> float:
    """Uploads/s over UPLOAD_CONCURRENCY connections, sending `requests` in order until
    `seconds` pass or they run out; check(index, status, body) raises on a wrong answer."""
    conns = [await Conn.open(port) for _ in range(UPLOAD_CONCURRENCY)]
    next_index = itertools.count()
    done = 0

    async def worker(slot: int) -> None:
        nonlocal done
        conn = conns[slot]
        while time.perf_counter() < deadline:
            index = next(next_index)
            if index >= len(requests):
                return
            await conn.send(requests[index])
            status, length = await conn.read_head()
            check(index, status, await conn.read_body(length))
            done += 1

    try:
        window.start()
        deadline = time.perf_counter() + seconds
        await run_workers(len(conns), worker)
        elapsed = window.stop()
    finally:
        for conn in conns:
            conn.close()
    return done / elapsed


def recent(items: list[T]) -> list[T]:
    """The last DOWNLOAD_FILES of `items` (the files uploaded last)."""
    return items[-DOWNLOAD_FILES:]


async def download_rate(window: Window, port: int, paths: list[str], seconds: float) -> float:
    """Downloads/s of the SMALL_BYTES files at `paths`, round and round, over
    DOWNLOAD_CONCURRENCY connections for `seconds`."""
    if not paths:
        raise BenchError("no small files to download")
    requests = [request_head("GET", path, port, {}) for path in paths]
    conns = [await Conn.open(port) for _ in range(DOWNLOAD_CONCURRENCY)]
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
                raise BenchError(f"GET {paths[index]} on :{port}: {status}, {len(body)} B")
            done += 1

    try:
        window.start()
        deadline = time.perf_counter() + seconds
        await run_workers(len(conns), worker)
        elapsed = window.stop()
    finally:
        for conn in conns:
            conn.close()
    return done / elapsed


@dataclass
class BigFile:
    """The big file: `size` bytes made of one random block, and its digest, computed once
    before any clock starts (hashing while sending would take a core from the server)."""

    size: int
    label: str
    block: bytes
    sha256: str
    hash: str

    @classmethod
    def make(cls, size: int, label: str) -> BigFile:
        block = os.urandom(PIECE_BYTES)
        digest = hashlib.sha256()
        big = cls(size, label, block, "", "")
        for piece in big.pieces():
            digest.update(piece)
        big.sha256, big.hash = digest.hexdigest(), public_hash(digest.digest())
        return big

    def another(self) -> BigFile:
        """A file of the same size made of another random block: other bytes, another hash."""
        return BigFile.make(self.size, self.label)

    def pieces(self) -> Iterator[bytes]:
        """The file as pieces of the block (the last may be shorter)."""
        remaining = self.size
        while remaining > 0:
            piece = self.block if remaining >= len(self.block) else self.block[:remaining]
            remaining -= len(piece)
            yield piece


async def big_upload(
    window: Window,
    port: int,
    parts: tuple[bytes, Iterable[bytes], bytes],
    sampled: tuple[Service, list[float]] | None,
    timings: dict[str, Any],
) -> float:
    """MB/s of one request sent as head + pieces + tail; its answer goes in `timings`."""
    head, pieces, tail = parts
    conn = await Conn.open(port)
    sampler = asyncio.create_task(sample_rss(*sampled)) if sampled else None
    sent_bytes = 0
    try:
        window.start()
        started = time.perf_counter()
        try:
            await conn.send(head)
            for piece in pieces:
                await conn.send(piece)
                sent_bytes += len(piece)
            await conn.send(tail)
        except OSError as exc:
            raise BenchError(f"upload cut off: {exc} ({await conn.salvage()})") from exc
        sent = time.perf_counter()
        status, body_length = await conn.read_head()
        timings["answer"] = (status, await conn.read_body(body_length))
        elapsed = window.stop()
    finally:
        if sampler:
            sampler.cancel()
        conn.close()
    timings["seconds_to_last_byte"] = sent - started
    return (sent_bytes / MB) / elapsed


async def big_download(window: Window, port: int, path: str, size: int) -> float:
    """MB/s of downloading the big file, received into one reused buffer."""
    conn = await Conn.open(port)
    scratch = memoryview(bytearray(RECV_BYTES))
    try:
        window.start()
        await conn.send(request_head("GET", path, port, {}))
        status, length = await conn.read_head()
        if status != 200 or length != size:
            raise BenchError(f"GET {path} on :{port}: {status}, Content-Length {length}")
        received = await conn.drain_body(length, scratch)
        elapsed = window.stop()
    finally:
        conn.close()
    return (received / MB) / elapsed


class Bench:
    """Every measurement for one place of the data: the services, then the rows."""

    def __init__(
        self,
        where: str,
        root: Path,
        big: BigFile,
        *,
        quick: bool,
        profile: Path | None,
        s3: Any = None,
    ) -> None:
        self.where = where
        self.s3 = s3  # a started tests/seaweed.SeaweedFS: --storage s3
        self.tmp = Path(tempfile.mkdtemp(prefix="hostd-bench-", dir=root))
        self.big = big
        self.profile = profile
        self.seconds = 1.0 if quick else 5.0
        # Enough prebuilt requests for the baseline's 5 s at a few thousand per second; a
        # phase that runs out ends early, which only makes it shorter.
        self.max_uploads = 3000 if quick else 15000
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.services: list[Service] = []
        # What was uploaded, for the downloads: hostd's (public hash, sha256 hex) pairs and
        # the baseline's file names.
        self.small_files: list[tuple[str, str]] = []
        self.baseline_names: list[str] = []

    def start(self, service: Service) -> Any:
        self.services.append(service)
        service.wait_ready()
        return service

    def phase(self, servers: list[Service], run: Phase) -> Measured:
        """Run one phase in a fresh event loop."""
        window = Window(servers)
        return Measured.of(asyncio.run(run(window)), window)

    def in_turns(
        self, *phases: tuple[list[Service], Callable[[], Phase]], turns: int = UPLOAD_TURNS
    ) -> list[Measured]:
        """Each phase `turns` times, in turns whose order flips each time (A B, B A, ...), so
        that a drift of the machine's speed through the run, or a database that grows with
        each phase, favours none of them; each phase's mean. A phase's work is built
        afresh for each turn."""
        measured: list[list[Measured]] = [[] for _ in phases]
        for turn in range(turns):
            order = list(enumerate(phases))
            for index, (servers, make) in order if turn % 2 == 0 else reversed(order):
                measured[index].append(self.phase(servers, make()))
        return [Measured.mean(each) for each in measured]

    def add(
        self,
        name: str,
        unit: str,
        measured: Measured | None = None,
        *,
        figure: float | None = None,
        **more: Any,
    ) -> Row:
        """Add a row: a measured one, or one with a figure of its own (or none: n/a)."""
        figure = measured.figure if measured else figure
        row = Row(self.where, name, figure, unit, measured=measured, **more)
        self.rows.append(row)
        return row

    def run(self) -> None:
        data_dir = self.tmp / "data"
        self.hostd = self.start(Hostd("hostd", self.tmp, data_dir, profile=self.profile))
        self.baseline = self.start(Baseline(self.tmp))
        self.notes.append(
            f"hostd pid {self.hostd.pid} on :{self.hostd.port}, baseline pid "
            f"{self.baseline.pid} on :{self.baseline.port}, data in {self.tmp} "
            f"({filesystem_type(self.tmp)})"
        )
        self.small_uploads()
        self.postgresql_uploads()
        batch_row = self.add(
            "hostd mean batch size (writes per commit)", "", aim="> 1", why_not="no counter"
        )
        self.big_uploads()
        self.small_downloads()
        self.big_downloads()
        if self.s3 is not None:
            self.on_s3()
        self.through_nginx(data_dir)
        self.hostd.stop()
        batches = self.hostd.writer_batches()
        if batches:
            writes, commits = batches
            batch_row.figure = writes / commits if commits else None
            batch_row.extra = {"writes": writes, "commits": commits}
            self.notes.append(f"hostd's writer: {writes} writes in {commits} commits, whole run")

    def stop(self) -> None:
        for service in reversed(self.services):
            with contextlib.suppress(OSError):
                service.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- 4 KiB uploads

    def hostd_uploads(
        self,
        headers: dict[str, str],
        count: int | None = None,
        *,
        port: int | None = None,
        keep: bool = True,
    ) -> Phase:
        """A phase of distinct random 4 KiB files (`count`, or as many as time allows) to
        hostd's /api/upload (or the one on `port`); every answer must be 200 with the hash
        of what was sent, and the files are kept for the downloads (unless on another port,
        or not to `keep`)."""
        keep = keep and port is None
        port = port or self.hostd.port
        requests: list[bytes] = []
        expected: list[tuple[str, str]] = []
        for number in range(count or self.max_uploads):
            payload = os.urandom(SMALL_BYTES)
            body = part_head(f"small-{number}.bin") + payload + PART_TAIL
            requests.append(upload_head(port, len(body), headers) + body)
            digest = hashlib.sha256(payload)
            expected.append((public_hash(digest.digest()), digest.hexdigest()))

        def check(index: int, status: int, body: bytes) -> None:
            got = upload_answer(status, body)
            if got != expected[index][0]:
                raise BenchError(f"upload {index}: hash {got}, expected {expected[index][0]}")
            if keep:
                self.small_files.append(expected[index])

        return lambda w: upload_rate(w, port, requests, check, self.seconds)

    def baseline_uploads(self, turn: int) -> Phase:
        port = self.baseline.port
        names = [f"small-{turn}-{number}.bin" for number in range(self.max_uploads)]
        requests = [put_head(port, n, SMALL_BYTES) + os.urandom(SMALL_BYTES) for n in names]

        def check(index: int, status: int, body: bytes) -> None:
            put_answer(status, body, names[index])
            self.baseline_names.append(names[index])

        return lambda w: upload_rate(w, port, requests, check, self.seconds)

    def small_uploads(self) -> None:
        """4 KiB uploads/s: the baseline, hostd without a key and hostd with one made by
        `hostd key create`, in turns. The key's Argon2 check runs once, on its first use,
        which comes before the clock starts: the aim is on what every upload costs."""
        self.hostd.cli("user", "add", "bench", "--password-stdin", stdin="bench-password\n")
        key = self.hostd.cli("key", "create", "bench", "--label", "bench").strip()
        bearer_headers = {"Authorization": f"Bearer {key}"}
        self.phase([self.hostd], self.hostd_uploads(bearer_headers, count=1))
        turns = itertools.count()
        baseline, anonymous, bearer = self.in_turns(
            ([self.baseline], lambda: self.baseline_uploads(next(turns))),
            ([self.hostd], lambda: self.hostd_uploads({})),
            ([self.hostd], lambda: self.hostd_uploads(bearer_headers)),
        )
        c = f"c{UPLOAD_CONCURRENCY}"
        base = self.add(f"baseline PUT 4 KiB uploads/s, {c}", "/s", baseline)
        anon = self.add(
            f"hostd 4 KiB uploads/s, {c}",
            "/s",
            anonymous,
            vs="baseline PUT",
            vs_figure=base.figure,
            aim=">= 0.5x",
        )
        self.add(
            f"hostd Bearer 4 KiB uploads/s, {c}",
            "/s",
            bearer,
            vs="anonymous",
            vs_figure=anon.figure,
            aim=">= 0.9x",
        )

    def postgresql_uploads(self) -> None:
        """4 KiB uploads/s of one hostd on PostgreSQL (a private server, its data beside
        hostd's), in turns with the SQLite hostd. PostgreSQL keeps its default synchronous_commit
        on: a commit waits for its WAL flush, the durability of hostd's SQLite (synchronous
        FULL: an upload answered survives a power loss)."""
        bin_dir = find_bin_dir()
        if bin_dir is None:
            self.add("hostd on PostgreSQL 4 KiB uploads/s", "/s", why_not="no PostgreSQL")
            return
        server = PostgresServer(bin_dir, parent=self.tmp.parent, durable=True)
        try:
            server.start()
            url = server.new_empty_database()
            pg = self.start(
                Hostd("hostd-pg", self.tmp, self.tmp / "data-pg", database_url=url, cpu=CPUS[0])
            )
            self.phase([pg], self.hostd_uploads({}, count=1, port=pg.port))
            sqlite, postgresql = self.in_turns(
                ([self.hostd], lambda: self.hostd_uploads({}, keep=False)),
                ([pg], lambda: self.hostd_uploads({}, port=pg.port)),
            )
            c = f"c{UPLOAD_CONCURRENCY}"
            base = self.add(f"hostd on SQLite 4 KiB uploads/s, {c}", "/s", sqlite)
            self.add(
                f"hostd on PostgreSQL 4 KiB uploads/s, {c}",
                "/s",
                postgresql,
                vs="SQLite",
                vs_figure=base.figure,
                aim=">= 0.7x",
            )
            self.instances_behind_nginx(url, pg)
            pg.stop()
            batches = pg.writer_batches()
            if batches:
                self.notes.append(
                    f"hostd on PostgreSQL's writer: {batches[0]} writes in {batches[1]} commits"
                )
        finally:
            server.stop()

    def instances_behind_nginx(self, url: str, first: Hostd) -> None:
        """4 KiB uploads/s through nginx (contrib/nginx.conf, its upstream round robin) to
        one hostd on PostgreSQL, and to two over the same database and data dir, in turns:
        what a second instance adds (README, Scaling out)."""
        c = f"c{UPLOAD_CONCURRENCY}"
        row = f"nginx > 2 hostd on PostgreSQL 4 KiB uploads/s, {c}"
        binary = find_nginx()
        if binary is None:
            self.add(row, "/s", why_not="no nginx")
            return
        data_dir = first.data_dir
        # Each instance on a CPU of its own, as README's Scaling out has it.
        cpu = CPUS[1 % len(CPUS)]
        second = self.start(Hostd("hostd-pg-2", self.tmp, data_dir, database_url=url, cpu=cpu))
        site = contrib_site()

        def front(name: str, hostd_ports: list[int]) -> Nginx:
            port = free_port()
            parts = [
                upstream_to(site.upstream, hostd_ports),
                listening_on(site.tls, port, data_dir / "blobs"),
            ]
            conf = render_nginx(parts, depth=1)
            nginx: Nginx = self.start(Nginx(binary, self.tmp / name, conf, [port]))
            return nginx

        one = front("nginx-one-pg", [first.port])
        two = front("nginx-two-pg", [first.port, second.port])
        single, double = self.in_turns(
            ([one, first], lambda: self.hostd_uploads({}, port=one.port)),
            ([two, first, second], lambda: self.hostd_uploads({}, port=two.port)),
        )
        base = self.add(f"nginx > 1 hostd on PostgreSQL 4 KiB uploads/s, {c}", "/s", single)
        self.add(row, "/s", double, vs="1 instance", vs_figure=base.figure, aim=">= 1.5x")
        one.stop()
        two.stop()
        second.stop()

    # -- the big upload

    def warm_up(self) -> None:
        """warm_memory() for the next big upload, said once in the notes."""
        warmed = warm_memory(WARM_BIG_FILES * self.big.size)
        note = f"before each big upload, wrote and removed {warmed // MiB} MiB in {TMPFS_ROOT}"
        if warmed and note not in self.notes:
            self.notes.append(note)

    def big_uploads(self) -> None:
        """MB/s of big uploads to each, in turns like the small ones (one big upload is a
        single sample, and this box's speed drifts between two of them by a third), and
        hostd's peak RSS while it receives them. Each of hostd's turns sends other bytes,
        so that none finds its file stored already; the last sends self.big, which the
        downloads fetch."""
        big = self.big
        files = iter([*(big.another() for _ in range(UPLOAD_TURNS - 1)), big])
        put = put_head(self.baseline.port, "big.bin", big.size)
        head = part_head("big.bin")
        length = len(head) + big.size + len(PART_TAIL)
        # VmHWM so far covers start-up and the phases before; it is reset (when the kernel
        # lets us) before each upload, so that the figure after it is the upload's own.
        before = self.hostd.status_mib("VmHWM")
        peaks: list[float] = []
        resets: list[bool] = []
        samples: list[float] = []
        timings: dict[str, Any] = {}

        def baseline_turn() -> Phase:
            self.warm_up()

            async def run(window: Window) -> float:
                answer: dict[str, Any] = {}
                parts = (put, big.pieces(), b"")
                figure = await big_upload(window, self.baseline.port, parts, None, answer)
                put_answer(*answer["answer"], "big.bin")
                return figure

            return run

        def hostd_turn() -> Phase:
            sent = next(files)
            request = (upload_head(self.hostd.port, length, {}) + head, sent.pieces(), PART_TAIL)
            was_reset = self.hostd.reset_peak_rss()
            resets.append(was_reset)
            self.warm_up()

            async def run(window: Window) -> float:
                turn_samples: list[float] = []
                sampled = (self.hostd, turn_samples)
                figure = await big_upload(window, self.hostd.port, request, sampled, timings)
                got = upload_answer(*timings["answer"])
                if got != sent.hash:
                    raise BenchError(
                        f"{big.label} upload: the server's hash is {got}, sent {sent.hash}"
                    )
                samples.extend(turn_samples)
                peaks.append(
                    self.hostd.status_mib("VmHWM") if was_reset else max(turn_samples, default=0.0)
                )
                return figure

            return run

        base, measured = self.in_turns(([self.baseline], baseline_turn), ([self.hostd], hostd_turn))
        base_row = self.add(f"baseline PUT {big.label} upload", "MB/s", base)
        self.add(
            f"hostd {big.label} upload",
            "MB/s",
            measured,
            vs="baseline PUT",
            vs_figure=base_row.figure,
            aim=">= 0.8x",
        )
        how = "VmHWM" if all(resets) else f"VmRSS sampled every {RSS_SAMPLE_SECONDS} s"
        self.add(
            f"hostd peak RSS in {big.label} upload ({how})", "MiB", figure=max(peaks), aim="< 64"
        )
        turns = len(peaks)
        self.notes.append(
            f"{turns} {big.label} uploads to hostd: answered after {measured.wall_s / turns:.2f} s "
            f"on average, the last one's last byte sent after "
            f"{timings['seconds_to_last_byte']:.2f} s; hashes verified. Peak RSS before them "
            f"{before:.0f} MiB, max sampled during them {max(samples, default=0.0):.0f} MiB."
        )

    # -- downloads in process

    def small_downloads(self) -> None:
        """The most recent DOWNLOAD_FILES files of each, in turns like the uploads (the
        machine's speed drifts between phases by more than the difference being measured);
        then, once and without an aim, every small file each has, round and round."""
        seconds = self.seconds
        paths = [f"/files/{name}" for name in self.baseline_names]
        hashes = [f"/{public}" for public, _ in self.small_files]
        base_port, hostd_port = self.baseline.port, self.hostd.port
        c = f"c{DOWNLOAD_CONCURRENCY}"
        baseline, hostd = self.in_turns(
            (
                [self.baseline],
                lambda: lambda w: download_rate(w, base_port, recent(paths), seconds),
            ),
            ([self.hostd], lambda: lambda w: download_rate(w, hostd_port, recent(hashes), seconds)),
            turns=DOWNLOAD_TURNS,
        )
        base = self.add(f"baseline StaticFileHandler 4 KiB downloads/s, {c}", "/s", baseline)
        self.add(
            f"hostd 4 KiB downloads/s, {c}",
            "/s",
            hostd,
            vs="baseline static",
            vs_figure=base.figure,
            aim=">= 1.0x",
        )
        every = f"4 KiB downloads/s of all {len(hashes):,} files in turn, {c}"
        base_all = self.add(
            f"baseline {every}",
            "/s",
            self.phase(
                [self.baseline], lambda w: download_rate(w, self.baseline.port, paths, seconds)
            ),
        )
        self.add(
            f"hostd {every}",
            "/s",
            self.phase([self.hostd], lambda w: download_rate(w, self.hostd.port, hashes, seconds)),
            vs="baseline static",
            vs_figure=base_all.figure,
        )

    def big_downloads(self) -> None:
        big = self.big
        base = self.add(
            f"baseline StaticFileHandler {big.label} download",
            "MB/s",
            self.phase(
                [self.baseline],
                lambda w: big_download(w, self.baseline.port, "/files/big.bin", big.size),
            ),
        )
        self.add(
            f"hostd {big.label} download",
            "MB/s",
            self.phase(
                [self.hostd], lambda w: big_download(w, self.hostd.port, f"/{big.hash}", big.size)
            ),
            vs="baseline static",
            vs_figure=base.figure,
        )

    # -- the same rows with the blobs in S3 (--storage s3)

    def figure_of(self, name: str) -> float | None:
        return next((row.figure for row in self.rows if row.name == name), None)

    def on_s3(self) -> None:
        """4 KiB and big uploads and downloads on a second hostd whose store is SeaweedFS on
        loopback, each beside the local-store figure of this run."""
        bucket = self.s3.create_bucket(f"bench-{os.getpid()}-{len(self.s3.buckets)}")
        storage = (
            f'[storage]\nbackend = "s3"\n[storage.s3]\nendpoint = "{self.s3.endpoint}"\n'
            f'bucket = "{bucket}"\npath_style = true\n'
        )
        local, local_files = self.hostd, self.small_files
        self.hostd = self.start(Hostd("hostd-s3", self.tmp, self.tmp / "data-s3", storage=storage))
        self.small_files = []
        try:
            c = f"c{UPLOAD_CONCURRENCY}"
            uploads = [
                self.phase([self.hostd], self.hostd_uploads({})) for _ in range(UPLOAD_TURNS)
            ]
            name = f"hostd 4 KiB uploads/s, {c}"
            self.add(
                f"hostd on S3 4 KiB uploads/s, {c}",
                "/s",
                Measured.mean(uploads),
                vs="hostd local",
                vs_figure=self.figure_of(name),
                aim=">= 0.5x",
            )
            big = self.big
            head = part_head("big.bin")
            length = len(head) + big.size + len(PART_TAIL)
            request = (upload_head(self.hostd.port, length, {}) + head, big.pieces(), PART_TAIL)
            self.hostd.reset_peak_rss()
            samples: list[float] = []
            timings: dict[str, Any] = {}
            self.warm_up()
            measured = self.phase(
                [self.hostd],
                lambda w: big_upload(w, self.hostd.port, request, (self.hostd, samples), timings),
            )
            if upload_answer(*timings["answer"]) != big.hash:
                raise BenchError(f"{big.label} upload to hostd on S3: wrong hash")
            self.add(
                f"hostd on S3 {big.label} upload",
                "MB/s",
                measured,
                vs="hostd local",
                vs_figure=self.figure_of(f"hostd {big.label} upload"),
                aim=">= 0.5x",
            )
            peak = max(self.hostd.status_mib("VmHWM"), max(samples, default=0.0))
            self.add(f"hostd on S3 peak RSS in {big.label} upload", "MiB", figure=peak, aim="< 100")
            c = f"c{DOWNLOAD_CONCURRENCY}"
            hashes = [f"/{public}" for public, _ in self.small_files]
            self.add(
                f"hostd on S3 4 KiB downloads/s, {c}",
                "/s",
                self.phase(
                    [self.hostd],
                    lambda w: download_rate(w, self.hostd.port, hashes, self.seconds),
                ),
                vs="hostd local",
                vs_figure=self.figure_of(f"hostd 4 KiB downloads/s, {c}"),
            )
            self.add(
                f"hostd on S3 {big.label} download",
                "MB/s",
                self.phase(
                    [self.hostd],
                    lambda w: big_download(w, self.hostd.port, f"/{big.hash}", big.size),
                ),
                vs="hostd local",
                vs_figure=self.figure_of(f"hostd {big.label} download"),
                aim=">= 0.5x",
            )
        finally:
            self.hostd.stop()
            self.hostd, self.small_files = local, local_files

    # -- through nginx

    def through_nginx(self, data_dir: Path) -> None:
        """Downloads through nginx running contrib/nginx.conf: proxied to hostd, served by
        nginx from hostd's blob directory as static files, and, once it is built, proxied to
        a hostd that answers with X-Accel-Redirect."""
        big, seconds = self.big, self.seconds
        binary = find_nginx()
        no_nginx = "" if binary else "no nginx"
        accel_prefix, no_accel = accel_redirect_prefix()
        no_accel = no_nginx or no_accel
        port, accel_port = free_port(), free_port()
        nginx: Nginx | None = None
        accel_hostd: Hostd | None = None
        statics: list[str] = []
        big_static = ""
        if binary:
            blobs_dir = load_config(None, {"data_dir": data_dir}).blobs_dir
            # As README's Deploying says for a small box: nginx on every CPU but the one
            # hostd's IOLoop is pinned to (server.cpu), which the second hostd shares.
            home = os.sched_getaffinity(self.hostd.pid)  # the main thread's: the IOLoop's
            cpu = min(home) if len(home) == 1 else None
            elsewhere = set(CPUS) - home or None
            if elsewhere:
                self.notes.append(
                    f"nginx ran on CPU {','.join(map(str, sorted(elsewhere)))}, hostd's"
                    f" IOLoop on CPU {cpu} (README, Deploying)"
                )
            if not no_accel:
                # A second hostd on the same data dir, with accel_redirect set, so that the
                # first one's in-process figures stay what they are.
                accel_hostd = self.start(
                    Hostd("hostd-accel", self.tmp, data_dir, accel_redirect=accel_prefix, cpu=cpu)
                )
            accel = (accel_hostd.port, accel_port) if accel_hostd else None
            site = nginx_site(self.hostd.port, port, blobs_dir, accel)
            ports = [port, accel_port] if accel else [port]
            nginx = self.start(Nginx(binary, self.tmp / "nginx", site, ports, elsewhere))
            located = blob_paths(blobs_dir)
            wanted = [sha for _, sha in self.small_files] + [big.sha256]
            if any(sha not in located for sha in wanted):
                raise BenchError(f"no file named after a blob's SHA-256 under {blobs_dir}")
            statics = [f"{STATIC_PREFIX}{located[sha]}" for _, sha in recent(self.small_files)]
            big_static = f"{STATIC_PREFIX}{located[big.sha256]}"
        hashes = [f"/{public}" for public, _ in recent(self.small_files)]
        via_hostd, via_accel = [nginx, self.hostd], [nginx, accel_hostd]

        def row(name: str, servers: list[Any], run: Phase, why_not: str, **more: Any) -> Row:
            """A row through nginx, or, with `why_not`, one that says why it is n/a."""
            unit = "/s" if "/s" in name else "MB/s"
            if why_not:
                return self.add(name, unit, why_not=why_not, **more)
            return self.add(name, unit, self.phase(servers, run), **more)

        small = f"4 KiB downloads/s, c{DOWNLOAD_CONCURRENCY}"
        row(
            f"nginx static {small}",
            [nginx],
            lambda w: download_rate(w, port, statics, seconds),
            no_nginx,
        )

        # hostd on its own, through nginx, and through nginx with accel_redirect, in turns:
        # the in-process figure of small_downloads() was taken minutes earlier, and this
        # box's speed drifts by more than the difference measured here.
        def downloads(at: int) -> Callable[[], Phase]:
            return lambda: lambda w: download_rate(w, at, hashes, seconds)

        phases = [([self.hostd], downloads(self.hostd.port))]
        phases += [] if no_nginx else [(via_hostd, downloads(port))]
        phases += [] if no_accel else [(via_accel, downloads(accel_port))]
        measured = iter(self.in_turns(*phases, turns=DOWNLOAD_TURNS))
        alone = self.add(f"hostd {small}, in turns with nginx's", "/s", next(measured))
        in_process = {"vs": "hostd in-process", "vs_figure": alone.figure}
        through = {"aim": ">= 0.9x", **in_process}
        name = f"nginx > hostd {small}"
        self.add(name, "/s", None if no_nginx else next(measured), why_not=no_nginx, **through)
        # The accel_redirect rows: measured once hostd's config accepts server.accel_redirect
        # and contrib/nginx.conf has its internal location; "n/a (not built)" until then.
        name = f"nginx > hostd accel_redirect {small}"
        self.add(name, "/s", None if no_accel else next(measured), why_not=no_accel, **through)
        static = row(
            f"nginx static {big.label} download",
            [nginx],
            lambda w: big_download(w, port, big_static, big.size),
            no_nginx,
        )
        vs_static = {"vs": "nginx static", "vs_figure": static.figure}
        row(
            f"nginx > hostd {big.label} download",
            via_hostd,
            lambda w: big_download(w, port, f"/{big.hash}", big.size),
            no_nginx,
            **vs_static,
        )
        row(
            f"nginx > hostd accel_redirect {big.label} download",
            via_accel,
            lambda w: big_download(w, accel_port, f"/{big.hash}", big.size),
            no_accel,
            aim=">= 0.8x",
            **vs_static,
        )


def blob_paths(blobs_dir: Path) -> dict[str, str]:
    """Where each blob lies under `blobs_dir`, by its file name (its SHA-256 in hex)."""
    return {
        name: Path(top, name).relative_to(blobs_dir).as_posix()
        for top, _, names in os.walk(blobs_dir)
        for name in names
    }


# --- output ----------------------------------------------------------------------------


def number(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}" if value >= 1000 else f"{value:,.1f}"


def share(seconds: float, wall: float) -> str:
    """CPU seconds as a share of one core over the wall time."""
    return f"{100 * seconds / wall:.0f}%" if wall else ""


def table(rows: list[Row]) -> str:
    header = [
        "data",
        "measurement",
        "figure",
        "unit",
        "vs",
        "its figure",
        "ratio",
        "aim",
        "met",
        "wall s",
        "servers CPU",
        "IOLoop",
        "client CPU",
        "other CPU",
    ]
    lines = [header]
    for row in rows:
        m = row.measured
        ratio = row.ratio
        aim_pending = row.aim and row.figure is None
        lines.append(
            [
                row.where,
                row.name,
                number(row.figure) if row.figure is not None else f"n/a ({row.why_not})",
                row.unit,
                row.vs,
                number(row.vs_figure),
                "" if ratio is None else f"{ratio:.2f}x",
                row.aim,
                "n/a" if aim_pending else {True: "yes", False: "NO", None: ""}[row.ok],
                f"{m.wall_s:.1f}" if m else "",
                share(m.server_cpu_s, m.wall_s) if m else "",
                share(m.loop_cpu_s, m.wall_s) if m and m.loop_cpu_s else "",
                share(m.client_cpu_s, m.wall_s) if m else "",
                share(m.other_cpu_s, m.wall_s) if m else "",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    left = {0, 1, 3, 4, 7, 8}
    out = []
    for index, line in enumerate(lines):
        if index > 1 and line[0] != lines[index - 1][0]:
            out.append("")
        cells = [
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def environment() -> dict[str, Any]:
    nginx = find_nginx()
    nginx_version = (
        subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
        if nginx
        else "none"
    )
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "tornado": importlib.metadata.version("tornado"),
        "nginx": nginx_version.removeprefix("nginx version: "),
        "nproc": len(os.sched_getaffinity(0)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run: 64 MiB, 1 s phases")
    parser.add_argument(
        "--data-on",
        choices=("tmpfs", "disk", "both"),
        default="both",
        help=f"where the data dirs live: tmpfs ({TMPFS_ROOT}), a disk, or each in turn",
    )
    parser.add_argument(
        "--disk-dir", type=Path, help="a directory on a disk (default: /var/tmp or $TMPDIR)"
    )
    parser.add_argument(
        "--storage",
        choices=("local", "s3"),
        default="local",
        help="s3: also run the upload and download rows on a hostd whose store is SeaweedFS",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit with status 1 when a figure misses its aim or a row with an aim is n/a",
    )
    parser.add_argument(
        "--server-profile",
        type=Path,
        metavar="FILE",
        help="run hostd under cProfile, writing its stats to FILE-<data place> (slower figures)",
    )
    args = parser.parse_args(argv)

    env = environment()
    print(
        f"Python {env['python']}, Tornado {env['tornado']}, nginx {env['nginx']},"
        f" nproc {env['nproc']}"
    )
    rows: list[Row] = []
    notes: list[str] = []
    try:
        places = data_places(args.data_on, args.disk_dir)
        big = BigFile.make(64 * MiB, "64 MiB") if args.quick else BigFile.make(GiB, "1 GiB")
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    profiles: list[Path] = []
    weed = start_seaweedfs() if args.storage == "s3" else None
    try:
        return measure_all(args, places, big, env, weed, rows, notes, profiles)
    finally:
        if weed is not None:
            weed.stop()
            shutil.rmtree(weed.root, ignore_errors=True)


def start_seaweedfs() -> Any:
    """tests/seaweed.py's SeaweedFS (the test extra's `weed`), with its keys in the
    environment that the hostd processes inherit."""
    sys.path.insert(0, str(ROOT / "tests"))
    from seaweed import ACCESS_KEY, SECRET_KEY, SeaweedFS

    os.environ["AWS_ACCESS_KEY_ID"] = ACCESS_KEY
    os.environ["AWS_SECRET_ACCESS_KEY"] = SECRET_KEY
    print("starting SeaweedFS ...", flush=True)
    return SeaweedFS(Path(tempfile.mkdtemp(prefix="hostd-bench-weed-"))).start()


def measure_all(
    args: argparse.Namespace,
    places: list[tuple[str, Path]],
    big: BigFile,
    env: dict[str, Any],
    weed: Any,
    rows: list[Row],
    notes: list[str],
    profiles: list[Path],
) -> int:
    for where, root in places:
        profile = None
        if args.server_profile:
            profile = args.server_profile.with_name(f"{args.server_profile.name}-{where}")
            profiles.append(profile)
        print(f"measuring with the data on {where} ({root}) ...", flush=True)
        bench = Bench(where, root, big, quick=args.quick, profile=profile, s3=weed)
        try:
            bench.run()
        except (BenchError, OSError) as exc:
            print(f"bench failed: {exc!r}", file=sys.stderr)
            for service in bench.services:
                print(f"{service.name} log (last lines):\n{service.log()}", file=sys.stderr)
            if bench.rows or rows:
                print(table(rows + bench.rows), file=sys.stderr)
            return 1
        finally:
            bench.stop()
        rows += bench.rows
        notes += [f"[{where}] {note}" for note in bench.notes]

    print()
    print(table(rows))
    print()
    for note in notes:
        print(note)
    print(
        "Ratios are to the figure in `vs`, from the same run: aims ending in x are on the"
        " ratio.\nCPU: utime+stime of the servers the requests went through (all threads and"
        " processes),\nof hostd's or the baseline's IOLoop thread alone, of the client and of"
        " the rest of the machine,\nas a share of one core over the timed part of each phase;"
        " when `other` is high, the box was busy."
    )
    if args.json:
        report = {**env, "quick": args.quick, "rows": [row.as_json() for row in rows]}
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    busy = sorted(
        {
            row.where
            for row in rows
            if row.measured and row.measured.other_cpu_s > 0.25 * row.measured.wall_s
        }
    )
    if busy:
        print(f"warning: something else used over 25% of a core during phases on: {busy}")
    missed = [f"{row.where}: {row.name}" for row in rows if row.ok is False]
    pending = [f"{row.where}: {row.name}" for row in rows if row.aim and row.figure is None]
    if missed:
        print("missed aims:\n  " + "\n  ".join(missed))
    if pending:
        print("aims not measured:\n  " + "\n  ".join(pending))
    for profile in profiles:
        print(f"hostd profile: .venv/bin/python -m pstats {profile}")
    return 1 if (missed or pending) and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
