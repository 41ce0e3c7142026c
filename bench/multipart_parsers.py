"""Measure three streaming multipart/form-data parsers on hostd's upload workload.

hostd receives uploads in a Tornado ``@stream_request_body`` handler: the body arrives in
``data_received()`` chunks of (at most) 64 KiB and must be parsed as it streams, never
buffered whole. This script compares the push parsers that fit that shape:

* ``multipart`` (defnull) ``PushMultipartParser``: pure Python, yields events;
* ``python-multipart`` (``import python_multipart``) ``MultipartParser``: pure Python,
  callbacks (the low-level parser, not ``FormParser``, which buffers to temporary files);
* ``streaming-form-data`` ``StreamingFormDataParser``: Cython, per-field "targets".

1. Throughput: a 1 GiB file part (field ``file``, filename ``big.bin``, after a small
   ``api=1`` field) generated on the fly from a repeated 1 MiB ``os.urandom`` block and fed
   in 64 KiB chunks; the file bytes are hashed with SHA-256 and the digest is checked. The
   same run with a no-op sink gives the parser-only figure. Two 256 MiB variants: an
   adversarial file (every KiB holds ``\\r\\n--`` + 20 boundary characters, cut by every
   64 KiB chunk end, then back-to-back near-miss prefixes of the delimiter) to expose slow or
   quadratic scanning, and 4 KiB chunks (Tornado reads with partial=True, so chunks are only
   *up to* 64 KiB). Each figure is the best of several runs, also by process CPU time.
2. Malformed input: what each parser does with broken or hostile bodies, and how to tell
   that the body ended before the closing boundary (each parser differs here).

Every parser sits behind a small adapter with the same ``feed(chunk)`` / ``close()`` shape;
the adapters are the exact API usage measured. MB = 10**6 bytes. Run from the repository:

    make bench-parsers                           # installs the two others, full run
    .venv/bin/python bench/multipart_parsers.py --quick    # 64 MiB / 16 MiB smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any, Protocol

import multipart
import python_multipart
from python_multipart.multipart import MultipartState
from python_multipart.multipart import parse_options_header as pm_parse_options_header
from streaming_form_data import StreamingFormDataParser
from streaming_form_data.targets import BaseTarget

CHUNK = 64 * 1024  # most Tornado hands data_received() (HTTP1ConnectionParameters.chunk_size)
MIB = 1024 * 1024
BOUNDARY = "----hostdBenchBoundary7MA4YWxkTrZu0gW"  # browser-like: 38 chars, leading dashes
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
FILE_HEAD = (
    'Content-Disposition: form-data; name="file"; filename="big.bin"\r\n'
    "Content-Type: application/octet-stream\r\n\r\n"
)
API_PART = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="api"\r\n\r\n1\r\n'
HEAD = (API_PART + f"--{BOUNDARY}\r\n" + FILE_HEAD).encode()
TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()
MAX_SECONDS_PER_RUN = 150.0  # a slower parser is measured on 256 MiB and extrapolated
# python_multipart logs a warning for every parse error; keep the report clean.
logging.getLogger("python_multipart").addHandler(logging.NullHandler())


# --------------------------------------------------------------------------- sinks


@dataclass
class PartRecord:
    """What a parser told us about one part."""

    name: str | bytes | None
    filename: str | bytes | None
    content_type: str | bytes | None
    size: int = 0
    ended: bool = False


class Sink:
    """Receives part events from an adapter and records every part (name, size, end)."""

    def __init__(self) -> None:
        self.parts: list[PartRecord] = []
        self.max_data_call = 0
        self.data_calls = 0

    def start_part(
        self, name: str | bytes | None, filename: str | bytes | None, ctype: str | bytes | None
    ) -> None:
        self.parts.append(PartRecord(name, filename, ctype))

    def data(self, buf: bytes | memoryview) -> None:
        n = len(buf)
        self.parts[-1].size += n
        self.data_calls += 1
        if n > self.max_data_call:
            self.max_data_call = n

    def end_part(self) -> None:
        self.parts[-1].ended = True


class HashSink(Sink):
    """Also feeds the bytes of the part named ``file`` to SHA-256."""

    def __init__(self) -> None:
        super().__init__()
        self.sha = hashlib.sha256()
        self._hashing = False

    def start_part(
        self, name: str | bytes | None, filename: str | bytes | None, ctype: str | bytes | None
    ) -> None:
        super().start_part(name, filename, ctype)
        self._hashing = name in ("file", b"file")

    def data(self, buf: bytes | memoryview) -> None:
        super().data(buf)
        if self._hashing:
            self.sha.update(buf)


# --------------------------------------------------------------------------- adapters


class Incomplete(Exception):
    """Raised by an adapter's close() when it detects, by its own check, that the body ended
    before the closing boundary (used where the parser itself has no way to say so)."""


class Adapter(Protocol):
    def feed(self, chunk: bytes) -> None: ...

    def close(self) -> None: ...


class MultipartPush:
    """``multipart.PushMultipartParser``: parse(chunk) yields MultipartSegment (headers
    done), bytes (body data) or None (part ended); parse(b"") / close() is end of input and
    raises ParserError if the closing boundary never came."""

    label = "multipart"

    def __init__(self, content_type: str, sink: Sink, **options: Any) -> None:
        _, params = multipart.parse_options_header(content_type)
        self._parser = multipart.PushMultipartParser(params["boundary"], **options)
        self._sink = sink

    def feed(self, chunk: bytes) -> None:
        sink = self._sink
        for event in self._parser.parse(chunk):
            if isinstance(event, bytes):
                sink.data(event)
            elif event is None:
                sink.end_part()
            else:
                sink.start_part(event.name, event.filename, event.content_type)

    def close(self) -> None:
        self.feed(b"")  # ParserError("Unexpected end of multipart stream ...") if incomplete


class PythonMultipart:
    """``python_multipart.MultipartParser`` with callbacks. Header name/value arrive in
    pieces (on_header_field / on_header_value, possibly split across chunks) and are
    collected until on_headers_finished; body data arrives as (data, start, end) slices.
    finalize() is a no-op in 0.0.34, so end of input is checked with ``parser.state``."""

    label = "python-multipart"

    def __init__(self, content_type: str, sink: Sink, **options: Any) -> None:
        _, params = pm_parse_options_header(content_type)
        self._sink = sink
        self._hname: list[bytes] = []
        self._hvalue: list[bytes] = []
        self._headers: dict[bytes, bytes] = {}
        callbacks: Any = {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": sink.end_part,
        }
        self._parser = python_multipart.MultipartParser(params[b"boundary"], callbacks, **options)

    def _on_part_begin(self) -> None:
        self._headers = {}

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._hname.append(data[start:end])

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._hvalue.append(data[start:end])

    def _on_header_end(self) -> None:
        self._headers[b"".join(self._hname).lower()] = b"".join(self._hvalue)
        self._hname.clear()
        self._hvalue.clear()

    def _on_headers_finished(self) -> None:
        _, params = pm_parse_options_header(self._headers.get(b"content-disposition"))
        ctype = self._headers.get(b"content-type")
        self._sink.start_part(params.get(b"name"), params.get(b"filename"), ctype)

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._sink.data(memoryview(data)[start:end])

    def feed(self, chunk: bytes) -> None:
        self._parser.write(chunk)

    def close(self) -> None:
        self._parser.finalize()  # does nothing yet (a TODO in the source)
        state = MultipartState(self._parser.state)
        if state is not MultipartState.END:
            raise Incomplete(f"parser.state is {state.name}, not END")


class _SfdTarget(BaseTarget):
    """Forwards one registered field's events to the sink."""

    def __init__(self, name: str, adapter: StreamingFormData) -> None:
        super().__init__()
        self._name = name
        self._adapter = adapter

    def on_start(self) -> None:
        self._adapter.open_parts += 1
        sink = self._adapter.sink
        sink.start_part(self._name, self.multipart_filename, self.multipart_content_type)

    def on_data_received(self, chunk: bytes) -> None:
        self._adapter.sink.data(chunk)

    def on_finish(self) -> None:
        # Also called by the parser when it hits an error, before data_received() raises.
        self._adapter.open_parts -= 1
        # Content-Type is only known here when its header line follows Content-Disposition.
        self._adapter.sink.parts[-1].content_type = self.multipart_content_type
        self._adapter.sink.end_part()


