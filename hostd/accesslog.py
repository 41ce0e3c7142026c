"""The access log: one line per request, in the format `logging` gives the rest of the log,
without `logging`'s machinery on every request (a record, handlers, locks, a formatter).

Lines are buffered and written out by a timer (and at exit), so a busy server makes one write
for many requests. Tornado calls it as the application's `log_function`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import TextIO

import tornado.web

FLUSH_EVERY_SECONDS = 0.5
# Written out at once past this many lines, whatever the timer says.
MAX_BUFFERED_LINES = 1000
# Set on a handler once its request has its line.
LOGGED = "_hostd_access_logged"


class AccessLog:
    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""
        # Told of every request too, with its status and seconds: /metrics (make_app sets it).
        self.observer: Callable[[tornado.web.RequestHandler, int, float], None] | None = None

    def __call__(self, handler: tornado.web.RequestHandler) -> None:
        # An upload whose client left is logged (499) when it left, and Tornado's finish()
        # logs it again when the handler ends, later: one line and one count per request. (A
        # mark in the handler's __dict__: a quarter of a WeakSet's cost.)
        marks = handler.__dict__
        if LOGGED in marks:
            return
        marks[LOGGED] = True
        status = handler.get_status()
        level = "INFO" if status < 400 else "WARNING" if status < 500 else "ERROR"
        request = handler.request
        seconds = request.request_time()
        if self.observer is not None:
            self.observer(handler, status, seconds)
        now = time.time()
        second = int(now)
        if second != self._second:  # the date changes once a second, not once a request
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        self._lines.append(
            f"{self._stamp},{int((now - second) * 1000):03d} {level} tornado.access: "
            # Tornado's own summary ("GET /x (1.2.3.4)"), which a handler whose URL holds a
            # secret overrides (the deletion link's).
            f"{status} {handler._request_summary()} "
            f"{1000.0 * seconds:.2f}ms\n"
        )
        if len(self._lines) >= MAX_BUFFERED_LINES:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_EVERY_SECONDS, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        stream = self._stream or sys.stderr  # looked up late: tests and daemons swap stderr
        lines, self._lines = self._lines, []
        stream.write("".join(lines))
        stream.flush()
