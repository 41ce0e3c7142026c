"""For load balancers and Prometheus: /healthz and /metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from hostd.handlers.base import BaseHandler, Refusal
from hostd.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger("hostd")

# How long /healthz waits for each check: a load balancer's probe gives up after a few
# seconds, and a check that takes this long is a failure anyway.
HEALTH_TIMEOUT_SECONDS = 2.0


class MonitoringHandler(BaseHandler):
    """For machines: no session read (probes come every few seconds)."""

    async def prepare(self) -> None:
        self.current_user = None


class HealthHandler(MonitoringHandler):
    """200 `ok` when the database answers a read and the blob store can be reached; else 503
    naming what failed (the details go to the log). No auth: it tells nothing else."""

    async def get(self) -> None:
        checks = {"database": self.db.healthy(), "storage": self.store.healthy()}
        outcomes = await asyncio.gather(*(checked(name, c) for name, c in checks.items()))
        failed = [outcome for outcome in outcomes if outcome]
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        if failed:
            self.set_status(503)
        self.finish("".join(failed) or "ok\n")


async def checked(name: str, check: Awaitable[None]) -> str:
    """ "" when the check passes in time, else a line saying what failed."""
    try:
        await asyncio.wait_for(check, HEALTH_TIMEOUT_SECONDS)
    except TimeoutError:
        log.warning("healthz: %s: no answer in %g s", name, HEALTH_TIMEOUT_SECONDS)
        return f"{name}: no answer in {HEALTH_TIMEOUT_SECONDS:g} s\n"
    except Exception as exc:
        log.warning("healthz: %s: %s", name, exc)
        return f"{name}: failed ({type(exc).__name__})\n"
    return ""


class MetricsHandler(MonitoringHandler):
    """Prometheus's text format; 404 when metrics.enabled is off, 403 from an address that
    metrics.allow does not list."""

    async def get(self) -> None:
        metrics: Metrics | None = self.settings["hostd_metrics"]
        if metrics is None:
            raise Refusal(404, "There is nothing at this address.")
        if not metrics.allows(self.request.remote_ip):
            raise Refusal(403, "this address may not read the metrics (see metrics.allow)")
        body = await metrics.render(self.db)
        self.set_header("Content-Type", CONTENT_TYPE)
        self.set_header("Cache-Control", "no-store")
        self.finish(body)


routes = [
    (r"/healthz", HealthHandler),
    (r"/metrics", MetricsHandler),
]