# streaming_form_data/_parser.pyx ParserState, in declaration order (2.1.0).
_SFD_STATES = (
    "START",
    "START_CR",
    "STARTING_BOUNDARY",
    "READING_BOUNDARY",
    "ENDING_BOUNDARY",
    "READING_HEADER",
    "ENDING_HEADER",
    "ENDED_HEADER",
    "ENDING_ALL_HEADERS",
    "READING_BODY",
    "END",
    "ERROR",
)


class StreamingFormData:
    """``streaming_form_data.StreamingFormDataParser``: built from the request headers;
    register(name, target) per expected field (other fields are dropped silently);
    data_received(chunk). The target learns the filename/content type, not the headers.

    The parser has no close()/finish and exposes no state, so end of input is checked
    here: every started part must have finished, and the raw body must end with the
    closing delimiter. (The private parser state is read through Cython's pickle support,
    only to show that the public-API check agrees; do not rely on that.)"""

    label = "streaming-form-data"

    def __init__(self, content_type: str, sink: Sink, **options: Any) -> None:
        self.sink = sink
        self.open_parts = 0
        self._parser = StreamingFormDataParser({"Content-Type": content_type}, **options)
        boundary = multipart.parse_options_header(content_type)[1]["boundary"].encode()
        self._ender = b"--" + boundary + b"--"
        self._tail = b""
        for name in ("file", "api"):
            self._parser.register(name, _SfdTarget(name, self))

    def feed(self, chunk: bytes) -> None:
        self._tail = (self._tail + chunk[-len(self._ender) - 8 :])[-len(self._ender) - 8 :]
        self._parser.data_received(chunk)

    def private_state(self) -> str:
        try:
            state = self._parser._parser.__reduce_cython__()[2][11]
            return _SFD_STATES[state]
        except Exception as exc:
            return f"unknown ({exc!r})"

    def close(self) -> None:
        ended = self._tail.rstrip(b"\r\n\t ").endswith(self._ender)
        if self.open_parts or not ended:
            raise Incomplete(
                f"{self.open_parts} part(s) never finished, body ends with closing delimiter:"
                f" {ended} (private parser state {self.private_state()})"
            )


