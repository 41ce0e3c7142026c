"""`hostd serve --instances N`: N hostd processes on one box, sharing one listening socket.

Each instance is an ordinary hostd (one process, one IOLoop); the kernel hands each new
connection to whichever of them accepts first. The parent only binds the socket, forks,
forwards SIGTERM/SIGINT to the instances, and starts an instance again if one dies on its
own (so one crash costs its in-flight requests, not a core). Everything the instances must
agree on lives in the database, which is why this needs PostgreSQL (see README, "Scaling
out").
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

from hostd import affinity
from hostd.config import Config, ConfigError
from hostd.db import CannotOpen
from hostd.server import listening_sockets
from hostd.storage import StoreUnavailable

log = logging.getLogger("hostd")

# An instance that dies sooner than this after its start is not started again at once.
QUICK_DEATH_SECONDS = 5.0
RESTART_PAUSE_SECONDS = 1.0
# After SIGTERM, how long the parent waits for instances beyond their own shutdown grace.
STOP_MARGIN_SECONDS = 15.0
POLL_SECONDS = 0.1
# An instance's exit status when it cannot start (the store or the config is wrong), so that
# the others are stopped rather than it being started again and again; other failures are
# CRASHED, and that instance is started again.
CANNOT_START = 3
CRASHED = 70
# prctl's option: the signal a process gets when its parent ends (<linux/prctl.h>).
PR_SET_PDEATHSIG = 1


def stop_with(parent: int) -> None:
    """Have this process sent SIGTERM (a graceful stop) when `parent` ends, however it ends:
    a supervisor killed with SIGKILL would otherwise leave its instances serving on the port,
    with no one to stop them, and the next start would find the port taken. Linux's
    PR_SET_PDEATHSIG; elsewhere nothing."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it ended before the call
        os.kill(os.getpid(), signal.SIGTERM)


def supervise(
    config: Config, instances: int, serve: Callable[[Config, list[socket.socket]], object]
) -> int:
    """Bind, fork `instances` children that each run serve(config, sockets) in a fresh
    event loop, and look after them until SIGTERM or SIGINT. Returns the exit status."""
    sockets = listening_sockets(config.host, config.port)
    children: dict[int, tuple[int, float]] = {}  # pid -> (instance number, started at)
    stopping = False

    parent = os.getpid()

    def start(number: int) -> None:
        pid = os.fork()
        if pid == 0:  # the instance: nothing of the parent's loop exists (none was made)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            stop_with(parent)
            status = 0
            try:
                affinity.settle(affinity.choose(config, instance=number))
                asyncio.run(serve(config, sockets))  # type: ignore[arg-type]
            except (StoreUnavailable, ConfigError, CannotOpen) as exc:
                print(f"hostd: cannot start: {exc}", file=sys.stderr)
                status = CANNOT_START
            except BaseException:
                log.exception("instance %d failed", number)
                status = CRASHED
            finally:
                logging.shutdown()
                os._exit(status)
        children[pid] = (number, time.monotonic())

    def stop_all(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for sock in sockets:  # new connections are refused, not queued for nobody
            sock.close()
        for pid in children:
            _signal(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    log.info("starting %d instances on port %d", instances, config.port)
    # The parent keeps its copy of the socket (accepting nothing on it), so that an
    # instance started again later inherits it too.
    for number in range(instances):
        start(number)
    deadline: float | None = None
    failed = False
    while children:
        if stopping and deadline is None:
            deadline = time.monotonic() + config.shutdown_grace_seconds + STOP_MARGIN_SECONDS
        if deadline is not None and time.monotonic() > deadline:
            for pid in children:
                _signal(pid, signal.SIGKILL)
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            time.sleep(POLL_SECONDS)
            continue
        number, started = children.pop(pid)
        if stopping:
            continue
        code = os.waitstatus_to_exitcode(status)
        if code == CANNOT_START:  # the next start would fail the same way: stop them all
            stop_all(signal.SIGTERM, None)
            failed = True
            continue
        log.error("instance %d (pid %d) ended with status %d; starting it again", number, pid, code)
        if time.monotonic() - started < QUICK_DEATH_SECONDS:
            time.sleep(RESTART_PAUSE_SECONDS)
        if not stopping:
            start(number)
    log.info("all instances stopped")
    return 1 if failed else 0


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
