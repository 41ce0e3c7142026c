"""The URL map: every handler module's `routes`, in one readable place."""

from __future__ import annotations

from typing import Any

from hostd.handlers import accounts, api, deletion, download, files, monitoring, pages, tus, upload


def all_routes() -> list[tuple[str, Any]]:
    # Named routes first; the hash routes match what is left.
    return [
        *pages.routes,
        *accounts.routes,
        *api.routes,
        *files.routes,
        *upload.routes,
        *tus.routes,
        *deletion.routes,
        *monitoring.routes,
        *download.routes,
    ]