AdapterClass = type[MultipartPush] | type[PythonMultipart] | type[StreamingFormData]
ADAPTERS: list[AdapterClass] = [
    MultipartPush,
    PythonMultipart,
    StreamingFormData,
]


# --------------------------------------------------------------------------- bodies


def random_block() -> bytes:
    """1 MiB of os.urandom, the unit the file content repeats."""
    return os.urandom(MIB)


def adversarial_block() -> bytes:
    """1 MiB that keeps boundary scanners busy. Every KiB holds ``\\r\\n--`` + the boundary's
    first 20 characters, placed so that each 64 KiB chunk of the body ends 10 bytes into it,
    then back-to-back near misses: prefixes of the delimiter ``\\r\\n--BOUNDARY`` of 4, 6,
    12, 24 and 41 (of 42) bytes, each followed by a NUL byte and 8 random bytes."""
    delimiter = b"\r\n--" + BOUNDARY.encode()
    # body offset k*CHUNK is file offset k*CHUNK - len(HEAD); cut each partial after 10 bytes
    start = (-len(HEAD) - 10) % 1024
    runs = [(start, delimiter[:24])]
    pos, lengths = start + 32, (4, 6, 12, 24, len(delimiter) - 1)
    while pos + len(delimiter) + 9 < start + 1024:
        seq = delimiter[: lengths[len(runs) % len(lengths)]] + b"\0"
        runs.append((pos, seq))
        pos += len(seq) + 8
    kibs = []
    for _ in range(1024):
        kib = bytearray(os.urandom(1024))
        for pos, seq in runs:
            for i, byte in enumerate(seq):
                kib[(pos + i) % 1024] = byte
        kibs.append(bytes(kib))
    return b"".join(kibs)


