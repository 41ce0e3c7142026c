"""Prometheus metrics: one registry per application, what it counts, and who may read it.

Requests are counted once each, from the access log (the one place every answer passes,
early refusals and dropped uploads included), as plain numbers in dicts, turned into metrics
at scrape time: prometheus-client's own Counter and Histogram take a lock per increment, and
cost several times as much. Everything else is read at scrape time from counters the parts
keep anyway (Auth, the limiters, the database writer), or from the database behind a short
cache: nothing more per request.
"""

from __future__ import annotations

import bisect
import ipaddress
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import prometheus_client
import tornado.web
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from hostd import db
from hostd.db import Database, Stored

log = logging.getLogger("hostd")
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST
# The ways an upload arrives: the form (POST /upload, /api/upload), a raw PUT, tus.
UPLOAD_KINDS = ("multipart", "put", "tus")
# Stored files and bytes are counted at most this often (two table scans).
STORED_EVERY_SECONDS = 30.0
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
KiB, MiB, GiB = 1024, 1024 * 1024, 1024 * 1024 * 1024
SIZE_BUCKETS = (4 * KiB, 64 * KiB, MiB, 16 * MiB, 128 * MiB, GiB, 4 * GiB)
# Any other method (a client may send any token) is counted as "other": labels stay bounded.
METHODS = frozenset(tornado.web.RequestHandler.SUPPORTED_METHODS)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Metrics:
    """An application's metrics. `settings` is its Tornado settings, where the parts whose
    counters are read at scrape time live (hostd_auth, hostd_limiter, ...)."""

    def __init__(
        self,
        settings: dict[str, Any],
        allow: tuple[str, ...],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = CollectorRegistry()
        self.allow: tuple[Network, ...] = tuple(
            ipaddress.ip_network(network, strict=False) for network in allow
        )
        self._clock = clock
        # Counted here, on the IOLoop, as plain numbers; turned into metrics at scrape time.
        self.requests: dict[tuple[str, str, int], int] = {}  # (handler, method, status)
        self.latencies: dict[str, Latencies] = {}  # by handler
        uploads = prometheus_client.Histogram(
            "hostd_upload_size_bytes",
            "Uploads stored (deduplicated ones too), by how they arrived: _count is how many,"
            " _sum their bytes.",
            ["kind"],
            buckets=SIZE_BUCKETS,
            registry=self.registry,
        )
        self.uploads = {kind: uploads.labels(kind) for kind in UPLOAD_KINDS}
        self.registry.register(_Counts(settings, self))
        prometheus_client.ProcessCollector(registry=self.registry)
        self.stored: Stored | None = None
        self._stored_at = float("-inf")

    def observe_request(
        self, handler: tornado.web.RequestHandler, status: int, seconds: float
    ) -> None:
        """Count one answered request (the access log calls this): a microsecond or so."""
        method = handler.request.method or ""
        if method not in METHODS:
            method = "other"
        name = type(handler).__name__
        key = (name, method, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        latencies = self.latencies.get(name)
        if latencies is None:
            latencies = self.latencies[name] = Latencies()
        latencies.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        latencies.sum += seconds

    def allows(self, ip: str | None) -> bool:
        """Whether this client address may read /metrics (metrics.allow)."""
        try:
            address = ipaddress.ip_address(ip or "")
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.allow)

    async def render(self, database: Database) -> bytes:
        """The text exposition of every metric, stored totals refreshed if they are old.

        A database that cannot be read leaves the totals as they were (absent if never
        read), with a line in the log: a scrape during an outage is when metrics matter."""
        now = self._clock()
        if now - self._stored_at >= STORED_EVERY_SECONDS:
            # Tried at most every STORED_EVERY_SECONDS, answered or not: a database that is
            # down is not asked at every scrape.
            self._stored_at = now
            try:
                self.stored = await db.get_stored(database)
            except Exception as exc:  # whatever the driver says, the scrape goes on
                log.warning("metrics: stored totals not read from the database: %s", exc)
        return prometheus_client.generate_latest(self.registry)


def upload_done(handler: tornado.web.RequestHandler, kind: str, size: int) -> None:
    """Count an upload that was stored (kind: one of UPLOAD_KINDS; size in bytes). Call it
    once per upload answered with success; it does nothing when metrics are off."""
    metrics: Metrics | None = handler.settings.get("hostd_metrics")
    if metrics is not None:
        metrics.uploads[kind].observe(size)


class Latencies:
    """One handler's latency histogram: how many answers fell in each bucket (the last is
    above every bound), not yet cumulative, and their total."""

    __slots__ = ("buckets", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def cumulative(self) -> list[tuple[str, float]]:
        bounds = [*(str(bound) for bound in LATENCY_BUCKETS), "+Inf"]
        return list(zip(bounds, itertools.accumulate(self.buckets), strict=True))


class _Counts(Collector):
    """What the application's parts count anyway, read at scrape time."""

    def __init__(self, settings: dict[str, Any], metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics, settings = self._metrics, self._settings
        requests = CounterMetricFamily(
            "hostd_requests",
            "Requests answered, by the handler that answered (one per kind of URL), method"
            " and status.",
            labels=["handler", "method", "status"],
        )
        for (name, method, status), count in metrics.requests.items():
            requests.add_metric([name, method, str(status)], count)
        yield requests
        latency = HistogramMetricFamily(
            "hostd_request_duration_seconds",
            "Time from the request's first byte to the end of its answer, by handler.",
            labels=["handler"],
        )
        for name, latencies in metrics.latencies.items():
            latency.add_metric([name], latencies.cumulative(), latencies.sum)
        yield latency
        auth = settings["hostd_auth"]
        verifications = CounterMetricFamily(
            "hostd_argon2_verifications",
            "Argon2 verifications run, by what was checked (password, key).",
            labels=["kind"],
        )
        for kind, count in auth.verifications.items():
            verifications.add_metric([kind], count)
        yield verifications
        yield CounterMetricFamily(
            "hostd_api_key_cache_hits",
            "API keys accepted from the cache of verified keys, without Argon2.",
            value=auth.key_cache_hits,
        )
        refused = CounterMetricFamily(
            "hostd_rate_limited",
            "Requests refused with a 429 by a limit, by the setting that refused them.",
            labels=["limit"],
        )
        refused.add_metric(["sign_in"], settings["hostd_limiter"].refused)
        refused.add_metric(["registrations_per_hour"], settings["hostd_registrations"].refused)
        refused.add_metric(["invalid_keys_per_hour"], settings["hostd_invalid_keys"].refused)
        refused.add_metric(["uploads_in_flight_per_address"], settings["hostd_in_flight"].refused)
        refused.add_metric(["downloads_in_flight_per_address"], settings["hostd_downloads"].refused)
        refused.add_metric(["connections_per_address"], settings["hostd_connections"].refused)
        for limit, count in settings["hostd_limits"].refused.items():
            refused.add_metric([limit], count)
        yield refused
        yield GaugeMetricFamily(
            "hostd_uploads_in_flight",
            "Uploads being received or recorded now.",
            value=len(settings["hostd_in_flight"]),
        )
        yield GaugeMetricFamily(
            "hostd_connections_open",
            "Client connections open now (with trust_proxy: the proxy's).",
            value=settings["hostd_connections"].total,
        )
        yield GaugeMetricFamily(
            "hostd_downloads_in_flight",
            "Downloads of files over 64 KiB that hostd is sending now (not nginx).",
            value=settings["hostd_downloads"].total,
        )
        writer = settings["hostd_db"].stats
        yield CounterMetricFamily(
            "hostd_db_commits",
            "Transactions the database writer committed (each holds a batch of writes).",
            value=writer.commits,
        )
        yield CounterMetricFamily(
            "hostd_db_writes",
            "Units of work the database writer ran; per commit, the batch size.",
            value=writer.units,
        )
        stored = metrics.stored
        if stored is not None:
            note = f" (counted at most every {STORED_EVERY_SECONDS:g} s)"
            yield GaugeMetricFamily(
                "hostd_stored_files", "Distinct files stored" + note + ".", value=stored.files
            )
            yield GaugeMetricFamily(
                "hostd_stored_bytes",
                "Bytes stored, each distinct file once" + note + ".",
                value=stored.bytes,
            )
            yield GaugeMetricFamily(
                "hostd_uploads", "Uploads that point at them" + note + ".", value=stored.uploads
            )
