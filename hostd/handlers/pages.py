"""Pages: the upload page, the 404 page for every unknown URL, and the static files."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import tornado.web

from hostd import retention
from hostd.handlers.base import ApiHandler, BaseHandler, Refusal


def where_uploads_go(public_url: str) -> str:
    return (
        "Upload a file with POST /api/upload (a multipart field named 'file') or PUT "
        f"/api/upload/<its name> (curl -T FILE {public_url}/api/upload/)."
    )


def how_root_takes_files(public_url: str) -> str:
    return (
        "This URL takes a file as a POST of a multipart form with the file in a field named"
        f" 'file' (curl -F file=@FILE {public_url}/). To send the file itself as the body,"
        f" PUT it to /api/upload/<its name> (curl -T FILE {public_url}/api/upload/)."
    )


class IndexHandler(BaseHandler):
    """The upload page. A POST to / is routed to upload.RootUploadHandler (0x0.st's way);
    it is listed here so that Allow tells the truth."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "OPTIONS")

    def get(self) -> None:
        # The limit this visitor's uploads have: an anonymous one may be lower.
        max_bytes = self.config.max_upload_bytes
        if self.current_user is None and self.config.anonymous_max_upload_bytes is not None:
            max_bytes = self.config.anonymous_max_upload_bytes
        default_keep, keep_choices = retention.keep_choices(
            self.config, anonymous=self.current_user is None
        )
        self.render_page(
            "pages/index.html",
            max_bytes=max_bytes,
            default_keep=default_keep,
            keep_choices=keep_choices,
        )

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 405:
            # `curl -T shot.png https://host/`, `curl -X PATCH ...`: say how this URL takes a
            # file, and where the file itself as the body goes.
            refusal = Refusal(405, how_root_takes_files(self.public_url()))
            kwargs["exc_info"] = (Refusal, refusal, None)
        super().write_error(status_code, **kwargs)


# URLs whose next segment is a secret: a deletion link's token, a tus upload's id (for an
# anonymous upload, the key to it). An unknown URL under them (a slash too many) is logged
# without it, as their own handlers log theirs.
SECRET_PREFIXES = ("/delete/", "/api/tus/")


def logged_path(path: str) -> str:
    for prefix in SECRET_PREFIXES:
        if path.startswith(prefix) and len(path) > len(prefix):
            return f"{prefix}{path[len(prefix) :][:6]}..."
    return path


class NotFoundHandler(BaseHandler):
    """Every unknown URL: the 404 page, whatever the method."""

    SUPPORTED_METHODS = tornado.web.RequestHandler.SUPPORTED_METHODS

    def check_xsrf_cookie(self) -> None:
        pass  # nothing here acts on a request: a POST gets the 404 too, not a 403

    async def prepare(self) -> None:
        await super().prepare()
        if self.request.method in ("POST", "PUT"):  # `curl -T file https://host/x`, say
            where = where_uploads_go(self.public_url())
            raise Refusal(404, f"There is nothing at this address. {where}")
        raise Refusal(404, "There is nothing at this address.")

    def _request_summary(self) -> str:
        path = logged_path(self.request.path)
        return f"{self.request.method} {path} ({self.request.remote_ip})"


class ApiNotFoundHandler(NotFoundHandler, ApiHandler):
    """An unknown URL under the JSON API's (say /api/upload/a/b): the 404 in JSON."""

    SUPPORTED_METHODS = tornado.web.RequestHandler.SUPPORTED_METHODS


class StaticHandler(BaseHandler, tornado.web.StaticFileHandler):
    """/static/, /favicon.ico and /robots.txt (Tornado's static files), answering methods as
    every other URL here does: GET, HEAD and OPTIONS, and any other method a 405 that names
    them in Allow; a file that is not there gets the site's 404 page. Tornado's own answers
    a POST 403 (its xsrf check), a TRACE 405 without Allow (RFC 9110 15.5.6), and a bare
    "404: Not Found"."""

    SUPPORTED_METHODS = ("GET", "HEAD", "OPTIONS")

    def initialize(self, path: str, default_filename: str | None = None) -> None:  # type: ignore[override]
        tornado.web.StaticFileHandler.initialize(self, path, default_filename)

    async def prepare(self) -> None:
        self.current_user = None  # a static file needs no session: no database read

    def head(self, path: str) -> Awaitable[None]:  # type: ignore[override]
        return tornado.web.StaticFileHandler.head(self, path)


routes = [
    (r"/", IndexHandler),
]
# After every other route (all_routes puts it last): the rest of the JSON API's URLs (the
# /api page and its key forms are pages, as are their 404s).
api_not_found_routes = [(r"/api/(?:upload|files|tus)/.*", ApiNotFoundHandler)]