def body_chunks(file_size: int, block: bytes, chunk: int = CHUNK) -> Iterator[bytes]:
    """The multipart body (api field, file part of ``file_size`` bytes of ``block`` repeated,
    closing delimiter) as ``chunk``-sized pieces, made on the fly."""
    ring = block + block[:chunk]  # any <= chunk-long run of the content is one slice of this
    head_len, total = len(HEAD), len(HEAD) + file_size + len(TAIL)
    pos = 0
    while pos < total:
        end = min(pos + chunk, total)
        if pos >= head_len and end <= head_len + file_size:  # the common case: all content
            off = (pos - head_len) % len(block)
            yield ring[off : off + end - pos]
        else:
            pieces = []
            if pos < head_len:
                pieces.append(HEAD[pos:end])
            c0, c1 = max(pos, head_len) - head_len, min(end, head_len + file_size) - head_len
            if c1 > c0:
                off = c0 % len(block)
                pieces.append(ring[off : off + c1 - c0])
            t0 = max(pos, head_len + file_size) - head_len - file_size
            t1 = end - head_len - file_size
            if t1 > t0:
                pieces.append(TAIL[t0:t1])
            yield b"".join(pieces)
        pos = end


def expected_digest(file_size: int, block: bytes) -> str:
    sha = hashlib.sha256()
    full, rest = divmod(file_size, len(block))
    for _ in range(full):
        sha.update(block)
    sha.update(block[:rest])
    return sha.hexdigest()


# --------------------------------------------------------------------------- throughput


@dataclass
class ThroughputRow:
    """One parser x content x sink, over several repeats (best and median are reported)."""

    parser: str
    scenario: str
    sink: str
    size: int
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    ok: str = "-"
    max_call: int = 0
    calls: int = 0
    note: str = ""

    def mb_s(self, seconds: float) -> float:
        return self.size / seconds / 1e6 if seconds > 0 else float("inf")


def run_once(
    adapter_cls: AdapterClass | None,
    block: bytes,
    size: int,
    hashing: bool,
    digest: str | None,
    chunk_size: int = CHUNK,
) -> tuple[float, float, str, Sink]:
    """Feed one generated body to one parser: (wall s, CPU s, check, sink). adapter_cls None
    measures the generator alone (with hashing: generator + SHA-256, the ceiling)."""
    sink: Sink = HashSink() if hashing else Sink()
    w0, c0 = time.perf_counter(), time.process_time()
    if adapter_cls is None:
        sink.start_part("file", "big.bin", None)
        for chunk in body_chunks(size, block, chunk_size):
            sink.data(chunk)
        return time.perf_counter() - w0, time.process_time() - c0, "-", sink
    adapter: Adapter = adapter_cls(CONTENT_TYPE, sink)
    for chunk in body_chunks(size, block, chunk_size):
        adapter.feed(chunk)
    adapter.close()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    files = [p for p in sink.parts if p.name in ("file", b"file")]
    fields = [p for p in sink.parts if p.name in ("api", b"api")]
    problems = []
    if len(files) != 1 or files[0].size != size or not files[0].ended:
        problems.append(f"file part {files!r}")
    if len(fields) != 1 or fields[0].size != 1:
        problems.append(f"api field {fields!r}")
    if isinstance(sink, HashSink) and digest is not None:
        ok = "sha ok" if sink.sha.hexdigest() == digest else "SHA MISMATCH"
    else:
        ok = "size ok"
    if problems:
        ok = "WRONG: " + "; ".join(problems)
    return wall, cpu, ok, sink


