"""Pages: the upload page and the API documentation."""

from __future__ import annotations

from hostd.handlers.base import BaseHandler, Refusal


class IndexHandler(BaseHandler):
    def get(self) -> None:
        self.render_page("pages/index.html")


class ApiPageHandler(BaseHandler):
    def get(self) -> None:
        self.render_page("pages/api.html")


class NotFoundHandler(BaseHandler):
    """Every unknown URL: the 404 page."""

    def prepare(self) -> None:
        raise Refusal(404, "There is nothing at this address.")


routes = [
    (r"/", IndexHandler),
    (r"/api", ApiPageHandler),
]
