"""The URL map: every handler module's `routes`, in one readable place."""

from __future__ import annotations

from typing import Any

from tornado.routing import PathMatches

from hostd.handlers import accounts, api, deletion, download, files, monitoring, pages, tus, upload


def all_routes() -> list[tuple[str | PathMatches, Any]]:
    # The hash routes first: downloads are most requests, and Tornado tries the routes in
    # order. No named route can match them, because no named path starts with a segment of
    # 12 to 16 hash characters (tests/test_server.py checks it).
    return [
        *download.routes,
        *upload.root_routes,
        *pages.routes,
        *accounts.routes,
        *api.routes,
        *files.routes,
        *upload.routes,
        *tus.routes,
        *deletion.routes,
        *monitoring.routes,
        *pages.api_not_found_routes,
    ]