def throughput(size: int, adv_size: int, repeat: int) -> list[ThroughputRow]:
    """Every (content, sink) combination, repeats interleaved across parsers so that load
    from other processes spreads evenly over them."""
    rows: list[ThroughputRow] = []
    plain = random_block()
    contents = {  # name: (1 MiB block, file size, chunk size)
        "random": (plain, size, CHUNK),
        "adversarial": (adversarial_block(), adv_size, CHUNK),
        # Tornado reads with partial=True: chunks are *up to* 64 KiB, smaller on slow links.
        "random/4KiB": (plain, adv_size, 4096),
    }
    runners: list[tuple[str, AdapterClass | None]] = [("(generator)", None)]
    runners += [(cls.label, cls) for cls in ADAPTERS]
    for scenario, (block, full, chunk_size) in contents.items():
        sizes: dict[str, int] = {}
        notes: dict[str, str] = {}
        for label, cls in runners:
            # Probe 16 MiB first; measure a slow parser on 256 MiB and extrapolate.
            wall = run_once(cls, block, 16 * MIB, False, None, chunk_size)[0]
            sizes[label], notes[label] = full, ""
            if full > 256 * MIB and wall * full / (16 * MIB) > MAX_SECONDS_PER_RUN:
                sizes[label] = 256 * MIB
                notes[label] = f"measured on 256 of {full // MIB} MiB"
        digests = {n: expected_digest(n, block) for n in set(sizes.values())}
        for hashing in (False, True):
            sink_name = "sha256" if hashing else "no-op"
            batch = {
                label: ThroughputRow(label, scenario, sink_name, sizes[label], note=notes[label])
                for label, _ in runners
            }
            for _ in range(repeat):
                for label, cls in runners:
                    row = batch[label]
                    wall, cpu, ok, sink = run_once(
                        cls, block, row.size, hashing, digests[row.size], chunk_size
                    )
                    row.wall.append(wall)
                    row.cpu.append(cpu)
                    row.ok = ok if row.ok in ("-", ok) else f"{row.ok} / {ok}"
                    row.max_call, row.calls = sink.max_data_call, sink.data_calls
                    log(row)
            rows.extend(batch.values())
    return rows


# --------------------------------------------------------------------------- malformed input


def part_body(disposition: str, payload: bytes, extra: str = "") -> bytes:
    return (
        f"--{BOUNDARY}\r\n{extra}Content-Disposition: {disposition}\r\n\r\n".encode()
        + payload
        + b"\r\n"
    )


VALID = (
    part_body('form-data; name="api"', b"1")
    + f"--{BOUNDARY}\r\n{FILE_HEAD}".encode()
    + b"hello\r\n--not-a-boundary\r\n"
    + TAIL
)
FILE_PART_START = f"--{BOUNDARY}\r\n{FILE_HEAD}".encode()
FEW_BYTES = b"0123456789" * 300


def raw_file_part(disposition_line: bytes) -> bytes:
    return (
        f"--{BOUNDARY}\r\n".encode()
        + disposition_line
        + b"\r\nContent-Type: text/plain\r\n\r\nabc"
        + TAIL
    )


@dataclass
class Case:
    key: str
    title: str
    body: bytes
    content_type: str = CONTENT_TYPE
    chunk: int = CHUNK
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    only: tuple[str, ...] = ()


