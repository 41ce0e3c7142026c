"""Pages: the upload page, and the 404 page for every unknown URL."""

from __future__ import annotations

import tornado.web

from hostd.handlers.base import BaseHandler, Refusal


class IndexHandler(BaseHandler):
    def get(self) -> None:
        self.render_page("pages/index.html")


class NotFoundHandler(BaseHandler):
    """Every unknown URL: the 404 page, whatever the method."""

    SUPPORTED_METHODS = tornado.web.RequestHandler.SUPPORTED_METHODS

    def check_xsrf_cookie(self) -> None:
        pass  # nothing here acts on a request: a POST gets the 404 too, not a 403

    async def prepare(self) -> None:
        await super().prepare()
        raise Refusal(404, "There is nothing at this address.")


routes = [
    (r"/", IndexHandler),
]
