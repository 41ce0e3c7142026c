"""Which CPUs hostd's threads run on: the threads that trade the GIL on one, long work anywhere.

Python threads take turns holding one lock, the GIL. The IOLoop hands small jobs to other
threads (an upload's rename and fsync, a batch of SQL) and takes their answers back, hundreds
of times a second, and a thread waiting for the GIL gets it only when the holder lets go.
When the two threads sit on different CPUs, each of those turns waits for the other CPU to be
woken and to schedule the thread, and the holder has often taken the GIL back by then (the
"convoy effect", https://bugs.python.org/issue7946); on one CPU a turn is a plain context
switch. Measured on a 2-CPU VM, 16 clients of 4 KiB uploads: with hostd's threads on one CPU
it took 1.5-1.7x as many uploads per second as with them spread over both.

So `hostd serve` pins its IOLoop's thread to one CPU (server.cpu) before it starts any other,
and every thread it starts inherits that: aiosqlite's, the default executor's. Threads whose
jobs run long without the GIL (hashing and writing a big upload, Argon2, thumbnails) are
started by `roaming_pool()`, or call `roam()` first, and may use every CPU the process may.
Nothing here is done unless `settle()` is called, so the CLI and the tests' in-process
servers run as the kernel places them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from hostd.config import Config, ConfigError

T = TypeVar("T")
log = logging.getLogger("hostd")

# Every CPU the process could use before settle() narrowed its IOLoop's thread to one.
_everywhere: frozenset[int] | None = None
# The CPU settle() pinned the IOLoop's thread to, if it did (for the start's log).
home: int | None = None
_pools: dict[str, ThreadPoolExecutor] = {}
_pool_lock = threading.Lock()
ROAMING_WORKERS = 8


def allowed() -> list[int]:
    """The CPUs this thread may run on, in order."""
    return sorted(os.sched_getaffinity(0))


def choose(config: Config, *, instance: int = 0) -> int | None:
    """The CPU for an instance's threads, or None to leave them where the kernel puts them.

    server.cpu "any": None. A number: that CPU for the first instance, the next ones (in the
    order of the CPUs this process may use) for the others of `serve --instances`; ConfigError
    if the process may not use it. "auto": None when there is only one CPU to choose from, or
    when the bytes live in S3 (obstore's own threads, started from the IOLoop's, would
    inherit the pin); else the one at (port + instance) modulo how many there are, so that
    instances on consecutive ports, or those of `serve --instances`, each take another."""
    setting = config.cpu
    if setting == "any" or not hasattr(os, "sched_setaffinity"):  # not Linux: never pinned
        return None
    cpus = allowed()
    if isinstance(setting, int):
        if setting not in cpus:
            listed = ", ".join(str(cpu) for cpu in cpus)
            raise ConfigError(f"server.cpu = {setting}: this process may use CPUs {listed} only")
        return cpus[(cpus.index(setting) + instance) % len(cpus)]
    if len(cpus) < 2 or config.backend == "s3":
        return None
    return cpus[(config.port + instance) % len(cpus)]


def settle(cpu: int | None) -> None:
    """Pin the calling thread (the IOLoop's, before it starts others) to `cpu`; remember
    every CPU it could use, for roam(). None: change nothing. Where the system refuses
    (a seccomp filter such as systemd's SystemCallFilter=~@resources), say so and go on
    unpinned: slower small uploads, nothing worse."""
    global _everywhere, home
    if cpu is None:
        return
    everywhere = frozenset(os.sched_getaffinity(0))
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:
        log.warning(
            "server.cpu: could not keep the threads on CPU %d (%s); they run anywhere", cpu, exc
        )
        return
    _everywhere, home = everywhere, cpu


def roam() -> None:
    """Let the calling thread run on every CPU the process could before settle(). A pool's
    initializer: should the system refuse now, the thread stays where it is rather than
    break its pool."""
    if _everywhere is not None:
        try:
            os.sched_setaffinity(0, _everywhere)
        except OSError as exc:
            log.warning("server.cpu: a worker thread stays on the IOLoop's CPU (%s)", exc)


def roaming_pool(name: str = "hostd-roaming") -> ThreadPoolExecutor:
    """The process's threads for long jobs that let go of the GIL (hashing and writing a big
    upload's bytes): started by roam(), so they may run beside the IOLoop. A job that waits
    for another job takes that one's threads from a pool of another `name`, so that jobs
    waiting in every thread of a pool can never wait for a job queued behind them."""
    with _pool_lock:
        pool = _pools.get(name)
        if pool is None:
            pool = _pools[name] = ThreadPoolExecutor(ROAMING_WORKERS, name, initializer=roam)
        return pool


def in_roaming_thread(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """fn(*args) in one of roaming_pool()'s threads; its outcome, on the running loop."""
    return asyncio.get_running_loop().run_in_executor(roaming_pool(), fn, *args)