def cases() -> list[Case]:
    ten_k = b"".join(part_body('form-data; name="api"', b"1") for _ in range(10_000)) + TAIL[2:]
    return [
        Case("ok", "valid body (api=1 + file 'hello\\r\\n--not-a-boundary')", VALID),
        Case("ok1", "same valid body fed 1 byte per chunk", VALID, chunk=1),
        Case(
            "ok1S",
            "same, multipart strict=True (the final CRLF arrives in a chunk of its own)",
            VALID,
            chunk=1,
            options={"multipart": {"strict": True}},
            only=("multipart",),
        ),
        Case("a", "not multipart at all: 'hello world'", b"hello world"),
        Case("b1", "truncated in the middle of file data", FILE_PART_START + FEW_BYTES),
        Case(
            "b2",
            "truncated right after a part delimiter (\\r\\n--B\\r\\n)",
            FILE_PART_START + FEW_BYTES + f"\r\n--{BOUNDARY}\r\n".encode(),
        ),
        Case(
            "b3",
            "closing delimiter lacks its final '--' (ends ...\\r\\n--B)",
            FILE_PART_START + FEW_BYTES + f"\r\n--{BOUNDARY}".encode(),
        ),
        Case(
            "c",
            "part without Content-Disposition (only Content-Type)",
            f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nabc".encode() + TAIL,
        ),
        Case(
            "d",
            "garbage header line without a colon",
            f"--{BOUNDARY}\r\nthis is not a header\r\n{FILE_HEAD}abc".encode() + TAIL,
        ),
        Case(
            "e",
            "body boundary differs from the Content-Type boundary",
            VALID.replace(BOUNDARY.encode(), b"SomeOtherBoundary1234"),
        ),
        Case(
            "eS",
            "e with multipart strict=True",
            VALID.replace(BOUNDARY.encode(), b"SomeOtherBoundary1234"),
            options={"multipart": {"strict": True}},
            only=("multipart",),
        ),
        Case(
            "f1",
            "100 KB header line (X-Pad: aaaa...)",
            f"--{BOUNDARY}\r\nX-Pad: {'a' * 100_000}\r\n{FILE_HEAD}abc".encode() + TAIL,
        ),
        Case(
            "f2",
            "8 MiB header line, in 64 KiB chunks (time it)",
            f"--{BOUNDARY}\r\nX-Pad: {'a' * 8 * MIB}\r\n{FILE_HEAD}abc".encode() + TAIL,
        ),
        Case(
            "f3",
            "32 MiB header line, in 64 KiB chunks (4x f2: linear or not?)",
            f"--{BOUNDARY}\r\nX-Pad: {'a' * 32 * MIB}\r\n{FILE_HEAD}abc".encode() + TAIL,
        ),
        Case(
            "g1",
            'filename="../../etc/passwd"',
            raw_file_part(
                b'Content-Disposition: form-data; name="file"; filename="../../etc/passwd"'
            ),
        ),
        Case(
            "g2",
            'filename with invalid UTF-8: b"caf\\xe9-\\xff.bin"',
            raw_file_part(
                b'Content-Disposition: form-data; name="file"; filename="caf\xe9-\xff.bin"'
            ),
        ),
        Case(
            "g2L",
            "g2 with multipart header_charset='latin-1'",
            raw_file_part(
                b'Content-Disposition: form-data; name="file"; filename="caf\xe9-\xff.bin"'
            ),
            options={"multipart": {"header_charset": "latin-1"}},
            only=("multipart",),
        ),
        Case(
            "g3",
            'Windows path: filename="C:\\Users\\me\\a.txt"',
            raw_file_part(
                b'Content-Disposition: form-data; name="file"; filename="C:\\Users\\me\\a.txt"'
            ),
        ),
        Case("h", "10,000 tiny parts (api=1 each)", ten_k),
        Case(
            "hL",
            "h with multipart max_segment_count=16",
            ten_k,
            options={"multipart": {"max_segment_count": 16}},
            only=("multipart",),
        ),
        Case(
            "i1",
            "only filename*=UTF-8''na%C3%AFve.txt (RFC 5987)",
            raw_file_part(
                b"Content-Disposition: form-data; name=\"file\"; filename*=UTF-8''na%C3%AFve.txt"
            ),
        ),
        Case(
            "i2",
            "filename=\"naive.txt\"; filename*=UTF-8''na%C3%AFve.txt",
            raw_file_part(
                b'Content-Disposition: form-data; name="file"; filename="naive.txt"; '
                b"filename*=UTF-8''na%C3%AFve.txt"
            ),
        ),
    ]


@dataclass
class CaseResult:
    key: str
    parser: str
    feed: str
    parts: str
    end: str
    ms: float


def short(value: object, limit: int = 140) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_exc(exc: BaseException) -> str:
    return short(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}")


def describe_parts(parts: list[PartRecord]) -> str:
    if not parts:
        return "none"
    shown = [
        f"{p.name!r} fn={short(p.filename, 40)} ct={p.content_type!r} {p.size}B"
        + ("" if p.ended else " (not ended)")
        for p in parts[:2]
    ]
    if len(parts) > 2:
        shown.append(f"... {len(parts)} parts in all")
    return "; ".join(shown)


def run_case(case: Case, cls: AdapterClass) -> CaseResult:
    sink = Sink()
    feed = end = "-"
    t0 = time.perf_counter()
    try:
        adapter = cls(case.content_type, sink, **case.options.get(cls.label, {}))
    except Exception as exc:  # reporting what the parser raises is the point
        return CaseResult(case.key, cls.label, "ctor raised " + describe_exc(exc), "none", "-", 0)
    try:
        for pos in range(0, len(case.body), case.chunk):
            adapter.feed(case.body[pos : pos + case.chunk])
        feed = "ok"
    except Exception as exc:
        feed = "raised " + describe_exc(exc)
    if feed == "ok":
        try:
            adapter.close()
            end = "complete"
        except Incomplete as exc:
            end = "INCOMPLETE (adapter check) " + short(str(exc))
        except Exception as exc:
            end = "raised " + describe_exc(exc)
    ms = (time.perf_counter() - t0) * 1000
    return CaseResult(case.key, cls.label, feed, describe_parts(sink.parts), end, ms)


def malformed() -> tuple[list[Case], list[CaseResult]]:
    all_cases, results = cases(), []
    for case in all_cases:
        for cls in ADAPTERS:
            if case.only and cls.label not in case.only:
                continue
            results.append(run_case(case, cls))
    return all_cases, results


# --------------------------------------------------------------------------- output


def log(row: ThroughputRow) -> None:
    print(
        f"  {row.parser:20} {row.scenario:12} {row.sink:6} {row.size // MIB:5} MiB "
        f"{row.wall[-1]:7.2f} s {row.mb_s(row.wall[-1]):8.1f} MB/s  {row.ok} {row.note}",
        file=sys.stderr,
        flush=True,
    )


def print_throughput(rows: list[ThroughputRow]) -> None:
    repeats = max(len(r.wall) for r in rows)
    print(
        f"\nThroughput: 64 KiB chunks, best and median of {repeats} runs (wall clock), and best"
        "\nby process CPU time (the steadier figure when the machine is shared); MB = 10^6 bytes;"
        "\ntimes include generating the chunks; calls = data events, max call = largest one"
    )
    head = (
        f"{'parser':20} {'content':12} {'sink':6} {'MiB':>5} {'best s':>7} {'MB/s':>7} "
        f"{'median':>7} {'CPU':>7} {'calls':>6} {'max call':>8}  check"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        median = sorted(r.wall)[len(r.wall) // 2]
        print(
            f"{r.parser:20} {r.scenario:12} {r.sink:6} {r.size // MIB:5} {min(r.wall):7.2f} "
            f"{r.mb_s(min(r.wall)):7.0f} {r.mb_s(median):7.0f} {r.mb_s(min(r.cpu)):7.0f} "
            f"{r.calls:6} {r.max_call:8}  {r.ok}" + (f"  [{r.note}]" if r.note else "")
        )


def print_malformed(all_cases: list[Case], results: list[CaseResult]) -> None:
    print("\nMalformed input (feed = while parsing; end = after end of input was signalled)")
    for case in all_cases:
        print(f"({case.key}) {case.title}")
        for r in (r for r in results if r.key == case.key):
            print(f"    {r.parser:19} {r.ms:8.1f} ms  feed: {r.feed}")
            print(f"    {'':19} {'':11}  parts: {r.parts}")
            print(f"    {'':19} {'':11}  end: {r.end}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="file size, random content")
    ap.add_argument(
        "--adv-size-mib", type=int, default=256, help="file size, adversarial and 4 KiB chunks"
    )
    ap.add_argument("--repeat", type=int, default=5, help="runs per measurement")
    ap.add_argument("--quick", action="store_true", help="64 MiB / 16 MiB smoke run")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-malformed", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.size_mib, args.adv_size_mib = 64, 16
    versions = ", ".join(
        f"{p} {version(p)}" for p in ("multipart", "python-multipart", "streaming-form-data")
    )
    print(
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; "
        f"{versions}; boundary {BOUNDARY!r}; load average {os.getloadavg()[0]:.2f}"
    )
    started = time.perf_counter()
    rows = []
    if not args.skip_throughput:
        rows = throughput(args.size_mib * MIB, args.adv_size_mib * MIB, args.repeat)
    found = ([], []) if args.skip_malformed else malformed()
    if rows:
        print_throughput(rows)
    if found[0]:
        print_malformed(*found)
    took = time.perf_counter() - started
    print(f"\ntotal {took:.0f} s; load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
